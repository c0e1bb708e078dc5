"""Small helpers shared by the RoI heads."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops


def check_target_types(targets: Optional[List[Dict[str, Tensor]]]) -> None:
    """The dtype checks torchvision's RoIHeads.forward makes on training targets."""
    if targets is None:
        raise ValueError("targets should not be None in training mode")
    floating = (torch.float, torch.double, torch.half)
    for t in targets:
        if t["boxes"].dtype not in floating:
            raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}")


def clip_split(boxes: Tensor, counts: Sequence[int],
               image_shapes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """Split concatenated boxes per image (counts known on the host) and clip each to its image."""
    return [box_ops.clip_boxes_to_image(b, shape)
            for b, shape in zip(boxes.split(list(counts)), image_shapes)]
