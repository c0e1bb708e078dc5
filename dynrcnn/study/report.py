"""The study's report: per-arm tables (mean ± sd over seeds), paired differences to the
baseline with 95% t-intervals, the Figure-1 diagnostics, an AP-vs-IoU plot with error bars,
and a header naming hardware, commit, command and seeds. Only finished runs enter."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.study.arms import ARMS, BASELINE, TABLES
from dynrcnn.study.figures import plot_dynamics, read_logs
from dynrcnn.study.layout import final_metrics_path
from dynrcnn.study.settings import read_percent
from dynrcnn.study.stats import (
    COLUMNS,
    PER_SEED_COLUMNS,
    VERDICT_RULES,
    diff_cell,
    paired_difference,
    per_seed_text,
    summarize,
    verdict,
)

DIAGNOSTICS = ("props_iou50", "props_iou60", "props_iou70", "kth_iou", "mask_rois")
EARLY_FRACTION = 0.1  # "early proposals": the logged windows of the first 10% of a run


@dataclass
class RunResult:
    """The numbers of one finished (arm, seed) run; metrics in AP points (x100)."""

    arm: str
    seed: int
    metrics: Dict[str, float]
    final_t: Optional[float]
    final_beta: Optional[float]
    early: Dict[str, Optional[float]]
    late: Dict[str, Optional[float]]


def _window_mean(rows: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def load_result(arm: str, seed: int, run_dir: str, iterations: int,
                rows: Sequence[Dict[str, Any]], metrics_file: Optional[str] = None,
                columns: Sequence[str] = COLUMNS) -> RunResult:
    """RunResult of a finished run directory: its final metrics (or those of
    `metrics_file`, e.g. the test split's) in `columns`, and `rows`, its log.jsonl records
    (read once by the caller, which also plots them). A "segm AP" column reads the segm
    metrics of a mask detector (likewise "segm AP50", "segm AP75": SEGM_COLUMNS)."""
    path = metrics_file or final_metrics_path(run_dir, iterations)
    got = read_percent(path)
    if got is None:
        raise FileNotFoundError(f"no metrics file {path}")
    cut = max(1, round(EARLY_FRACTION * iterations))
    early = [r for r in rows if r["iteration"] <= cut] or rows[:1]
    late = [r for r in rows if r["iteration"] > iterations - cut] or rows[-1:]
    last = rows[-1] if rows else {}
    return RunResult(
        arm, seed, {c: got[c] for c in columns if c in got},
        last.get("iou_thr"), last.get("beta"),
        {k: _window_mean(early, k) for k in DIAGNOSTICS},
        {k: _window_mean(late, k) for k in DIAGNOSTICS})


def _by_arm(results: Sequence[RunResult]) -> Dict[str, List[RunResult]]:
    out: Dict[str, List[RunResult]] = {}
    for r in sorted(results, key=lambda r: (r.arm, r.seed)):
        out.setdefault(r.arm, []).append(r)
    return out


def _mean_text(values: Sequence[Optional[float]], digits: int) -> str:
    given = [v for v in values if v is not None]
    return summarize(given).text(digits) if given else "-"


def arm_table(results: Sequence[RunResult], arms: Sequence[str],
              columns: Sequence[str] = COLUMNS) -> str:
    """Markdown: per arm, seeds, mean ± sd of AP and AP50..AP90, final T / beta."""
    cols = [c for c in columns if all(c in r.metrics for r in results)]
    groups = _by_arm(results)
    head = "| arm | seeds | " + " | ".join(cols) + " | final T | final beta |"
    lines = [head, "|---|---|" + "---:|" * (len(cols) + 2)]
    for arm in arms:
        runs = groups.get(arm)
        if not runs:
            continue
        cells = [summarize([r.metrics[c] for r in runs]).text() for c in cols]
        seeds = ",".join(str(r.seed) for r in runs)
        lines.append(f"| {arm} | {seeds} | " + " | ".join(cells)
                     + f" | {_mean_text([r.final_t for r in runs], 3)}"
                     + f" | {_mean_text([r.final_beta for r in runs], 3)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def reference_of(arm: str) -> str:
    """The arm that `arm` is paired with: its Arm.reference (the baseline unless a control
    changes the schedule); the baseline for names the study does not know."""
    return ARMS[arm].reference if arm in ARMS else BASELINE


def paired_table(results: Sequence[RunResult], pairs: Sequence[Tuple[str, str]],
                 per_seed: Sequence[str] = (), columns: Sequence[str] = COLUMNS) -> str:
    """Markdown: for each (arm, reference) pair, arm - reference at the same seed, mean and
    95% t-interval per column, then for each column of `per_seed` the difference at every
    seed (a mean of two or three seeds hides whether one seed carries it). Pairs with an
    arm or reference not in `results` are left out; so are seeds that only one of the two
    has."""
    cols = [c for c in columns if all(c in r.metrics for r in results)]
    groups = _by_arm(results)
    lines = ["| arm - reference | " + " | ".join(cols)
             + "".join(f" | {c} per seed" for c in per_seed) + " |",
             "|---|" + "---:|" * (len(cols) + len(per_seed))]
    for arm, ref in pairs:
        if arm == ref or arm not in groups or ref not in groups:
            continue
        by_seed = {c: ({r.seed: r.metrics[c] for r in groups[arm]},
                       {r.seed: r.metrics[c] for r in groups[ref]})
                   for c in (*cols, *per_seed)}
        cells = [diff_cell(paired_difference(*by_seed[c])) for c in cols]
        cells += [per_seed_text(*by_seed[c]) for c in per_seed]
        lines.append(f"| {arm} - {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def reference_sections(results: Sequence[RunResult], arms: Sequence[str],
                       references: Sequence[str]) -> List[str]:
    """Report lines: for each arm of `references` (e.g. t060, the strongest fixed
    baseline), every other arm minus it at the same seed, with the AP and AP90 per seed."""
    lines: List[str] = []
    for ref in references:
        table = paired_table(results, [(a, ref) for a in arms if a != ref],
                             per_seed=PER_SEED_COLUMNS)
        if table:
            seeds = sorted(r.seed for r in results if r.arm == ref)
            lines += [f"## Against {ref} (95% CI)", "",
                      f"Each arm minus {ref} at the same seed ({ref} has seeds "
                      f"{', '.join(map(str, seeds))}); per seed: in seed order over the "
                      "seeds both have.", "", table]
    return lines


def diagnostics_table(results: Sequence[RunResult], arms: Sequence[str]) -> str:
    """Markdown: Figure 1 per arm, early in training and at its end (means over seeds)."""
    groups = _by_arm(results)
    # mask_rois (the mask head's training RoIs) only where a run has a mask branch
    keys = [k for k in DIAGNOSTICS if k != "mask_rois"
            or any(r.early.get(k) is not None for r in results)]
    lines = ["| arm | " + " | ".join(f"{k} early" for k in keys) + " | "
             + " | ".join(f"{k} end" for k in keys) + " |",
             "|---|" + "---:|" * (2 * len(keys))]
    for arm in arms:
        runs = groups.get(arm)
        if not runs or all(r.early.get("props_iou50") is None for r in runs):
            continue
        early = [_mean_text([r.early.get(k) for r in runs], 2) for k in keys]
        late = [_mean_text([r.late.get(k) for r in runs], 2) for k in keys]
        lines.append(f"| {arm} | " + " | ".join(early + late) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def table1_direction(results: Sequence[RunResult]) -> str:
    """One sentence: does fixed T = 0.6 show the paper's Table 1 direction against T = 0.5
    (AP at or below, AP90 above)? Stated from the paired means and intervals."""
    groups = _by_arm(results)
    if "t060" not in groups or BASELINE not in groups:
        return "Table 1 direction: not measured (t060 or baseline missing)."
    base = {r.seed: r for r in groups[BASELINE]}
    parts = {}
    for c in ("AP", "AP90"):
        parts[c] = paired_difference({r.seed: r.metrics[c] for r in groups["t060"]},
                                     {s: r.metrics[c] for s, r in base.items()})
    ap, ap90 = parts["AP"], parts["AP90"]
    if ap is None or ap90 is None:
        return "Table 1 direction: no seed has both t060 and baseline."
    holds = ap.mean <= 0 and ap90.mean > 0
    resolved = ("both intervals exclude 0" if ap.excludes_zero and ap90.excludes_zero
                else "not resolved (an interval holds 0 or n < 2)")
    return (f"Table 1 direction (paper: T=0.6 at or below T=0.5 in AP, above it in AP90): "
            f"the means {'point that way' if holds else 'do NOT point that way'}, "
            f"{resolved}: AP {ap.text()}, AP90 {ap90.text()}.")


def plot_ap_vs_iou(results: Sequence[RunResult], out: str,
                   groups_of_arms: Dict[str, Sequence[str]]) -> Optional[str]:
    """AP at IoU 0.5..0.9 per arm, mean with sd error bars; one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_arm(results)
    panels = [(t, [a for a in arms if a in groups]) for t, arms in groups_of_arms.items()]
    panels = [(t, arms) for t, arms in panels if arms]
    if not panels:
        return None
    ious = [int(c[2:]) / 100 for c in COLUMNS[1:]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, arms) in zip(axes[0], panels):
        for k, arm in enumerate(arms):
            stats = [summarize([r.metrics[c] for r in groups[arm]]) for c in COLUMNS[1:]]
            shift = (k - (len(arms) - 1) / 2) * 0.004  # keep the error bars apart
            ax.errorbar([x + shift for x in ious], [s.mean for s in stats],
                        yerr=[s.sd or 0.0 for s in stats], marker="o", capsize=3,
                        label=f"{arm} (n={len(groups[arm])})")
        ax.set_title(title)
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel("AP (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo; platform's guess elsewhere). The benchmarks'
    result headers use it too."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> str:
    """CPU model and core count (the report's hardware line)."""
    return f"{cpu_model_name()}, {os.cpu_count()} logical cores"


def git_commit(cwd: Optional[str] = None) -> str:
    """HEAD's hash, with '+uncommitted changes' when the tracked files differ from it.
    benchmarks/results/ does not count: the report being written lands there."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, text=True,
                              capture_output=True, check=True).stdout.strip()
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)benchmarks/results"],
                               cwd=top, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty.strip() else "")


def user_header(results: Sequence[RunResult], spec: Dict[str, Any], command: str,
                planned: int, seeds: Dict[str, List[int]]) -> List[str]:
    """The header of a study on the user's data: machine, command, data files, the split
    the numbers come from, the configuration every run shares and each arm's RPN."""
    import torch

    where = spec.get("gpus") and f"GPUs {spec['gpus']}, one run each" or \
        f"CPU, {spec.get('threads')} thread(s) per run, {spec.get('jobs')} side by side"
    data = spec.get("data", {})
    return [
        f"# Does Dynamic training pay on this data? ({len(results)} of {planned} runs "
        "finished)", "",
        f"- hardware: {hardware()}; torch {torch.__version__}; {where}",
        f"- commit: {git_commit(os.path.dirname(os.path.abspath(__file__)))}",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='minutes')}",
        *(f"- {split} split: `{ann}`" for split, ann in data.items()),
        f"- numbers below: the {spec.get('split')} split ({spec.get('images')} images); "
        "COCO AP x100, mean ± sample sd over seeds",
        "- every run shares: " + ", ".join(f"{k} {v}" for k, v in sorted(
            spec["base"].items()) if k not in ("data_dir", "train_images", "train_ann",
                                               "val_images", "val_ann")),
        f"- RPN and DLA / DSL of every arm: {spec.get('rpn')}",
        "- seeds: " + "; ".join(f"{a} {','.join(map(str, s))}" for a, s in seeds.items()),
        "",
    ]


