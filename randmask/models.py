"""CIFAR-style model family with a registry, and `build_model` from the paper's notation.

Every model takes [0,1] images (N×C×H×W) and returns logits: the per-pixel training mean is a buffer inside
(`Classifier.pixel_mean`), so attacks never see normalisation. Only ResNet-18 carries Random Masks, placed
after a conv's BatchNorm and before its ReLU (or before the residual addition for a block's second conv and
for a projection shortcut).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from randmask.errors import RandmaskError
from randmask.masks import RandomMask, ResampledMask, layer_seed, n_dropped
from randmask.notation import ARCH_NAMES, MaskTerm, ModelSpec, format_model, format_number, parse_model

DATASETS: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 32),
    "mnist": (1, 28, 28),
    "tinyimagenet10": (3, 64, 64),
}
NUM_CLASSES = 10
MAX_WIDTH = 512  # the paper's base width is 64; the zoo's is 16
MAX_PARAMETERS = 400_000_000  # all members together: 1.6 GB in float32 (the paper's largest, ×4 at width 64: 22M)
MAX_SEED = 2**31 - 1

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Register a body builder `fn(spec, in_shape, num_classes, width, masks) -> nn.Module` under `name`."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registered architectures, by registry key (e.g. 'resnet18')."""
    return sorted(_REGISTRY)


def _down(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # output size of a padded 3×3 (or 1×1) conv with this stride


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
    """Refuse a model too large to build or with a mask that keeps nothing, before allocating anything:
    the structure is laid out on torch's meta device (no memory). Returns the parameter count of all members."""
    in_shape = DATASETS[dataset]
    with torch.device("meta"):
        body = Classifier(_REGISTRY[spec.arch](in_shape, NUM_CLASSES, width, _PlanningFactory(spec, 0)), in_shape)
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
    return total


def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


# ----------------------------------------------------------------------------------------- ResNet-18 / 50
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, hw: tuple[int, int], masks: MaskFactory,
                 block: int) -> None:
        super().__init__()
        shape = (planes, *hw)
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.mask1 = masks(block, shape)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.mask2 = masks(block, shape)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(*conv_bn(cin, planes, 1, stride), masks(block, shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.mask1(self.bn1(self.conv1(x))))
        out = self.mask2(self.bn2(self.conv2(out)))  # masked before the residual addition
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, hw: tuple[int, int], masks: MaskFactory,
                 block: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = conv_bn(cin, out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: block 0 = 3×3 stem conv, blocks 1-4 = the four stages (strides 1, 2, 2, 2)."""

    def __init__(self, unit: type, counts: list[int], in_shape: tuple[int, int, int], num_classes: int,
                 width: int, masks: MaskFactory) -> None:
        super().__init__()
        c, h, w = in_shape
        stem = width * masks.multiplier(0)
        self.conv1, self.bn1 = nn.Conv2d(c, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem)
        self.mask1 = masks(0, (stem, h, w))
        cin, hw = stem, (h, w)
        stages = []
        for i, (n, stride) in enumerate(zip(counts, (1, 2, 2, 2), strict=True)):
            block = i + 1
            planes = width * 2**i * masks.multiplier(block)
            units = []
            for s in [stride] + [1] * (n - 1):
                hw = (_down(hw[0], s), _down(hw[1], s))
                units.append(unit(cin, planes, s, hw, masks, block))
                cin = planes * unit.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.mask1(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model("resnet18")
def resnet18(in_shape, num_classes, width, masks) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], in_shape, num_classes, width, masks)


@register_model("resnet50")
def resnet50(in_shape, num_classes, width, masks) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], in_shape, num_classes, width, masks)


# ------------------------------------------------------------------------------------------ DenseNet-121
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([y, x], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, counts: list[int], growth: int, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_shape[0], channels, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(counts):
            for _ in range(n):
                stages.append(DenseLayer(channels, growth))
                channels += growth
            if i < len(counts) - 1:
                out = channels // 2  # compression 0.5
                stages.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn, self.linear = nn.BatchNorm2d(channels), nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model("densenet121")
def densenet121(in_shape, num_classes, width, masks) -> nn.Module:
    return DenseNet([6, 12, 24, 16], max(4, round(32 * width / 64)), in_shape, num_classes)


# ------------------------------------------------------------------------------------------------ VGG-19
class VGG(nn.Module):
    def __init__(self, plan: list, in_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_shape[0], in_shape[1]
        for item in plan:
            if item == "M":
                if size >= 2:  # MNIST's 28×28 runs out of resolution before the fifth pool
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                cout = max(4, item * width // 64)
                layers += [*conv_bn(cin, cout, 3, 1), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


VGG19_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"]


@register_model("vgg19")
def vgg19(in_shape, num_classes, width, masks) -> nn.Module:
    return VGG(VGG19_PLAN, in_shape, num_classes, width)


# ---------------------------------------------------------------------------------------------- SENet-18
class SEPreActBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Conv2d(cin, planes, 1, stride, bias=False)
        squeeze = max(1, planes // 16)
        self.fc1, self.fc2 = nn.Conv2d(planes, squeeze, 1), nn.Conv2d(squeeze, planes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1)))))
        return out * gate + skip


class SENet(nn.Module):
    def __init__(self, counts: list[int], in_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        cin, stages = width, []
        for i, (n, stride) in enumerate(zip(counts, (1, 2, 2, 2), strict=True)):
            units = []
            for s in [stride] + [1] * (n - 1):
                units.append(SEPreActBlock(cin, width * 2**i, s))
                cin = width * 2**i
            stages.append(nn.Sequential(*units))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(F.relu(out), 1), 1))


@register_model("senet18")
def senet18(in_shape, num_classes, width, masks) -> nn.Module:
    return SENet([2, 2, 2, 2], in_shape, num_classes, width)


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
        body = _REGISTRY[spec.arch](in_shape, NUM_CLASSES, width, MaskFactory(spec, mask_seed))
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
    if spec.arch not in _REGISTRY:
        raise RandmaskError(f"architecture {ARCH_NAMES[spec.arch]} is not registered")
    check_buildable(spec, dataset, width)
    member = spec.member()
    if spec.ensemble == 1:
        model: nn.Module = _build_single(member, dataset, width, mask_seed, seed)
    else:
        model = Ensemble([_build_single(member, dataset, width, mask_seed + i, seed + i)
                          for i in range(spec.ensemble)])
    model.config = ModelConfig(format_model(spec), spec.arch, dataset, width, mask_seed, seed)
    return model


def masked_layers(model: nn.Module) -> list[dict]:
    """Name, block, shape and measured drop ratio of every mask (fixed or resampled) in a model."""
    return [
        {"name": name, "block": m.block, "shape": list(m.shape), "kind": m.kind,
         "drop_ratio": m.measured_drop_ratio()}
        for name, m in model.named_modules() if isinstance(m, RandomMask | ResampledMask)
    ]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(notation: str | ModelSpec, *, dataset: str = "cifar10", width: int = 16, mask_seed: int = 0) -> dict:
    """What `python -m randmask info` prints."""
    model = build_model(notation, dataset=dataset, width=width, mask_seed=mask_seed)
    layers = masked_layers(model)
    masked = sum(math.prod(layer["shape"]) * layer["drop_ratio"] for layer in layers)
    return {"notation": model.config.notation, "arch": ARCH_NAMES[model.config.arch], "dataset": dataset,
            "width": width, "mask_seed": mask_seed, "params": count_params(model),
            "masked_neurons": round(masked), "masked_layers": layers}
