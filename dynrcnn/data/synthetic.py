"""A synthetic COCO-format detection data set of coloured shapes (PIL / numpy only).

`make_synthetic_coco(out_dir)` writes

    out_dir/train/000000.png ...           out_dir/val/000000.png ...
    out_dir/annotations/instances_train.json   out_dir/annotations/instances_val.json

Each image has 1..max_objects shapes of `num_classes` classes (rectangle, ellipse, triangle,
cross, ring, star; all rotated by up to +-30 degrees, sizes log-uniform from `min_object_size`
pixels to half the image side, aspect ratios log-uniform in [1/2.5, 2.5]) on a cluttered
background (colour gradients, low-frequency colour noise, random thin lines), with per-object
colour and shading jitter and pixel noise over everything (objects included). The colour of a
shape says nothing about its class. A few images (`empty_fraction`, at least one per split of
two or more images) hold no object at all.

Ground truth is pixel-exact, so high-IoU localisation is learnable and measurable:

- every shape is one or more polygons, rasterized here by the standard rule (pixel (r, c)
  belongs to the shape iff its centre (c + 0.5, r + 0.5) lies inside; COCO's pixel convention);
- the image shows exactly that pixel set, with hard edges;
- `bbox` = [x, y, w, h] of that pixel set in pixel-edge coordinates (integers: the box
  x1 = leftmost column, x2 = rightmost column + 1), `area` = its pixel count;
- `segmentation` = the polygons themselves (rounded to 0.01 px), which pycocotools
  rasterizes to the same pixels up to its own 1/5-px quantisation at the boundary.

Occlusion: shapes are painted in annotation order, so later shapes may hide parts of earlier
ones. Annotations describe the full (amodal) object, as drawn before anything covered it. A
placement is rejected (and retried) unless every earlier shape keeps at least
`min_visible_fraction` of its pixels visible AND keeps its extreme rows and columns visible,
so the visible extent of every object equals its annotated box: the box is both the exact box
of the whole object and the exact box of what the image shows.

Deterministic given `seed`: image i of a split depends only on (seed, split, i). Fast: a few
milliseconds per 256 x 256 image (PNG with fast Huffman-only compression).

Command line: `python -m dynrcnn.data.synthetic --out DIR [--num-train N --num-val N ...]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from dynrcnn.data.recipes import draw_distractors, info_config, jitter_boxes, recipe_config

PathLike = Union[str, os.PathLike]

SHAPE_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross", "ring", "star")
SPLITS: Tuple[str, ...] = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}

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


@dataclass(frozen=True)
class SyntheticCoco:
    """Where make_synthetic_coco wrote each split."""

    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    num_classes: int  # shape classes, without background

    def images_dir(self, split: str) -> Path:
        return {"train": self.train_images, "val": self.val_images}[_check_split(split)]

    def annotation_file(self, split: str) -> Path:
        return {"train": self.train_annotations,
                "val": self.val_annotations}[_check_split(split)]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


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


def _place_shape(name: str, rng: np.random.Generator, cfg: SyntheticConfig) -> List[Polygon]:
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


# --------------------------------------------------------------------------- images


def _background(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray,
                                                                            np.ndarray]:
    """A cluttered int16 [H, W, 3] background and its mean colour: a colour gradient plus
    low-frequency colour noise (one bilinear upsampling of a small random grid), crossed by
    random thin lines."""
    base = rng.uniform(50.0, 205.0, size=3)
    cells = int(rng.integers(3, 9))
    t = np.linspace(-1.0, 1.0, cells)
    grad = rng.uniform(-35.0, 35.0, size=(2, 3))
    grid = (base + t[:, None, None] * grad[0] + t[None, :, None] * grad[1]
            + rng.uniform(-30.0, 30.0, size=(cells, cells, 3)))
    canvas = Image.fromarray(np.clip(grid + 0.5, 0, 255).astype(np.uint8), "RGB").resize(
        (width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 9))):
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=color, width=int(rng.integers(1, 3)))
    return np.array(canvas, dtype=np.int16), base


def _pixel_noise(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """int16 noise in [-15, 15] with std ~6.5: the sum of two random nibbles minus 15 (much
    faster than Gaussian samples, and as good for this purpose)."""
    b = np.frombuffer(rng.bytes(int(np.prod(shape))), dtype=np.uint8)
    noise = (b & 15).astype(np.int16)
    noise += b >> 4
    noise -= 15
    return noise.reshape(shape)


def _object_color(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour at least 60 (mean abs over RGB) away from the background's mean."""
    color = rng.uniform(0.0, 255.0, size=3)
    for _ in range(20):
        if np.abs(color - background).mean() >= 60.0:
            break
        color = rng.uniform(0.0, 255.0, size=3)
    return color


