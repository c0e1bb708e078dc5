"""Fake (meta) kernels: output shapes and dtypes, so torch.compile can trace the ops."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


@torch.library.register_fake("dynrcnn::box_iou")
def _box_iou_fake(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


@torch.library.register_fake("dynrcnn::dynamic_match")
def _dynamic_match_fake(
    proposals: Tensor, gt_boxes: Tensor, proposal_splits: Tensor, gt_splits: Tensor,
    iou_thr: Tensor, k_iou: int, k_err: int, weights: Sequence[float], per_image: bool,
):
    n = proposals.shape[0]
    stat_shape = (proposal_splits.shape[0] - 1,) if per_image else ()
    return (
        proposals.new_empty((n,), dtype=torch.int64),
        proposals.new_empty((n,), dtype=torch.float32),
        proposals.new_empty((n,), dtype=torch.int64),
        proposals.new_empty(stat_shape, dtype=torch.float32),
        proposals.new_empty(stat_shape, dtype=torch.float32),
    )


@torch.library.register_fake("dynrcnn::dynamic_smooth_l1")
def _dynamic_smooth_l1_fake(input: Tensor, target: Tensor, beta: Tensor,
                            weight: Optional[Tensor], reduction: int) -> Tensor:
    if reduction == 0:
        return torch.empty_like(input, memory_format=torch.contiguous_format)
    return input.new_empty(())


@torch.library.register_fake("dynrcnn::dynamic_smooth_l1_with_grad")
def _dynamic_smooth_l1_with_grad_fake(input: Tensor, target: Tensor, beta: Tensor,
                                      weight: Optional[Tensor], reduction: int):
    return input.new_empty(()), torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("dynrcnn::dynamic_smooth_l1_backward")
def _dynamic_smooth_l1_backward_fake(grad_output: Tensor, input: Tensor, target: Tensor,
                                     beta: Tensor, weight: Optional[Tensor],
                                     reduction: int) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("dynrcnn::batched_nms_topk")
def _batched_nms_topk_fake(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                           max_keep: int) -> Tensor:
    # How many boxes survive depends on the data: an unbacked size, at most N (and max_keep).
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)


@torch.library.register_fake("dynrcnn::roi_align")
def _roi_align_fake(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                    pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("dynrcnn::roi_align_backward")
def _roi_align_backward_fake(grad: Tensor, rois: Tensor, spatial_scale: float,
                             pooled_height: int, pooled_width: int, batch_size: int,
                             channels: int, height: int, width: int, sampling_ratio: int,
                             aligned: bool) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))