def verdict_lines(results: Sequence[RunResult], arms: Sequence[str],
                  spec: Dict[str, Any]) -> List[str]:
    """The verdict section: the noise (each reference's sd between seeds), then one
    sentence per arm and metric (AP, AP90; segm AP for mask arms) by the fixed rules of
    stats.verdict, against the arm's reference (reference_of)."""
    groups = _by_arm(results)
    where = f"{spec.get('images')} {spec.get('split')} images"
    lines = ["## Verdict", "", VERDICT_RULES, ""]
    for ref in dict.fromkeys(reference_of(a) for a in arms):
        runs = groups.get(ref, [])
        if len(runs) > 1:
            sd = summarize([r.metrics["AP"] for r in runs]).sd
            paired = [(a, _paired_sd(groups.get(a, []), runs)) for a in arms
                      if a != ref and reference_of(a) == ref]
            pairs = "; ".join(f"{a} - {ref} moves {d:.1f}" for a, d in paired
                              if d is not None)
            lines.append(f"Noise: {ref}'s AP moves {sd:.1f} (sd) between its {len(runs)} "
                         "seeds" + (f"; the paired difference in AP: {pairs}." if pairs
                                    else "."))
    lines.append("")
    for arm in arms:
        ref = reference_of(arm)
        if arm == ref or arm not in groups or ref not in groups:
            continue
        for metric in ("AP", "AP50", "AP90", "segm AP"):
            if not all(metric in r.metrics for r in groups[arm] + groups[ref]):
                continue
            diff = paired_difference({r.seed: r.metrics[metric] for r in groups[arm]},
                                     {r.seed: r.metrics[metric] for r in groups[ref]})
            lines.append("- " + verdict(f"{arm} - {ref}", metric, diff, where))
    return lines + [""]


