"""`build_detector`: every detector of the comparison from one function.

All five architectures are torchvision FasterRCNN / MaskRCNN models on the same backbone, RPN
and transform; only the RoI heads differ (and the RPN NMS threshold of the dynamic variants,
0.85 as in the paper). Every torchvision constructor argument (min_size, max_size, rpn_*,
box_*, ...) passes through **kwargs, so a comparison changes exactly one thing.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling.backbones import BackboneSpec, PathLike, backbone_spec, build_backbone
from dynrcnn.modeling.cascade_roi_heads import CascadeRoIHeads
from dynrcnn.modeling.cpu_fast_path import use_cpu_fast_path
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads
from dynrcnn.modeling.weights import init_from_file, load_detector_weights

_LOG = logging.getLogger("dynrcnn.modeling")

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


def _layout_defaults(arch: str, spec: BackboneSpec, out_channels: int,
                     kwargs: Dict[str, Any]) -> None:
    """The modules torchvision builds around this backbone (layouts.py), where the caller
    gave none; the cascade keeps its own box heads."""
    if spec.layout is None:
        return
    modules = spec.layout(out_channels, arch in MASK_ARCHS, box_heads=arch != "cascade_rcnn",
                          roi_resolution=_roi_resolution(kwargs))
    for name, module in modules.items():
        kwargs.setdefault(name, module)


def _roi_resolution(kwargs: Dict[str, Any]) -> int:
    pool = kwargs.get("box_roi_pool")
    return 7 if pool is None else int(pool.output_size[0])


def _use_predictor_classes(kwargs: Dict[str, Any], num_classes: Optional[int]) -> Optional[int]:
    """torchvision wants num_classes=None when a box predictor is given."""
    return None if "box_predictor" in kwargs else num_classes


def build_detector(
    arch: str,
    backbone: str = "resnet50_fpn",
    num_classes: Optional[int] = 91,
    weights: Optional[PathLike] = None,
    backbone_weights: Optional[PathLike] = None,
    dynamic: Optional[DynamicConfig] = None,
    init_weights: Optional[PathLike] = None,
    pretrained: Optional[bool] = None,
    **kwargs: Any,
) -> GeneralizedRCNN:
    """Build one of ARCHS on one of BACKBONES; never downloads anything.

    Args:
        arch: faster_rcnn (torchvision's: T=0.5, SmoothL1 beta 1/9), dynamic_rcnn,
            cascade_rcnn, mask_rcnn, dynamic_mask_rcnn.
        backbone: resnet50_fpn (the paper's), resnet50_fpn_v2 and mobilenet_v3_large_fpn
            (torchvision's layouts of those names, heads and anchors included),
            resnet101_fpn, resnet18_fpn, tiny_fpn (CPU demos).
        num_classes: including background.
        weights: local file with the whole detector's state_dict (or {'model': ...}). As in
            torchvision, any weights (these or backbone_weights) make a ResNet trunk use
            FrozenBatchNorm2d and train its last 3 stages (trainable_backbone_layers): this
            is for fine-tuning and evaluation; resume a run by load_state_dict on the model
            it was built as.
        backbone_weights: local file with the trunk's classification weights (torchvision's
            ImageNet ResNet files) or a backbone state_dict (`body.*`, `fpn.*`).
        dynamic: DynamicConfig of the dynamic variants (default: the paper's).
        init_weights: local detector checkpoint to fine-tune from, e.g. a torchvision
            model's saved state_dict with other classes: what fits by name and shape loads,
            the class-dependent predictor layers re-initialize, anything else that does not
            fit is an error (see modeling.weights); one line saying what was not loaded is
            logged as a warning. Like `weights`, it makes ResNet trunks pretrained.
        pretrained: build the trunk for fine-tuning (FrozenBatchNorm2d, the last
            trainable_backbone_layers stages trained) or from scratch (BatchNorm2d, all
            trained); default: whether any weights file above is given.
        kwargs: torchvision FasterRCNN / MaskRCNN arguments (min_size, max_size, `rpn_*`,
            `box_*`, ...), trainable_backbone_layers, and for cascade_rcnn cascade_iou_thresholds,
            cascade_stage_loss_weights, cascade_bbox_reg_weights, cascade_box_loss_beta.
            The dynamic variants default rpn_nms_thresh to 0.85.

    On the CPU the RPN's proposal filter and the RoI poolers use dynrcnn's ops
    (`cpu_fast_path`: torchvision's results bit for bit, a training step about twice as
    fast); `use_stock_modules(model)` gives torchvision's modules back.
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

    if weights is not None and init_weights is not None:
        raise ValueError("give weights (strict: the same model) or init_weights "
                         "(fine-tuning), not both")
    spec = backbone_spec(backbone)
    if pretrained is None:
        pretrained = any(w is not None for w in (weights, backbone_weights, init_weights))
    body = build_backbone(backbone, backbone_weights,
                          trainable_layers=kwargs.pop("trainable_backbone_layers", None),
                          pretrained=pretrained)
    if arch in DYNAMIC_ARCHS:
        kwargs.setdefault("rpn_nms_thresh", DYNAMIC_RPN_NMS_THRESH)
    _layout_defaults(arch, spec, body.out_channels, kwargs)
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
    # torchvision's results, faster on the CPU: the RPN's NMS and roi_align (cpu_fast_path)
    use_cpu_fast_path(model)
    if weights is not None:
        load_detector_weights(model, weights)
    if init_weights is not None:
        report = init_from_file(model, init_weights)
        if report.reinitialized or report.fresh or report.skipped:
            _LOG.warning(report.summary(str(init_weights)))
    return model