def _occlusion_ok(new: np.ndarray, visible: List[np.ndarray], full_area: List[int],
                  boxes: List[Tuple[int, int, int, int]], min_fraction: float) -> bool:
    """Would painting `new` keep every earlier object's box fully determined and enough of it
    visible?"""
    for vis, area, box in zip(visible, full_area, boxes):
        x1, y1, x2, y2 = box
        if not new[y1:y2, x1:x2].any():
            continue
        left = vis[y1:y2, x1:x2] & ~new[y1:y2, x1:x2]
        if left.sum() < min_fraction * area:
            return False
        if mask_box(left) != (0, 0, x2 - x1, y2 - y1):
            return False
    return True


def _render_image(rng: np.random.Generator, cfg: SyntheticConfig, empty: bool
                  ) -> Tuple[np.ndarray, List[Dict]]:
    """One uint8 [H, W, 3] image and its objects (label index, polygons, box, area)."""
    height, width = cfg.image_size
    img, bg_mean = _background(rng, height, width)
    if cfg.distractors:  # the default draws nothing more from rng: its images are unchanged
        draw_distractors(rng, img, cfg, bg_mean)
    objects: List[Dict] = []
    visible: List[np.ndarray] = []
    areas: List[int] = []
    boxes: List[Tuple[int, int, int, int]] = []
    n_objects = 0 if empty else int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(n_objects):
        label = int(rng.integers(cfg.num_classes))
        for _attempt in range(20):
            polys = _place_shape(SHAPE_CLASSES[label], rng, cfg)
            mask = rasterize_polygons(polys, height, width)
            box = mask_box(mask)
            if box is not None and _occlusion_ok(mask, visible, areas, boxes,
                                                 cfg.min_visible_fraction):
                break
        else:
            continue  # no acceptable placement: this image gets one object fewer
        x1, y1, x2, y2 = box
        color = _object_color(rng, bg_mean)
        shade = rng.uniform(-30.0, 30.0, size=2)  # shading gradient across the object
        yy = np.linspace(-1.0, 1.0, y2 - y1)[:, None]
        xx = np.linspace(-1.0, 1.0, x2 - x1)[None, :]
        fill = color[None, None, :] + (yy * shade[0] + xx * shade[1])[:, :, None]
        window = mask[y1:y2, x1:x2]
        img[y1:y2, x1:x2][window] = np.clip(fill[window] + 0.5, 0, 255).astype(np.int16)
        for vis in visible:
            vis &= ~mask
        visible.append(mask)
        area = int(mask.sum())
        areas.append(area)
        boxes.append(box)
        objects.append({"label": label, "polygons": polys, "box": box, "area": area})
    if cfg.pixel_noise:
        img += _pixel_noise(rng, img.shape)
        np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), objects


def _empty_indices(cfg: SyntheticConfig, split: str, n: int) -> set:
    if n == 0 or cfg.empty_fraction == 0.0:
        return set()
    count = int(round(cfg.empty_fraction * n))
    if n >= 2:
        count = max(count, 1)
    order = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], 1_000_003]).permutation(n)
    return set(order[:count].tolist())


