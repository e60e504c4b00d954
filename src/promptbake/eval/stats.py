"""Rates with honest error bars: the Wilson score interval for k successes in n trials."""
from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial rate; (0, 1) when there are no trials.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n, which is where
    small judge samples (8 answers per probe) usually land.
    """
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, trials: int) -> dict:
    """The record every suite reports for a rate: counts, the rate and its 95 % Wilson interval."""
    low, high = wilson_interval(successes, trials)
    return {"passed": successes, "n": trials, "rate": successes / trials if trials else None, "ci95": [low, high]}
