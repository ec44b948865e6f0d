"""Agreement statistics for label counts: Fleiss' kappa, Krippendorff's alpha (nominal), majority
labels and seeded percentile-bootstrap intervals.

`counts` is always an (items, categories) integer matrix: how many raters chose each category. The
statistics themselves come from statsmodels, krippendorff and scipy; this module only checks the input
and turns the cases where a statistic is undefined into NaN, as the exports expect.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import krippendorff
import numpy as np
from scipy import stats as sps
from statsmodels.stats import inter_rater


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
    # chance agreement is 1 when every rating falls in one category: kappa is 0/0
    if np.count_nonzero(counts.sum(axis=0)) < 2:
        return float("nan")
    return float(inter_rater.fleiss_kappa(counts, method="fleiss"))


def krippendorff_alpha_nominal(counts) -> float:
    """Krippendorff's alpha for nominal data, any number of ratings per item (items with < 2 are not
    pairable and are ignored). NaN when undefined (no pairable items or a single category used)."""
    counts = _as_counts(counts)
    pairable = counts[counts.sum(axis=1) >= 2]
    # the package raises on both undefined cases; expected disagreement is 0 with one category
    if pairable.shape[0] == 0 or np.count_nonzero(pairable.sum(axis=0)) < 2:
        return float("nan")
    return float(krippendorff.alpha(value_counts=pairable, level_of_measurement="nominal"))


def majority(counts_row) -> tuple[int | None, bool]:
    """(most chosen category, tie?); the smallest index among tied ones; None without any rating."""
    row = np.asarray(counts_row)
    if row.sum() == 0:
        return None, False
    top = row.max()
    winners = np.flatnonzero(row == top)
    return int(winners[0]), len(winners) > 1


def _cluster_bootstrap(n_groups: int, statistic: Callable, *, vectorized: bool, n_boot: int, level: float,
                       seed: int) -> tuple[np.ndarray, float, float]:
    """scipy's percentile bootstrap over group indices 0..n_groups-1 (resampling the indices resamples whole
    groups, i.e. clusters): (bootstrap distribution, lower, upper). Needs n_groups >= 2 (scipy refuses one)."""
    with warnings.catch_warnings():
        # NaN resamples make scipy warn and return NaN ends; bootstrap_ci handles them itself
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        result = sps.bootstrap((np.arange(n_groups),), statistic, n_resamples=n_boot, vectorized=vectorized,
                               confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return np.asarray(result.bootstrap_distribution, dtype=np.float64), float(interval.low), float(interval.high)


def bootstrap_ci(groups: list[np.ndarray], statistic: Callable[[list[np.ndarray]], float], *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over clusters: resample whole groups (e.g. all answers to one item) with
    replacement, recompute `statistic`, return the (lower, upper) quantiles. NaN,NaN for no groups.
    Resamples where the statistic is NaN (undefined) are left out."""
    if not groups or n_boot == 0:
        return float("nan"), float("nan")
    if len(groups) == 1:  # every resample is the one group
        value = float(statistic(list(groups)))
        return value, value
    values, low, high = _cluster_bootstrap(len(groups), lambda idx: statistic([groups[i] for i in idx]),
                                           vectorized=False, n_boot=n_boot, level=level, seed=seed)
    defined = ~np.isnan(values)
    if defined.all():
        return low, high
    if not defined.any():
        return float("nan"), float("nan")
    # scipy's quantiles would be NaN here: take the same percentile interval over the defined resamples
    alpha = (1 - level) / 2
    return float(np.quantile(values[defined], alpha)), float(np.quantile(values[defined], 1 - alpha))


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
    share = float(sums.sum() / sizes.sum())
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if len(groups) == 1:  # every resample is the one group
        return share, share, share
    _, low, high = _cluster_bootstrap(len(groups), lambda idx, axis: sums[idx].sum(axis=axis) / sizes[idx].sum(axis=axis),
                                      vectorized=True, n_boot=n_boot, level=level, seed=seed)
    return share, low, high
