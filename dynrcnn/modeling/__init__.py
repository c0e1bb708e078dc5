"""Detectors on torchvision.models.detection: Faster R-CNN (baseline), Dynamic R-CNN,
Cascade R-CNN, Mask R-CNN and Dynamic Mask R-CNN.

This is the only part of dynrcnn that imports torchvision (`import dynrcnn` does not).
"""

from typing import Tuple

from dynrcnn.modeling.backbones import BACKBONES, build_backbone
from dynrcnn.modeling.builder import ARCHS, build_detector
from dynrcnn.modeling.cascade_roi_heads import AgnosticPredictor, CascadeRoIHeads
from dynrcnn.modeling.cpu_fast_path import use_cpu_fast_path, use_stock_modules
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads, dynamic_fastrcnn_loss
from dynrcnn.modeling.torchvision_io import (
    NoTorchvisionConstructor,
    TorchvisionConstructor,
    export_torchvision,
    make_dynamic,
    script_detector,
    to_torchvision,
    torchvision_constructor,
)
from dynrcnn.modeling.weights import (
    InitReport,
    InitWeightsError,
    init_from_file,
    load_detector_weights,
    load_fitting_weights,
)

# Docstrings of the re-exported constants for the API reference (annotations only: the
# names stay bound to the imported tuples).
ARCHS: Tuple[str, ...]
"""The detectors build_detector builds (its `arch`): faster_rcnn (the baseline),
dynamic_rcnn, cascade_rcnn, mask_rcnn and dynamic_mask_rcnn."""
BACKBONES: Tuple[str, ...]
"""The backbones build_detector builds them on (its `backbone`)."""


def available_archs() -> Tuple[str, ...]:
    """Names accepted by build_detector's `arch`."""
    return ARCHS


def available_backbones() -> Tuple[str, ...]:
    """Names accepted by build_detector's `backbone`."""
    return BACKBONES


__all__ = [
    "ARCHS",
    "BACKBONES",
    "AgnosticPredictor",
    "CascadeRoIHeads",
    "DynamicRoIHeads",
    "InitReport",
    "InitWeightsError",
    "NoTorchvisionConstructor",
    "TorchvisionConstructor",
    "available_archs",
    "available_backbones",
    "build_backbone",
    "build_detector",
    "dynamic_fastrcnn_loss",
    "export_torchvision",
    "init_from_file",
    "load_detector_weights",
    "load_fitting_weights",
    "make_dynamic",
    "script_detector",
    "to_torchvision",
    "torchvision_constructor",
    "use_cpu_fast_path",
    "use_stock_modules",
]