def _paired_sd(arm_runs: Sequence[RunResult], ref_runs: Sequence[RunResult]
               ) -> Optional[float]:
    """Sample sd over seeds of the arm's AP minus the reference's at the same seed."""
    ref = {r.seed: r.metrics["AP"] for r in ref_runs}
    diffs = [r.metrics["AP"] - ref[r.seed] for r in arm_runs if r.seed in ref]
    return summarize(diffs).sd if len(diffs) > 1 else None


def _study_header(results: Sequence[RunResult], spec: Dict[str, Any], command: str,
                  planned: int, seeds: Dict[str, List[int]]) -> List[str]:
    """The header of a synthetic study's report (hardware, commit, data recipe, protocol)."""
    import torch

    return [
        f"# Accuracy study ({len(results)} of {planned} runs finished)", "",
        f"- hardware: {hardware()}; torch {torch.__version__}; {spec.get('threads')} thread(s) "
        f"per run, {spec.get('jobs')} run(s) side by side",
        f"- commit: {git_commit(os.path.dirname(os.path.abspath(__file__)))}",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='minutes')}",
        f"- data: recipe '{spec.get('recipe')}', {spec.get('num_train')} train / "
        f"{spec.get('num_val')} val images of {spec.get('image_size')} px, generated with "
        "seed 0",
        f"- schedule: {spec.get('iterations')} iterations (x the arm's schedule factor), "
        f"C = {spec.get('interval')}, tiny_fpn, batch 4, 128 sampled RoIs per image",
        "- protocol: " + _PROTOCOL_TEXT[spec.get("protocol") or "cpu"],
        *([f"- fine-tuned: every run starts from `{spec['init_weights']}` (the seed's "
            "source detector; predictor layers of another class count re-initialized)"]
          if spec.get("init_weights") else []),
        "- seeds: " + "; ".join(f"{a} {','.join(map(str, s))}" for a, s in seeds.items()),
        "", "Numbers are COCO AP (x100) on the validation split, mean ± sample sd over "
        "seeds. Paired differences: arm minus baseline at the same seed, mean and 95% "
        "t-interval over the n paired seeds (* = the interval excludes 0).", "",
        table1_direction(results), "",
    ]


