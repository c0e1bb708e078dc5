"""Comparing runs: the metrics of a run directory, and the AP-per-IoU-threshold table
(Markdown) and plot (PNG) of several runs side by side (the CLI's `compare`)."""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, Optional, Sequence

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import UsageError
from dynrcnn.engine.evaluator import format_metrics_table

METRICS_FILE = "metrics.json"
# the columns of the AP-vs-IoU plot (the paper's high-IoU columns)
IOU_COLUMNS = ("AP50", "AP60", "AP70", "AP80", "AP90")


def load_run_metrics(run_dir: str) -> Dict[str, float]:
    """The bbox metrics of a run directory: its metrics.json (written by `eval --out-dir
    <run_dir>`), else the latest eval_<iteration>/metrics.json the trainer wrote."""
    candidates = [os.path.join(run_dir, METRICS_FILE)]
    candidates += sorted(glob.glob(os.path.join(run_dir, "eval_*", METRICS_FILE)),
                         reverse=True)
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        raise UsageError(f"{run_dir} has no {METRICS_FILE} nor eval_*/{METRICS_FILE} "
                         "(evaluate it first: train with --eval-period, or eval --out-dir "
                         f"{run_dir})")
    with open(path) as f:
        data = json.load(f)
    return data.get("bbox", data)


def compare_runs(run_dirs: Sequence[str], out_dir: str,
                 names: Optional[Sequence[str]] = None) -> str:
    """AP-per-IoU-threshold table (compare.md) and plot (ap_vs_iou.png) of several runs
    side by side, written into out_dir; returns the table.

    Args:
        run_dirs: the run directories, each with metrics (see `load_run_metrics`).
        out_dir: the directory to write compare.md and ap_vs_iou.png into.
        names: one row name per run (None: the directories' base names).
    """
    names = list(names) if names else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(names) != len(run_dirs):
        raise UsageError(f"--names: give one name per run ({len(run_dirs)} runs, "
                         f"{len(names)} names)")
    table = {name: load_run_metrics(d) for name, d in zip(names, run_dirs)}
    text = format_metrics_table(table)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(text, os.path.join(out_dir, "compare.md"))
    plot_ap_vs_iou(table, os.path.join(out_dir, "ap_vs_iou.png"))
    return text


def plot_ap_vs_iou(table: Dict[str, Dict[str, float]], out: str) -> str:
    """Plot AP (x100) against the IoU threshold (AP50 to AP90), one line per row of `table`
    ({name: metrics}), into the PNG file `out`; returns out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = [int(c[2:]) / 100 for c in IOU_COLUMNS]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, metrics in table.items():
        ax.plot(thresholds, [100 * metrics.get(c, float("nan")) for c in IOU_COLUMNS],
                marker="o", label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
