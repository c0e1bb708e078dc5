"""The study's training-dynamics figure: T and beta of every arm over training, and the
paper's Figure 1 (proposals per image above IoU 0.5 / 0.7), each the mean over the arm's
finished seeds at every logged iteration. It shows where DLA's threshold goes relative to
the fixed arms and how fast the proposals improve, which the AP tables alone cannot."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dynrcnn.engine.logger import read_jsonl

# (log key, panel title); the last two are the Figure-1 counts
PANELS: Tuple[Tuple[str, str], ...] = (
    ("iou_thr", "IoU threshold T"),
    ("beta", "SmoothL1 beta"),
    ("props_iou50", "proposals / image, IoU >= 0.5"),
    ("props_iou70", "proposals / image, IoU >= 0.7"),
)
# a fifth panel where any arm has a mask branch
MASK_PANEL: Tuple[str, str] = ("mask_rois", "mask-head RoIs / image")


Log = List[Dict[str, Any]]


def read_logs(run_dirs: Sequence[str]) -> List[Log]:
    """Each run's log.jsonl records (empty for a run without a log), read once."""
    return [read_jsonl(os.path.join(run_dir, "log.jsonl")) for run_dir in run_dirs]


def mean_curves(logs: Sequence[Log], key: str) -> Optional[Tuple[List[int], List[float]]]:
    """(iterations, mean of `key` over the runs logging it at that iteration), or None when
    no run logs `key`."""
    sums: Dict[int, List[float]] = {}
    for rows in logs:
        for row in rows:
            value = row.get(key)
            if value is not None:
                sums.setdefault(int(row["iteration"]), []).append(float(value))
    if not sums:
        return None
    its = sorted(sums)
    return its, [sum(sums[i]) / len(sums[i]) for i in its]


def lr_drops(logs: Sequence[Log]) -> List[int]:
    """Logged iterations at which the learning rate fell (the schedule's steps), read from
    the first run that has a log."""
    for log in logs:
        rows = [r for r in log if "lr" in r]
        if rows:
            return [int(b["iteration"]) for a, b in zip(rows, rows[1:])
                    if float(b["lr"]) < 0.5 * float(a["lr"])]
    return []


def plot_dynamics(logs: Dict[str, Sequence[Log]], out: str) -> Optional[str]:
    """One figure, four panels (PANELS; a fifth, MASK_PANEL, when a run has a mask
    branch), one line per arm (mean over its runs' logs, as
    read_logs gives them); returns `out`, or None when no run has a log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: Dict[str, Dict[str, Any]] = {}
    for arm, arm_logs in logs.items():
        got = {key: mean_curves(arm_logs, key) for key, _ in PANELS + (MASK_PANEL,)}
        if any(got[key] is not None for key, _ in PANELS):
            curves[arm] = got
    if not curves:
        return None
    panels = PANELS + ((MASK_PANEL,) if any(got[MASK_PANEL[0]] is not None
                                            for got in curves.values()) else ())
    drops = lr_drops([log for arm_logs in logs.values() for log in arm_logs])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for k, it in enumerate(drops):  # learning-rate steps, dotted
            ax.axvline(it, color="gray", ls=":", lw=1, label="lr step" if k == 0 else None)
        for arm, got in curves.items():
            if got[key] is not None:
                its, values = got[key]
                ax.plot(its, values, label=f"{arm} (n={len(logs[arm])})", lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
