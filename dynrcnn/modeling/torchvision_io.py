"""From a torchvision detector to Dynamic R-CNN and back.

At inference a Dynamic R-CNN *is* a Faster R-CNN (the paper's point: only training
differs), so:

- `make_dynamic(model)` turns any torchvision `FasterRCNN` / `MaskRCNN` (any backbone)
  into a Dynamic (Mask) R-CNN by swapping its `roi_heads` for `DynamicRoIHeads` that reuse
  its pooler, box head, predictor and mask branch: every weight is kept.
- `to_torchvision(model)` is the inverse: a stock torchvision model (built by the stock
  constructor where one builds this layout) with the trained weights and the same
  detections. DynamicState (T, beta, histories) is training state and is dropped.
- `torchvision_constructor(model)` names the constructor of `torchvision.models.detection`
  and the keyword arguments (every setting that differs from its defaults) that rebuild
  the model's layout; `export_torchvision` packs that with the weights into a file that
  plain torchvision loads strictly; `script_detector` gives a TorchScript module.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torchvision.models.detection as tv_detection
from torch import nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling.backbones import BACKBONE_SPECS
from dynrcnn.modeling.cpu_fast_path import use_cpu_fast_path, use_stock_modules
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads
from dynrcnn.modeling.weights import is_training_state, weights_mismatch

PAPER_RPN_NMS_THRESH = 0.85
# torchvision's fixed RoI-head IoU thresholds, given to a stock model made from a dynamic one
# (T is a training schedule, not a setting of the trained detector).
STOCK_BOX_IOU_THRESH = 0.5


class NoTorchvisionConstructor(ValueError):
    """No constructor of torchvision.models.detection builds this model's layout."""


def make_dynamic(model: FasterRCNN, dynamic: Optional[DynamicConfig] = None,
                 rpn_nms_thresh: Optional[float] = PAPER_RPN_NMS_THRESH) -> FasterRCNN:
    """Make a torchvision FasterRCNN / MaskRCNN train as Dynamic R-CNN, in place.

    `model.roi_heads` becomes a DynamicRoIHeads sharing its box_roi_pool, box_head,
    box_predictor and mask branch (no weight changes; the fixed fg/bg IoU thresholds give
    way to DLA's T). The RPN's NMS threshold is set to the paper's 0.85, which it uses for
    every experiment ("to relieve the scarcity of positives"; torchvision's default is 0.7):
    pass `rpn_nms_thresh=None` to keep the model's own, or another value. `dynamic` is the
    DynamicConfig (default: the paper's KI 75, Kbeta 10 per image, C 100). The DynamicState
    is put on the model's device. On the CPU the RPN's NMS and the RoI poolers also get
    dynrcnn's faster ops (torchvision's results bit for bit; see cpu_fast_path), which
    `to_torchvision` swaps back. Returns `model`.
    """
    if not isinstance(model, FasterRCNN):
        raise TypeError(f"make_dynamic takes a torchvision FasterRCNN or MaskRCNN, got "
                        f"{type(model).__name__}")
    heads = model.roi_heads
    if isinstance(heads, DynamicRoIHeads):
        raise ValueError("the model already has DynamicRoIHeads")
    if type(heads) is not RoIHeads:
        raise TypeError(f"make_dynamic needs torchvision's RoIHeads, the model has "
                        f"{type(heads).__name__}")
    if heads.has_keypoint():
        raise ValueError("Dynamic R-CNN has no keypoint branch: KeypointRCNN is not supported")
    device = next(model.parameters()).device
    model.roi_heads = DynamicRoIHeads.from_roi_heads(heads, dynamic).to(device)
    if rpn_nms_thresh is not None:
        model.rpn.nms_thresh = float(rpn_nms_thresh)
    use_cpu_fast_path(model)
    return model


