"""The best fixed threshold: the comparator a user would pick without Dynamic R-CNN.

A study may hold several fixed-T arms (T 0.5, the paper's baseline; T 0.6, often the
stronger one). Comparing Dynamic R-CNN against T 0.5 alone answers a weaker question than
the user's ("is it better than the best I could do with a fixed threshold?"). So, as a
user would choose, the fixed-T arm of the best mean val AP (over the seeds every fixed arm
has) is the comparator; the choice and its margin are stated; the comparison itself is on
the held-out test split (val when there is none), paired by seed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from dynrcnn.study.arms import ARMS, fixed_threshold
from dynrcnn.study.settings import read_percent
from dynrcnn.study.stats import PairedDiff, diff_cell, paired_difference, verdict

VERDICT_COLUMNS = ("AP", "AP50", "AP90")  # where users look: the whole, the cost, the gain


@dataclass
class ArmRuns:
    """Metrics (percent) of one arm's finished runs: split -> seed -> column -> value."""

    arm: str
    metrics: Dict[str, Dict[int, Dict[str, float]]] = field(default_factory=dict)

    def column(self, split: str, col: str) -> Dict[int, float]:
        return {s: m[col] for s, m in self.metrics.get(split, {}).items() if col in m}


def collect_runs(jobs: Sequence[Any], metrics_of: Callable[[Any, str], str],
                 splits: Sequence[str]) -> Dict[str, ArmRuns]:
    """ArmRuns of every arm of `jobs` (runner.Job) from metrics_of(job, split) files."""
    out: Dict[str, ArmRuns] = {}
    for job in jobs:
        runs = out.setdefault(job.arm.name, ArmRuns(job.arm.name))
        for split in splits:
            values = read_percent(metrics_of(job, split))
            if values is not None:
                runs.metrics.setdefault(split, {})[job.seed] = values
    return out


@dataclass
class FixedChoice:
    """The fixed-T arm of the best mean val AP among `candidates` (over `seeds`)."""

    best: str
    val_ap: Dict[str, float]
    seeds: List[int]

    @property
    def margin(self) -> Optional[float]:
        """How much the best beat the runner-up on val (None with one candidate)."""
        others = [v for a, v in self.val_ap.items() if a != self.best]
        return self.val_ap[self.best] - max(others) if others else None

    def text(self) -> str:
        listed = ", ".join(f"{a} (T {fixed_threshold(ARMS[a]):g}) {v:.1f}"
                           for a, v in self.val_ap.items())
        margin = "" if self.margin is None else f", by {self.margin:.1f} val AP"
        return (f"best fixed T on val (mean AP over seeds {','.join(map(str, self.seeds))}): "
                f"{listed} -> {self.best}{margin}")


def choose_fixed(runs: Dict[str, ArmRuns], arch: str) -> Optional[FixedChoice]:
    """The best of the fixed-T arms of `arch` on val; None without two such arms sharing
    a seed with val metrics."""
    fixed = [a for a in runs if a in ARMS and ARMS[a].arch == arch
             and fixed_threshold(ARMS[a]) is not None]
    if len(fixed) < 2:
        return None
    seeds = sorted(set.intersection(*(set(runs[a].column("val", "AP")) for a in fixed)))
    if not seeds:
        return None
    val_ap = {a: statistics.fmean(runs[a].column("val", "AP")[s] for s in seeds) for a in fixed}
    return FixedChoice(max(val_ap, key=lambda a: val_ap[a]), val_ap, seeds)


def dynamic_arms(runs: Dict[str, ArmRuns]) -> List[str]:
    return [a for a in runs if a in ARMS and fixed_threshold(ARMS[a]) is None]


def differences(runs: Dict[str, ArmRuns], arm: str, reference: str, split: str,
                columns: Sequence[str]) -> Dict[str, Optional[PairedDiff]]:
    return {c: paired_difference(runs[arm].column(split, c), runs[reference].column(split, c))
            for c in columns}


def best_fixed_section(runs: Dict[str, ArmRuns], split: str, images: int,
                       columns: Sequence[str], title: str = "## Against the best fixed "
                       "threshold") -> List[str]:
    """Markdown lines: for each architecture with >= 2 fixed-T arms, the choice on val,
    the table of each dynamic arm minus the chosen one on `split`, and verdict lines for
    AP, AP50 and AP90. Empty when no architecture has two fixed-T arms."""
    lines: List[str] = []
    for arch in dict.fromkeys(ARMS[a].arch for a in runs if a in ARMS):
        choice = choose_fixed(runs, arch)
        arms = [a for a in dynamic_arms(runs) if ARMS[a].arch == arch]
        if choice is None or not arms:
            continue
        if not lines:
            lines += [title, "",
                      "Each fixed-T arm is a candidate baseline; the one of the best mean val "
                      "AP is the comparator, as a user would choose it, and the comparison is "
                      f"on {split}, paired by seed.", ""]
        lines += [f"{choice.text()}.", "",
                  "| arm - best fixed T | " + " | ".join(columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        where = f"{images} {split} images"
        verdicts = []
        for arm in arms:
            diffs = differences(runs, arm, choice.best, split, columns)
            lines.append(f"| {arm} - {choice.best} | "
                         + " | ".join(diff_cell(diffs[c]) for c in columns) + " |")
            verdicts += [f"- {verdict(f'{arm} - {choice.best} (best fixed T)', c, diffs[c], where)}"
                         for c in VERDICT_COLUMNS if c in columns]
        lines += ["", *verdicts, ""]
    return lines


def best_fixed_summary(runs: Dict[str, ArmRuns], split: str,
                       columns: Sequence[str]) -> Dict[str, Any]:
    """report.json's form of best_fixed_section: per architecture the choice and the
    differences (mean, low, high, n) of each dynamic arm."""
    out: Dict[str, Any] = {}
    for arch in dict.fromkeys(ARMS[a].arch for a in runs if a in ARMS):
        choice = choose_fixed(runs, arch)
        if choice is None:
            continue
        out[arch] = {"best": choice.best, "val_ap": choice.val_ap, "seeds": choice.seeds,
                     "differences": {
                         arm: {c: (None if d is None else vars(d)) for c, d in
                               differences(runs, arm, choice.best, split, columns).items()}
                         for arm in dynamic_arms(runs) if ARMS[arm].arch == arch}}
    return out
