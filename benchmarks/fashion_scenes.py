"""Scenes of Fashion-MNIST products: detection data whose objects the project did not draw.

Every other data set of the studies is drawn by `dynrcnn.data.synthetic`, so a claim made on
them may only hold for shapes this project renders. This script builds a COCO-format set
from real images labelled by people: the 70,000 product photos of Fashion-MNIST (Zalando
SE, MIT license; 28 x 28 grey-level images of ten product classes, each product's class
assigned by Zalando's in-house fashion experts). The objects, their appearance and their
classes come from that data; this script only places them on canvases:

- each image holds 1..`max_objects` products, each scaled so its 28-px frame spans a side
  log-uniform in [`min_frame`, `max_frame`] pixels (aspect ratio jittered by up to 25%),
  pasted on a dark textured background at a place where its box overlaps no earlier box;
- an object's pixels are the scaled product's pixels of grey level >= `ink` (Fashion-MNIST
  backgrounds are 0); the image shows exactly those pixels, and the annotation's `bbox` is
  their exact extent (pixel-edge coordinates) and `area` their count;
- with `--masks`, each annotation also holds the object's instance mask as COCO RLE in
  `segmentation` (exactly the pixels that make `area`, placed at the box), for Mask R-CNN;
  the images, boxes and random draws are the same as without it, and without it the files
  are byte for byte what they were before the option existed;
- splits keep products apart: train draws only from Fashion-MNIST's training file, val from
  the first 5,000 images of its test file and test from the last 5,000, each product at
  most once per split (every annotation names its source file and index, and
  tests/test_fashion_scenes.py checks the separation).

Source files: `--source DIR` (the four `*-idx?-ubyte.gz` files as Zalando distributes them),
else `/usr/share/datasets/fashion-mnist` (Debian's package dataset-fashion-mnist), else
the package is fetched at run time with `apt-get download dataset-fashion-mnist` into
`--cache` and unpacked there. Nothing of it is committed. The decompressed files are checked
against the SHA-256 sums below.

    python benchmarks/fashion_scenes.py --out data/fashion_128 --num-train 1000 \
        --num-val 500 --num-test 500 --image-size 128 --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the decompressed files (the gzip wrappers differ between distributors)
SHA256 = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
# (source file, first index, end index) of each split's products: disjoint by construction
SPLIT_POOLS = {"train": ("train", 0, 60000), "val": ("test", 0, 5000),
               "test": ("test", 5000, 10000)}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


class SourceError(Exception):
    """The Fashion-MNIST files are missing, unreadable or not the expected ones."""


@dataclass
class SceneConfig:
    image_size: int = 128
    max_objects: int = 6
    min_frame: float = 20.0
    max_frame: float = 64.0
    ink: int = 40
    seed: int = 0
    verify: bool = True


def _read_idx(path: Path, magic: int, verify_sha: Optional[str]) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: not a readable gzip file ({exc})") from exc
    if verify_sha is not None and hashlib.sha256(raw).hexdigest() != verify_sha:
        raise SourceError(f"{path}: its content is not Fashion-MNIST's (SHA-256 differs)")
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise SourceError(f"{path}: not an IDX file of magic {magic}")
    count = int.from_bytes(raw[4:8], "big")
    if magic == 2051:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        data = np.frombuffer(raw, np.uint8, offset=16)
        if data.size != count * rows * cols:
            raise SourceError(f"{path}: truncated ({data.size} bytes for {count} images)")
        return data.reshape(count, rows, cols)
    data = np.frombuffer(raw, np.uint8, offset=8)
    if data.size != count:
        raise SourceError(f"{path}: truncated ({data.size} labels, header says {count})")
    return data


def load_fashion_mnist(source: Path, verify: bool = True) -> Dict[str, np.ndarray]:
    """The four arrays (train/test images and labels) from a directory of the .gz files."""
    missing = [name for name in FILES.values() if not (source / name).is_file()]
    if missing:
        raise SourceError(f"{source}: missing {', '.join(missing)}")
    arrays = {key: _read_idx(source / name, 2051 if key.endswith("images") else 2049,
                             SHA256[key] if verify else None)
              for key, name in FILES.items()}
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise SourceError(f"{source}: {part} images and labels differ in count")
    return arrays


def fetch_debian_package(cache: Path) -> Path:
    """`apt-get download` Debian's dataset-fashion-mnist into `cache` and unpack it there."""
    unpacked = cache / "unpacked" / DEBIAN_DIR.relative_to("/")
    if all((unpacked / name).is_file() for name in FILES.values()):
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=cache, check=True,
                       capture_output=True, text=True)
        debs = sorted(cache.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise SourceError(f"apt-get download {DEBIAN_PACKAGE} wrote no .deb in {cache}")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / "unpacked")],
                       check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise SourceError(f"could not fetch {DEBIAN_PACKAGE} with apt-get/dpkg-deb "
                          f"({detail.strip().splitlines()[-1] if detail.strip() else exc}); "
                          "pass --source DIR with Zalando's four .gz files") from exc
    return unpacked