def _stock_heads(heads: RoIHeads) -> RoIHeads:
    """torchvision RoIHeads sharing `heads`' modules and inference settings."""
    sampler = heads.fg_bg_sampler
    return RoIHeads(
        heads.box_roi_pool, heads.box_head, heads.box_predictor,
        STOCK_BOX_IOU_THRESH, STOCK_BOX_IOU_THRESH,
        sampler.batch_size_per_image, sampler.positive_fraction,
        heads.box_coder.weights, heads.score_thresh, heads.nms_thresh,
        heads.detections_per_img, mask_roi_pool=heads.mask_roi_pool,
        mask_head=heads.mask_head, mask_predictor=heads.mask_predictor)


def _check_convertible(model: nn.Module) -> None:
    if not isinstance(model, FasterRCNN):
        raise TypeError(f"expected a torchvision FasterRCNN / MaskRCNN (as dynrcnn builds "
                        f"them), got {type(model).__name__}")
    if type(model.roi_heads) not in (RoIHeads, DynamicRoIHeads):
        raise NoTorchvisionConstructor(
            f"{type(model.roi_heads).__name__} has no torchvision equivalent (Cascade "
            "R-CNN's three stages are not a torchvision model)")


# --------------------------------------------------------------------------- settings

def _matcher(attr: str, which: str) -> Callable[[FasterRCNN], Any]:
    return lambda m: getattr(getattr(m, attr).proposal_matcher, which)


def _sampler(attr: str, which: str) -> Callable[[FasterRCNN], Any]:
    return lambda m: getattr(getattr(m, attr).fg_bg_sampler, which)


# FasterRCNN keyword -> how to read its value off a built model.
_SETTINGS: Dict[str, Callable[[FasterRCNN], Any]] = {
    "min_size": lambda m: tuple(m.transform.min_size),
    "max_size": lambda m: m.transform.max_size,
    "image_mean": lambda m: [float(x) for x in m.transform.image_mean],
    "image_std": lambda m: [float(x) for x in m.transform.image_std],
    "size_divisible": lambda m: m.transform.size_divisible,
    "fixed_size": lambda m: m.transform.fixed_size,
    "rpn_pre_nms_top_n_train": lambda m: m.rpn._pre_nms_top_n["training"],
    "rpn_pre_nms_top_n_test": lambda m: m.rpn._pre_nms_top_n["testing"],
    "rpn_post_nms_top_n_train": lambda m: m.rpn._post_nms_top_n["training"],
    "rpn_post_nms_top_n_test": lambda m: m.rpn._post_nms_top_n["testing"],
    "rpn_nms_thresh": lambda m: m.rpn.nms_thresh,
    "rpn_fg_iou_thresh": _matcher("rpn", "high_threshold"),
    "rpn_bg_iou_thresh": _matcher("rpn", "low_threshold"),
    "rpn_batch_size_per_image": _sampler("rpn", "batch_size_per_image"),
    "rpn_positive_fraction": _sampler("rpn", "positive_fraction"),
    "rpn_score_thresh": lambda m: m.rpn.score_thresh,
    "box_score_thresh": lambda m: m.roi_heads.score_thresh,
    "box_nms_thresh": lambda m: m.roi_heads.nms_thresh,
    "box_detections_per_img": lambda m: m.roi_heads.detections_per_img,
    "box_fg_iou_thresh": _matcher("roi_heads", "high_threshold"),
    "box_bg_iou_thresh": _matcher("roi_heads", "low_threshold"),
    "box_batch_size_per_image": _sampler("roi_heads", "batch_size_per_image"),
    "box_positive_fraction": _sampler("roi_heads", "positive_fraction"),
    "bbox_reg_weights": lambda m: tuple(float(w) for w in m.roi_heads.box_coder.weights),
}
_DYNAMIC_ONLY = ("box_fg_iou_thresh", "box_bg_iou_thresh")  # DLA's T replaces them


