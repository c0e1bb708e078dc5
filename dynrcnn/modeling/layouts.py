"""torchvision's detector layouts beyond the classic R-50-FPN one, as default modules.

torchvision builds `fasterrcnn_resnet50_fpn_v2` / `maskrcnn_resnet50_fpn_v2` (Li et al.,
"Benchmarking Detection Transfer Learning with Vision Transformers") and
`fasterrcnn_mobilenet_v3_large_fpn` with their own RPN head, anchors and box / mask heads.
`build_detector` takes these modules as defaults for the same backbone, so that a
dynrcnn detector on that backbone has exactly the stock model's parameter names and shapes:
torchvision checkpoints load into it and it exports back (`torchvision_io`).

Each function returns FasterRCNN / MaskRCNN keyword arguments; `mask` says whether the
detector has a mask branch; `box_heads` is False for the cascade (its own box heads).
"""

from __future__ import annotations

from typing import Any, Dict

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead

_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def resnet50_fpn_v2_modules(out_channels: int, mask: bool, box_heads: bool = True,
                            roi_resolution: int = 7) -> Dict[str, Any]:
    """fasterrcnn_resnet50_fpn_v2's: one anchor size per level, a 2-conv RPN head, a
    4-conv + 1-FC box head and a mask head with BatchNorm."""
    sizes = ((32,), (64,), (128,), (256,), (512,))
    anchors = AnchorGenerator(sizes, (_ASPECT_RATIOS,) * len(sizes))
    modules: Dict[str, Any] = {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(out_channels, anchors.num_anchors_per_location()[0],
                            conv_depth=2),
    }
    if box_heads:
        modules["box_head"] = FastRCNNConvFCHead(
            (out_channels, roi_resolution, roi_resolution), [256, 256, 256, 256], [1024],
            norm_layer=nn.BatchNorm2d)
    if mask:
        modules["mask_head"] = MaskRCNNHeads(out_channels, [256, 256, 256, 256], 1,
                                             norm_layer=nn.BatchNorm2d)
    return modules


def mobilenet_v3_large_fpn_modules(out_channels: int, mask: bool, box_heads: bool = True,
                                   roi_resolution: int = 7) -> Dict[str, Any]:
    """fasterrcnn_mobilenet_v3_large_fpn's: all five anchor sizes on each of its three
    levels, and the RPN score threshold 0.05 of torchvision's constructor. The box head is
    torchvision's default (TwoMLPHead, 1024); torchvision has no mobilenet Mask R-CNN, so
    its mask head is the default one too."""
    sizes = ((32, 64, 128, 256, 512),) * 3
    return {
        "rpn_anchor_generator": AnchorGenerator(sizes, (_ASPECT_RATIOS,) * len(sizes)),
        "rpn_score_thresh": 0.05,
    }
