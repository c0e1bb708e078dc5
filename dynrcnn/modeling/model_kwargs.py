"""What `build_detector(arch, **kwargs)` accepts, checked by name and type before anything is
built: a misspelt key (`rpn_nms_tresh`) would otherwise be ignored by nothing and fail deep
in torchvision, or worse, a setting the user meant would silently not apply."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Dict, Mapping

# build_detector's own keyword arguments that are not torchvision's.
_OWN = {"trainable_backbone_layers": None}
# torchvision takes a sequence here as well as its default's type (an int).
_ALSO_SEQUENCE = {"min_size"}
_CASCADE_PREFIX = "cascade_"


def accepted_kwargs(arch: str) -> Dict[str, Any]:
    """Every keyword build_detector(arch, ...) passes on, with its default (None: any type):
    torchvision's FasterRCNN / MaskRCNN arguments, its transform's, and for cascade_rcnn
    cascade_<CascadeRoIHeads argument>."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from dynrcnn.modeling.builder import _CASCADE_KWARGS, MASK_ARCHS
    from dynrcnn.modeling.cascade_roi_heads import CascadeRoIHeads

    out: Dict[str, Any] = {}
    for fn in (GeneralizedRCNNTransform.__init__,
               MaskRCNN.__init__ if arch in MASK_ARCHS else FasterRCNN.__init__):
        for name, p in inspect.signature(fn).parameters.items():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in ("self", "backbone",
                                                                           "num_classes"):
                continue
            out[name] = None if p.default is inspect.Parameter.empty else p.default
    out.update(_OWN)
    for name in banned_kwargs(arch):
        out.pop(name, None)
    if arch == "cascade_rcnn":
        params = inspect.signature(CascadeRoIHeads.__init__).parameters
        for name in _CASCADE_KWARGS:
            default = params[name].default if name in params else None
            out[_CASCADE_PREFIX + name] = None if default is inspect.Parameter.empty else default
    return out


def banned_kwargs(arch: str) -> tuple:
    """torchvision arguments that `arch` replaces (build_detector refuses them)."""
    from dynrcnn.modeling.builder import _NOT_FOR_CASCADE, _NOT_FOR_DYNAMIC, DYNAMIC_ARCHS

    if arch == "cascade_rcnn":
        return _NOT_FOR_CASCADE
    return _NOT_FOR_DYNAMIC if arch in DYNAMIC_ARCHS else ()


def _type_error(default: Any, value: Any) -> str | None:
    """Why `value` cannot stand where torchvision's default is `default`, or None."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "a number"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "an integer"
    if isinstance(default, (tuple, list)):
        return None if isinstance(value, (tuple, list)) else "a list"
    return None


def check_model_kwargs(arch: str, kwargs: Mapping[str, Any]) -> None:
    """ValueError naming the first key build_detector(arch) does not take (with the nearest
    accepted names) or whose value has the wrong type for it."""
    accepted = accepted_kwargs(arch)
    banned = banned_kwargs(arch)
    for key, value in kwargs.items():
        if key in banned:
            why = ("DLA's T replaces it" if arch != "cascade_rcnn"
                   else "its three stages have their own")
            raise ValueError(f"{arch} does not use {key!r} ({why})")
        if key not in accepted:
            near = difflib.get_close_matches(key, list(accepted), n=2, cutoff=0.75)
            hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
            raise ValueError(f"{key!r} is not an argument of {arch}{hint}; it takes "
                             f"torchvision's FasterRCNN / MaskRCNN arguments")
        why = _type_error(accepted[key], value)
        if key in _ALSO_SEQUENCE and isinstance(value, (list, tuple)):
            why = None
        if why is not None:
            raise ValueError(f"{key} must be {why} (its default is {accepted[key]!r}), got "
                             f"{value!r}")