def detector_settings(model: FasterRCNN) -> Dict[str, Any]:
    """The model's values of FasterRCNN's keyword arguments (see _SETTINGS)."""
    settings = {name: read(model) for name, read in _SETTINGS.items()}
    if isinstance(model.roi_heads, DynamicRoIHeads):
        settings.update({k: STOCK_BOX_IOU_THRESH for k in _DYNAMIC_ONLY})
    return settings


def _structure(model: FasterRCNN) -> Dict[str, Any]:
    """Settings no constructor keyword can carry: anchors, RoI poolers, and every
    parameter's name and shape (training state aside)."""
    anchors = model.rpn.anchor_generator
    pools = {name: (list(p.featmap_names), tuple(p.output_size), p.sampling_ratio)
             for name, p in (("box_roi_pool", model.roi_heads.box_roi_pool),
                             ("mask_roi_pool", model.roi_heads.mask_roi_pool))
             if p is not None}
    return {"anchor sizes": tuple(anchors.sizes),
            "anchor aspect ratios": tuple(anchors.aspect_ratios), **pools,
            "tensors": {k: tuple(v.shape) for k, v in model.state_dict().items()
                        if not is_training_state(k)}}


def _stock(name: str, device: str = "cpu", **kwargs: Any) -> FasterRCNN:
    """torchvision.models.detection.<name>(weights=None, weights_backbone=None, **kwargs);
    on the meta device it allocates nothing (settings and shapes only)."""
    with torch.device(device):
        return getattr(tv_detection, name)(weights=None, weights_backbone=None, **kwargs)


def _candidates(model: FasterRCNN) -> List[str]:
    column = 1 if isinstance(model, MaskRCNN) else 0
    names = [spec.torchvision[column] for spec in BACKBONE_SPECS.values()]
    return [n for n in dict.fromkeys(names) if n is not None]


