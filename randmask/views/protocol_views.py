"""What the Noise curves and Patch shuffle pages compute: the σ levels of a range, noisy and shuffled versions of
one image, the protocol runs at the page's sizes, and their rows as chart series and tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from randmask.attacks.base import Progress
from randmask.experiments.corruptions import PAPER_SIGMAS, gaussian_noise, noise, patch_shuffle, shuffle
from randmask.experiments.evaluate import quantize
from randmask.views.catalog import predictions
from randmask.views.tables import ci_text

BEYOND_PAPER_SIGMAS = (40, 48, 56, 64)  # the page's range reaches 64; the paper stops at 32


# ------------------------------------------------------------------------------------------------ noise
def sigma_levels(low: float, high: float) -> list[float]:
    """The σ levels (0-255 units) a low..high range gets: the paper's (and 0, the clean images) inside it,
    40, 48, 56, 64 beyond the paper's 32, and both ends of the range, sorted without repeats."""
    paper_levels = [s for s in (0, *PAPER_SIGMAS) if low <= s <= high]
    extra = [s for s in BEYOND_PAPER_SIGMAS if low <= s <= high and s > max(PAPER_SIGMAS)]
    return sorted(set(paper_levels + extra + [low, high]))


def levels_caption(sigmas: Sequence[float]) -> str:
    """'σ levels: 0, 1, 2, 4 (the paper's …)': the caption under the range slider."""
    return ("σ levels: " + ", ".join(f"{s:g}" for s in sigmas)
            + " (the paper's 1, 2, 4, 8, 12, …, 32 within the range)")


def shown_levels(sigmas: Sequence[float], most: int = 6) -> list[float]:
    """At most `most` of the levels to show as images, spread evenly from the first to the last."""
    if len(sigmas) <= most:
        return list(sigmas)
    return [sigmas[round(i * (len(sigmas) - 1) / (most - 1))] for i in range(most)]


def noisy_versions(image: torch.Tensor, sigmas: Sequence[float], seed: int) -> list[tuple[str, torch.Tensor]]:
    """(caption, C×H×W image) of one image (1×C×H×W, floats in [0,1]) under each σ, stored as 8 bits. Every
    level scales the same seeded draw, as the protocol does, so the images differ only in σ."""
    shown = []
    for sigma in sigmas:
        noisy = quantize(gaussian_noise(image, float(sigma), torch.Generator().manual_seed(seed)), image)
        shown.append((f"σ = {sigma:g}/255", noisy[0]))
    return shown


def noise_curves(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float], *,
                 n: int, seed: int, dataset: str, progress: Progress | None = None) -> list[dict]:
    """corruptions.noise on the first n images at the positive levels (σ 0, the clean images, it always adds)."""
    return noise(models, x[:n], y[:n], sigmas=[s for s in sigmas if s > 0], seed=seed, dataset=dataset,
                 progress=progress)


def _series(rows: Sequence[Mapping], x_of, sort_key=None) -> list[dict]:
    """Protocol rows as one chart series per model (first-seen order): x, accuracy in percent and the
    asymmetric error-bar lengths of its 95% interval."""
    series = []
    for name in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == name]
        if sort_key is not None:
            mine = sorted(mine, key=sort_key)
        series.append({"name": name, "x": [x_of(r) for r in mine], "y": [100 * r["accuracy"] for r in mine],
                       "plus": [100 * (r["ci_high"] - r["accuracy"]) for r in mine],
                       "minus": [100 * (r["accuracy"] - r["ci_low"]) for r in mine]})
    return series


def curve_series(rows: Sequence[Mapping]) -> list[dict]:
    """The noise rows as one accuracy-against-σ curve per model, σ ascending (see _series)."""
    return _series(rows, lambda r: r["sigma"], sort_key=lambda r: r["sigma"])


def noise_table(rows: Sequence[Mapping]) -> list[dict]:
    """The noise rows as the page's table: accuracy in percent (a number the column formats), its interval."""
    return [{"model": r["target"], "σ (/255)": r["sigma"], "accuracy (%)": 100 * r["accuracy"],
             "95% CI (%)": ci_text(r["ci_low"], r["ci_high"]), "n": r["n"]} for r in rows]


# ------------------------------------------------------------------------------------------------ shuffle
def grid_defaults(grids: Sequence[int]) -> tuple[int, list[int]]:
    """(the grid one image opens with: 4×4 where it divides the image, the batch's grids: 2, 4, 8 where they do)."""
    return (4 if 4 in grids else grids[0]), [g for g in (2, 4, 8) if g in grids]


def shuffled_pair(x: torch.Tensor, index: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image `index` of x, its seeded k×k patch shuffle), both 1×C×H×W."""
    image = x[index:index + 1]
    return image, patch_shuffle(image, k, torch.Generator().manual_seed(seed))


def prediction_table(rows: Sequence[Mapping], k: int) -> list[dict]:
    """catalog.predictions rows for [original, shuffled] as one row per model: 'label (confidence%)' under
    'original' and 'shuffled k×k'."""
    table: dict[str, dict] = {}
    for row in rows:
        item = table.setdefault(row["model"], {"model": row["model"]})
        column = "original" if row["image"] == 0 else f"shuffled {k}×{k}"
        item[column] = f"{row['label']} ({100 * row['confidence']:.0f}%)"
    return list(table.values())


def shuffle_predictions(models: Mapping[str, nn.Module], image: torch.Tensor, shuffled: torch.Tensor, k: int,
                        dataset: str) -> list[dict]:
    """What each model makes of the image and of its shuffle, as the page's table (prediction_table)."""
    return prediction_table(predictions(models, torch.cat([image, shuffled]), dataset), k)


def shuffle_batch(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, pool: int,
                  ks: Sequence[int], min_confidence: float, seed: int, dataset: str,
                  progress: Progress | None = None) -> list[dict]:
    """corruptions.shuffle over every qualifying image among the first `pool`, grids ascending."""
    return shuffle(models, x[:pool], y[:pool], ks=sorted(ks), n=None, min_confidence=min_confidence, seed=seed,
                   dataset=dataset, progress=progress)


def kept_images(rows: Sequence[Mapping]) -> int:
    """How many images qualified for a shuffle batch (every row counts the same ones; 0 without rows)."""
    return rows[0]["n"] if rows else 0


def shuffle_series(rows: Sequence[Mapping]) -> list[dict]:
    """The batch rows as one bar series per model over the grids ('2×2', …), in the rows' order."""
    return _series(rows, lambda r: f"{r['k']}×{r['k']}")


def shuffle_table(rows: Sequence[Mapping]) -> list[dict]:
    """The batch rows as the page's table: accuracy in percent (a number the column formats), its interval."""
    return [{"model": r["target"], "grid": f"{r['k']}×{r['k']}", "accuracy (%)": 100 * r["accuracy"],
             "95% CI (%)": ci_text(r["ci_low"], r["ci_high"]), "n": r["n"]} for r in rows]
