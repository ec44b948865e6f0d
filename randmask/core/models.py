"""`build_model` from the paper's notation: the registered architecture (randmask.core.architectures) with its masks.

Every model takes [0,1] images (N×C×H×W) and returns logits: the per-pixel training mean is a buffer inside
(`Classifier.pixel_mean`), so attacks never see normalisation. Only ResNet-18 carries Random Masks, placed
after a conv's BatchNorm and before its ReLU (or before the residual addition for a block's second conv and
for a projection shortcut).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from randmask.core.architectures import ARCHITECTURES, list_models, register_model
from randmask.core.datasets import DATASETS, NUM_CLASSES
from randmask.core.errors import RandmaskError
from randmask.core.masks import RandomMask, ResampledMask, layer_seed, n_dropped
from randmask.core.notation import (
    MAX_SEED,
    MAX_WIDTH,
    MaskTerm,
    ModelSpec,
    format_model,
    format_number,
    parse_model,
)

__all__ = ["DATASETS", "NUM_CLASSES", "Classifier", "Ensemble", "ModelConfig", "build_model", "check_buildable",
           "count_params", "describe", "list_models", "mask_modules", "masked_layers", "register_model"]

MAX_PARAMETERS = 400_000_000  # all members together: 1.6 GB in float32 (the paper's largest, ×4 at width 64: 22M)


class MaskFactory:
    """Hands out masks in construction order, each seeded from (model mask seed, its index)."""

    def __init__(self, spec: ModelSpec, mask_seed: int) -> None:
        self.spec, self.mask_seed, self.count = spec, mask_seed, 0

    def __call__(self, block: int, shape: tuple[int, int, int]) -> nn.Module:
        term = self.spec.block_term(block)
        if term is None:
            return nn.Identity()
        if term.kind == "Dropout":  # nothing fixed to draw: the seed count stays that of the fixed kinds
            return ResampledMask(shape, term.ratio, block)
        module = RandomMask(shape, term.ratio, term.kind, layer_seed(self.mask_seed, self.count), block)
        self.count += 1
        return module

    def multiplier(self, block: int) -> int:
        term = self.spec.block_term(block)
        return term.multiplier if term else 1


class _PlannedMask(nn.Identity):
    """Stands in for a mask while a model is planned on the meta device: records what would be drawn."""

    def __init__(self, term: MaskTerm, shape: tuple[int, int, int], block: int) -> None:
        super().__init__()
        self.term, self.shape, self.block = term, shape, block


class _PlanningFactory(MaskFactory):
    def __call__(self, block: int, shape: tuple[int, int, int]) -> nn.Module:
        term = self.spec.block_term(block)
        return nn.Identity() if term is None else _PlannedMask(term, shape, block)


def check_buildable(spec: ModelSpec, dataset: str, width: int) -> int:
    """Refuse a model too large to build or with a mask that keeps nothing or drops nothing, before allocating:
    the structure is laid out on torch's meta device (no memory). Returns the parameter count of all members."""
    in_shape = DATASETS[dataset]
    with torch.device("meta"):
        body = Classifier(ARCHITECTURES[spec.arch].build(in_shape, NUM_CLASSES, width, _PlanningFactory(spec, 0)), in_shape)
    total = sum(p.numel() for p in body.parameters()) * spec.ensemble
    if total > MAX_PARAMETERS:
        raise RandmaskError(f"{format_model(spec)} at width {width} would have {total / 1e6:,.0f} million parameters "
                            f"({4 * total / 2**30:.1f} GiB in float32); the limit is {MAX_PARAMETERS // 10**6} million: "
                            f"lower the width, ×n or EN size")
    for name, m in body.named_modules():
        if isinstance(m, _PlannedMask):
            c, h, w = m.shape
            n = c if m.term.kind == "DC" else h * w
            if n_dropped(m.term.ratio, n) >= n:
                unit = f"all {c} channels" if m.term.kind == "DC" else f"all {h * w} positions of every channel"
                raise RandmaskError(f"drop ratio {format_number(m.term.ratio)} of {format_model(spec)} drops {unit} "
                                    f"of masked layer {name} (block {m.block}, {c}×{h}×{w}) on {dataset}: "
                                    f"use a ratio below {format_number(math.floor((1 - 0.5 / n) * 1e6) / 1e6)}")
            if n_dropped(m.term.ratio, n) == 0:  # a mask that drops nothing would pass for a masked net
                unit = "no channel" if m.term.kind == "DC" else f"no position of the {h * w} of each channel"
                # the least ratio that drops one in every layer of this term: set by its smallest layer
                smallest = min((x.shape[0] if x.term.kind == "DC" else x.shape[1] * x.shape[2])
                               for x in body.modules() if isinstance(x, _PlannedMask) and x.term == m.term)
                least = round(math.floor(0.5 / smallest * 1e6) / 1e6 + 1e-6, 6)
                raise RandmaskError(f"drop ratio {format_number(m.term.ratio)} of {format_model(spec)} drops {unit} "
                                    f"of masked layer {name} (block {m.block}, {c}×{h}×{w}) on {dataset}: "
                                    f"use a ratio of at least {format_number(least)}")
    return total


