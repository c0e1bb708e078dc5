"""`dynrcnn study --iterations A B ...`: does the gain survive longer training?

The same study (arms, seeds, every other flag) at each schedule. Schedule N is an ordinary
study directory, `out_dir/iters_N/` (its own study.json, runs, report.md), so a schedule
finished earlier is never retrained, one added later trains only its own runs, and
`dynrcnn study --iterations N --out-dir out_dir/iters_N` reads the same runs. Each run is a
whole schedule: its warmup and learning-rate steps fall at the same fractions of its
iterations (not a longer run stopped early). One runner trains the runs of every schedule,
`--jobs` at a time, shortest schedule first.

The top report (`out_dir/report.md`, `report.json`, `report_schedules.png`) puts the
schedules side by side: each arm's AP..AP90 per schedule, what doubling did to each arm
(paired by seed: how far from converged the schedule is), each dynamic arm against the best
fixed threshold chosen on val at each schedule (dynrcnn.study.comparator) and against T 0.5,
with verdicts on AP, AP50 and AP90 by the study's rules.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import UsageError
from dynrcnn.study.arms import ARMS, BASELINE, MASK_BASELINE
from dynrcnn.study.command import (
    REPORT_COLUMNS,
    build_spec,
    count_images,
    evaluate_finished,
    plan_commands,
    print_plan,
    report,
    report_written,
    spec_info,
    study_jobs,
)
from dynrcnn.study.comparator import (
    VERDICT_COLUMNS,
    ArmRuns,
    best_fixed_summary,
    choose_fixed,
    collect_runs,
    differences,
    dynamic_arms,
)
from dynrcnn.study.report import git_commit, hardware
from dynrcnn.study.runner import Runner
from dynrcnn.study.settings import OWN, metrics_path
from dynrcnn.study.stats import (
    SEGM_COLUMNS,
    VERDICT_RULES,
    diff_cell,
    paired_difference,
    summarize,
    verdict,
)

SCHEDULE_DIR = "iters_{}"


def schedule_dir(out_dir: str, iterations: int) -> str:
    return os.path.join(out_dir, SCHEDULE_DIR.format(iterations))


def check_schedules(values: Sequence[int]) -> List[int]:
    """The schedules in increasing order; UsageError for a repeated or non-positive one."""
    bad = [v for v in values if v < 1]
    if bad:
        raise UsageError(f"--iterations must be >= 1, got {bad[0]}")
    twice = sorted({v for v in values if list(values).count(v) > 1})
    if twice:
        raise UsageError(f"--iterations: {twice[0]} is given twice")
    return sorted(values)


@dataclass
class Schedule:
    """One schedule's study: its request, spec, (reported jobs, every job) and its runs'
    metrics."""

    iterations: int
    request: Any  # command.StudyRequest
    spec: Any  # runner.StudySpec
    jobs: List[Any]
    every: List[Any]

    def runs(self, split: str) -> Dict[str, ArmRuns]:
        finished = [j for j in self.jobs if j.finished()]
        return collect_runs(finished, lambda j, s: metrics_path(j.run_dir, j.config, s, OWN),
                            tuple(dict.fromkeys(("val", split))))


def schedules_of(req: Any) -> List[Schedule]:
    """One Schedule per value of req.schedules, each an ordinary study request."""
    out = []
    for n in check_schedules(req.schedules):
        sub = dataclasses.replace(req, out_dir=schedule_dir(req.out_dir, n), schedules=None,
                                  base={**req.base, "iterations": n})
        spec = build_spec(sub)
        jobs, every = study_jobs(spec)
        # one runner runs every schedule: names ("dla_dsl seed 0") must tell them apart
        out.append(Schedule(n, sub, spec, _tagged(jobs, n), _tagged(every, n)))
    return out


def _tagged(jobs: Sequence[Any], iterations: int) -> List[Any]:
    return [dataclasses.replace(j, tag=", ".join(filter(None, [f"{iterations} it", j.tag])))
            for j in jobs]


def run_schedules(req: Any, mode: str, echo: Callable[[str], None]) -> int:
    """`dynrcnn study` with several --iterations: mode "run", "plan" or "report"."""
    schedules = schedules_of(req)
    if mode == "plan":
        lines: List[str] = []
        for sched in schedules:
            os.makedirs(sched.spec.out_dir, exist_ok=True)
            lines += plan_commands(sched.every, sched.spec)
        return print_plan(lines, sum(len(s.every) for s in schedules), req.command, echo)
    failed: List[str] = []
    if mode == "run":
        top = dataclasses.replace(schedules[0].spec, out_dir=os.path.abspath(req.out_dir))
        runner = Runner(top, jobs=[j for s in schedules for j in s.every],
                        studies=[s.spec for s in schedules])
        runner.run()
        failed = runner.failed
    else:
        for sched in schedules:
            evaluate_finished(sched.every, echo)
    for sched in schedules:
        report(sched.jobs, sched.spec, req.command)
    text = schedule_report(req, schedules)
    section = text[text.index("## Verdict"):] if "## Verdict" in text else ""
    echo("\n".join(line for line in section.splitlines()
                   if line.startswith(("- ", "Noise", "At "))))
    return report_written(os.path.abspath(req.out_dir), failed, echo)


def _reference(runs: Dict[str, ArmRuns]) -> str:
    return MASK_BASELINE if MASK_BASELINE in runs else BASELINE


def _split(schedules: Sequence[Schedule]) -> str:
    return "test" if schedules[0].spec.test_ann else "val"


def _mean_sd(values: Sequence[float]) -> str:
    return summarize(values).text() if values else "-"


def schedule_report(req: Any, schedules: Sequence[Schedule]) -> str:
    """Writes out_dir/report.md, report.json and report_schedules.png; returns the text."""

    out_dir = os.path.abspath(req.out_dir)
    split = _split(schedules)
    runs = {s.iterations: s.runs(split) for s in schedules}
    info = spec_info(schedules[0].spec)
    images = count_images(schedules[0].spec.test_ann if split == "test"
                           else info["data"]["val"])
    columns = list(REPORT_COLUMNS) + (list(SEGM_COLUMNS) if any(
        "segm AP" in m for r in runs.values() for a in r.values()
        for m in a.metrics.get(split, {}).values()) else [])
    arms = list(dict.fromkeys(a for s in schedules for a in s.spec.arms))
    finished = sum(j.finished() for s in schedules for j in s.jobs)
    planned = sum(len(s.jobs) for s in schedules)
    common = {k: v for k, v in sorted(req.base.items()) if k not in (
        "data_dir", "train_images", "train_ann", "val_images", "val_ann")}
    lines = [f"# Does the gain survive longer training? ({finished} of {planned} runs "
             "finished)", "",
             f"- hardware: {hardware()}; {_where(schedules[0].spec)}",
             f"- commit: {git_commit(os.path.dirname(os.path.abspath(__file__)))}",
             f"- command: `{req.command}`",
             f"- date: {_now()}",
             *(f"- {k} split: `{v}`" for k, v in info["data"].items()),
             f"- numbers below: the {split} split ({images} images); COCO AP x100, mean ± "
             "sample sd over seeds",
             "- schedules: " + ", ".join(
                 f"{s.iterations} iterations ([report]({SCHEDULE_DIR.format(s.iterations)}"
                 "/report.md))" for s in schedules)
             + "; each a whole run, its warmup and learning-rate steps at the same fractions",
             "- every run shares: " + ", ".join(f"{k} {v}" for k, v in common.items()),
             f"- RPN and DLA / DSL of every arm: {info['rpn']}", ""]
    lines += _arm_table(schedules, runs, arms, split, columns)
    lines += _doubling_table(schedules, runs, arms, split)
    lines += _comparisons(schedules, runs, split, columns)
    lines += _verdicts(schedules, runs, split, images)
    plot = plot_schedules(schedules, runs, arms, split, os.path.join(out_dir,
                                                                    "report_schedules.png"))
    if plot:
        lines += [f"![AP and AP90 against the schedule]({os.path.basename(plot)})", ""]
    text = "\n".join(lines)
    atomic_write_text(text, os.path.join(out_dir, "report.md"))
    data = {"command": req.command, "split": split, "images": images,
            "schedules": [s.iterations for s in schedules],
            "runs": {str(n): {a: r.metrics.get(split, {}) for a, r in rs.items()}
                     for n, rs in runs.items()},
            "best_fixed": {str(n): best_fixed_summary(rs, split, columns)
                           for n, rs in runs.items()}}
    atomic_write_text(json.dumps(data, indent=1), os.path.join(out_dir, "report.json"))
    return text


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")


def _where(spec: Any) -> str:
    if spec.gpus:
        return f"GPUs {spec.gpus}, one run each"
    return f"CPU, {spec.threads} thread(s) per run, {spec.jobs} side by side"


def _arm_table(schedules: Sequence[Schedule], runs: Dict[int, Dict[str, ArmRuns]],
               arms: Sequence[str], split: str, columns: Sequence[str]) -> List[str]:
    lines = ["## Each arm at each schedule", "",
             "| arm | iterations | seeds | " + " | ".join(columns) + " |",
             "|---|---:|---|" + "---:|" * len(columns)]
    for arm in arms:
        for sched in schedules:
            r = runs[sched.iterations].get(arm)
            if r is None or not r.metrics.get(split):
                continue
            seeds = ",".join(map(str, sorted(r.metrics[split])))
            lines.append(f"| {arm} | {sched.iterations} | {seeds} | " + " | ".join(
                _mean_sd(list(r.column(split, c).values())) for c in columns) + " |")
    return lines + [""]


def _doubling_table(schedules: Sequence[Schedule], runs: Dict[int, Dict[str, ArmRuns]],
                    arms: Sequence[str], split: str) -> List[str]:
    """Each arm at the longer schedule minus itself at the shorter one, paired by seed."""
    pairs = list(zip(schedules, schedules[1:]))
    if not pairs:
        return []
    lines = ["## What longer training did to each arm", "",
             "Each arm at the longer schedule minus the same arm at the shorter one, paired by "
             "seed (95% CI): while the baseline still gains, the schedule is not converged.",
             "", "| arm | iterations | AP | AP50 | AP75 | AP90 |", "|---|---|---:|---:|---:|---:|"]
    for arm in arms:
        for short, long in pairs:
            a, b = runs[short.iterations].get(arm), runs[long.iterations].get(arm)
            if a is None or b is None:
                continue
            cells = [diff_cell(paired_difference(b.column(split, c), a.column(split, c)))
                     for c in ("AP", "AP50", "AP75", "AP90")]
            lines.append(f"| {arm} | {short.iterations} -> {long.iterations} | "
                         + " | ".join(cells) + " |")
    if not lines[-1].startswith("| ") or lines[-1].startswith("|---"):
        lines.append("| not yet: no arm has finished runs at two schedules | | | | | |")
    return lines + [""]


def _comparisons(schedules: Sequence[Schedule], runs: Dict[int, Dict[str, ArmRuns]],
                 split: str, columns: Sequence[str]) -> List[str]:
    lines = ["## Against the best fixed threshold, at each schedule", "",
             "At each schedule the fixed-T arm of the best mean val AP is the comparator (as a "
             f"user would choose it); the comparison is on {split}, paired by seed (95% CI).",
             ""]
    best_rows, base_rows = [], []
    for sched in schedules:
        rs = runs[sched.iterations]
        ref = _reference(rs)
        for arch in dict.fromkeys(a.arch for a in _arm_objects(rs)):
            choice = choose_fixed(rs, arch)
            if choice is None:
                continue
            lines.append(f"- {sched.iterations} iterations: {choice.text()}")
            for arm in dynamic_arms(rs):
                diffs = differences(rs, arm, choice.best, split, columns)
                best_rows.append(f"| {sched.iterations} | {arm} - {choice.best} | "
                                 + " | ".join(diff_cell(diffs[c]) for c in columns) + " |")
        for arm in rs:
            if arm != ref and ref in rs:
                diffs = differences(rs, arm, ref, split, columns)
                base_rows.append(f"| {sched.iterations} | {arm} - {ref} | "
                                 + " | ".join(diff_cell(diffs[c]) for c in columns) + " |")
    header = ["| iterations | difference | " + " | ".join(columns) + " |",
              "|---:|---|" + "---:|" * len(columns)]
    if best_rows:
        lines += ["", *header, *best_rows]
    else:
        lines.append("No schedule has two fixed-T arms with val metrics yet.")
    lines += ["", "## Against T 0.5 (the paper's baseline), at each schedule", "",
              *header, *base_rows, ""]
    return lines


def _arm_objects(runs: Dict[str, ArmRuns]) -> List[Any]:

    return [ARMS[a] for a in runs if a in ARMS]


def _verdicts(schedules: Sequence[Schedule], runs: Dict[int, Dict[str, ArmRuns]],
              split: str, images: int) -> List[str]:
    lines = ["## Verdict", "", VERDICT_RULES, ""]
    where = f"{images} {split} images"
    for sched in schedules:
        rs = runs[sched.iterations]
        for arch in dict.fromkeys(a.arch for a in _arm_objects(rs)):
            choice = choose_fixed(rs, arch)
            if choice is None:
                continue
            best = rs[choice.best]
            for arm in dynamic_arms(rs):
                diffs = differences(rs, arm, choice.best, split, VERDICT_COLUMNS)
                ap = paired_difference(rs[arm].column(split, "AP"), best.column(split, "AP"))
                base_sd = _sd(best.column(split, "AP"))
                diff_sd = _sd_of_differences(rs[arm].column(split, "AP"),
                                             best.column(split, "AP"))
                if ap is not None and base_sd is not None and diff_sd is not None:
                    lines.append(f"Noise at {sched.iterations} iterations: {choice.best}'s AP "
                                 f"moves {base_sd:.1f} (sd) between its seeds; the paired "
                                 f"difference {arm} - {choice.best} moves {diff_sd:.1f}.")
                lines += [f"- At {sched.iterations} iterations: " + verdict(
                    f"{arm} - {choice.best} (best fixed T)", c, diffs[c], where)
                    for c in VERDICT_COLUMNS]
    return lines + [""]


def _sd(values: Dict[int, float]) -> float | None:
    return statistics.stdev(values.values()) if len(values) > 1 else None


def _sd_of_differences(a: Dict[int, float], b: Dict[int, float]) -> float | None:
    seeds = sorted(set(a) & set(b))
    return statistics.stdev(a[s] - b[s] for s in seeds) if len(seeds) > 1 else None


def plot_schedules(schedules: Sequence[Schedule], runs: Dict[int, Dict[str, ArmRuns]],
                   arms: Sequence[str], split: str, out: str) -> str | None:
    """AP and AP90 against the schedule, one line per arm (mean) and a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    drawn = False
    for ax, col in zip(axes, ("AP", "AP90")):
        for k, arm in enumerate(arms):
            xs, means = [], []
            for sched in schedules:
                r = runs[sched.iterations].get(arm)
                values = list(r.column(split, col).values()) if r else []
                if not values:
                    continue
                xs.append(sched.iterations)
                means.append(statistics.fmean(values))
                ax.scatter([sched.iterations] * len(values), values, s=12, alpha=0.5,
                           color=f"C{k}")
            if xs:
                ax.plot(xs, means, marker="o", color=f"C{k}", label=arm)
                drawn = True
        ax.set_xscale("log", base=2)
        ax.set_xticks([s.iterations for s in schedules],
                      [str(s.iterations) for s in schedules])
        ax.set_xlabel("iterations (each a whole schedule)")
        ax.set_ylabel(f"{col} ({split})")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0].legend()
    fig.suptitle("Does the gain survive longer training? (mean, and each seed)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
