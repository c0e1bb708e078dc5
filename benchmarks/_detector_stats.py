"""The statistics the detector benchmark reports: paired per-round ratios and a
distribution-free confidence interval of their median (standard library only)."""

from __future__ import annotations

import math
import statistics
from typing import List, Tuple


def median_ci(values: List[float], level: float = 0.95) -> Tuple[float, float, float]:
    """(median, low, high): a distribution-free confidence interval for the median from the
    order statistics (the ranks where Binomial(n, 1/2) covers `level`); (m, m, m) below 6
    samples, where no such interval exists at 95%."""
    xs = sorted(values)
    n, med = len(xs), statistics.median(xs)
    lo_rank = 0
    # largest j with P(B <= j - 1) <= (1 - level) / 2, B ~ Binomial(n, 1/2)
    cdf, alpha = 0.0, (1.0 - level) / 2.0
    for j in range(n):
        cdf += math.comb(n, j) / 2.0 ** n
        if cdf > alpha:
            lo_rank = j
            break
    if lo_rank == 0:
        return med, med, med
    return med, xs[lo_rank - 1], xs[n - lo_rank]


def paired_ratios(num: List[float], den: List[float]) -> List[float]:
    """Per-round ratios of two series timed in the same rounds: machine-speed drift between
    rounds (large on a shared VM) cancels, which a ratio of two medians does not do."""
    return [a / b for a, b in zip(num, den)]
