"""Models and datasets from configs (the only engine module that knows dynrcnn.data and
dynrcnn.modeling; both are imported when a function runs, so the engine imports without
them)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from torch import nn

from dynrcnn.dynamic import DynamicState
from dynrcnn.engine.checkpoint import load_checkpoint
from dynrcnn.engine.config import EvalConfig, TrainConfig, config_from_dict

MASK_ARCHS = frozenset({"mask_rcnn", "dynamic_mask_rcnn"})
DYNAMIC_ARCHS = frozenset({"dynamic_rcnn", "dynamic_mask_rcnn"})


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def get_dynamic_state(model: nn.Module) -> Optional[DynamicState]:
    """model.roi_heads.dynamic_state of the dynamic detectors, else None."""
    state = getattr(getattr(unwrap(model), "roi_heads", None), "dynamic_state", None)
    return state if isinstance(state, DynamicState) else None


def has_masks(model: nn.Module) -> bool:
    heads = getattr(unwrap(model), "roi_heads", None)
    return bool(heads is not None and hasattr(heads, "has_mask") and heads.has_mask())


def _coco_dataset(images: Optional[str], ann: Optional[str], train: bool, masks: bool,
                  what: str) -> Any:
    if not images or not ann:
        raise ValueError(f"no {what} data: set data_dir, or both {what}_images and {what}_ann")
    for path in (images, ann):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} data path {path!r} does not exist")
    from dynrcnn.data import CocoDetection

    return CocoDetection(images, ann, train=train, transforms=None, masks=masks)


def build_train_dataset(config: TrainConfig) -> Any:
    paths = config.data_paths()
    return _coco_dataset(paths["train_images"], paths["train_ann"], True,
                         config.arch in MASK_ARCHS, "train")


def build_val_dataset(config: TrainConfig | EvalConfig) -> Any:
    """Without masks even for mask models: COCOeval scores segm against the annotation
    file's own polygons / RLE, so rasterizing ground-truth masks would be wasted work."""
    paths = config.data_paths()
    return _coco_dataset(paths["val_images"], paths["val_ann"], False, False, "val")


def _model_kwargs(config: TrainConfig | EvalConfig) -> Dict[str, Any]:
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("min_size", config.min_size)
    kwargs.setdefault("max_size", config.max_size)
    return kwargs


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The detector of a training config (weights / backbone_weights loaded if set)."""
    from dynrcnn.modeling import build_detector

    return build_detector(
        config.arch, backbone=config.backbone, num_classes=num_classes,
        weights=config.weights, backbone_weights=config.backbone_weights,
        dynamic=config.dynamic if config.arch in DYNAMIC_ARCHS else None,
        **_model_kwargs(config))


def load_model_for_eval(config: EvalConfig) -> Tuple[nn.Module, Dict[str, Any]]:
    """The detector in `config.weights`, on the CPU, in eval mode.

    A training checkpoint (model_*.pth) rebuilds the architecture from the TrainConfig saved
    in it. Models are built without weights files and then loaded strictly: a trunk trained
    with FrozenBatchNorm2d loads into BatchNorm2d (which behaves the same in eval mode), so
    the original weight files need not exist any more. Returns (model, description).
    """
    from dynrcnn.modeling import build_detector, load_detector_weights

    if not config.weights:
        raise ValueError("weights: the checkpoint to evaluate is required")
    ckpt = load_checkpoint(config.weights)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "model" in ckpt:
        train_cfg = config_from_dict(TrainConfig, ckpt["config"])
        arch, backbone, num_classes = train_cfg.arch, train_cfg.backbone, train_cfg.num_classes
        kwargs = _model_kwargs(train_cfg)
        dynamic = train_cfg.dynamic if arch in DYNAMIC_ARCHS else None
    else:
        arch, backbone, num_classes = config.arch, config.backbone, config.num_classes
        kwargs, dynamic = _model_kwargs(config), None
    if num_classes is None:
        raise ValueError("num_classes is unknown: set it (background included)")
    model = build_detector(arch, backbone=backbone, num_classes=num_classes, dynamic=dynamic,
                           **kwargs)
    if dynamic is not None:
        model.load_state_dict(ckpt["model"])
    else:  # strict except for T / beta buffers, whose size depends on the run's interval
        load_detector_weights(model, config.weights)
    model.eval()
    info = {"arch": arch, "backbone": backbone, "num_classes": num_classes,
            "iteration": ckpt.get("iteration") if isinstance(ckpt, dict) else None}
    return model, info
