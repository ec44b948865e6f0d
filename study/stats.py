"""Agreement statistics for label counts: Fleiss' kappa, Krippendorff's alpha (nominal), majority
labels and seeded percentile-bootstrap intervals.

`counts` is always an (items, categories) integer matrix: how many raters chose each category.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _as_counts(counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a 2-d (items, categories) matrix, got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    return counts.astype(np.float64)


def fleiss_kappa(counts) -> float:
    """Fleiss (1971) kappa; every item must have the same number (>= 2) of ratings. NaN if undefined."""
    counts = _as_counts(counts)
    raters = counts.sum(axis=1)
    if counts.shape[0] == 0 or raters[0] < 2 or not np.all(raters == raters[0]):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item; use krippendorff_alpha")
    n = raters[0]
    p_item = ((counts * (counts - 1)).sum(axis=1)) / (n * (n - 1))
    p_category = counts.sum(axis=0) / counts.sum()
    p_bar, p_expected = p_item.mean(), (p_category ** 2).sum()
    if p_expected == 1.0:
        return float("nan")
    return float((p_bar - p_expected) / (1 - p_expected))


def krippendorff_alpha_nominal(counts) -> float:
    """Krippendorff's alpha for nominal data, any number of ratings per item (items with < 2 are not
    pairable and are ignored). NaN when undefined (no pairable items or a single category used)."""
    counts = _as_counts(counts)
    m = counts.sum(axis=1)
    pairable = m >= 2
    counts, m = counts[pairable], m[pairable]
    if counts.shape[0] == 0:
        return float("nan")
    # coincidence matrix: o[c, k] = sum_u n_uc * (n_uk - [c == k]) / (m_u - 1)
    weighted = counts / (m - 1)[:, None]
    coincidence = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    observed_disagreement = coincidence.sum() - np.trace(coincidence)
    expected_disagreement = (n_c.sum() ** 2 - (n_c ** 2).sum()) / (n - 1)
    if expected_disagreement == 0:
        return float("nan")
    return float(1 - observed_disagreement / expected_disagreement)


def majority(counts_row) -> tuple[int | None, bool]:
    """(most chosen category, tie?); the smallest index among tied ones; None without any rating."""
    row = np.asarray(counts_row)
    if row.sum() == 0:
        return None, False
    top = row.max()
    winners = np.flatnonzero(row == top)
    return int(winners[0]), len(winners) > 1


def bootstrap_ci(groups: list[np.ndarray], statistic: Callable[[list[np.ndarray]], float], *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over clusters: resample whole groups (e.g. all answers to one item) with
    replacement, recompute `statistic`, return the (lower, upper) quantiles. NaN,NaN for no groups."""
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(groups), size=len(groups))
        values[b] = statistic([groups[i] for i in pick])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def pooled_mean(groups: list[np.ndarray]) -> float:
    """Mean over all values of all groups (the per-answer share, e.g. accuracy); NaN if empty."""
    total = sum(len(g) for g in groups)
    if total == 0:
        return float("nan")
    return float(sum(float(np.sum(g)) for g in groups) / total)


def proportion_ci(groups: list[np.ndarray], *, n_boot: int = 2000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float, float]:
    """(share, lower, upper) of a 0/1 outcome pooled over all answers, with a percentile cluster
    bootstrap over the groups (same resampling as bootstrap_ci with pooled_mean, vectorised)."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    sums = np.array([g.sum() for g in groups])
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    values = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    alpha = (1 - level) / 2
    return float(sums.sum() / sizes.sum()), float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
