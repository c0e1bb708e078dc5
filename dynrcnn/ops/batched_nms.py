"""Per-level NMS with top-k, as the RPN filters its proposals: torchvision's result, less work."""

from __future__ import annotations

import torch
from torch import Tensor

from dynrcnn.ops import _reference
from dynrcnn.ops._extension import use_kernels
from dynrcnn.ops._validation import check_boxes, check_same_device, check_tensor


def batched_nms_topk(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                     max_keep: int = -1) -> Tensor:
    """`torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep]`.

    The same int64 indices in the same order (ties, NaN and degenerate boxes included),
    computed on the CPU without the full quadratic pass: each candidate is compared only
    with the boxes its level kept so far, and a level stops once it has kept more than
    `max_keep` (see csrc/ops/cpu/batched_nms_kernel.cpp). float32 / float64 boxes, as
    torchvision's CPU nms. On other devices (and without the extension) this is
    torchvision's batched_nms.

    Args:
        boxes: [N, 4] (x1, y1, x2, y2).
        scores: [N], the boxes' dtype.
        idxs: [N] integer category (RPN: feature level) of each box; NMS runs per category.
        iou_threshold: a box is dropped when it overlaps a kept box of its category by
            IoU > iou_threshold.
        max_keep: keep at most this many (the RPN's post_nms_top_n); -1 keeps all.
    """
    check_boxes("boxes", boxes)
    check_tensor("scores", scores)
    check_tensor("idxs", idxs)
    check_same_device(boxes=boxes, scores=scores, idxs=idxs)
    if scores.shape != (boxes.shape[0],) or idxs.shape != (boxes.shape[0],):
        raise ValueError(f"scores and idxs must have shape [N] = [{boxes.shape[0]}], got "
                         f"{list(scores.shape)} and {list(idxs.shape)}")
    if isinstance(max_keep, bool) or not isinstance(max_keep, int) or max_keep < -1:
        raise ValueError(f"max_keep must be an int >= 0, or -1 for all, got {max_keep!r}")
    fast = (boxes.device.type == "cpu" and boxes.dtype in (torch.float32, torch.float64)
            and scores.dtype == boxes.dtype and not idxs.is_floating_point()
            and not torch.jit.is_tracing() and use_kernels(boxes.device))
    if not fast:
        return _reference.batched_nms_topk(boxes, scores, idxs, float(iou_threshold), max_keep)
    return torch.ops.dynrcnn.batched_nms_topk(boxes, scores, idxs, float(iou_threshold),
                                              max_keep)
