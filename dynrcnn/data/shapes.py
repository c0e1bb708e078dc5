"""The shapes of the synthetic data set: their classes, the generator's configuration, exact
polygon rasterization and random shape placement (dynrcnn.data.synthetic draws the images,
dynrcnn.data.recipes the named variants and distractors; both build on this module)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

SHAPE_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross", "ring", "star")

Polygon = np.ndarray  # float64 [n, 2] of (x, y) vertices



@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes the generated data (written into each annotation file's info).

    image_size: (height, width) of every image.
    num_classes: number of shape classes, the first `num_classes` of SHAPE_CLASSES (1..6).
    max_objects: each non-empty image has uniformly 1..max_objects shapes (fewer when a
        placement fails its occlusion checks 20 times).
    min_object_size: smallest sqrt(w * h) of a shape's unrotated extent, in pixels.
    max_object_fraction: largest sqrt(w * h) as a fraction of the shorter image side.
    empty_fraction: fraction of images without objects (at least one per split of >= 2).
    min_visible_fraction: every shape keeps at least this fraction of its pixels visible.
    pixel_noise: add noise in [-15, 15] (std ~6.5, 0..255 units) to every pixel, last.
    distractors, box_jitter: up to this many unannotated shapes per image; annotation
        jitter of the train split, pixels per box edge (0 = off; see dynrcnn.data.recipes).
    """

    image_size: Tuple[int, int] = (256, 256)
    num_classes: int = 5
    max_objects: int = 6
    min_object_size: float = 10.0
    max_object_fraction: float = 0.5
    empty_fraction: float = 0.05
    min_visible_fraction: float = 0.5
    pixel_noise: bool = True
    seed: int = 0
    distractors: int = 0
    box_jitter: float = 0.0

    def __post_init__(self) -> None:
        h, w = self.image_size
        if h < 32 or w < 32:
            raise ValueError(f"image_size must be at least (32, 32), got {self.image_size}")
        if not 1 <= self.num_classes <= len(SHAPE_CLASSES):
            raise ValueError(
                f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {self.num_classes}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(
                f"min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}")
        if self.distractors < 0 or not 0.0 <= self.box_jitter <= 8.0:
            raise ValueError(f"need distractors >= 0 and box_jitter in [0, 8], got "
                             f"{self.distractors}, {self.box_jitter}")
        largest = self.max_object_fraction * min(h, w)
        if not 2.0 <= self.min_object_size <= largest:
            raise ValueError(
                f"min_object_size must be in [2, max_object_fraction * min(image_size) = "
                f"{largest:g}], got {self.min_object_size}")


# --------------------------------------------------------------------------- rasterization


def rasterize_polygons(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """bool [height, width]: pixels whose centre lies inside any of the polygons (even-odd
    rule per polygon, union over polygons)."""
    mask = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        _fill_polygon(mask, np.asarray(poly, dtype=np.float64))
    return mask


def _fill_polygon(mask: np.ndarray, pts: np.ndarray) -> None:
    height, width = mask.shape
    r0 = max(int(math.floor(pts[:, 1].min() - 0.5)), 0)
    r1 = min(int(math.ceil(pts[:, 1].max() + 0.5)), height)
    if r1 <= r0:
        return
    ys = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5  # [R, 1] row centres
    x0, y0 = pts[:, 0][None, :], pts[:, 1][None, :]  # [1, E] edge starts
    x1, y1 = np.roll(pts[:, 0], -1)[None, :], np.roll(pts[:, 1], -1)[None, :]
    crosses = (y0 <= ys) != (y1 <= ys)  # half-open: a vertex on the line counts once
    dy = np.where(y1 == y0, 1.0, y1 - y0)
    xs = np.where(crosses, x0 + (ys - y0) * (x1 - x0) / dy, np.inf)
    xs.sort(axis=1)
    n_pairs = int(crosses.sum(axis=1).max()) // 2
    if n_pairs == 0:
        return
    starts = xs[:, 0:2 * n_pairs:2]
    ends = xs[:, 1:2 * n_pairs:2]
    valid = np.isfinite(ends)
    # column c is inside iff start <= c + 0.5 < end
    c_start = np.clip(np.ceil(np.where(valid, starts, 0.0) - 0.5), 0, width).astype(np.int64)
    c_end = np.clip(np.ceil(np.where(valid, ends, 0.0) - 0.5), 0, width).astype(np.int64)
    keep = valid & (c_end > c_start)
    rows = np.broadcast_to(np.arange(r1 - r0)[:, None], keep.shape)[keep]
    diff = np.zeros((r1 - r0, width + 1), dtype=np.int32)
    np.add.at(diff, (rows, c_start[keep]), 1)
    np.add.at(diff, (rows, c_end[keep]), -1)
    mask[r0:r1] |= np.cumsum(diff[:, :width], axis=1) % 2 == 1


def mask_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) of a bool mask in pixel-edge coordinates; None when it is empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --------------------------------------------------------------------------- shapes


def _ellipse_points(n: int, rx: float = 1.0, ry: float = 1.0,
                    start: float = 0.0, stop: float = 2 * math.pi,
                    endpoint: bool = False) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=endpoint)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _unit_shape(name: str, rng: np.random.Generator, size: float) -> List[Polygon]:
    """Polygons of a shape inside the unit square [-1, 1]^2 (union of the polygons)."""
    n_round = int(np.clip(size * 1.5, 24, 96))  # vertices of curved outlines
    if name == "rectangle":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)]
    if name == "ellipse":
        return [_ellipse_points(n_round)]
    if name == "triangle":
        apex = rng.uniform(-0.8, 0.8)
        return [np.array([[apex, -1], [1, 1], [-1, 1]], dtype=np.float64)]
    if name == "cross":
        a, b = rng.uniform(0.25, 0.45, size=2)  # half-thickness of the arms
        return [np.array([[-a, -1], [a, -1], [a, -b], [1, -b], [1, b], [a, b], [a, 1],
                          [-a, 1], [-a, b], [-1, b], [-1, -b], [-a, -b]], dtype=np.float64)]
    if name == "ring":
        # an annulus as the union of two half-annuli (COCO polygons have no holes)
        k = rng.uniform(0.45, 0.7)
        half = n_round // 2 + 1
        parts = []
        for lo in (0.0, math.pi):
            outer = _ellipse_points(half, start=lo, stop=lo + math.pi, endpoint=True)
            inner = _ellipse_points(half, k, k, start=lo + math.pi, stop=lo, endpoint=True)
            parts.append(np.concatenate([outer, inner]))
        return parts
    if name == "star":
        inner = rng.uniform(0.38, 0.55)
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]
    raise ValueError(f"unknown shape {name!r}")


