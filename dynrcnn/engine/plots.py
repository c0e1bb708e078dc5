"""Training curves from log.jsonl: total loss, learning rate, and Dynamic R-CNN's T and beta."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from dynrcnn.engine.logger import read_jsonl

PANELS = (("total_loss", "total loss"), ("lr", "learning rate"),
          ("iou_thr", "IoU threshold T"), ("beta", "SmoothL1 beta"))


def plot_training_curves(log_path: str, out_path: str,
                         records: Optional[Sequence[Dict[str, Any]]] = None) -> str:
    """Write a PNG with one panel per curve; panels without data (T and beta of a
    non-dynamic detector) are left out. Returns out_path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    rows: List[Dict[str, Any]] = list(records) if records is not None else read_jsonl(log_path)
    panels = [(key, title) for key, title in PANELS
              if any(r.get(key) is not None for r in rows)]
    if not panels:
        raise ValueError(f"{log_path} has no curves to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        points = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points])
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
