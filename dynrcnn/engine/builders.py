"""Models and datasets from configs (the only engine module that knows dynrcnn.data and
dynrcnn.modeling; both are imported when a function runs, so the engine imports without
them).

Input errors a user can fix (a missing path, a file that is no checkpoint, a data set whose
classes differ from the model's) raise UsageError naming the flag and the file."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from dynrcnn.dynamic import DynamicState
from dynrcnn.engine.checkpoint import Checkpointer, load_checkpoint
from dynrcnn.engine.config import EvalConfig, TrainConfig, UsageError, config_from_dict

MASK_ARCHS = frozenset({"mask_rcnn", "dynamic_mask_rcnn"})
DYNAMIC_ARCHS = frozenset({"dynamic_rcnn", "dynamic_mask_rcnn"})
# What an EvalConfig's unset model fields mean for a bare state_dict.
BARE_DEFAULTS = {"arch": "dynamic_rcnn", "backbone": "resnet50_fpn", "min_size": 800,
                 "max_size": 1333}
_HISTORIES = ("dynamic_state.iou_hist", "dynamic_state.err_hist")


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


# --------------------------------------------------------------------------- data


def _coco_dataset(images: Optional[str], ann: Optional[str], train: bool, masks: bool,
                  what: str) -> Any:
    if not images or not ann:
        raise UsageError(f"no {what} data: give --data-dir, or both --{what}-images and "
                         f"--{what}-ann")
    for path, flag in ((images, f"--{what}-images"), (ann, f"--{what}-ann")):
        if not os.path.exists(path):
            raise UsageError(f"{flag} {path} does not exist (from --data-dir or {flag})")
    from dynrcnn.data import CocoDetection

    dataset = CocoDetection(images, ann, train=train, transforms=None, masks=masks)
    dataset.check_image_files()  # one stat per image: fail now, not hours into the run
    if train and dataset.count_boxes() == 0:  # it would train to the end on nothing
        total = len(dataset.coco.dataset.get("annotations", []))
        raise UsageError(f"--{what}-ann {ann}: no box to train on (of its {total} "
                         "annotations none is a usable non-crowd box: iscrowd 1 and "
                         "degenerate boxes are not trained on)")
    return dataset


def build_train_dataset(config: TrainConfig) -> Any:
    paths = config.data_paths()
    return _coco_dataset(paths["train_images"], paths["train_ann"], True,
                         config.arch in MASK_ARCHS, "train")


def build_val_dataset(config: TrainConfig | EvalConfig) -> Any:
    """Without masks even for mask models: COCOeval scores segm against the annotation
    file's own polygons / RLE, so rasterizing ground-truth masks would be wasted work."""
    paths = config.data_paths()
    return _coco_dataset(paths["val_images"], paths["val_ann"], False, False, "val")


def dataset_categories(dataset: Any) -> Optional[List[Dict[str, Any]]]:
    """[{id, name}] by label (label k is entry k - 1) of a CocoDetection-like dataset,
    stored in checkpoints so predictions name the data set's classes; None if unknown."""
    cat_ids = getattr(dataset, "cat_ids", None)
    names = getattr(dataset, "class_names", None)
    if cat_ids is None or names is None:
        return None
    return [{"id": int(c), "name": str(n)} for c, n in zip(cat_ids, names[1:])]


def check_categories(dataset: Any, num_classes: int,
                     categories: Optional[List[Dict[str, Any]]], ann_flag: str,
                     weights: str) -> None:
    """UsageError unless `dataset`'s classes are the model's: the same category ids as the
    checkpoint's, or (without them) the same number of classes."""
    ann = getattr(dataset, "annotation_file", "the data set")
    if categories is not None and getattr(dataset, "cat_ids", None) is not None:
        model_ids = [int(c["id"]) for c in categories]
        if list(dataset.cat_ids) != model_ids:
            raise UsageError(f"{ann_flag} {ann} has category ids {_ids(dataset.cat_ids)}, "
                             f"the model in --weights {weights} was trained on "
                             f"{_ids(model_ids)}")
        return
    if int(dataset.num_classes) != int(num_classes):
        raise UsageError(f"{ann_flag} {ann} has {dataset.num_classes - 1} classes, the model "
                         f"in --weights {weights} has {num_classes - 1} (background aside)")


