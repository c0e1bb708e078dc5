"""The accuracy study of issue 9: the paper's ablations at small scale, with seeds and
paired 95% confidence intervals (library: dynrcnn.study; this is its command line).

    python benchmarks/experiment.py                   # the core study (Table 3, T=0.6,
                                                      # Cascade; 3 seeds each)
    python benchmarks/experiment.py --arms all        # every arm (Tables 1, 3, 4, 5,
                                                      # Cascade, controls)
    python benchmarks/experiment.py --quick --out /tmp/smoke    # smoke run, under a minute
    python benchmarks/experiment.py --learning-curve --longest 6000 --steps 4
    python benchmarks/experiment.py --report-only     # tables from the finished runs
    python benchmarks/experiment.py --status          # which runs are finished
    python benchmarks/experiment.py --recipe study_exact --arms baseline dla_dsl \
        --best-vs-best runs/study_exact runs/study_paper_exact   # each at its best setting
    python benchmarks/experiment.py --arms baseline t060 dla_dsl --reference t060 \
        --report-only                                 # every arm also against T = 0.6

Resumable and safe in the background (e.g. `nohup python benchmarks/experiment.py &`):
each (arm, seed) is a training run directory under --out; finished runs are skipped, half-
finished ones resume from their checkpoint, and only finished runs enter the report. Runs
use one thread each (--threads), --jobs side by side; progress goes to
<out>/study.log. Arms: `--list-arms`.

The report (--results, default benchmarks/results/study_cpu.md) names hardware, commit,
command and seeds; beside it <stem>_ap_vs_iou.png, <stem>.json (per-run numbers) and
<stem>_runs/ (each finished run's job, log and final metrics, no checkpoints). Copying that
folder into an --out directory restores its finished runs (`cp -r
benchmarks/results/study_cpu_runs/. runs/study/`): a study can continue on another machine
or after runs/ is gone, and `--report-only` rebuilds the tables without retraining.
The earlier single-seed ablations' reports under benchmarks/results/ablation_cpu*.md stay as
they were written (their runs used the demo's data set and `small_cpu_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
from typing import Any, Optional, Sequence

import torch

from dynrcnn.data.recipes import STUDY_RECIPES
from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import UsageError
from dynrcnn.study import ARMS, CORE, Runner, StudySpec, plan, quick_spec
from dynrcnn.study.archive import archive_runs
from dynrcnn.study.arms import BASELINE, seeds_for, select_arms
from dynrcnn.study.curve import run_learning_curve
from dynrcnn.study.report import git_commit, hardware, report_study
from dynrcnn.study.runner import recorded_run_settings

DEFAULT_RESULTS = "benchmarks/results/study_cpu.md"


def default_results(recipe: str, protocol: str, fine_tuned: bool = False) -> str:
    """study_cpu.md for the main study; study[_paper][_<recipe>][_finetune]_cpu.md for the
    others (study_exact_cpu.md, study_paper_large_cpu.md, ...), so a study in another
    setting never overwrites the main report."""
    if (recipe, protocol, fine_tuned) == ("study", "cpu", False):
        return DEFAULT_RESULTS
    name = ("study" + ("_paper" if protocol == "paper" else "") + recipe[len("study"):]
            + ("_finetune" if fine_tuned else ""))
    return f"benchmarks/results/{name}_cpu.md"


DEFAULT_CURVE_RESULTS = "benchmarks/results/learning_curve_cpu.md"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/experiment.py",
                                description="The accuracy study of issue 9: the paper's "
                                "ablations at small scale, with seeds and paired 95% "
                                "confidence intervals. Resumable; arms: --list-arms.")
    d = StudySpec(out_dir="", data_dir="")
    p.add_argument("--out", default="runs/study", help="run directories and study.log")
    p.add_argument("--recipe", default="study", choices=list(STUDY_RECIPES),
                   help="study data: 'study' (training boxes jittered by up to 1.5 px, as "
                   "real labels), 'study_exact' (the same images, exact training boxes: "
                   "the label-noise control), 'study_large' / 'study_large_jitter' (a third "
                   "set: few large objects of 3 classes; exact / 3 px jitter)")
    p.add_argument("--protocol", default=d.protocol, choices=["cpu", "paper"],
                   help="cpu: 300 proposals after RPN NMS 0.7, KI / Kbeta scaled (22 / 3); "
                   "paper: 1000 proposals after NMS 0.85 for every arm, KI 75 / Kbeta 10 "
                   "(default %(default)s)")
    p.add_argument("--data", default=None,
                   help="study data set (default: data/<recipe>_<image-size>; generated once)")
    p.add_argument("--arms", nargs="+", default=["core"],
                   help="arm names, 'core' or 'all' (default: core)")
    p.add_argument("--iterations", type=int, default=d.iterations,
                   help="training iterations of a run (default %(default)s)")
    p.add_argument("--interval", type=int, default=d.interval, help="C of the dynamic arms")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="side of the study's square images (default %(default)s)")
    p.add_argument("--core-seeds", type=int, default=d.core_seeds,
                   help="seeds of the core arms (default %(default)s)")
    p.add_argument("--other-seeds", type=int, default=d.other_seeds,
                   help="seeds of the other arms (default %(default)s)")
    p.add_argument("--jobs", type=int, default=d.jobs,
                   help="runs side by side (--threads each)")
    p.add_argument("--threads", type=int, default=d.threads, help="threads per run")
    p.add_argument("--num-train", type=int, default=d.num_train,
                   help="training images of the study set (default %(default)s)")
    p.add_argument("--num-val", type=int, default=d.num_val,
                   help="validation images of the study set (default %(default)s)")
    p.add_argument("--num-test", type=int, default=d.num_test,
                   help="held-out test images of the study set (default %(default)s)")
    p.add_argument("--init-weights", default=None, metavar="CHECKPOINT",
                   help="the fine-tuning regime: every run starts from this detector "
                   "checkpoint, e.g. runs/study_paper_large/baseline/seed{seed}/"
                   "model_final.pth ('{seed}' becomes the run's seed, so each pair shares "
                   "its source); layers whose class count differs are re-initialized")
    p.add_argument("--best-vs-best", nargs="+", metavar="STUDY_DIR", default=None,
                   help="no training: each --arms arm at its best (training protocol, test "
                   "setting), chosen on val among these studies' runs, reported on test")
    p.add_argument("--reference", nargs="+", metavar="ARM", default=[],
                   help="also pair every other arm with these arms of --arms (e.g. t060, "
                   "the strongest fixed baseline), with the AP and AP90 differences per "
                   "seed: a section of the study report, a table of --best-vs-best")
    p.add_argument("--results", default=None,
                   help=f"Markdown report (default {DEFAULT_RESULTS}; another --recipe or "
                   "--protocol: study[_paper][_exact]_cpu.md beside it; --quick: "
                   "<out>/report.md)")
    p.add_argument("--quick", action="store_true", help="smoke study at tiny sizes")
    p.add_argument("--report-only", action="store_true", help="no training: report only")
    p.add_argument("--status", action="store_true", help="list the runs and their state")
    p.add_argument("--list-arms", action="store_true", help="list the arms and exit")
    p.add_argument("--learning-curve", action="store_true",
                   help="baseline at a ladder of schedules; picks the study's schedule")
    p.add_argument("--longest", type=int, default=6000, help="learning curve: longest run")
    p.add_argument("--steps", type=int, default=4, help="learning curve: schedules")
    return p


def spec_from_args(args: argparse.Namespace) -> StudySpec:
    if args.quick:
        spec = quick_spec(args.out)
        return dataclasses.replace(spec, jobs=args.jobs, threads=args.threads,
                                   init_weights=args.init_weights)
    return StudySpec(out_dir=args.out,
                     data_dir=args.data or f"data/{args.recipe}_{args.image_size}",
                     recipe=args.recipe, arms=args.arms, iterations=args.iterations,
                     interval=args.interval,
                     image_size=args.image_size, core_seeds=args.core_seeds,
                     other_seeds=args.other_seeds, jobs=args.jobs, threads=args.threads,
                     num_train=args.num_train, num_val=args.num_val,
                     num_test=args.num_test, protocol=args.protocol,
                     init_weights=args.init_weights)


def list_arms(core_seeds: int, other_seeds: int) -> str:
    lines = []
    for arm in ARMS.values():
        n = len(seeds_for(arm, core_seeds, other_seeds))
        mark = "core" if arm.name in CORE else "    "
        lines.append(f"{arm.name:14s} {mark} {arm.table:8s} {n} seeds  {arm.description}")
    return "\n".join(lines)


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the reports' date line)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def curve_header(spec: StudySpec, command: str) -> str:
    """The learning curve report's title and its hardware, commit, date, command and data
    lines."""
    return (f"# Learning curve of the baseline (schedule of the study)\n\n"
            f"- hardware: {hardware()}; torch {torch.__version__}; {spec.threads} "
            f"thread(s) per run, {spec.jobs} run(s) side by side\n"
            f"- commit: {git_commit()}\n- date: {utc_now()}\n- command: `{command}`\n"
            f"- data: {spec.data_dir} ({spec.num_train} train / {spec.num_val} val, "
            f"{spec.image_size} px); seed 0\n\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["benchmarks/experiment.py", *(argv if argv is not None
                                                                  else sys.argv[1:])])
    try:
        return run(args, command)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, command: str) -> int:
    if args.list_arms:
        print(list_arms(args.core_seeds, args.other_seeds))
        return 0
    spec = spec_from_args(args)
    check_references(args, spec)
    if args.best_vs_best:
        return best_vs_best(args, spec, command)
    if args.learning_curve:
        _, text = run_learning_curve(spec, args.longest, args.steps)
        path = args.results or DEFAULT_CURVE_RESULTS
        header = curve_header(spec, command)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_text(header + text, path)
        print(header + text)
        print(f"report written to {path}")
        return 0
    results = args.results or (os.path.join(args.out, "report.md") if args.quick
                               else default_results(spec.recipe, spec.protocol,
                                                   spec.init_weights is not None))
    jobs = plan(spec)
    if args.status:
        for job in jobs:
            state = ("finished" if job.complete() else "to-eval" if job.finished() else
                     "partial" if job.started() else "todo")
            print(f"{state:8s} {job.name:24s} {job.run_dir}")
        return 0
    failed: list[str] = []
    if not args.report_only:
        runner = Runner(spec, jobs=jobs)
        runner.run()
        failed = runner.failed
    info: dict[str, Any] = dataclasses.asdict(spec)
    # the header states how the runs were trained (study.log), not this command's flags: an
    # invocation that only evaluated, or only reports, trained nothing
    recorded = recorded_run_settings(spec.out_dir)
    if recorded or args.report_only:
        info.update(recorded or {"jobs": "unrecorded", "threads": "unrecorded"})
    text = report_study(jobs, results, info, command, references=args.reference)
    archive = os.path.splitext(results)[0] + "_runs"
    archived = archive_runs(jobs, spec.out_dir, archive)
    print(text)
    print(f"report written to {results}; raw data of {len(archived)} finished run(s) in "
          f"{archive}")
    if failed:  # the report holds the finished runs; the exit status says some are missing
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their train.log)",
              file=sys.stderr)
        return 1
    return 0


def check_references(args: argparse.Namespace, spec: StudySpec) -> None:
    """--reference names arms of this study's report; one it cannot show is an error, not a
    table silently left out."""
    if not args.reference:
        return
    if args.learning_curve or args.status:
        flag = "--learning-curve" if args.learning_curve else "--status"
        raise UsageError(f"--reference pairs arms in a report; {flag} writes none")
    arms = [a.name for a in select_arms(spec.arms)]
    unknown = [r for r in args.reference if r not in arms]
    if unknown:
        raise UsageError(f"--reference {' '.join(unknown)}: not among --arms "
                         f"({' '.join(arms)})")


def best_vs_best(args: argparse.Namespace, spec: StudySpec, command: str) -> int:
    """The user's comparison over finished studies (see dynrcnn.study.choice)."""
    from dynrcnn.study.choice import choice_report, choose, collect
    from dynrcnn.study.settings import STUDY_SETTINGS

    missing = [d for d in args.best_vs_best if not os.path.isdir(d)]
    if missing:
        raise UsageError(f"--best-vs-best: no study directory {', '.join(missing)}")
    arms = [a.name for a in select_arms(spec.arms)]
    try:
        choice = choose(collect(args.best_vs_best, arms, STUDY_SETTINGS), arms)
    except ValueError as exc:
        raise UsageError(f"--best-vs-best: {exc}") from None
    name = "best_vs_best" + spec.recipe[len("study"):]
    path = args.results or f"benchmarks/results/{name}_cpu.md"
    text = (f"# Best against best ({spec.recipe} set): each detector at its own best setting"
            f"\n\n- hardware: {hardware()}; torch {torch.__version__}\n- commit: "
            f"{git_commit()}\n- date: {utc_now()}\n- command: `{command}`\n- studies: "
            f"{', '.join(args.best_vs_best)} (data: {spec.data_dir}, {spec.num_val} val / "
            f"{spec.num_test} test images)\n\n"
            + choice_report(choice, [BASELINE, *(r for r in args.reference
                                                 if r != BASELINE)]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(text, path)
    print(text)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