def place_shape(name: str, rng: np.random.Generator, cfg: SyntheticConfig) -> List[Polygon]:
    """Polygons of one random instance of `name`, inside the image with a 1-px margin."""
    height, width = cfg.image_size
    largest = cfg.max_object_fraction * min(height, width)
    size = math.exp(rng.uniform(math.log(cfg.min_object_size), math.log(largest)))
    aspect = math.exp(rng.uniform(-math.log(2.5), math.log(2.5)))
    half_w, half_h = 0.5 * size * math.sqrt(aspect), 0.5 * size / math.sqrt(aspect)
    angle = math.radians(rng.uniform(-30.0, 30.0))
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    polys = [(p * [half_w, half_h]) @ rot.T for p in _unit_shape(name, rng, size)]
    allp = np.concatenate(polys)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    room = np.array([width, height], dtype=np.float64) - 2.0
    shrink = min(1.0, float(np.min(room / (hi - lo))))
    if shrink < 1.0:
        polys = [p * shrink for p in polys]
        lo, hi = lo * shrink, hi * shrink
    offset = 1.0 + rng.uniform(0.0, 1.0, size=2) * (room - (hi - lo)) - lo
    return [np.round(p + offset, 2) for p in polys]


def object_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour at least 60 (mean abs over RGB) away from the background's mean."""
    color = rng.uniform(0.0, 255.0, size=3)
    for _ in range(20):
        if np.abs(color - background).mean() >= 60.0:
            break
        color = rng.uniform(0.0, 255.0, size=3)
    return color
