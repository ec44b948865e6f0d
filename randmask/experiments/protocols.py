"""The paper's evaluation protocols as functions returning tidy rows (one dict per CSV row).

    transfer   black-box transfer (Section 3.1, Tables 2, 7-11): attack images the source classifies
               correctly, keep those that fool the source, report each target's accuracy on them
               (the paper's "defense rate"); a list of sources is attacked as one logit-averaging ensemble
    whitebox   Table 4: each model's accuracy under attacks made against itself
    graybox    Table 5: transfer rows labelled by how source and target relate (other init, DIF, ...)
    madry      Table 1: transfer with Madry et al.'s black-box attacks (FGSM8, PGD2,7,8)
    mnist      Table 6: transfer on MNIST with PGD of 40 steps of 0.01*255, eps 0.3*255
    noise      Figure 3: accuracy under clipped Gaussian noise (corruptions.py)
    shuffle    appendix A, Table 3: accuracy on patch-shuffled images all models know with >= 0.99 confidence
               (corruptions.py)

Rows share the columns protocol, dataset, source, target, attack, metric, n, correct, accuracy, ci_low,
ci_high (accuracy a fraction, interval Wilson 95%), plus protocol-specific ones. `metric` uses the names of
the paper's table file: defense_rate, accuracy, clean_accuracy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from randmask.attacks import parse_attack
from randmask.core.errors import RandmaskError
from randmask.core.models import Ensemble
from randmask.experiments.evaluate import (
    DEFAULT_BATCH,
    Progress,
    Work,
    accuracy_fields,
    craft,
    mean_or_nan,
    model_fingerprint,
    predict,
    predicted_labels,
    select_correct,
    tensor_fingerprint,
)

COLUMNS = ("protocol", "dataset", "source", "target", "attack", "metric", "n", "correct", "accuracy",
           "ci_low", "ci_high")
# appendix G.5 / Tables 7-11 (CW20 replaces CW40 for a ResNet-18 source)
PAPER_TRANSFER_ATTACKS = ("FGSM8", "FGSM16", "FGSM32", "PGD16", "PGD2,16", "PGD32", "CW40")
# Table 4. The paper gives eps and steps (2/4, 4/6, 8/10) but not the step size; we assume 1.
WHITEBOX_ATTACKS = {"FGSM1": "FGSM1", "FGSM2": "FGSM2", "FGSM4": "FGSM4",
                    "PGD1,4,2": "PGD2", "PGD1,6,4": "PGD4", "PGD1,10,8": "PGD8"}
MADRY_ATTACKS = {"FGSM8": "FGSM8", "PGD2,7,8": "PGD 7x2 eps8"}
MNIST_ATTACK = "PGD2.55,40,76.5"  # 40 steps of 0.01 * 255, eps 0.3 * 255 (Table 6)
# transfer's keywords for Tables 1 and 6 (madry, mnist; the reproduce plan names them too)
MADRY = {"protocol": "madry", "paper_names": MADRY_ATTACKS}
MNIST = {"protocol": "mnist", "paper_names": {MNIST_ATTACK: "PGD 40x0.01 eps0.3"}, "dataset": "mnist"}
GRAYBOX_ATTACK = "FGSM16"


def paper_transfer_attacks(source_notation: str) -> list[str]:
    """The attacks of Tables 7-11 for a source network (CW20 for Normal ResNet-18, CW40 otherwise)."""
    attacks = list(PAPER_TRANSFER_ATTACKS)
    if source_notation.strip().lower() in ("normal resnet-18", "resnet-18"):
        attacks[-1] = "CW20"
    return attacks


def _ensemble(models: Sequence[nn.Module]) -> nn.Module:
    if not models:
        raise RandmaskError("transfer needs at least one source model")
    if len(models) == 1:
        return models[0]
    return Ensemble(list(models))


def protocol_row(protocol: str, dataset: str, source: str, target: str, attack: str, metric: str, correct: int, n: int,
         **extra) -> dict:
    return {"protocol": protocol, "dataset": dataset, "source": source, "target": target, "attack": attack,
            "metric": metric, **accuracy_fields(correct, n), **extra}


def images_cache_key(images: torch.Tensor, cache: str | os.PathLike | None) -> str | None:
    """An image set's prediction-cache key, hashed once for all the models that see it (None: no cache)."""
    return tensor_fingerprint(images) if cache is not None else None


