"""Fused proposal matching with the Dynamic R-CNN statistics (DLA and DSL)."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from dynrcnn.ops import _reference
from dynrcnn.ops._extension import use_kernels
from dynrcnn.ops._reference import MatchResult
from dynrcnn.ops._validation import (
    as_scalar_tensor,
    check_boxes,
    check_positive_int,
    check_same_device,
    check_splits,
    check_tensor,
    check_weights,
)

DEFAULT_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def dynamic_match(
    proposals: Tensor,
    gt_boxes: Tensor,
    proposal_splits: Tensor,
    gt_splits: Tensor,
    iou_thr: Union[Tensor, float],
    k_iou: int,
    k_err: int,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    per_image: bool = False,
) -> MatchResult:
    """Match proposals of a batch of images to their ground truth in one fused pass.

    Args:
        proposals: [N, 4] boxes of all images, image b owning rows
            proposal_splits[b]:proposal_splits[b+1].
        gt_boxes: [G, 4] ground-truth boxes of all images, split by gt_splits.
        proposal_splits, gt_splits: int64 [B+1] offsets on the boxes' device.
        iou_thr: 0-dim tensor on the boxes' device, the foreground threshold T.
        k_iou, k_err: rank of the IoU / error statistic: totals for the batch when
            per_image=False (pass KI * images), per image otherwise; clamped to the population.
        weights: BoxCoder weights (wx, wy, ww, wh); the error uses wx and wy.
        per_image: statistics per image ([B]) instead of over the batch ([]).

    Returns:
        MatchResult(matched_idxs, max_iou, labels, kth_iou, kth_err); see its docstring.
        No host synchronization happens on CUDA.
    """
    check_boxes("proposals", proposals)
    check_boxes("gt_boxes", gt_boxes)
    if proposals.dtype != gt_boxes.dtype:
        raise TypeError(
            f"proposals are {proposals.dtype} but gt_boxes are {gt_boxes.dtype}: use one dtype"
        )
    check_tensor("proposal_splits", proposal_splits)
    check_tensor("gt_splits", gt_splits)
    check_same_device(proposals=proposals, gt_boxes=gt_boxes,
                      proposal_splits=proposal_splits, gt_splits=gt_splits)
    check_splits("proposal_splits", proposal_splits, proposals.shape[0], "proposals.shape[0]", None)
    check_splits("gt_splits", gt_splits, gt_boxes.shape[0], "gt_boxes.shape[0]",
                 proposal_splits.numel() - 1)
    thr = as_scalar_tensor("iou_thr", iou_thr, proposals)
    check_positive_int("k_iou", k_iou)
    check_positive_int("k_err", k_err)
    w = check_weights(weights)
    if not use_kernels(proposals.device):
        return _reference.dynamic_match(proposals, gt_boxes, proposal_splits, gt_splits, thr,
                                        k_iou, k_err, w, bool(per_image))
    return MatchResult(*torch.ops.dynrcnn.dynamic_match(
        proposals, gt_boxes, proposal_splits, gt_splits, thr, k_iou, k_err, w, bool(per_image)
    ))


def splits_from_counts(counts: Sequence[int], device: Union[torch.device, str]) -> Tensor:
    """int64 [B+1] offsets from per-image counts known on the host (no device sync)."""
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + int(c))
    return torch.tensor(offsets, dtype=torch.int64).to(device, non_blocking=True)
