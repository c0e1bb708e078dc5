"""A synthetic COCO-format detection data set of coloured shapes (PIL / numpy only).

`make_synthetic_coco(out_dir)` writes

    out_dir/train/000000.png ...           out_dir/val/000000.png ...
    out_dir/annotations/instances_train.json   out_dir/annotations/instances_val.json

and, with num_test > 0, a third split (out_dir/test/, annotations/instances_test.json): a
held-out set for choices made on val (the study's best-against-best comparison picks each
detector's setting on val and reports it on test). val and test boxes are always exact.

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

Command line: `dynrcnn make-synthetic --out DIR [--num-train N --num-val N ...]` (or
`python -m dynrcnn.data.synthetic ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from dynrcnn.data.recipes import draw_distractors, info_config, jitter_boxes, recipe_config
from dynrcnn.data.shapes import (  # noqa: F401  (SHAPE_CLASSES, mask_box: public here too)
    SHAPE_CLASSES,
    Polygon,
    SyntheticConfig,
    mask_box,
    object_color,
    place_shape,
    rasterize_polygons,
)

PathLike = Union[str, os.PathLike]

SPLITS: Tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}

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
        return self.root / _check_split(split)

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{_check_split(split)}.json"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


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
            polys = place_shape(SHAPE_CLASSES[label], rng, cfg)
            mask = rasterize_polygons(polys, height, width)
            box = mask_box(mask)
            if box is not None and _occlusion_ok(mask, visible, areas, boxes,
                                                 cfg.min_visible_fraction):
                break
        else:
            continue  # no acceptable placement: this image gets one object fewer
        x1, y1, x2, y2 = box
        color = object_color(rng, bg_mean)
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
    num_test: int = 0,
    splits: Optional[Sequence[str]] = None,
) -> SyntheticCoco:
    """Write a synthetic COCO-format data set of shapes (see the module docstring).

    Args:
        out_dir: created if needed; train/, val/ and annotations/ are written inside
            (existing files of the same names are overwritten).
        num_train, num_val, num_test: images per split (0 allowed; the test split is
            written only when num_test > 0).
        image_size: (height, width).
        num_classes: shape classes (1..6): rectangle, ellipse, triangle, cross, ring, star.
        seed: everything is a function of the seed.
        masks: write polygon `segmentation`s (needed for Mask R-CNN).
        max_objects, min_object_size, empty_fraction: see SyntheticConfig.
        recipe: a name of dynrcnn.data.recipes.RECIPES ("default": the demo's set, "study":
            the accuracy study's); arguments left None take the recipe's values.
        splits: write only these splits (e.g. ("test",) to add a held-out split to an
            existing set: image i of a split depends only on (seed, split, i), so the other
            splits need not be rewritten).

    Returns:
        SyntheticCoco with the paths of both splits.
    """
    if min(num_train, num_val, num_test) < 0:
        raise ValueError(f"num_train, num_val and num_test must be >= 0, got {num_train}, "
                         f"{num_val}, {num_test}")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    wanted = [_check_split(s) for s in splits] if splits is not None else \
        [s for s in SPLITS if s != "test" or num_test > 0]
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
    for split in wanted:
        _write_split(cfg, split, counts[split], result.images_dir(split),
                     result.annotation_file(split), masks)
    return result


PROG = "python -m dynrcnn.data.synthetic"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line's parser; `prog` is the command its usage and error lines name
    (`dynrcnn make-synthetic` when reached through the `dynrcnn` command)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a synthetic COCO-format shapes data set (train/, val/, annotations/).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--num-test", type=int, default=0,
                        help="held-out test split (default none)")
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
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Parse `argv` and write the data set; bad input is argparse's usage + one error line
    naming `prog`, exit status 2."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = make_synthetic_coco(
            args.out, num_train=args.num_train, num_val=args.num_val,
            image_size=tuple(args.image_size), num_classes=args.num_classes, seed=args.seed,
            masks=not args.no_masks, max_objects=args.max_objects,
            min_object_size=args.min_object_size, empty_fraction=args.empty_fraction,
            recipe=args.recipe, num_test=args.num_test)
    except ValueError as e:
        # the checks name the arguments (num_classes); say which flag that is
        message = str(e)
        for name in sorted((n for n in vars(args) if "_" in n), key=len, reverse=True):
            message = re.sub(rf"(?<![-\w]){name}\b", "--" + name.replace("_", "-"), message)
        parser.error(message)
    except OSError as e:  # --out is a file, or not writable
        where = f" {e.filename}" if e.filename else ""
        parser.error(f"--out {args.out}: cannot write{where}: {e.strerror or e}")
    seconds = time.perf_counter() - start
    total = args.num_train + args.num_val + args.num_test
    test = f", {args.num_test} test" if args.num_test else ""
    files = ", ".join(str(out.annotation_file(s)) for s in SPLITS
                      if s != "test" or args.num_test)
    print(f"wrote {total} images ({args.num_train} train, {args.num_val} val{test}) to "
          f"{out.root} in {seconds:.1f} s: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