def _background(rng: np.random.Generator, size: int, ink: int) -> np.ndarray:
    """Dark grey texture: low-frequency level changes plus pixel noise (grey levels mostly
    below 30, under the `ink` level of 40), so a product's edge stays visible on a
    background that is not flat."""
    coarse = rng.uniform(0, 20, size=(5, 5)).astype(np.float32)
    low = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BILINEAR))
    noise = rng.normal(0, 4, size=(size, size))
    # clipped below `ink`: no background pixel can pass for a product's
    return np.clip(low + noise + 4, 0, ink - 1).astype(np.uint8)


def _scaled_product(product: np.ndarray, rng: np.random.Generator, cfg: SceneConfig
                    ) -> Tuple[np.ndarray, np.ndarray]:
    side = float(np.exp(rng.uniform(np.log(cfg.min_frame), np.log(cfg.max_frame))))
    aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    width = max(8, int(round(side * np.sqrt(aspect))))
    height = max(8, int(round(side / np.sqrt(aspect))))
    scaled = np.asarray(Image.fromarray(product).resize((width, height), Image.BILINEAR))
    mask = scaled >= cfg.ink
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return scaled[:0, :0], mask[:0, :0]
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return scaled[crop], mask[crop]


def _overlaps(box: Tuple[int, int, int, int], boxes: List[Tuple[int, int, int, int]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < bx2 and bx1 < x2 and y1 < by2 and by1 < y2 for bx1, by1, bx2, by2 in boxes)


def _render(rng: np.random.Generator, cfg: SceneConfig, products: np.ndarray,
            labels: np.ndarray, indices: List[int]) -> Tuple[np.ndarray, List[dict]]:
    size = cfg.image_size
    canvas = _background(rng, size, cfg.ink)
    objects: List[dict] = []
    boxes: List[Tuple[int, int, int, int]] = []
    for index in indices:
        pixels, mask = _scaled_product(products[index], rng, cfg)
        height, width = mask.shape
        if height == 0 or height > size or width > size:
            continue
        for _ in range(30):  # a few tries at a free place, else the product is left out
            y = int(rng.integers(0, size - height + 1))
            x = int(rng.integers(0, size - width + 1))
            box = (x, y, x + width, y + height)
            if not _overlaps(box, boxes):
                region = canvas[y:y + height, x:x + width]
                region[mask] = pixels[mask]
                boxes.append(box)
                objects.append({"box": box, "area": int(mask.sum()), "mask": mask,
                                "label": int(labels[index]), "index": int(index)})
                break
    return canvas, objects


def _segmentation(obj: dict, size: int) -> Dict[str, object]:
    """The object's pixels (its `mask` at its `box`) as COCO RLE, counts as a str."""
    from pycocotools import mask as mask_utils

    x1, y1, x2, y2 = obj["box"]
    full = np.zeros((size, size), dtype=np.uint8, order="F")
    full[y1:y2, x1:x2] = obj["mask"]
    if int(full.sum()) != obj["area"]:
        raise AssertionError(f"mask of {int(full.sum())} pixels for an area of {obj['area']}")
    with warnings.catch_warnings():
        # pycocotools trips numpy 2's __array__(copy=...) deprecation; harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        rle = mask_utils.encode(full)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_split(arrays: Dict[str, np.ndarray], split: str, count: int, out: Path,
                cfg: SceneConfig, masks: bool = False) -> Path:
    """Write `count` images of `split` to out/split/ and out/annotations/instances_split.json
    (with `masks`, each annotation's instance mask as RLE in `segmentation`)."""
    file_key, start, end = SPLIT_POOLS[split]
    products, labels = arrays[f"{file_key}_images"], arrays[f"{file_key}_labels"]
    end = min(end, len(products))
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split]])
    pool = (start + rng.permutation(end - start)).tolist()  # each product once per split
    images_dir = out / split
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        wanted = int(rng.integers(1, cfg.max_objects + 1))
        if len(pool) < wanted:
            raise SourceError(f"{split}: {count} images need more than the {end - start} "
                              f"products its pool holds; ask for fewer images")
        chosen, pool = pool[:wanted], pool[wanted:]
        canvas, objects = _render(rng, cfg, products, labels, chosen)
        file_name = f"{i:06d}.png"
        Image.fromarray(np.repeat(canvas[:, :, None], 3, axis=2), "RGB").save(
            images_dir / file_name, compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "width": cfg.image_size,
                       "height": cfg.image_size})
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1,
                "category_id": obj["label"] + 1,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float(obj["area"]), "iscrowd": 0,
                "source": {"file": FILES[f"{file_key}_images"], "index": obj["index"]}})
            if masks:
                annotations[-1]["segmentation"] = _segmentation(obj, cfg.image_size)
    info = {"description": f"Fashion-MNIST products placed on canvases, {split} split",
            "source": "Fashion-MNIST, Zalando SE, MIT license "
                      "(https://github.com/zalandoresearch/fashion-mnist)",
            "config": asdict(cfg)}
    categories = [{"id": k + 1, "name": name, "supercategory": "product"}
                  for k, name in enumerate(CLASSES)]
    path = out / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": info, "licenses": [], "images": images,
                                "annotations": annotations, "categories": categories},
                               separators=(",", ":")))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/fashion_scenes.py",
        description="COCO-format detection scenes of Fashion-MNIST products.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=None,
                        help="directory with Zalando's four *-idx?-ubyte.gz files")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dynrcnn",
                        help="where the Debian package is fetched and unpacked")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the SHA-256 check (for other versions of the files)")
    parser.add_argument("--masks", action="store_true",
                        help="write each object's instance mask (COCO RLE in 'segmentation'), "
                             "for Mask R-CNN; the same images and boxes as without it")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, low in (("--num-train", args.num_train, 1), ("--num-val", args.num_val, 1),
                             ("--num-test", args.num_test, 0), ("--max-objects",
                             args.max_objects, 1), ("--image-size", args.image_size, 64)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    cfg = SceneConfig(image_size=args.image_size, max_objects=args.max_objects,
                      seed=args.seed, verify=not args.no_verify)
    try:
        if args.source is not None:
            source = args.source
        elif all((DEBIAN_DIR / name).is_file() for name in FILES.values()):
            source = DEBIAN_DIR
        else:
            source = fetch_debian_package(args.cache / DEBIAN_PACKAGE)
        arrays = load_fashion_mnist(source, verify=cfg.verify)
        counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
        for split, count in counts.items():
            if count > 0:
                path = write_split(arrays, split, count, args.out, cfg, masks=args.masks)
                print(f"{split}: {count} images -> {path}", flush=True)
    except SourceError as exc:
        print(f"python benchmarks/fashion_scenes.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
