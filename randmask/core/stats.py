"""Small statistics used across protocols: intervals for proportions."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (nan, nan) when n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (math.nan, math.nan)
    # imported here: scipy + statsmodels add ~1 s to every `python -m randmask` start otherwise
    from scipy.stats import norm
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=2 * norm.sf(z), method="wilson")
    p = successes / n
    # exact ends at 0 and n (floating point would leave 1e-17 gaps that break low <= p <= high)
    low = 0.0 if successes == 0 else max(0.0, min(p, float(low)))
    high = 1.0 if successes == n else min(1.0, max(p, float(high)))
    return (low, high)