def _write_split(cfg: SyntheticConfig, split: str, n: int, images_dir: Path,
                 annotation_file: Path, masks: bool) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    height, width = cfg.image_size
    empty = _empty_indices(cfg, split, n)
    images, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], i])
        pixels, objects = _render_image(rng, cfg, i in empty)
        file_name = f"{i:06d}.png"
        # Huffman-only deflate: noisy images barely compress anyway; this halves encode time
        Image.fromarray(pixels, "RGB").save(images_dir / file_name, compress_level=1,
                                            compress_type=zlib.Z_HUFFMAN_ONLY)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": width,
                       "height": height})
        boxes = [obj["box"] for obj in objects]
        if cfg.box_jitter and split == "train":  # val stays exact: AP90 measures boxes
            boxes = jitter_boxes(boxes, cfg.box_jitter, cfg.seed, _SPLIT_CODE[split], i,
                                 height, width)
        for obj, (x1, y1, x2, y2) in zip(objects, boxes):
            ann = {"id": len(annotations) + 1, "image_id": image_id,
                   "category_id": obj["label"] + 1,
                   "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                   "area": float(obj["area"]), "iscrowd": 0}
            if masks:
                ann["segmentation"] = [[round(float(v), 2) for v in p.reshape(-1)]
                                       for p in obj["polygons"]]
            annotations.append(ann)
    categories = [{"id": k + 1, "name": SHAPE_CLASSES[k], "supercategory": "shape"}
                  for k in range(cfg.num_classes)]
    info = {"description": f"dynrcnn synthetic shapes, {split} split",
            "version": "1", "config": {**info_config(asdict(cfg)), "masks": masks}}
    data = {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    with open(annotation_file, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def make_synthetic_coco(
    out_dir: PathLike,
    num_train: int = 200,
    num_val: int = 50,
    image_size: Tuple[int, int] = (256, 256),
    num_classes: Optional[int] = None,
    seed: int = 0,
    masks: bool = True,
    max_objects: Optional[int] = None,
    min_object_size: Optional[float] = None,
    empty_fraction: Optional[float] = None,
    recipe: str = "default",
) -> SyntheticCoco:
    """Write a synthetic COCO-format data set of shapes (see the module docstring).

    Args:
        out_dir: created if needed; train/, val/ and annotations/ are written inside
            (existing files of the same names are overwritten).
        num_train, num_val: images per split (0 allowed).
        image_size: (height, width).
        num_classes: shape classes (1..6): rectangle, ellipse, triangle, cross, ring, star.
        seed: everything is a function of the seed.
        masks: write polygon `segmentation`s (needed for Mask R-CNN).
        max_objects, min_object_size, empty_fraction: see SyntheticConfig.
        recipe: a name of dynrcnn.data.recipes.RECIPES ("default": the demo's set, "study":
            the accuracy study's); arguments left None take the recipe's values.

    Returns:
        SyntheticCoco with the paths of both splits.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    cfg = recipe_config(recipe, image_size=(int(image_size[0]), int(image_size[1])),
                        num_classes=num_classes, max_objects=max_objects,
                        min_object_size=min_object_size, empty_fraction=empty_fraction,
                        seed=seed)
    root = Path(out_dir)
    result = SyntheticCoco(
        root=root, train_images=root / "train", val_images=root / "val",
        train_annotations=root / "annotations" / "instances_train.json",
        val_annotations=root / "annotations" / "instances_val.json",
        num_classes=cfg.num_classes)
    for split, n in (("train", num_train), ("val", num_val)):
        _write_split(cfg, split, n, result.images_dir(split), result.annotation_file(split),
                     masks)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynrcnn.data.synthetic",
        description="Write a synthetic COCO-format shapes data set (train/, val/, annotations/).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 256),
                        metavar=("H", "W"))
    parser.add_argument("--recipe", default="default",
                        help="default (the demo's), study or study_exact")
    parser.add_argument("--num-classes", type=int, default=None,
                        help=f"1..{len(SHAPE_CLASSES)}: {', '.join(SHAPE_CLASSES)}")
    parser.add_argument("--max-objects", type=int, default=None, help="default 6")
    parser.add_argument("--min-object-size", type=float, default=None, help="default 10")
    parser.add_argument("--empty-fraction", type=float, default=None, help="default 0.05")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-masks", action="store_true", help="omit segmentation polygons")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = make_synthetic_coco(
            args.out, num_train=args.num_train, num_val=args.num_val,
            image_size=tuple(args.image_size), num_classes=args.num_classes, seed=args.seed,
            masks=not args.no_masks, max_objects=args.max_objects,
            min_object_size=args.min_object_size, empty_fraction=args.empty_fraction,
            recipe=args.recipe)
    except ValueError as e:
        parser.error(str(e))
    seconds = time.perf_counter() - start
    total = args.num_train + args.num_val
    print(f"wrote {total} images ({args.num_train} train, {args.num_val} val) to {out.root} "
          f"in {seconds:.1f} s: {out.train_annotations}, {out.val_annotations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
