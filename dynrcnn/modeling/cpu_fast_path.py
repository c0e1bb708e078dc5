"""The training step's two hot CPU ops, swapped into a torchvision detector and back.

On the CPU a step of a two-stage detector spends most of its time in two torchvision ops:
the RPN's per-level NMS (at the paper's NMS 0.85 almost nothing is suppressed, so
torchvision's quadratic loop runs in full although only post_nms_top_n survivors are used)
and roi_align's backward. `FastProposalFilterRPN` and `FastMultiScaleRoIAlign` are
torchvision's RegionProposalNetwork and MultiScaleRoIAlign with those two calls replaced by
dynrcnn.ops.batched_nms_topk and dynrcnn.ops.roi_align, which give torchvision's results bit
for bit (the same proposals, the same pooled features and gradients). They add no state:
`use_cpu_fast_path` swaps the classes of a model's modules in place and `use_stock_modules`
swaps them back, so weights, state_dicts and exports are untouched. On other devices, under
TorchScript and under tracing they run torchvision's code.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import (
    MultiScaleRoIAlign,
    _convert_to_roi_format,
    _filter_input,
    _setup_scales,
)

from dynrcnn.ops import batched_nms_topk, roi_align
from dynrcnn.ops._extension import extension_available


def _fast_here(t: Tensor) -> bool:
    return (t.device.type == "cpu" and extension_available() and not torch.jit.is_scripting()
            and not torch.jit.is_tracing())


class FastProposalFilterRPN(RegionProposalNetwork):
    """torchvision's RPN whose CPU proposal filter keeps the same proposals with
    dynrcnn.ops.batched_nms_topk (per-level NMS that stops at post_nms_top_n)."""

    def filter_proposals(self, proposals: Tensor, objectness: Tensor,
                         image_shapes: List[Tuple[int, int]],
                         num_anchors_per_level: List[int]) -> Tuple[List[Tensor], List[Tensor]]:
        if not _fast_here(proposals):
            return super().filter_proposals(proposals, objectness, image_shapes,
                                            num_anchors_per_level)
        # torchvision's filter_proposals, line for line, but for the NMS call.
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64)
                            for idx, n in enumerate(num_anchors_per_level)], 0)
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images)[:, None]
        objectness = objectness[batch_idx, top_n_idx]
        levels = levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        objectness_prob = torch.sigmoid(objectness)
        final_boxes, final_scores = [], []
        post_nms_top_n = int(self.post_nms_top_n())
        for boxes, scores, lvl, img_shape in zip(proposals, objectness_prob, levels,
                                                 image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, img_shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms_topk(boxes, scores, lvl, self.nms_thresh, post_nms_top_n)
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign pooling with dynrcnn.ops.roi_align on the CPU."""

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor],
                image_shapes: List[Tuple[int, int]]) -> Tensor:
        x_filtered = _filter_input(x, self.featmap_names)
        if not _fast_here(x_filtered[0]):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level)
        # torchvision's _multiscale_roi_align, line for line, but for the roi_align call.
        rois = _convert_to_roi_format(boxes)
        if len(x_filtered) == 1:
            return roi_align(x_filtered[0], rois, self.output_size, self.scales[0],
                             self.sampling_ratio)
        levels = self.map_levels(boxes)
        first = x_filtered[0]
        result = torch.zeros((len(rois), first.shape[1]) + tuple(self.output_size),
                             dtype=first.dtype, device=first.device)
        for level, (feature, scale) in enumerate(zip(x_filtered, self.scales)):
            idx_in_level = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx_in_level], self.output_size, scale,
                               self.sampling_ratio)
            result[idx_in_level] = pooled.to(result.dtype)
        return result


_FAST = {RegionProposalNetwork: FastProposalFilterRPN, MultiScaleRoIAlign: FastMultiScaleRoIAlign}
_STOCK = {fast: stock for stock, fast in _FAST.items()}


def _swap(model: nn.Module, table: Dict[type, type]) -> nn.Module:
    # Exact classes only: a user's own subclass keeps its behaviour.
    for module in model.modules():
        cls: Optional[type] = table.get(type(module))
        if cls is not None:
            module.__class__ = cls
    return model


def use_cpu_fast_path(model: nn.Module) -> nn.Module:
    """Give `model`'s RPN and RoI poolers dynrcnn's CPU ops (in place; returns `model`).
    Only torchvision's exact RegionProposalNetwork and MultiScaleRoIAlign are swapped; the
    results are bit for bit those of torchvision's ops, and nothing changes off the CPU."""
    return _swap(model, _FAST)


def use_stock_modules(model: nn.Module) -> nn.Module:
    """Undo use_cpu_fast_path (in place; returns `model`): stock torchvision classes."""
    return _swap(model, _STOCK)


__all__ = ["FastProposalFilterRPN", "FastMultiScaleRoIAlign", "use_cpu_fast_path",
           "use_stock_modules"]
