"""Pairwise box IoU."""

from __future__ import annotations

import torch
from torch import Tensor

from dynrcnn.ops import _reference
from dynrcnn.ops._extension import use_kernels
from dynrcnn.ops._validation import check_boxes, check_same_device


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every box in `boxes1` [N, 4] with every box in `boxes2` [M, 4] -> [N, M].

    Boxes are (x1, y1, x2, y2). A box with non-positive width or height, or with a NaN
    coordinate, has IoU 0 with everything (torchvision gives NaN or negative values there).
    Computed in float32 for half/bfloat16/float32 inputs; the result has the input dtype.
    """
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    check_same_device(boxes1=boxes1, boxes2=boxes2)
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(f"boxes1 is {boxes1.dtype} but boxes2 is {boxes2.dtype}: use one dtype")
    if not use_kernels(boxes1.device):
        return _reference.box_iou(boxes1, boxes2)
    return torch.ops.dynrcnn.box_iou(boxes1, boxes2)