# ------------------------------------------------------------------------------------ wrappers and builder
@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's structure and masks (weights come from the checkpoint)."""

    notation: str
    arch: str
    dataset: str = "cifar10"
    width: int = 16
    mask_seed: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier(nn.Module):
    """[0,1] images -> logits: subtracts the training set's per-pixel mean, then runs the body."""

    def __init__(self, body: nn.Module, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(in_shape))
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.pixel_mean.shape:
            raise RandmaskError(f"model expects images of shape {tuple(self.pixel_mean.shape)} in [0,1], got "
                                f"{tuple(x.shape[1:])}: the model was built for another input size")
        return self.body(x - self.pixel_mean)


class Ensemble(nn.Module):
    """Averages the logits of its members (the paper's EN)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def _build_single(spec: ModelSpec, dataset: str, width: int, mask_seed: int, seed: int) -> Classifier:
    in_shape = DATASETS[dataset]
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        body = ARCHITECTURES[spec.arch].build(in_shape, NUM_CLASSES, width, MaskFactory(spec, mask_seed))
    return Classifier(body, in_shape)


def build_model(notation: str | ModelSpec, *, dataset: str = "cifar10", width: int = 16, mask_seed: int = 0,
                seed: int = 0) -> nn.Module:
    """Build an (untrained) model from notation. Ensemble member i uses mask_seed + i and seed + i."""
    spec = parse_model(notation)
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise RandmaskError(f"unknown dataset {str(dataset)[:40]!r}; known: {', '.join(DATASETS)}")
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise RandmaskError(f"width must be an integer from 1 to {MAX_WIDTH}, got {str(width)[:40]}")
    for name, value in (("mask_seed", mask_seed), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise RandmaskError(f"{name} must be an integer from 0 to {MAX_SEED}, got {str(value)[:40]}")
    check_buildable(spec, dataset, width)
    member = spec.member()
    if spec.ensemble == 1:
        model: nn.Module = _build_single(member, dataset, width, mask_seed, seed)
    else:
        model = Ensemble([_build_single(member, dataset, width, mask_seed + i, seed + i)
                          for i in range(spec.ensemble)])
    model.config = ModelConfig(format_model(spec), spec.arch, dataset, width, mask_seed, seed)
    return model


def mask_modules(model: nn.Module, *, fixed_only: bool = False) -> list[tuple[str, RandomMask | ResampledMask]]:
    """(name, module) of every mask in a model, in order; fixed_only: only the masks drawn once (RandomMask)."""
    kinds = RandomMask if fixed_only else (RandomMask, ResampledMask)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def masked_layers(model: nn.Module) -> list[dict]:
    """Name, block, shape and measured drop ratio of every mask (fixed or resampled) in a model."""
    return [{"name": name, "block": m.block, "shape": list(m.shape), "kind": m.kind,
             "drop_ratio": m.measured_drop_ratio()} for name, m in mask_modules(model)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(notation: str | ModelSpec, *, dataset: str = "cifar10", width: int = 16, mask_seed: int = 0) -> dict:
    """What `python -m randmask info` prints."""
    model = build_model(notation, dataset=dataset, width=width, mask_seed=mask_seed)
    layers = masked_layers(model)
    masked = sum(math.prod(layer["shape"]) * layer["drop_ratio"] for layer in layers)
    return {"notation": model.config.notation, "arch": ARCHITECTURES[model.config.arch].name, "dataset": dataset,
            "width": width, "mask_seed": mask_seed, "params": count_params(model),
            "masked_neurons": round(masked), "masked_layers": layers}
