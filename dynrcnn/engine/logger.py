"""Training log (JSON lines) and the device-side watch over non-finite losses.

log.jsonl holds one JSON object per logged iteration:
    iteration   iterations completed (1-based; the checkpoint of iteration k resumes at k)
    epoch       epoch of that iteration's batch
    total_loss  sum of the loss terms (mean over ranks)
    loss_*      each loss term of the detector (mean over ranks)
    lr          learning rate the iteration's optimizer step used
    iou_thr     Dynamic R-CNN's T after the iteration (null for non-dynamic detectors)
    beta        Dynamic SmoothL1 beta after the iteration (null likewise)
    records     DynamicState record count (null likewise)
    props_iou50, props_iou60, props_iou70
                proposals per image whose best IoU is >= 0.5 / 0.6 / 0.7 (the paper's
                Figure 1), averaged since the previous log line (Dynamic R-CNN heads only;
                under torchrun, rank 0's)
    kth_iou     the KI-th largest proposal IoU (the DLA statistic), averaged likewise
    kth_err     the Kbeta-th smallest regression error (the DSL statistic), averaged likewise
    mask_rois   RoIs per image the mask head trained on, averaged likewise (mask branch only)
    max_mem_mb  peak CUDA memory (CUDA runs only)
    time        seconds per iteration, averaged since the previous log line
    data_time   seconds per iteration spent waiting for data, averaged likewise
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.distributed import all_reduce_min, is_distributed


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Records of the JSONL file `path` ([] when there is no such file); a torn last line
    (process killed mid-write) is skipped."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class JsonlWriter:
    """Appends records to a JSONL file, flushing each line so a crash loses at most one.

    truncate_after: on resume, drop records of iterations after the checkpoint (they are
    about to be re-run), so the file reads as one uninterrupted run.
    """

    def __init__(self, path: str, truncate_after: Optional[int] = None) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if truncate_after is not None and os.path.isfile(path):
            kept = [r for r in read_jsonl(path) if r.get("iteration", 0) <= truncate_after]
            atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)
        elif truncate_after is None and os.path.isfile(path):
            os.remove(path)  # a fresh run starts a fresh log
        self._file = open(path, "a")

    def write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class LossMonitor:
    """Remembers, on the device, the first iteration whose loss terms were not all finite
    and their values, so that the check costs one host sync only when check() runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: Sequence[str] = ()
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._bad_values: Optional[Tensor] = None

    def observe(self, iteration: int, names: Sequence[str], values: Tensor) -> None:
        """values: the iteration's loss terms stacked ([L], detached)."""
        if self._bad_values is None:
            self.names = tuple(names)
            self._bad_values = torch.zeros_like(values)
        newly = (~torch.isfinite(values).all()) & (self._first_bad < 0)
        self._first_bad.masked_fill_(newly, iteration)
        self._bad_values = torch.where(newly, values, self._bad_values)

    def check(self) -> None:
        """Raise NonFiniteLossError naming the iteration and the loss terms. Under
        torch.distributed this is a collective (every rank raises if any rank saw one)."""
        first = self._first_bad
        if is_distributed():
            big = torch.iinfo(torch.int64).max
            mine = torch.where(first < 0, torch.full_like(first, big), first)
            first = all_reduce_min(mine)
            first = torch.where(first == big, torch.full_like(first, -1), first)
        bad_iter = int(first.item())
        if bad_iter < 0:
            return
        if int(self._first_bad.item()) == bad_iter and self._bad_values is not None:
            terms = ", ".join(f"{n}={v:.6g}" for n, v in
                              zip(self.names, self._bad_values.tolist()))
        else:
            terms = "(on another rank)"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {bad_iter}: {terms}. Training stopped; no "
            "checkpoint was written after it (lower the lr, enable grad_clip, or check the "
            "data for degenerate boxes)")