def _first_difference(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[str]:
    for key in a:
        if key == "tensors":
            why = _first_difference(a[key], b[key]) or next(
                (f"{k} (only in the stock model)" for k in b[key] if k not in a[key]), None)
            if why:
                return why
        elif a[key] != b.get(key):
            return f"{key} {a[key]} (stock: {b.get(key)})"
    return None


@dataclass(frozen=True)
class TorchvisionConstructor:
    """`getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None,
    **kwargs)` builds the model's layout and settings (num_classes included)."""

    name: str
    kwargs: Dict[str, Any]


def torchvision_constructor(model: FasterRCNN) -> TorchvisionConstructor:
    """The stock constructor and keyword arguments that rebuild `model` (weights aside);
    raises NoTorchvisionConstructor naming the first difference when none does."""
    _check_convertible(model)
    cls_score = getattr(model.roi_heads.box_predictor, "cls_score", None)
    if not isinstance(cls_score, nn.Linear):
        raise NoTorchvisionConstructor(
            f"the box predictor {type(model.roi_heads.box_predictor).__name__} is not "
            "torchvision's FastRCNNPredictor; export it as TorchScript")
    ours, structure = detector_settings(model), _structure(model)
    num_classes = int(cls_score.out_features)
    why = "no candidate"
    for name in _candidates(model):
        default = _stock(name, "meta", num_classes=num_classes)
        why = _first_difference(structure, _structure(default))
        if why is not None:
            continue
        stock_settings = detector_settings(default)
        kwargs: Dict[str, Any] = {"num_classes": num_classes}
        kwargs.update({k: v for k, v in ours.items() if v != stock_settings[k]})
        if "min_size" in kwargs and len(kwargs["min_size"]) == 1:
            kwargs["min_size"] = kwargs["min_size"][0]
        rebuilt = detector_settings(_stock(name, "meta", **kwargs))
        wrong = [k for k in ours if rebuilt[k] != ours[k]]
        if wrong:  # a setting the constructor does not pass through as given
            why = f"{wrong[0]} {ours[wrong[0]]} (rebuilt: {rebuilt[wrong[0]]})"
            continue
        return TorchvisionConstructor(name, kwargs)
    raise NoTorchvisionConstructor(
        f"no torchvision.models.detection constructor builds this "
        f"{type(model).__name__} (last difference: {why}); export it as TorchScript")


def _stock_state(model: FasterRCNN, stock: FasterRCNN) -> Dict[str, torch.Tensor]:
    """`model`'s weights under the stock model's names: training state the stock model
    has and `model` lacks (num_batches_tracked of a FrozenBatchNorm2d trunk) keeps the
    stock value."""
    state = {k: v for k, v in model.state_dict().items() if ".dynamic_state." not in f".{k}"}
    why = weights_mismatch(stock, state)
    if why is not None:  # torchvision_constructor compared every shape: a bug if reached
        raise RuntimeError(f"weights do not fit the stock model: {why}")
    full = stock.state_dict()
    full.update({k: v.detach().to("cpu") for k, v in state.items() if k in full})
    return full


def _stock_with_weights(model: FasterRCNN, spec: TorchvisionConstructor) -> FasterRCNN:
    """The stock constructor's model (on the CPU) with `model`'s weights, strictly."""
    stock = _stock(spec.name, **spec.kwargs)
    stock.load_state_dict(_stock_state(model, stock))
    return stock


def to_torchvision(model: FasterRCNN) -> FasterRCNN:
    """A stock torchvision detector with `model`'s weights and detections; `model` is
    left as it is.

    Where a constructor of torchvision.models.detection builds the layout (R-50-FPN, its
    v2, MobileNetV3-Large-FPN: see `torchvision_constructor`), the result is what that
    constructor builds (weights=None: BatchNorm2d, every layer trainable) with the weights
    loaded, so its state_dict loads strictly into the stock constructor. Otherwise (a
    backbone torchvision has no detector for) it is a copy of `model` with torchvision's
    RoIHeads: a plain FasterRCNN / MaskRCNN object, scriptable, with no constructor to
    rebuild it. On `model`'s device, in its train/eval mode.
    """
    _check_convertible(model)
    device = next(model.parameters()).device
    try:
        spec = torchvision_constructor(model)
    except NoTorchvisionConstructor:
        stock = use_stock_modules(copy.deepcopy(model))
        if isinstance(stock.roi_heads, DynamicRoIHeads):
            stock.roi_heads = _stock_heads(stock.roi_heads)
        return stock
    return _stock_with_weights(model, spec).to(device).train(model.training)


def export_torchvision(model: FasterRCNN,
                       categories: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The content of a file plain torchvision reads (torch.load(weights_only=True)):
    {"constructor", "kwargs", "state_dict", "categories"}, such that
    `getattr(torchvision.models.detection, f["constructor"])(weights=None,
    weights_backbone=None, **f["kwargs"]).load_state_dict(f["state_dict"])` loads strictly.

    Args:
        model: a detector with a torchvision constructor (see `torchvision_constructor`;
            NoTorchvisionConstructor otherwise).
        categories: [{"id", "name"}] by label (label k is entry k - 1), stored as they are.
    """
    spec = torchvision_constructor(model)
    stock = _stock_with_weights(model, spec)
    return {"constructor": spec.name, "kwargs": dict(spec.kwargs),
            "state_dict": stock.state_dict(), "categories": list(categories or [])}


def script_detector(model: FasterRCNN) -> torch.jit.ScriptModule:
    """TorchScript of the stock version of `model` (see `to_torchvision`), in eval mode.

    `torch.jit.load` reads it without dynrcnn (torchvision must be imported first for its
    nms / roi_align ops). As any scripted torchvision detector it returns
    (losses, detections)."""
    stock = to_torchvision(model).cpu().eval()
    with warnings.catch_warnings():  # asked for explicitly: torch's deprecation notice aside
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        return torch.jit.script(stock)
