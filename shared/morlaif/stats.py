"""Interval estimates for the accuracies and win rates the evaluation commands report."""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]

#: the two-sided 95% quantile of the standard normal
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson, 1927) of a proportion: `successes` of `n` trials, fractional where a
    tie counts half. Returns (low, high) within [0, 1]; (0, 1) for n = 0. Default: 95%."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