def check_val_categories(train: Any, val: Any) -> None:
    """UsageError unless the val set has the training set's category ids (the model's
    labels map to those ids: any other val set fails at its first evaluation)."""
    t, v = getattr(train, "cat_ids", None), getattr(val, "cat_ids", None)
    if t is not None and v is not None and list(t) != list(v):
        raise UsageError(f"--val-ann {getattr(val, 'annotation_file', '')} has category ids "
                         f"{_ids(v)}, the training set "
                         f"{getattr(train, 'annotation_file', '')} has {_ids(t)}: "
                         "evaluation needs the same categories")


def categories_from_ann(ann: str, num_classes: int) -> List[Dict[str, Any]]:
    """[{id, name}] by label from a COCO annotation file (labels are the sorted category ids
    numbered from 1, as dynrcnn.data.CocoDetection assigns them); UsageError naming --ann
    unless it has the model's class count."""
    try:
        with open(ann) as f:
            cats = sorted(json.load(f).get("categories", []), key=lambda c: c["id"])
        result = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in cats]
    except FileNotFoundError:
        raise UsageError(f"--ann {ann}: no such file") from None
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise UsageError(f"--ann {ann} is not a COCO annotation file ({exc})") from None
    if len(result) != num_classes - 1:
        raise UsageError(f"--ann {ann} has {len(result)} categories, the model has "
                         f"{num_classes - 1} classes (background aside)")
    return result


def _ids(ids: Any) -> str:
    ids = [int(i) for i in ids]
    return str(ids) if len(ids) <= 12 else f"[{', '.join(map(str, ids[:12]))}, ...]"


# --------------------------------------------------------------------------- weights


def read_weights_file(path: str, flag: str = "--weights") -> Any:
    """torch.load of a checkpoint or state_dict file, with one-line errors naming it."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file" if not os.path.exists(path) else
                         f"{flag} {path} is not a file")
    try:
        obj = load_checkpoint(path)
    except Exception as exc:  # torch.load raises many types for a file it cannot read
        raise UsageError(f"{flag} {path} is not a checkpoint or state_dict file: "
                         f"torch.load(weights_only=True) cannot read it "
                         f"({type(exc).__name__})") from None
    state = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UsageError(f"{flag} {path} is neither a dynrcnn training checkpoint "
                         "(model_*.pth) nor a detector state_dict (a mapping of parameter "
                         "names to tensors)")
    return obj


def _state_of(obj: Any) -> Dict[str, torch.Tensor]:
    return dict(obj.get("model", obj.get("state_dict", obj)))


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Load a detector state_dict strictly, except for training state (DynamicState
    buffers, BatchNorm's num_batches_tracked: the rule is modeling's `weights_mismatch`); a
    mismatch is a UsageError naming --weights."""
    from dynrcnn.modeling.weights import load_state_loosely, weights_mismatch

    why = weights_mismatch(model, state)
    if why is not None:
        raise UsageError(f"--weights {path} does not fit the model: {why} (another "
                         "--num-classes, --arch or --backbone?)")
    load_state_loosely(model, state)


# --------------------------------------------------------------------------- models