def correct_count(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             cache: str | os.PathLike | None = None, model_key: str | None = None,
             images_key: str | None = None) -> int:
    """How many of x the model labels y; with `cache`, predictions are reused (evaluate.predicted_labels)."""
    if len(x) == 0:
        return 0
    labels = predicted_labels(model, x, batch_size=batch_size, cache=cache, model_key=model_key,
                              images_key=images_key)
    return int((labels == y.to(labels.device)).sum())


def median_logit_gap(model: nn.Module, x: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> float:
    """Median gap between the model's two largest logits on x: the scale a CW margin κ is measured against."""
    if len(x) == 0:
        return float("nan")
    top2 = predict(model, x, batch_size=batch_size).float().topk(2, dim=1).values
    return float((top2[:, 0] - top2[:, 1]).median())


def logit_scale(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, dataset: str = "",
                batch_size: int = DEFAULT_BATCH) -> list[dict]:
    """How confident each model is on clean images: its accuracy on (x, y) plus the quartiles of the gap between
    its two largest logits and its mean top softmax probability. Transfer (and CW's margin κ above all) depends on
    this scale, so a control matched on accuracy should be compared on it too."""
    check_pool(x, y)
    rows = []
    for name, model in models.items():
        logits = predict(model, x, batch_size=batch_size).float()
        top2 = logits.topk(2, dim=1).values
        q25, q50, q75 = (top2[:, 0] - top2[:, 1]).quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
        correct = int((logits.argmax(1) == y.to(logits.device)).sum())
        rows.append(protocol_row("logit_scale", dataset, "", name, "", "clean_accuracy", correct, len(x),
                         logit_gap_q25=q25, logit_gap_median=q50, logit_gap_q75=q75,
                         mean_top_probability=logits.softmax(1).max(1).values.mean().item()))
    return rows


def check_pool(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise RandmaskError(f"need N×C×H×W images and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0:
        raise RandmaskError("no images to evaluate")


@dataclass
class CraftedSet:
    """One attack's images that fool the source, with the columns every target's row about them carries."""

    attack: str  # as str(spec) spells it
    adv: torch.Tensor
    labels: torch.Tensor
    extra: dict  # n_attacked, source_fooled, mean_linf, mean_l2, paper_attack, quantized, seed, source_logit_gap
    images_key: str | None  # the prediction-cache key of adv (None: no cache)


@dataclass
class TransferSets:
    """What a transfer crafts against its source, once for all its targets (transfer_target evaluates one)."""

    protocol: str
    dataset: str
    source_name: str
    seed: int
    clean: bool  # each target's clean accuracy on the pool is added
    batch_size: int
    pool_key: str | None  # the prediction-cache key of the pool (None: no cache)
    sets: list[CraftedSet]

    @classmethod
    def join(cls, parts: Sequence[TransferSets]) -> TransferSets:
        """Parts crafted apart, one attack each (a cluster's cells), as the one transfer_sets call for all their
        attacks makes them: the images each attack takes are the first of the same list, whatever its length."""
        if not parts:
            raise RandmaskError("no crafted sets to join")
        first = parts[0]
        for part in parts[1:]:
            if (part.protocol, part.dataset, part.source_name, part.seed, part.clean, part.batch_size,
                    part.pool_key) != (first.protocol, first.dataset, first.source_name, first.seed, first.clean,
                                       first.batch_size, first.pool_key):
                raise RandmaskError(f"crafted sets of different transfers cannot be joined ({first.source_name}, "
                                    f"{part.source_name})")
        return dataclasses.replace(first, sets=[s for part in parts for s in part.sets])


@dataclass
class TargetRows:
    """One target's rows of a transfer: its defense rate on each crafted set, and its clean accuracy."""

    defense: list[dict]
    clean: dict | None


def transfer(source: nn.Module | Sequence[nn.Module], targets: Mapping[str, nn.Module], attacks: Sequence[str],
             x: torch.Tensor, y: torch.Tensor, *, source_name: str, n: int = 5000, n_cw: int = 1000,
             seed: int = 0, quantize_images: bool = True, clean: bool = True, dataset: str = "",
             batch_size: int = DEFAULT_BATCH, protocol: str = "transfer", paper_names: Mapping[str, str] | None = None,
             progress: Progress | None = None, cache: str | os.PathLike | None = None,
             stage: Callable[[str], None] | None = None, craft_batch: int | None = None) -> list[dict]:
    """Black-box transfer. From the pool (x, y), take the first n images the source classifies correctly
    (n_cw for CW), attack the source, keep the adversarial images that fool it (measured on the stored,
    uint8-rounded images unless quantize_images=False), and report each target's accuracy on them.

    With clean=True, each target's (and the source's) clean accuracy on the whole pool is added. Extra
    columns: n_attacked, source_fooled (fraction of attacked images that fool the source), mean_linf,
    mean_l2 (of kept images), paper_attack, quantized, seed, source_logit_gap (median gap between the source's
    top two logits on the attacked images). With `cache` (a folder) crafted sets are reused
    across runs (see `craft`), so adding a target to a table costs only its evaluation. `stage` hears each step
    in words (choosing images, crafting, each target's evaluation) for a caller to show; `craft_batch` (default
    batch_size) sets how many images an attack takes at once, and so how often `progress` hears of it.

    Its three parts run apart on a cluster (reproduce --ray), each as here: transfer_sets (one attack each,
    joined by TransferSets.join), transfer_target (one target each) and transfer_rows.
    """
    source_model = source if isinstance(source, nn.Module) else _ensemble(list(source))
    sets = transfer_sets(source_model, attacks, x, y, source_name=source_name, n=n, n_cw=n_cw, seed=seed,
                         quantize_images=quantize_images, clean=clean, dataset=dataset, batch_size=batch_size,
                         protocol=protocol, paper_names=paper_names, progress=progress, cache=cache, stage=stage,
                         craft_batch=craft_batch)
    by_target = {name: transfer_target(sets, name, target, x, y, cache=cache, stage=stage,
                                       position=f"{k} of {len(targets)}")
                 for k, (name, target) in enumerate(targets.items(), 1)}
    source_clean = None
    if clean and not any(model is source_model for model in targets.values()):
        source_clean = clean_row(sets, source_name, source_model, x, y, cache=cache, stage=stage)
    return transfer_rows(by_target, source_clean)


def transfer_sets(source: nn.Module | Sequence[nn.Module], attacks: Sequence[str], x: torch.Tensor,
                  y: torch.Tensor, *, source_name: str, n: int = 5000, n_cw: int = 1000, seed: int = 0,
                  quantize_images: bool = True, clean: bool = True, dataset: str = "",
                  batch_size: int = DEFAULT_BATCH, protocol: str = "transfer",
                  paper_names: Mapping[str, str] | None = None, progress: Progress | None = None,
                  cache: str | os.PathLike | None = None, stage: Callable[[str], None] | None = None,
                  craft_batch: int | None = None) -> TransferSets:
    """transfer's first part: choose the images the source classifies correctly, craft each attack against it
    (reused from `cache`) and keep the images that fool it. Arguments as transfer's."""
    say = stage or (lambda _text: None)
    check_pool(x, y)
    specs = [parse_attack(a) for a in attacks]
    source_model = source if isinstance(source, nn.Module) else _ensemble(list(source))
    paper_names = {str(parse_attack(k)): v for k, v in (paper_names or {}).items()}  # keys as str(spec) spells them
    say(f"choosing the images {source_name} classifies correctly")
    candidates = select_correct([source_model], x, y, n=max([n] + [n_cw for s in specs if s.norm == "l2"]),
                                batch_size=batch_size)
    sizes = [min(len(candidates), n_cw if spec.norm == "l2" else n) for spec in specs]
    work = Work(sum(sizes), progress)
    sets = []
    for spec, size in zip(specs, sizes, strict=True):
        idx = candidates[:size]
        say(f"crafting {spec} against {source_name} on {size} images")
        crafted = craft(source_model, spec.build(source_model, seed=seed), x[idx], y[idx], seed=seed,
                        quantize_images=quantize_images, batch_size=craft_batch or batch_size,
                        progress=work.phase(size), cache=cache)
        keep = crafted.fooled
        adv = crafted.adv[keep]
        extra = {"n_attacked": size, "source_fooled": keep.float().mean().item() if size else float("nan"),
                 "mean_linf": mean_or_nan(crafted.linf[keep]), "mean_l2": mean_or_nan(crafted.l2[keep]),
                 "paper_attack": paper_names.get(str(spec), str(spec)), "quantized": quantize_images,
                 "seed": seed, "source_logit_gap": median_logit_gap(source_model, x[idx], batch_size)}
        sets.append(CraftedSet(str(spec), adv, crafted.labels[keep], extra, images_cache_key(adv, cache)))
    return TransferSets(protocol, dataset, source_name, seed, clean, batch_size,
                        images_cache_key(x, cache) if clean else None, sets)


def transfer_target(sets: TransferSets, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    cache: str | os.PathLike | None = None, stage: Callable[[str], None] | None = None,
                    position: str = "") -> TargetRows:
    """transfer's second part, for one target: its defense rate on each crafted set and (with sets.clean) its
    clean accuracy on the pool (x, y). `position` ('2 of 5') is for `stage`'s lines."""
    say = stage or (lambda _text: None)
    where = f" ({position})" if position else ""
    model_key = model_fingerprint(model) if cache is not None else None
    defense = []
    for crafted in sets.sets:
        say(f"{crafted.attack}: evaluating {name}{where} on the {len(crafted.labels)} images that fool the source")
        defense.append(protocol_row(sets.protocol, sets.dataset, sets.source_name, name, crafted.attack, "defense_rate",
                            correct_count(model, crafted.adv, crafted.labels, sets.batch_size, cache, model_key,
                                     crafted.images_key), len(crafted.labels), **crafted.extra))
    clean = (clean_row(sets, name, model, x, y, cache=cache, stage=stage, position=position, model_key=model_key)
             if sets.clean else None)
    return TargetRows(defense, clean)


def clean_row(sets: TransferSets, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
              cache: str | os.PathLike | None = None, stage: Callable[[str], None] | None = None,
              position: str = "", model_key: str | None = None) -> dict:
    """A model's clean-accuracy row of a transfer (a target's, or the source's) on the pool (x, y)."""
    if stage:
        stage(f"clean accuracy of {name}{f' ({position})' if position else ''} on {len(x)} images")
    return protocol_row(sets.protocol, sets.dataset, "", name, "", "clean_accuracy",
                correct_count(model, x, y, sets.batch_size, cache, model_key, sets.pool_key), len(x), seed=sets.seed)


def transfer_rows(by_target: Mapping[str, TargetRows], source_clean: dict | None = None) -> list[dict]:
    """transfer's last part: the targets' rows (in their order) as one table, attack by attack, then the clean
    accuracies, the source's first."""
    attacks = max((len(rows.defense) for rows in by_target.values()), default=0)
    if any(len(rows.defense) != attacks for rows in by_target.values()):
        raise RandmaskError("every target of a transfer must be evaluated on the same crafted sets")
    table = [rows.defense[i] for i in range(attacks) for rows in by_target.values()]
    clean = {name: rows.clean for name, rows in by_target.items() if rows.clean is not None}
    if source_clean is not None:  # first, unless a target takes its name (then that target, as a dict would)
        clean = {source_clean["target"]: source_clean, **clean}
    return table + list(clean.values())


def madry(source: nn.Module | Sequence[nn.Module], targets: Mapping[str, nn.Module], x: torch.Tensor,
          y: torch.Tensor, **kwargs) -> list[dict]:
    """Table 1: transfer from a naturally trained source with FGSM8 and PGD2,7,8 (7 steps of 2, eps 8)."""
    return transfer(source, targets, list(MADRY_ATTACKS), x, y, **MADRY, **kwargs)


def mnist(source: nn.Module | Sequence[nn.Module], targets: Mapping[str, nn.Module], x: torch.Tensor,
          y: torch.Tensor, **kwargs) -> list[dict]:
    """Table 6: transfer on MNIST with PGD, 40 steps of 0.01*255, eps 0.3*255 (source DenseNet-121)."""
    return transfer(source, targets, [MNIST_ATTACK], x, y, **{**MNIST, **kwargs})


def relation(source_config: Mapping, target_config: Mapping) -> str:
    """How a gray-box target relates to its source, from their configs (notation, seed, mask_seed):
    'same model', 'other init' (same notation, same masks, other seed), 'DIF' (same notation, other masks),
    or 'other architecture'."""
    same = source_config.get("notation") == target_config.get("notation")
    if not same:
        return "other architecture"
    same_masks = source_config.get("mask_seed") == target_config.get("mask_seed")
    same_init = source_config.get("seed") == target_config.get("seed")
    if same_masks and same_init:
        return "same model"
    return "other init" if same_masks else "DIF"


def graybox(sources: Mapping[str, nn.Module], targets: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
            *, attack: str = GRAYBOX_ATTACK, relations: Mapping[tuple[str, str], str] | None = None,
            clean: bool = True, batch_size: int = DEFAULT_BATCH, dataset: str = "", seed: int = 0,
            progress: Progress | None = None, cache: str | os.PathLike | None = None, **kwargs) -> list[dict]:
    """Table 5: transfer from each source to each target with a `relation` column (see `relation`), plus
    every model's clean accuracy on the pool."""
    relations = relations or {}
    rows: list[dict] = []
    work = Work(len(sources), progress)
    for name, model in sources.items():
        report = work.phase(1)
        part = transfer(model, targets, [attack], x, y, source_name=name, protocol="graybox", clean=False,
                        batch_size=batch_size, dataset=dataset, seed=seed, cache=cache, **kwargs)
        for row in part:
            row["relation"] = relations.get((name, row["target"]), "")
        rows += part
        report(1, 1)
    if clean:
        pool_key = images_cache_key(x, cache)
        for name, model in {**sources, **targets}.items():
            rows.append(protocol_row("graybox", dataset, "", name, "", "clean_accuracy",
                             correct_count(model, x, y, batch_size, cache, images_key=pool_key), len(x), seed=seed))
    return rows


def whitebox(models: Mapping[str, nn.Module], attacks: Sequence[str], x: torch.Tensor, y: torch.Tensor, *,
             seed: int = 0, quantize_images: bool = True, dataset: str = "", batch_size: int = DEFAULT_BATCH,
             progress: Progress | None = None, cache: str | os.PathLike | None = None) -> list[dict]:
    """Table 4: each model's accuracy on the pool under each attack made against itself (plus clean)."""
    check_pool(x, y)
    specs = [parse_attack(a) for a in attacks]
    work = Work(len(models) * len(specs) * len(x), progress)
    rows = []
    pool_key = images_cache_key(x, cache)
    for name, model in models.items():
        rows.append(protocol_row("whitebox", dataset, name, name, "", "clean_accuracy",
                         correct_count(model, x, y, batch_size, cache, images_key=pool_key), len(x), seed=seed))
        for spec in specs:
            crafted = craft(model, spec.build(model, seed=seed), x, y, quantize_images=quantize_images,
                            batch_size=batch_size, progress=work.phase(len(x)), cache=cache)
            rows.append(protocol_row("whitebox", dataset, name, name, str(spec), "accuracy",
                             int((~crafted.fooled).sum()), len(x), paper_attack=WHITEBOX_ATTACKS.get(str(spec), ""),
                             mean_linf=mean_or_nan(crafted.linf), mean_l2=mean_or_nan(crafted.l2),
                             quantized=quantize_images, seed=seed))
    return rows
