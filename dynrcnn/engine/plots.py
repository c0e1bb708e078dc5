"""Training curves from log.jsonl: total loss, learning rate, and Dynamic R-CNN's T and beta;
for Dynamic R-CNN heads a second row with the paper's Figure-1 diagnostics."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dynrcnn.engine.errors import UsageError
from dynrcnn.engine.logger import read_jsonl

PANELS = (("total_loss", "total loss"), ("lr", "learning rate"),
          ("iou_thr", "IoU threshold T"), ("beta", "SmoothL1 beta"))
# Figure 1 of the paper: (title, [(log key, legend label), ...]) per panel
DIAGNOSTIC_PANELS: Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...] = (
    ("proposals per image with IoU >= x", (("props_iou50", "IoU >= 0.5"),
                                           ("props_iou60", "IoU >= 0.6"),
                                           ("props_iou70", "IoU >= 0.7"))),
    ("KI-th largest IoU (DLA statistic)", (("kth_iou", "KI-th IoU"), ("iou_thr", "T"))),
    ("Kbeta-th smallest error (DSL statistic)", (("kth_err", "Kbeta-th error"),
                                                 ("beta", "beta"))),
    ("RoIs per image the mask head trains on", (("mask_rois", "mask RoIs"),)),
)
_DIAGNOSTIC_KEYS = ("props_iou50", "props_iou60", "props_iou70", "kth_iou", "kth_err",
                    "mask_rois")


def _points(rows: Sequence[Dict[str, Any]], key: str) -> Tuple[List[Any], List[Any]]:
    points = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(log_path: str, out_path: str,
                         records: Optional[Sequence[Dict[str, Any]]] = None) -> str:
    """Write a PNG with one panel per curve; panels without data (T and beta of a
    non-dynamic detector) are left out. Logs with the Figure-1 diagnostics (props_iou50/60/
    70, kth_iou, kth_err: written by Dynamic R-CNN heads, fixed T included) get a second
    row: proposals per image above each IoU, the KI-th IoU beside T, the Kbeta-th error
    beside beta. Returns out_path.

    Args:
        log_path: the run's log.jsonl (read when records is None; named in errors).
        out_path: the PNG file to write (its directory is created).
        records: the log's records, when already read.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    rows: List[Dict[str, Any]] = list(records) if records is not None else read_jsonl(log_path)
    panels = [(key, title) for key, title in PANELS
              if any(r.get(key) is not None for r in rows)]
    if not panels:
        raise UsageError(f"{log_path} has no curves to plot (no complete record: an empty "
                         "or broken log)")
    diagnostics = any(r.get(k) is not None for r in rows for k in _DIAGNOSTIC_KEYS)
    n_rows = 2 if diagnostics else 1
    n_cols = max(len(panels), len(DIAGNOSTIC_PANELS) if diagnostics else 0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4 * n_cols, 3.2 * n_rows),
                             squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        ax.plot(*_points(rows, key))
        ax.set_title(title)
    if diagnostics:
        for ax, (title, curves) in zip(axes[1], DIAGNOSTIC_PANELS):
            for key, label in curves:
                xs, ys = _points(rows, key)
                if xs:
                    ax.plot(xs, ys, label=label)
            if ax.has_data():  # the mask panel has none without a mask branch
                ax.set_title(title, fontsize=10)
                ax.legend(fontsize=8)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
            continue
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
