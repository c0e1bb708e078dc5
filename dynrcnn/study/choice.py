"""The user's comparison (issue 18): each detector at its own best proposal setting, chosen
on val and reported on the held-out test split, paired by seed.

A candidate is (arm, the setting it was trained in, the setting it is tested in, fine-tuned
or from scratch): studies of one data set in several protocols (their --out directories)
give the training settings, dynrcnn.study.settings the test settings every finished run was
evaluated at. For each arm the candidate with the best mean val AP over the seeds every
candidate has is chosen; the chosen candidates are then compared on test, arm minus the
reference's choice, per column, with the paired 95% t-interval. Choosing on val and
reporting on test keeps the choice from flattering whichever arm has more candidates.
"""

from __future__ import annotations

import glob
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from dynrcnn.study.arms import BASELINE
from dynrcnn.study.layout import JOB_FILE
from dynrcnn.study.settings import SETTING_TEXT, metrics_path, own_setting, read_percent
from dynrcnn.study.stats import (
    COLUMNS,
    PER_SEED_COLUMNS,
    diff_cell,
    paired_difference,
    per_seed_text,
)


@dataclass
class Candidate:
    """One (arm, trained-in, tested-in) triple, fine-tuned or trained from scratch (never
    pooled: their seeds are different detectors); metrics[split][seed] = {column: percent}."""

    arm: str
    trained: str
    tested: str
    fine_tuned: bool = False
    metrics: Dict[str, Dict[int, Dict[str, float]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        how = "fine-tuned" if self.fine_tuned else "trained"
        return (f"{self.arm}, {how} {SETTING_TEXT.get(self.trained, self.trained)}, tested "
                f"{SETTING_TEXT.get(self.tested, self.tested)}")

    def seeds(self, split: str) -> set:
        return set(self.metrics.get(split, {}))

    def mean(self, split: str, column: str, seeds: Sequence[int]) -> float:
        return statistics.fmean(self.metrics[split][s][column] for s in seeds)


def collect(study_dirs: Sequence[str], arms: Sequence[str], settings: Sequence[str],
            columns: Sequence[str] = COLUMNS) -> List[Candidate]:
    """Every candidate of `arms` found in the study directories (runs with a job.json),
    with the metrics (`columns`, in percent) that exist on val and test at each of
    `settings`. ValueError when two
    runs would be the same candidate at the same seed (e.g. a study and a copy of its runs
    passed together): pooling them would silently keep one of the two."""
    from dynrcnn.engine.config import TrainConfig, load_config

    found: Dict[Tuple[str, str, str, bool], Candidate] = {}
    source: Dict[Tuple[str, str, bool, int], str] = {}
    for study in study_dirs:
        for arm in arms:
            for job in sorted(glob.glob(os.path.join(study, arm, "seed*", JOB_FILE))):
                run_dir = os.path.dirname(job)
                seed = int(os.path.basename(run_dir)[len("seed"):])
                config = load_config(TrainConfig, job)
                trained = own_setting(config.model_kwargs) or "other"
                fine_tuned = bool(config.init_weights)
                first = source.setdefault((arm, trained, fine_tuned, seed), run_dir)
                if first != run_dir:
                    raise ValueError(f"{first} and {run_dir} are the same candidate ({arm}, "
                                     f"seed {seed}, trained {trained}); pass one of them")
                for tested in settings:
                    key = (arm, trained, tested, fine_tuned)
                    cand = found.setdefault(key, Candidate(arm, trained, tested, fine_tuned))
                    for split in ("val", "test"):
                        got = read_percent(metrics_path(run_dir, config, split, tested))
                        if got is not None:
                            cand.metrics.setdefault(split, {})[seed] = {
                                c: got[c] for c in columns}
    return list(found.values())


@dataclass
class Choice:
    """The chosen candidate of each arm, the seeds the choice and the comparison use, and
    every candidate's val AP (for the table)."""

    chosen: Dict[str, Candidate]
    seeds: List[int]
    candidates: List[Candidate]


def choose(candidates: Sequence[Candidate], arms: Sequence[str]) -> Choice:
    """For each arm the candidate with the highest mean val AP, over the seeds on which
    every candidate of every arm has both val and test metrics (so each arm is chosen and
    compared on the same seeds). ValueError when no seed has them all."""
    usable = [c for c in candidates if c.seeds("val") and c.seeds("test")]
    if not usable:
        raise ValueError("no run has both val and test metrics: run the studies with a data "
                         "set that has a test split (benchmarks/experiment.py adds it)")
    seeds = set.intersection(*(c.seeds("val") & c.seeds("test") for c in usable))
    if not seeds:
        raise ValueError("the candidates share no seed with val and test metrics")
    order = sorted(seeds)
    chosen = {}
    for arm in arms:
        mine = [c for c in usable if c.arm == arm]
        if mine:
            chosen[arm] = max(mine, key=lambda c: c.mean("val", "AP", order))
    return Choice(chosen, order, list(usable))


def choice_report(choice: Choice, references: Sequence[str] = (BASELINE,)) -> str:
    """Markdown: every candidate's val / test AP (the chosen marked), the chosen ones' test
    columns, and for each arm of `references` (the baseline; e.g. also t060, the strongest
    fixed baseline) each other arm's chosen minus the reference's chosen on test, with 95%
    CIs and the AP and AP90 differences per seed."""
    seeds = choice.seeds
    lines = [f"Seeds: {', '.join(map(str, seeds))} (n = {len(seeds)}); chosen by mean val "
             "AP, reported on test.", "",
             "| candidate | val AP | test AP | test AP90 | chosen |", "|---|---:|---:|---:|:-:|"]
    for c in sorted(choice.candidates, key=lambda c: (c.arm, -c.mean("val", "AP", seeds))):
        mark = "yes" if choice.chosen.get(c.arm) is c else ""
        lines.append(f"| {c.label} | {c.mean('val', 'AP', seeds):.1f} | "
                     f"{c.mean('test', 'AP', seeds):.1f} | "
                     f"{c.mean('test', 'AP90', seeds):.1f} | {mark} |")
    lines += ["", "Each arm at its chosen setting, test split (mean over seeds):", "",
              "| arm (setting) | " + " | ".join(COLUMNS) + " |",
              "|---|" + "---:|" * len(COLUMNS)]
    for c in choice.chosen.values():
        lines.append(f"| {c.label} | " + " | ".join(
            f"{c.mean('test', col, seeds):.1f}" for col in COLUMNS) + " |")
    for reference in references:
        lines += _against(choice, reference)
    return "\n".join(lines) + "\n"


def _against(choice: Choice, reference: str) -> List[str]:
    """Lines of the best-against-best table: each arm's choice minus `reference`'s choice on
    test; none when the reference has no candidate."""
    ref = choice.chosen.get(reference)
    if ref is None:
        return []
    seeds = choice.seeds
    lines = ["", f"Best against best on test: each arm's choice minus {reference}'s "
             "choice, same seed (mean [95% CI]; * the interval excludes 0; per seed: "
             f"seeds {' / '.join(map(str, seeds))}):", "",
             "| arm - reference | " + " | ".join(COLUMNS)
             + "".join(f" | {c} per seed" for c in PER_SEED_COLUMNS) + " |",
             "|---|" + "---:|" * (len(COLUMNS) + len(PER_SEED_COLUMNS))]
    for arm, c in choice.chosen.items():
        if arm == reference:
            continue

        def pair(col: str, c: Candidate = c) -> Tuple[Dict[int, float], Dict[int, float]]:
            return ({s: c.metrics["test"][s][col] for s in seeds},
                    {s: ref.metrics["test"][s][col] for s in seeds})

        cells = [diff_cell(paired_difference(*pair(col))) for col in COLUMNS]
        cells += [per_seed_text(*pair(col)) for col in PER_SEED_COLUMNS]
        lines.append(f"| {arm} - {reference} | " + " | ".join(cells) + " |")
    return lines
