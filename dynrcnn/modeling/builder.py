"""`build_detector`: every detector of the comparison from one function.

All five architectures are torchvision FasterRCNN / MaskRCNN models on the same backbone, RPN
and transform; only the RoI heads differ (and the RPN NMS threshold of the dynamic variants,
0.85 as in the paper). Every torchvision constructor argument (min_size, max_size, rpn_*,
box_*, ...) passes through **kwargs, so a comparison changes exactly one thing.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from torch import nn
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling.backbones import (
    BackboneSpec,
    PathLike,
    backbone_spec,
    build_backbone,
    read_state_dict,
)
from dynrcnn.modeling.cascade_roi_heads import CascadeRoIHeads
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads

ARCHS: Tuple[str, ...] = (
    "faster_rcnn", "dynamic_rcnn", "cascade_rcnn", "mask_rcnn", "dynamic_mask_rcnn")
DYNAMIC_ARCHS = frozenset({"dynamic_rcnn", "dynamic_mask_rcnn"})
MASK_ARCHS = frozenset({"mask_rcnn", "dynamic_mask_rcnn"})
DYNAMIC_RPN_NMS_THRESH = 0.85  # the paper's RPN NMS for Dynamic R-CNN (torchvision: 0.7)

# kwargs of CascadeRoIHeads, passed as cascade_<name>
_CASCADE_KWARGS = ("iou_thresholds", "stage_loss_weights", "bbox_reg_weights", "box_loss_beta")
# FasterRCNN kwargs that have no meaning for the cascade's own heads
_NOT_FOR_CASCADE = ("box_head", "box_predictor", "box_fg_iou_thresh", "box_bg_iou_thresh",
                    "bbox_reg_weights")
_NOT_FOR_DYNAMIC = ("box_fg_iou_thresh", "box_bg_iou_thresh")


def _default_heads(arch: str, spec: BackboneSpec, out_channels: int, num_classes: Optional[int],
                   kwargs: Dict[str, Any]) -> None:
    """Build the backbone's preferred head sizes when they differ from torchvision's defaults
    and the caller chose no heads (torchvision then needs num_classes=None, so the box and
    mask predictors are both built here)."""
    torchvision_mask = ((256, 256, 256, 256), 256)
    custom_box = spec.representation_size != 1024
    custom_mask = arch in MASK_ARCHS and (spec.mask_layers, spec.mask_dim_reduced) != \
        torchvision_mask
    user_heads = any(k in kwargs for k in ("box_head", "box_predictor", "mask_head",
                                           "mask_predictor"))
    if arch == "cascade_rcnn" or user_heads or num_classes is None or not (custom_box
                                                                           or custom_mask):
        return
    resolution = _roi_resolution(kwargs)
    kwargs["box_head"] = TwoMLPHead(out_channels * resolution**2, spec.representation_size)
    kwargs["box_predictor"] = FastRCNNPredictor(spec.representation_size, num_classes)
    if arch in MASK_ARCHS:
        kwargs["mask_head"] = MaskRCNNHeads(out_channels, spec.mask_layers, 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(spec.mask_layers[-1],
                                                     spec.mask_dim_reduced, num_classes)


def _roi_resolution(kwargs: Dict[str, Any]) -> int:
    pool = kwargs.get("box_roi_pool")
    return 7 if pool is None else int(pool.output_size[0])


def _use_predictor_classes(kwargs: Dict[str, Any], num_classes: Optional[int]) -> Optional[int]:
    """torchvision wants num_classes=None when a box predictor is given."""
    return None if "box_predictor" in kwargs else num_classes


def _is_dynamic(key: str) -> bool:
    return ".dynamic_state." in f".{key}"


def weights_mismatch(model: nn.Module, state: Mapping[str, Any]) -> Optional[str]:
    """Why `state` does not load strictly into `model`, or None when it does.

    DynamicState buffers (T, beta and their histories) are exempt: a Faster R-CNN
    checkpoint loads into a Dynamic R-CNN (T and beta keep their initial values) and a
    Dynamic R-CNN one into a Faster R-CNN (T and beta are dropped); DynamicState itself
    drops a history of another length, with a warning. Any other missing, unexpected or
    differently shaped tensor is a mismatch.
    """
    own = model.state_dict()
    reshaped = [k for k in state if k in own and not _is_dynamic(k)
                and tuple(own[k].shape) != tuple(state[k].shape)]
    if reshaped:
        key = reshaped[0]
        return (f"{key} is {list(state[key].shape)} in the file, {list(own[key].shape)} in "
                "the model")
    missing = [k for k in own if k not in state and not _is_dynamic(k)]
    unexpected = [k for k in state if k not in own and not _is_dynamic(k)]
    if missing or unexpected:
        return f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
    return None


def load_detector_weights(model: nn.Module, path: PathLike) -> None:
    """Load a local detector checkpoint strictly, except for DynamicState buffers (see
    `weights_mismatch`)."""
    state = read_state_dict(path)
    why = weights_mismatch(model, state)
    if why is not None:
        raise RuntimeError(f"weights file {str(path)!r} does not fit the model: {why}")
    model.load_state_dict(state, strict=False)


def build_detector(
    arch: str,
    backbone: str = "resnet50_fpn",
    num_classes: Optional[int] = 91,
    weights: Optional[PathLike] = None,
    backbone_weights: Optional[PathLike] = None,
    dynamic: Optional[DynamicConfig] = None,
    **kwargs: Any,
) -> GeneralizedRCNN:
    """Build one of ARCHS on one of BACKBONES; never downloads anything.

    Args:
        arch: faster_rcnn (torchvision's: T=0.5, SmoothL1 beta 1/9), dynamic_rcnn,
            cascade_rcnn, mask_rcnn, dynamic_mask_rcnn.
        backbone: resnet50_fpn (the paper's), resnet101_fpn, resnet18_fpn, tiny_fpn (CPU demos).
        num_classes: including background.
        weights: local file with the whole detector's state_dict (or {'model': ...}). As in
            torchvision, any weights (these or backbone_weights) make a ResNet trunk use
            FrozenBatchNorm2d and train its last 3 stages (trainable_backbone_layers): this
            is for fine-tuning and evaluation; resume a run by load_state_dict on the model
            it was built as.
        backbone_weights: local file with the trunk's classification weights (torchvision's
            ImageNet ResNet files) or a backbone state_dict (body.*, fpn.*).
        dynamic: DynamicConfig of the dynamic variants (default: the paper's).
        **kwargs: torchvision FasterRCNN / MaskRCNN arguments (min_size, max_size, rpn_*,
            box_*, ...), trainable_backbone_layers, and for cascade_rcnn cascade_iou_thresholds,
            cascade_stage_loss_weights, cascade_bbox_reg_weights, cascade_box_loss_beta.
            The dynamic variants default rpn_nms_thresh to 0.85.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if dynamic is not None and arch not in DYNAMIC_ARCHS:
        raise ValueError(f"dynamic= applies to {sorted(DYNAMIC_ARCHS)}, not to {arch!r}")
    cascade_kwargs = {k: kwargs.pop(f"cascade_{k}") for k in _CASCADE_KWARGS
                      if f"cascade_{k}" in kwargs}
    if cascade_kwargs and arch != "cascade_rcnn":
        raise ValueError(f"cascade_* arguments apply to cascade_rcnn only, not to {arch!r}")
    banned = {"cascade_rcnn": _NOT_FOR_CASCADE}.get(
        arch, _NOT_FOR_DYNAMIC if arch in DYNAMIC_ARCHS else ())
    given = [k for k in banned if k in kwargs]
    if given:
        raise ValueError(f"{arch} does not use {given}")

    spec = backbone_spec(backbone)
    body = build_backbone(backbone, backbone_weights,
                          trainable_layers=kwargs.pop("trainable_backbone_layers", None),
                          pretrained=weights is not None or backbone_weights is not None)
    if arch in DYNAMIC_ARCHS:
        kwargs.setdefault("rpn_nms_thresh", DYNAMIC_RPN_NMS_THRESH)
    _default_heads(arch, spec, body.out_channels, num_classes, kwargs)
    model_cls = MaskRCNN if arch in MASK_ARCHS else FasterRCNN
    model = model_cls(body, _use_predictor_classes(kwargs, num_classes), **kwargs)

    if arch in DYNAMIC_ARCHS:
        model.roi_heads = DynamicRoIHeads.from_roi_heads(model.roi_heads, dynamic)
    elif arch == "cascade_rcnn":
        if num_classes is None:
            raise ValueError("cascade_rcnn needs num_classes")
        heads = model.roi_heads
        model.roi_heads = CascadeRoIHeads.build(
            heads.box_roi_pool,
            in_channels=body.out_channels * _roi_resolution(kwargs) ** 2,
            num_classes=num_classes,
            representation_size=spec.representation_size,
            batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
            positive_fraction=heads.fg_bg_sampler.positive_fraction,
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
            **cascade_kwargs,
        )
    if weights is not None:
        load_detector_weights(model, weights)
    return model