def _model_kwargs(config: TrainConfig | EvalConfig) -> Dict[str, Any]:
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("min_size", config.min_size)
    kwargs.setdefault("max_size", config.max_size)
    return kwargs


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The detector of a training `config` (weights / init_weights / backbone_weights loaded
    if set), with `num_classes` classes including background (the config's num_classes,
    or the training set's). Weights of a Dynamic R-CNN trained with another interval load
    without its history. With init_weights, the main process prints one line saying what
    loaded and what was re-initialized."""
    from dynrcnn.modeling import build_detector

    dynamic = config.dynamic if config.arch in DYNAMIC_ARCHS else None
    weights = read_weights_file(config.weights) if config.weights else None
    # pretrained: a trunk fine-tuned from init_weights or started from weights is built as
    # build_detector builds it for them (frozen BN, trainable_backbone_layers); the loading
    # is done here so that its line and its errors name the flag.
    model = build_detector(
        config.arch, backbone=config.backbone, num_classes=num_classes,
        backbone_weights=config.backbone_weights, dynamic=dynamic,
        pretrained=True if (config.init_weights or config.weights) else None,
        **_model_kwargs(config))
    if weights is not None:  # strict, but one line naming --weights when it does not fit
        load_weights(model, _state_of(weights), config.weights)
    # A resumed run continues from its checkpoint, which holds the fine-tuned weights: the
    # init file is not read again (it may be gone by then).
    resuming = config.resume and bool(Checkpointer(config.out_dir).newest_first())
    if config.init_weights and not resuming:
        line = init_fine_tuning(model, config.init_weights)
        if int(os.environ.get("RANK", "0")) == 0:
            print(line, flush=True)
    return model


def init_fine_tuning(model: nn.Module, path: str) -> str:
    """Load the fitting tensors of `path` into `model` (modeling.weights's fine-tuning
    rule); returns the one line saying what loaded and what did not. A file that does not
    fit beyond a class-count change is a UsageError naming --init-weights and the tensor."""
    from dynrcnn.modeling.weights import InitWeightsError, load_fitting_weights

    state = _state_of(read_weights_file(path, flag="--init-weights"))
    try:
        report = load_fitting_weights(model, state)
    except InitWeightsError as exc:
        raise UsageError(f"--init-weights {path} does not fit the model: {exc} (another "
                         "--arch or --backbone?)") from None
    return report.summary(path)


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) and \
        "model" in obj


def load_model_for_eval(config: EvalConfig) -> Tuple[nn.Module, Dict[str, Any]]:
    """The detector in `config.weights`, on the CPU, in eval mode.

    A training checkpoint (model_*.pth) rebuilds the architecture from the TrainConfig saved
    in it; arch/backbone/num_classes given in `config` must agree with it, min_size/max_size/
    model_kwargs given there override the test-time settings. Models are built without
    weights files and then loaded: a trunk trained with FrozenBatchNorm2d loads into
    BatchNorm2d (which behaves the same in eval mode), so the original weight files need
    not exist any more. Returns (model, info): arch, backbone, num_classes, iteration and
    categories ([{id, name}] by label, when the checkpoint has them).
    """
    from dynrcnn.modeling import build_detector
    from dynrcnn.modeling.model_kwargs import check_model_kwargs

    if not config.weights:
        raise UsageError("--weights is required: the checkpoint (model_*.pth) or state_dict")
    ckpt = read_weights_file(config.weights)
    categories = None
    if is_training_checkpoint(ckpt):
        train_cfg = config_from_dict(TrainConfig, {**ckpt["config"], "resume": False,
                                                   "overwrite": False})
        for name in ("arch", "backbone", "num_classes"):
            given, saved = getattr(config, name), getattr(train_cfg, name)
            if given is not None and given != saved:
                raise UsageError(f"--{name.replace('_', '-')} {given}: the training "
                                 f"checkpoint {config.weights} is {name}={saved} (drop "
                                 f"--{name.replace('_', '-')}, the checkpoint says it)")
        arch, backbone, num_classes = train_cfg.arch, train_cfg.backbone, train_cfg.num_classes
        kwargs = {**_model_kwargs(train_cfg), **config.model_kwargs}
        for name in ("min_size", "max_size"):
            if getattr(config, name) is not None:
                kwargs[name] = getattr(config, name)
        dynamic = train_cfg.dynamic if arch in DYNAMIC_ARCHS else None
        categories = ckpt.get("categories")
    else:
        values = {k: getattr(config, k) if getattr(config, k) is not None else v
                  for k, v in BARE_DEFAULTS.items()}
        arch, backbone, num_classes = values["arch"], values["backbone"], config.num_classes
        kwargs = dict(config.model_kwargs)
        kwargs.setdefault("min_size", values["min_size"])
        kwargs.setdefault("max_size", values["max_size"])
        dynamic = None
    if num_classes is None:
        raise UsageError(f"--num-classes is needed for the bare state_dict {config.weights} "
                         "(background included)")
    try:
        check_model_kwargs(arch, config.model_kwargs)
    except ValueError as exc:
        raise UsageError(f"--model-kwargs: {exc}") from None
    model = build_detector(arch, backbone=backbone, num_classes=num_classes, dynamic=dynamic,
                           **kwargs)
    load_weights(model, _state_of(ckpt), config.weights)
    model.eval()
    info = {"arch": arch, "backbone": backbone, "num_classes": num_classes,
            "iteration": ckpt.get("iteration") if isinstance(ckpt, Mapping) else None,
            "categories": categories}
    return model, info
