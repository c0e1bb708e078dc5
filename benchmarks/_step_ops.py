"""Op-level ratios of the train-step benchmark: dynrcnn's batched_nms_topk and roi_align
against torchvision's ops on the very inputs one training step gives them (recorded from a
step of the fast model), each pair timed side by side, interleaved."""

from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Tuple

import torch
from _common import Candidate, time_interleaved
from torchvision.ops import batched_nms
from torchvision.ops import roi_align as tv_roi_align

import dynrcnn.modeling.cpu_fast_path as fast_path
from dynrcnn.ops import batched_nms_topk, roi_align

Call = Tuple[tuple, dict]


def record_calls(step: Callable[[], None]) -> Tuple[List[Call], List[Call]]:
    """(batched_nms_topk calls, roi_align calls) of one step, arguments detached."""
    nms_calls: List[Call] = []
    roi_calls: List[Call] = []

    def keep(calls: List[Call], fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                for a in args), kwargs))
            return fn(*args, **kwargs)
        return wrapper

    saved = fast_path.batched_nms_topk, fast_path.roi_align
    fast_path.batched_nms_topk = keep(nms_calls, batched_nms_topk)
    fast_path.roi_align = keep(roi_calls, roi_align)
    try:
        step()
    finally:
        fast_path.batched_nms_topk, fast_path.roi_align = saved
    return nms_calls, roi_calls


def _nms_pair(calls: List[Call]) -> Tuple[Callable[[], None], Callable[[], None]]:
    def tv() -> None:
        for (boxes, scores, idxs, thr, k), _ in calls:
            batched_nms(boxes, scores, idxs, thr)[:k]

    def ours() -> None:
        for args, _ in calls:
            batched_nms_topk(*args)
    return tv, ours


def _roi_pair(calls: List[Call], backward: bool) -> Tuple[Callable[[], None],
                                                          Callable[[], None]]:
    inputs = [(x.clone().requires_grad_(), rois, size, scale, ratio)
              for (x, rois, size, scale, ratio), _ in calls]
    grads = [torch.randn(len(rois), x.shape[1], *size) for x, rois, size, _, _ in inputs]

    def run(fn: Callable) -> None:
        for (x, rois, size, scale, ratio), g in zip(inputs, grads):
            out = fn(x, rois, size, scale, ratio)
            if backward:
                torch.autograd.grad(out, x, g)
    return (lambda: run(tv_roi_align)), (lambda: run(roi_align))


def op_ratios(step: Callable[[], None], reps: int) -> List[Dict[str, Any]]:
    """Per op: calls per step, torchvision's and dynrcnn's median time per step, the ratio."""
    nms_calls, roi_calls = record_calls(step)
    rows = []
    for name, calls, (tv, ours) in (
            ("RPN NMS (batched_nms + top-k)", nms_calls, _nms_pair(nms_calls)),
            ("roi_align forward", roi_calls, _roi_pair(roi_calls, False)),
            ("roi_align forward + backward", roi_calls, _roi_pair(roi_calls, True))):
        samples = time_interleaved([Candidate(tv), Candidate(ours)], reps, 1,
                                   torch.device("cpu"))
        t_tv, t_ours = (statistics.median(s) for s in samples)
        rows.append({"op": name, "calls_per_step": len(calls), "torchvision_ms": 1e3 * t_tv,
                     "dynrcnn_ms": 1e3 * t_ours, "speedup": t_tv / t_ours})
    return rows
