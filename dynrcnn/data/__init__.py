"""COCO-format data for the detectors: the data set, transforms, and a synthetic generator.

Nothing here imports pycocotools or torchvision at import time: CocoDetection imports
pycocotools when a data set is built. The synthetic generator's names load on first use, so
that `python -m dynrcnn.data.synthetic` runs the module once.
"""

from typing import Any

from dynrcnn.data.coco import (
    CocoDetection,
    DatasetError,
    DatasetWarning,
    load_annotation_json,
    rgb8_pixels,
)
from dynrcnn.data.transforms import (
    Compose,
    GroupedBatchSampler,
    RandomHorizontalFlip,
    ToTensor,
    aspect_ratio_group_ids,
    collate_fn,
    detection_transforms,
    hflip,
)

__all__ = [
    "rgb8_pixels",
    "SHAPE_CLASSES",
    "CocoDetection",
    "Compose",
    "DatasetError",
    "DatasetWarning",
    "GroupedBatchSampler",
    "RandomHorizontalFlip",
    "SyntheticCoco",
    "SyntheticConfig",
    "ToTensor",
    "aspect_ratio_group_ids",
    "collate_fn",
    "detection_transforms",
    "hflip",
    "load_annotation_json",
    "make_synthetic_coco",
]

_SYNTHETIC = ("SHAPE_CLASSES", "SyntheticCoco", "SyntheticConfig", "make_synthetic_coco")


def __getattr__(name: str) -> Any:
    if name in _SYNTHETIC:
        from dynrcnn.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
