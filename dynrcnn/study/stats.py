"""Statistics of the study: mean ± sd over seeds, and paired differences to the baseline
(same seed) with a 95% t-interval; and the learning-curve rule that picks the schedule.

Only the standard library: the t quantiles are tabulated (two-sided 95%, i.e. the 0.975
quantile of Student's t), which is all the study needs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

# The AP columns every study table reports (COCO AP and AP at IoU 0.5 .. 0.9).
COLUMNS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")
# A mask detector's segm columns (issue 36: segm AP, and AP50 / AP75 where a cost or gain
# sits), read from the "segm" entry of its metrics.json by settings.read_percent.
SEGM_COLUMNS = ("segm AP", "segm AP50", "segm AP75")

# 0.975 quantile of Student's t with df = 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Two-sided 95% critical value of Student's t with df degrees of freedom (df >= 1; for
    df > 30 a Cornish-Fisher expansion around the normal's 1.96, within 0.001)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of n values; sd is None for n = 1."""

    n: int
    mean: float
    sd: Optional[float]

    def text(self, digits: int = 1) -> str:
        if self.sd is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return Summary(len(values), statistics.fmean(values), sd)


@dataclass(frozen=True)
class PairedDiff:
    """Mean paired difference (arm - baseline over the seeds both have) and its 95%
    t-interval; low/high are None when n < 2 (no interval from one pair)."""

    n: int
    mean: float
    low: Optional[float]
    high: Optional[float]

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (
            self.low > 0 or self.high < 0)

    def text(self, digits: int = 1) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:+.{digits}f} (n={self.n})"
        return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] "
                f"(n={self.n})")


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float]
                      ) -> Optional[PairedDiff]:
    """arm and baseline: value per seed. Pairs the seeds both have; None if there are none."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    diffs = [arm[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDiff(1, mean, None, None)
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDiff(len(diffs), mean, mean - half, mean + half)


def diff_cell(diff: Optional[PairedDiff]) -> str:
    """A table cell for a paired difference: "-" without pairs, else its text, with " *"
    when the interval excludes 0."""
    if diff is None:
        return "-"
    return diff.text() + (" *" if diff.excludes_zero else "")


# the columns whose per-seed differences the reference and best-vs-best tables show
PER_SEED_COLUMNS = ("AP", "AP90")


def per_seed_text(arm: Mapping[int, float], reference: Mapping[int, float]) -> str:
    """arm - reference at each seed both have, in seed order: '+0.5 / -0.9 / +1.5'."""
    return " / ".join(f"{arm[s] - reference[s]:+.1f}" for s in sorted(set(arm) & set(reference)))


def pick_schedule(ap_by_iterations: Mapping[int, float], min_gain: float = 2.0
                  ) -> Optional[int]:
    """The shortest schedule S (iterations) for which the measured schedule 2S adds less
    than `min_gain` AP; None when no measured pair (S, 2S) qualifies.

    ap_by_iterations: AP (in points) of runs trained for each schedule, e.g. {600: 30.1,
    1200: 36.0, 2400: 37.2}. Only exact doublings are compared: a schedule whose double was
    not measured cannot be judged.
    """
    for s in sorted(ap_by_iterations):
        if 2 * s in ap_by_iterations and ap_by_iterations[2 * s] - ap_by_iterations[s] < min_gain:
            return s
    return None


def schedule_ladder(longest: int, steps: int) -> List[int]:
    """`steps` schedules halving down from `longest` (for pick_schedule), shortest first."""
    if longest < 1 or steps < 2:
        raise ValueError(f"need longest >= 1 and steps >= 2, got {longest}, {steps}")
    ladder = [max(1, longest // 2**i) for i in range(steps)]
    return sorted(set(ladder))


def by_seed(rows: Sequence[Dict[str, float]], key: str) -> Dict[int, float]:
    """{seed: row[key]} of rows that carry a 'seed' and the key."""
    return {int(r["seed"]): float(r[key]) for r in rows if r.get(key) is not None}


# The verdict rules of a study report, stated in it: resolved when the 95% interval
# excludes 0; a tie when it lies within +-TIE_MARGIN points; else not resolved.
TIE_MARGIN = 0.5
VERDICT_RULES = (
    "Verdicts follow fixed rules: a difference is *resolved* (better or worse) when its "
    "95% interval excludes 0; a *tie* when the interval lies within "
    f"±{TIE_MARGIN} points and includes 0 (an interval that excludes 0 is resolved even "
    f"inside ±{TIE_MARGIN}: resolved wins); otherwise it is *not resolved*: more seeds "
    "narrow the interval. One seed gives no interval at all.")


def verdict(name: str, metric: str, diff: Optional[PairedDiff], where: str) -> str:
    """One sentence on a paired difference by VERDICT_RULES, e.g. 'dla_dsl - baseline: +1.4
    AP [+0.3, +2.5], resolved better, on 500 test images, 3 seeds'. where: '500 test
    images'."""
    if diff is None:
        return f"{name}: no seed has both arms: no {metric} difference."
    if diff.low is None or diff.high is None:
        return (f"{name}: {metric} {diff.mean:+.1f} at one seed on {where}: no interval "
                "exists from one seed; run more seeds.")
    value = f"{name}: {metric} {diff.mean:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}]"
    tail = f"on {where}, {diff.n} seeds"
    if diff.low > 0:
        return f"{value}, resolved better, {tail}."
    if diff.high < 0:
        return f"{value}, resolved worse, {tail}."
    if -TIE_MARGIN <= diff.low and diff.high <= TIE_MARGIN:
        return f"{value}, a tie (within ±{TIE_MARGIN}), {tail}."
    return f"{value}, not resolved at n = {diff.n}: run more seeds ({where})."
