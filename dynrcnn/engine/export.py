"""`dynrcnn export`: a trained detector as a file that needs no dynrcnn.

Formats (the conversions themselves live in dynrcnn.modeling.torchvision_io):
- torchvision: torch.save of {"constructor", "kwargs", "state_dict", "categories"};
  `getattr(torchvision.models.detection, f["constructor"])(weights=None,
  weights_backbone=None, **f["kwargs"]).load_state_dict(f["state_dict"])` rebuilds the
  detector strictly in any process with torchvision (torch.load(weights_only=True) reads
  it). Only for layouts torchvision has a constructor for (R-50-FPN, its v2,
  MobileNetV3-Large-FPN; Mask R-CNN on the first two).
- torchscript: torch.jit.save of the scripted stock detector (any backbone, Cascade R-CNN
  aside); `torch.jit.load` reads it after `import torchvision` (for its ops), and the
  category list is stored beside it in the archive as extra file `categories.json`.
- onnx: the detector for one fixed [3, S, S] image, S = its min_size (see
  dynrcnn.modeling.onnx_io for why); categories and S in the ONNX metadata. Needs `onnx`.

The output is written atomically (a temporary file renamed into place). TorchScript is
deprecated upstream (torch.jit.load warns so) but works in the torch versions dynrcnn supports.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from dynrcnn.engine.builders import categories_from_ann, load_model_for_eval
from dynrcnn.engine.checkpoint import atomic_open, atomic_save, refuse_overwrite
from dynrcnn.engine.config import EvalConfig, UsageError

EXPORT_FORMATS: Tuple[str, ...] = ("torchvision", "torchscript", "onnx")


@dataclass
class ExportConfig:
    """What to export, and how. arch/backbone/num_classes/min_size/max_size describe a
    bare state_dict as for `dynrcnn eval` (a training checkpoint says them itself; sizes
    given here override its test-time sizes); `ann` names the classes of a bare
    state_dict (a COCO annotation file with the model's categories)."""

    weights: str
    out: str
    format: str = "torchvision"
    arch: Optional[str] = None
    backbone: Optional[str] = None
    num_classes: Optional[int] = None
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    ann: Optional[str] = None


def _save_scripted(module: torch.jit.ScriptModule, categories: List[Dict[str, Any]],
                   path: str) -> None:
    with atomic_open(path) as f, warnings.catch_warnings():
        # The user asked for TorchScript; torch's deprecation notice adds nothing here
        # (the README says TorchScript is deprecated upstream).
        warnings.filterwarnings("ignore", r"`torch\.jit\.save` is deprecated", FutureWarning)
        torch.jit.save(module, f, _extra_files={"categories.json": json.dumps(categories)})


def export_model(config: ExportConfig) -> str:
    """Write the detector of `config.weights` to `config.out` in `config.format`; returns
    a one-line description of what was written. Bad input raises UsageError."""
    from dynrcnn.modeling import (
        NoTorchvisionConstructor,
        export_torchvision,
        script_detector,
    )

    if config.format not in EXPORT_FORMATS:
        raise UsageError(f"--format {config.format}: expected one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    if not config.out:
        raise UsageError("--out is required: the file to write")
    if os.path.isdir(config.out):
        raise UsageError(f"--out {config.out} is a directory; give a file name")
    refuse_overwrite(config.out, "--out", weights=config.weights)
    model, info = load_model_for_eval(EvalConfig(
        weights=config.weights, arch=config.arch, backbone=config.backbone,
        num_classes=config.num_classes, min_size=config.min_size,
        max_size=config.max_size))
    what = f"{info['arch']} on {info['backbone']}"
    if info["arch"] == "cascade_rcnn":
        raise UsageError(f"--weights {config.weights} is a cascade_rcnn: its three stages "
                         "are no torchvision detector, in neither format")
    categories = info["categories"]
    if config.ann:
        categories = categories_from_ann(config.ann, info["num_classes"])
    categories = list(categories or [])
    os.makedirs(os.path.dirname(os.path.abspath(config.out)), exist_ok=True)
    if config.format == "torchvision":
        try:
            exported = export_torchvision(model, categories)
        except NoTorchvisionConstructor:
            raise UsageError(f"--format torchvision: torchvision has no constructor for "
                             f"{what} (it has Faster R-CNN on resnet50_fpn, resnet50_fpn_v2, "
                             "mobilenet_v3_large_fpn and Mask R-CNN on the two ResNets); "
                             "use --format torchscript") from None
        atomic_save(exported, config.out)
        return (f"exported {what} to {config.out}: torchvision.models.detection."
                f"{exported['constructor']}(weights=None, weights_backbone=None, **kwargs) "
                f"with kwargs {exported['kwargs']}")
    if config.format == "onnx":
        from dynrcnn.modeling.onnx_io import export_onnx, onnx_input_size

        try:
            data = export_onnx(model, categories)
        except ImportError as exc:
            raise UsageError(f"--format onnx: {exc}") from None
        with atomic_open(config.out) as f:
            f.write(data)
        size = onnx_input_size(model)
        return (f"exported {what} to {config.out}: ONNX (opset 11) for one float image "
                f"[3, {size}, {size}] in [0, 1] -> boxes, labels, scores; resize images to "
                f"{size} x {size} first")
    _save_scripted(script_detector(model), categories, config.out)
    return f"exported {what} to {config.out}: TorchScript (torch.jit.load after import " \
        "torchvision; returns (losses, detections))"