def write_report(results: Sequence[RunResult], path: str, spec: Dict[str, Any],
                 command: str, planned: int, dynamics_plot: Optional[str] = None,
                 references: Sequence[str] = (), columns: Sequence[str] = COLUMNS) -> str:
    """Write the Markdown report (path), its plot (<stem>_ap_vs_iou.png) and the raw
    per-run numbers (<stem>.json); returns the Markdown text. dynamics_plot: a figure of
    T / beta / Figure-1 over training (figures.plot_dynamics) to show under the tables;
    references: arms every other arm is also paired with (reference_sections); columns:
    the metrics of the tables. A spec with "base" is a study on the user's data
    (dynrcnn.study.command): its header names the data and the common configuration, and a
    verdict section follows the paired differences."""
    stem = os.path.splitext(path)[0]
    arms = [a for a in ARMS if any(r.arm == a for r in results)]
    tables = {t: [a for a in names if a in arms] for t, names in TABLES.items()}
    # a table whose arms all appear in an earlier one (e.g. Table 4 with only its KI = 75
    # row, the dla arm of Table 3) says nothing new
    shown: set = set()
    kept = {}
    for t, names in tables.items():
        if t == "Table 3" or any(a not in shown and a != BASELINE for a in names):
            kept[t] = names
            shown.update(names)
    tables = kept
    plot = plot_ap_vs_iou(results, stem + "_ap_vs_iou.png", tables)
    seeds = {a: sorted(r.seed for r in results if r.arm == a) for a in arms}
    user = spec.get("base") is not None
    lines = (user_header(results, spec, command, planned, seeds) if user else
             _study_header(results, spec, command, planned, seeds))
    for title, names in tables.items():
        text = arm_table(results, names, columns)
        if text:
            lines += [f"## {title}", "", text]
    diff = paired_table(results, [(a, reference_of(a)) for a in arms], columns=columns)
    if diff and user:
        lines += ["## Paired differences to the baseline (95% CI)", "", diff,
                  *verdict_lines(results, arms, spec)]
    elif diff:
        lines += ["## Paired differences to the baseline (95% CI)", "",
                  "Each arm against the baseline at the same seed (the doubled-schedule "
                  "arm against the baseline at the doubled schedule).", "", diff]
    variants = paired_table(results, [(a, ARMS[a].variant_of) for a in arms
                                      if ARMS[a].variant_of])
    if variants:
        lines += ["## Against the arm they change (95% CI)", "",
                  "Each control (and each Table 4 arm: KI of DLA only) against the arm it "
                  "changes one thing of, at the same seed: does the change move it?", "",
                  variants]
    lines += reference_sections(results, arms, references)
    diag = diagnostics_table(results, arms)
    if diag:
        lines += ["## Figure-1 diagnostics", "",
                  f"Proposals per image with IoU >= 0.5 / 0.6 / 0.7 and the KI-th largest "
                  f"IoU (and, with a mask branch, mask_rois: the RoIs per image the mask "
                  f"head trains on), averaged over the first and the last "
                  f"{EARLY_FRACTION:.0%} of each run's iterations, then over seeds.", "", diag]
    if plot:
        lines += [f"![AP vs IoU]({os.path.basename(plot)})", ""]
    if dynamics_plot:
        lines += ["T, beta and the Figure-1 counts over training (mean over each arm's "
                  "seeds):", "", f"![training dynamics]({os.path.basename(dynamics_plot)})",
                  ""]
    text = "\n".join(lines)
    atomic_write_text(text, path)
    raw = [{"arm": r.arm, "seed": r.seed, **r.metrics, "final_t": r.final_t,
            "final_beta": r.final_beta, "early": r.early, "late": r.late} for r in results]
    atomic_write_text(json.dumps({"spec": spec, "command": command, "runs": raw}, indent=1),
                      stem + ".json")
    return text


