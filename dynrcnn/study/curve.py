"""Point 4 of issue 9: the schedule from a measured learning curve.

The baseline is trained at a ladder of schedules halving down from `longest` (each a full
run with its own warmup and learning-rate decays, seed 0), and the study's schedule is the
shortest S whose double 2S adds less than 2 AP (`stats.pick_schedule`). The longest run
also evaluates every `shortest` iterations (the trainer's eval_period), which shows the
curve inside one run; that curve is reported for reference only, since AP at iteration k
of a long run is measured before its learning-rate decays and so is not the AP of a
k-iteration schedule.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from dynrcnn.engine.logger import read_jsonl
from dynrcnn.study.arms import ARMS, BASELINE
from dynrcnn.study.layout import final_metrics_path
from dynrcnn.study.runner import Job, Runner, StudySpec, plan
from dynrcnn.study.stats import pick_schedule, schedule_ladder


def curve_jobs(spec: StudySpec, longest: int, steps: int) -> List[Job]:
    """Baseline runs at schedule_ladder(longest, steps), in spec.out_dir/curve/."""
    ladder = schedule_ladder(longest, steps)
    base = ARMS[BASELINE]
    arms = [dataclasses.replace(base, name=f"{BASELINE}_it{n}", table="learning curve",
                                schedule=n / spec.iterations, core=False) for n in ladder]
    curve_spec = dataclasses.replace(spec, out_dir=os.path.join(spec.out_dir, "curve"),
                                     core_seeds=1, other_seeds=1)
    overrides = {arms[-1].name: {"eval_period": ladder[0]}}
    return plan(curve_spec, arms, overrides)


def measured_curve(jobs: List[Job]) -> Dict[int, float]:
    """{iterations: AP x100} of the finished ladder runs."""
    import json

    out = {}
    for job in jobs:
        if job.finished():
            with open(final_metrics_path(job.run_dir, job.config.iterations)) as f:
                data = json.load(f)
            out[job.config.iterations] = 100.0 * float(data.get("bbox", data)["AP"])
    return out


def within_run_curve(job: Job) -> Dict[int, float]:
    """{iteration: AP x100} of the periodic evaluations of one run (eval.jsonl)."""
    rows = read_jsonl(os.path.join(job.run_dir, "eval.jsonl"))
    return {int(r["iteration"]): 100.0 * float(r.get("bbox", r)["AP"]) for r in rows
            if "AP" in r.get("bbox", r)}


def curve_report(curve: Dict[int, float], within: Dict[int, float],
                 min_gain: float = 2.0) -> Tuple[Optional[int], str]:
    """The picked schedule and a Markdown paragraph with both curves."""
    picked = pick_schedule(curve, min_gain)
    lines = ["| schedule (iterations) | AP | gain of doubling |", "|---:|---:|---:|"]
    for n in sorted(curve):
        gain = curve[2 * n] - curve[n] if 2 * n in curve else None
        lines.append(f"| {n} | {curve[n]:.1f} | "
                     + ("-" if gain is None else f"{gain:+.1f}") + " |")
    verdict = (f"Shortest schedule after which doubling adds < {min_gain:g} AP: **{picked} "
               "iterations**." if picked is not None else
               f"No measured schedule qualifies (doubling always added >= {min_gain:g} AP, or "
               "a double is missing): extend the ladder.")
    text = "\n".join(lines) + "\n\n" + verdict + "\n"
    if within:
        text += ("\nAP inside the longest run (before its learning-rate decays, so not the AP "
                 "of a shorter schedule): " + ", ".join(f"{k}: {v:.1f}"
                                                        for k, v in sorted(within.items()))
                 + "\n")
    return picked, text


def run_learning_curve(spec: StudySpec, longest: int, steps: int,
                       min_gain: float = 2.0) -> Tuple[Optional[int], str]:
    """Run (or resume) the ladder, then report; returns (picked schedule, Markdown)."""
    jobs = curve_jobs(spec, longest, steps)
    Runner(dataclasses.replace(spec, out_dir=os.path.join(spec.out_dir, "curve")),
           jobs=jobs).run()
    return curve_report(measured_curve(jobs), within_run_curve(jobs[-1]), min_gain)

