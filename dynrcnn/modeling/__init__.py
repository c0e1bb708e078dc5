"""Detectors on torchvision.models.detection: Faster R-CNN (baseline), Dynamic R-CNN,
Cascade R-CNN, Mask R-CNN and Dynamic Mask R-CNN.

This is the only part of dynrcnn that imports torchvision (`import dynrcnn` does not).
"""

from typing import Tuple

from dynrcnn.modeling.backbones import BACKBONES, build_backbone
from dynrcnn.modeling.builder import ARCHS, build_detector, load_detector_weights
from dynrcnn.modeling.cascade_roi_heads import AgnosticPredictor, CascadeRoIHeads
from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads, dynamic_fastrcnn_loss


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
    "available_archs",
    "available_backbones",
    "build_backbone",
    "build_detector",
    "dynamic_fastrcnn_loss",
    "load_detector_weights",
]