_PROTOCOL_TEXT = {
    "cpu": "'cpu': 300 RPN proposals per image after NMS 0.7 for every arm, KI / Kbeta "
           "scaled to 22 / 3",
    "paper": "'paper': 1000 RPN proposals per image after NMS 0.85 (train and test) for "
             "every arm, the baseline included, KI / Kbeta 75 / 10 as in the paper",
}


def report_study(jobs: Sequence[Any], path: str, spec: Dict[str, Any], command: str,
                 references: Sequence[str] = (), columns: Sequence[str] = COLUMNS,
                 metrics_of: Optional[Callable[[Any], str]] = None) -> str:
    """write_report over the finished ones of `jobs` (runner.Job). metrics_of(job): the
    metrics file a run's numbers come from (default: its final val evaluation); a run
    without that file is left out."""
    finished = [j for j in jobs if j.finished() and (
        metrics_of is None or os.path.isfile(metrics_of(j)))]
    logs = read_logs([j.run_dir for j in finished])  # once, for the tables and the figure
    results = [load_result(j.arm.name, j.seed, j.run_dir, j.config.iterations, rows,
                           metrics_of(j) if metrics_of else None, columns)
               for j, rows in zip(finished, logs)]
    logs_by_arm: Dict[str, List[Any]] = {}
    for job, rows in zip(finished, logs):
        logs_by_arm.setdefault(job.arm.name, []).append(rows)
    dynamics = plot_dynamics(logs_by_arm, os.path.splitext(path)[0] + "_dynamics.png")
    return write_report(results, path, spec, command, planned=len(jobs),
                        dynamics_plot=dynamics, references=references, columns=columns)
