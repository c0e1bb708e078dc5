"""Helpers shared by the dynrcnn.data tests (test_data_*.py): tiny hand-written COCO files
and exact tensor comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from dynrcnn.data import CocoDetection

SYN_SIZE = (96, 128)  # (H, W): not square, so that H / W mix-ups show


def write_coco(root: Path, annotations: List[Dict[str, Any]],
               images: Optional[List[Dict[str, Any]]] = None,
               categories: Optional[List[Dict[str, Any]]] = None,
               name: str = "instances.json", write_images: bool = True) -> Path:
    """A tiny COCO file in root (default: two 40x30 images, categories 3, 7, 11) and its
    images in root/images."""
    if images is None:
        images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                  {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    if categories is None:
        categories = [{"id": 11, "name": "eleven"}, {"id": 3, "name": "three"},
                      {"id": 7, "name": "seven"}]
    (root / "images").mkdir(parents=True, exist_ok=True)
    if write_images:
        rng = np.random.default_rng(0)
        for img in images:
            pixels = rng.integers(0, 256, size=(img["height"], img["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / img["file_name"])
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


def ann(ann_id: int, image_id: int, cat: int, bbox: List[float], **extra: Any) -> Dict:
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": float(w * h), "iscrowd": 0, **extra}


def rect_polygon(x: float, y: float, w: float, h: float) -> List[List[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exact equality of dtype, shape and values (torch.testing is slow to import)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual, expected)
    assert torch.equal(actual, expected), (actual, expected)


def dataset(root: Path, path: Path, **kwargs: Any) -> CocoDetection:
    return CocoDetection(root / "images", path, **kwargs)
