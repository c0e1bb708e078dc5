"""COCO-format detection data set on pycocotools, validated once at construction.

`CocoDetection(images_dir, annotation_file, train=False, transforms=None, masks=False,
skip_empty=False)[i]` is `(image, target)` in torchvision's detection format: image float32
[3, H, W] in [0, 1]; target with `boxes` float32 [N, 4] (x1, y1, x2, y2 in pixels), `labels`
int64 [N] in 1..K (0 is background), `image_id` (the COCO id, an int), `area` float32 [N],
`iscrowd` int64 [N] and, with masks=True, `masks` uint8 [N, H, W].

Validation (everything but the image files is checked at construction, in one pass):

- annotation file missing, not JSON (the error gives line, column and character offset),
  not an object, or without `images` / `annotations` / `categories` lists: DatasetError;
- images without id / file_name / positive width and height, duplicate ids: DatasetError;
- categories without id / name, duplicate ids: DatasetError;
- annotations without id / image_id / category_id / bbox, duplicate ids, an image id or a
  category id that is not declared, a bbox that is not 4 numbers, or a bbox with a NaN or
  infinite value: DatasetError naming the annotation id. Non-finite boxes are an error, not
  a silent drop: they mean a broken export, and dropping them would hide that;
- boxes that reach outside the image are clipped to it, and boxes with no area (w <= 0 or
  h <= 0, before or after clipping) are dropped from the targets; ONE DatasetWarning per data
  set summarizes both with counts and annotation ids;
- with masks=True, annotations that are used (crowd ones only in eval mode) need a
  `segmentation` (polygons with >= 3 points each, or RLE): DatasetError otherwise;
- a missing images directory: DatasetError;
- at __getitem__: missing image file, unreadable / corrupt image, or an image whose size is
  not the width x height of its entry: DatasetError naming the path and the image id.

Training mode (train=True) drops crowd annotations (iscrowd=1) from the targets; eval mode
keeps them with iscrowd=1 (the evaluator uses the COCO api's own annotations in any case).
`.coco` is the COCO object of the file as written (no clipping): COCOeval scores against it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

PathLike = Union[str, os.PathLike]
Target = Dict[str, Any]
Transform = Callable[[Tensor, Target], Tuple[Tensor, Target]]

REQUIRED_KEYS: Tuple[str, ...] = ("images", "annotations", "categories")
_MAX_IDS_IN_MESSAGE = 20


class DatasetError(ValueError):
    """A data set file (annotations or image) is missing or broken; the message names the
    file and, where there is one, the image or annotation id."""

    def __init__(self, message: str = "") -> None:
        # A DataLoader worker's error is raised again in the main process as
        # DatasetError("Caught DatasetError in DataLoader worker process N.\nOriginal
        # Traceback ...\n...DatasetError: <message>"): keep the one line that names the file.
        if isinstance(message, str) and message.startswith("Caught DatasetError in DataLoader"):
            last = message.rstrip().splitlines()[-1]
            message = last.split("DatasetError: ", 1)[-1]
        super().__init__(message)


class DatasetWarning(UserWarning):
    """Annotations were repaired (boxes clipped to the image) or left out (empty boxes)."""


@dataclass
class _ImageRecord:
    """What __getitem__ needs of one image, prepared at construction."""

    image_id: int
    file_name: str
    width: int
    height: int
    ann_ids: List[int]
    boxes: List[List[float]]  # x1, y1, x2, y2, clipped to the image
    labels: List[int]
    areas: List[float]
    iscrowd: List[int]


def _id_list(ids: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS_IN_MESSAGE])
    more = len(ids) - _MAX_IDS_IN_MESSAGE
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_annotation_json(annotation_file: PathLike) -> Dict[str, Any]:
    """Read and structurally check a COCO annotation file; DatasetError when it is broken."""
    path = Path(annotation_file)
    if not path.is_file():
        raise DatasetError(f"annotation file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"annotation file {str(path)!r} is not valid JSON: {e.msg}: line {e.lineno} "
            f"column {e.colno} (char {e.pos})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotation file {str(path)!r} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(
            f"annotation file {str(path)!r}: expected a JSON object with keys "
            f"{list(REQUIRED_KEYS)}, got a {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DatasetError(
            f"annotation file {str(path)!r} lacks the top-level key(s) {missing} "
            f"(a COCO file needs {list(REQUIRED_KEYS)})")
    for key in REQUIRED_KEYS:
        if not isinstance(data[key], list):
            raise DatasetError(f"annotation file {str(path)!r}: {key!r} must be a list, got "
                               f"{type(data[key]).__name__}")
    return data


def _check_segmentation(seg: Any, height: int, width: int) -> bool:
    if isinstance(seg, list):
        return len(seg) > 0 and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(_is_number(v) and math.isfinite(v) for v in p) for p in seg)
    if isinstance(seg, dict):
        return _rle_fits(seg, height, width)
    return False


def _rle_string_counts(text: str) -> Optional[List[int]]:
    """The run lengths of a compressed COCO RLE string, decoded as pycocotools' rleFrString
    does (5-bit groups, deltas from the second-previous count); None if malformed."""
    counts: List[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None  # ends inside a number
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _rle_fits(rle: Dict[str, Any], height: int, width: int) -> bool:
    """Whether an RLE segmentation decodes to exactly the image's height x width pixels.
    pycocotools' decoder checks nothing: run lengths summing past h * w write out of bounds
    (a crash naming no file), fewer leave pixels undefined."""
    if list(rle.get("size", ())) != [height, width]:
        return False
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        counts = _rle_string_counts(counts)
    if not isinstance(counts, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return False
    return sum(counts) == height * width


# Grey 16-bit images (PNG, TIFF) open as "I;16*", or "I" from some writers. PIL's
# convert("RGB") clips every value above 255, which turns a real 16-bit image nearly white:
# they are scaled to 8 bits instead (v / 257, rounded: 65535 -> 255).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb8_pixels(img: Image.Image, what: str) -> np.ndarray:
    """uint8 [H, W, 3] (a writable copy) of an opened PIL image of any mode; 16-bit grey is
    scaled to 8 bits. DatasetError, starting with `what` (e.g. the file's name), for pixels
    with no known range (32-bit float, or 32-bit integers outside 0..65535)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DatasetError(f"{what} has 32-bit integer pixels outside 0..65535: save it "
                               "with 8 or 16 bits per channel")
        grey = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise DatasetError(f"{what} has floating-point pixels (PIL mode F), whose range is "
                           "unknown: save it with 8 or 16 bits per channel")
    return np.array(img.convert("RGB"), dtype=np.uint8)


class CocoDetection(Dataset):
    """A COCO-format detection data set (see the module docstring).

    Args:
        images_dir: directory the images' `file_name`s are relative to.
        annotation_file: COCO instances JSON.
        train: drop crowd annotations from the targets.
        transforms: callable (image, target) -> (image, target), e.g.
            dynrcnn.data.transforms.Compose([RandomHorizontalFlip(0.5)]).
        masks: add `masks` (uint8 [N, H, W], rasterized by pycocotools) to the targets.
        skip_empty: leave out images with no box left in the targets (after crowd
            annotations are dropped in train mode and empty boxes are dropped).

    Attributes:
        coco: pycocotools COCO object of the file as written.
        num_classes: K + 1 (background included).
        cat_ids: sorted COCO category ids; label k (1..K) is cat_ids[k - 1].
        label_to_cat_id, cat_id_to_label: the two mappings.
        class_names: names by label, class_names[0] == "__background__".
        ids: COCO image ids in data set order (ascending).
    """

    def __init__(
        self,
        images_dir: PathLike,
        annotation_file: PathLike,
        train: bool = False,
        transforms: Optional[Transform] = None,
        masks: bool = False,
        skip_empty: bool = False,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.train = bool(train)
        self.transforms = transforms
        self.masks = bool(masks)
        self.skip_empty = bool(skip_empty)

        data = load_annotation_json(self.annotation_file)
        if not self.images_dir.is_dir():
            raise DatasetError(f"images directory {str(self.images_dir)!r} (for "
                               f"{str(self.annotation_file)!r}) does not exist")
        self._where = f"annotation file {str(self.annotation_file)!r}"
        images = self._parse_images(data["images"])
        categories = self._parse_categories(data["categories"])
        self.cat_ids: List[int] = sorted(categories)
        self.cat_id_to_label: Dict[int, int] = {c: k + 1 for k, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: Dict[int, int] = {k: c for c, k in self.cat_id_to_label.items()}
        self.class_names: List[str] = ["__background__"] + [categories[c] for c in self.cat_ids]
        self.num_classes: int = len(self.cat_ids) + 1
        self._records = self._parse_annotations(data["annotations"], images)
        ids = sorted(self._records)
        if self.skip_empty:
            ids = [i for i in ids if self._records[i].boxes]
        self.ids: List[int] = ids
        self.coco = self._make_coco(data)

    # ------------------------------------------------------------------ construction

    def _parse_images(self, entries: List[Any]) -> Dict[int, Dict[str, Any]]:
        images: Dict[int, Dict[str, Any]] = {}
        for n, img in enumerate(entries):
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                raise DatasetError(f"{self._where}: images[{n}] has no integer 'id'")
            img_id = img["id"]
            if img_id in images:
                raise DatasetError(f"{self._where}: image id {img_id} appears twice")
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                raise DatasetError(f"{self._where}: image id {img_id} has no 'file_name'")
            for key in ("width", "height"):
                if not _is_int(img.get(key)) or img[key] <= 0:
                    raise DatasetError(
                        f"{self._where}: image id {img_id} ({img['file_name']}) needs a "
                        f"positive integer {key!r}, got {img.get(key)!r}")
            images[img_id] = img
        return images

    def _parse_categories(self, entries: List[Any]) -> Dict[int, str]:
        categories: Dict[int, str] = {}
        for n, cat in enumerate(entries):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise DatasetError(f"{self._where}: categories[{n}] has no integer 'id'")
            if cat["id"] in categories:
                raise DatasetError(f"{self._where}: category id {cat['id']} appears twice")
            name = cat.get("name")
            categories[cat["id"]] = str(name) if name is not None else str(cat["id"])
        if not categories:
            raise DatasetError(f"{self._where}: 'categories' is empty")
        return categories

    def _parse_annotations(self, entries: List[Any], images: Dict[int, Dict[str, Any]]
                           ) -> Dict[int, _ImageRecord]:
        records = {i: _ImageRecord(i, img["file_name"], img["width"], img["height"],
                                   [], [], [], [], [])
                   for i, img in images.items()}
        seen: set = set()
        clipped: List[int] = []
        dropped: List[int] = []
        for n, ann in enumerate(entries):
            if not isinstance(ann, dict) or not _is_int(ann.get("id")):
                raise DatasetError(f"{self._where}: annotations[{n}] has no integer 'id'")
            ann_id = ann["id"]
            where = f"{self._where}: annotation id {ann_id}"
            if ann_id in seen:
                raise DatasetError(f"{where} appears twice")
            seen.add(ann_id)
            for key in ("image_id", "category_id", "bbox"):
                if key not in ann:
                    raise DatasetError(f"{where} has no {key!r}")
            img_id, cat_id, bbox = ann["image_id"], ann["category_id"], ann["bbox"]
            if img_id not in records:
                raise DatasetError(f"{where} refers to image id {img_id!r}, which is not in "
                                   "'images'")
            if cat_id not in self.cat_id_to_label:
                raise DatasetError(
                    f"{where} has category id {cat_id!r}, which is not in 'categories' "
                    f"(known ids: {_id_list(self.cat_ids)})")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
                raise DatasetError(f"{where}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
            if not all(math.isfinite(v) for v in bbox):
                raise DatasetError(f"{where} (image id {img_id}) has a non-finite bbox {bbox}")
            iscrowd = ann.get("iscrowd", 0)
            if iscrowd not in (0, 1):  # also accepts True / False
                raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
            iscrowd = int(iscrowd)

            rec = records[img_id]
            x, y, w, h = (float(v) for v in bbox)
            x1, y1 = min(max(x, 0.0), rec.width), min(max(y, 0.0), rec.height)
            x2, y2 = min(max(x + w, 0.0), rec.width), min(max(y + h, 0.0), rec.height)
            if w <= 0 or h <= 0 or x2 <= x1 or y2 <= y1:
                dropped.append(ann_id)
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                clipped.append(ann_id)
            if iscrowd and self.train:
                continue
            seg = ann.get("segmentation")
            if isinstance(seg, dict) and not _rle_fits(seg, rec.height, rec.width):
                # checked even without masks: the evaluator's segm scores decode it
                raise DatasetError(
                    f"{where} (image id {img_id}) has a broken RLE 'segmentation': its "
                    f"'size' must be [{rec.height}, {rec.width}] and its run lengths must "
                    f"add up to {rec.height} x {rec.width} pixels")
            if self.masks and not _check_segmentation(seg, rec.height, rec.width):
                raise DatasetError(
                    f"{where} (image id {img_id}) has no usable 'segmentation' (polygons of "
                    f">= 3 points, or RLE of the image's size), which masks=True needs")
            area = ann.get("area")
            if not _is_number(area) or not math.isfinite(area) or area <= 0:
                area = (x2 - x1) * (y2 - y1)
            rec.ann_ids.append(ann_id)
            rec.boxes.append([x1, y1, x2, y2])
            rec.labels.append(self.cat_id_to_label[cat_id])
            rec.areas.append(float(area))
            rec.iscrowd.append(iscrowd)
        if clipped or dropped:
            parts = []
            if clipped:
                parts.append(f"clipped {len(clipped)} boxes to the image (annotation ids "
                             f"{_id_list(clipped)})")
            if dropped:
                parts.append(f"dropped {len(dropped)} degenerate boxes "
                             f"(annotation ids {_id_list(dropped)})")
            warnings.warn(f"{self.annotation_file.name}: {', '.join(parts)}", DatasetWarning,
                          stacklevel=3)
        return records

    @staticmethod
    def _make_coco(data: Dict[str, Any]) -> Any:
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
            coco.createIndex()
        return coco

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes - 1} classes, "
                f"train={self.train}, masks={self.masks}, file={str(self.annotation_file)!r})")

    def count_boxes(self) -> int:
        """Boxes the targets of the data set hold (train mode: crowd and degenerate ones
        dropped): 0 means there is nothing to train on."""
        return sum(len(self._records[i].boxes) for i in self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self._records[self.ids[index]].file_name

    def check_image_files(self) -> None:
        """DatasetError naming the first image file of the data set that does not exist
        (and how many are missing): one stat per image, so a missing file is found before
        a run starts rather than when the loader reaches it, possibly hours in."""
        missing = [self.images_dir / self._records[i].file_name for i in self.ids
                   if not (self.images_dir / self._records[i].file_name).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"image file {str(missing[0])!r}{more}, listed in "
                               f"{str(self.annotation_file)!r}, does not exist")

    def get_height_and_width(self, index: int) -> Tuple[int, int]:
        """(height, width) of an image from the annotation file, without reading it."""
        rec = self._records[self.ids[index]]
        return rec.height, rec.width

    def aspect_ratios(self) -> List[float]:
        """width / height of every image, in data set order (from the annotation file)."""
        return [self._records[i].width / self._records[i].height for i in self.ids]

    def load_image(self, index: int) -> Tensor:
        """float32 [3, H, W] in [0, 1]; DatasetError naming the path when it is broken."""
        rec = self._records[self.ids[index]]
        path = self.images_dir / rec.file_name
        if not path.is_file():
            raise DatasetError(f"image file {str(path)!r} (image id {rec.image_id}, listed in "
                               f"{str(self.annotation_file)!r}) does not exist")
        try:
            with Image.open(path) as img:
                pixels = rgb8_pixels(img, f"image file {str(path)!r} (image id {rec.image_id})")
        except DatasetError:
            raise
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... when corrupt
            raise DatasetError(f"image file {str(path)!r} (image id {rec.image_id}) cannot be "
                               f"read: {type(e).__name__}: {e}") from e
        height, width = pixels.shape[:2]
        if (height, width) != (rec.height, rec.width):
            raise DatasetError(
                f"image file {str(path)!r} (image id {rec.image_id}) is {width}x{height} "
                f"(WxH), but {str(self.annotation_file)!r} says {rec.width}x{rec.height}")
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div_(255.0)

    def load_target(self, index: int) -> Target:
        rec = self._records[self.ids[index]]
        n = len(rec.boxes)
        target: Target = {
            "boxes": torch.tensor(rec.boxes, dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor(rec.labels, dtype=torch.int64).reshape(n),
            "image_id": rec.image_id,
            "area": torch.tensor(rec.areas, dtype=torch.float32).reshape(n),
            "iscrowd": torch.tensor(rec.iscrowd, dtype=torch.int64).reshape(n),
        }
        if self.masks:
            target["masks"] = self._decode_masks(rec)
        return target

    def _decode_masks(self, rec: _ImageRecord) -> Tensor:
        """uint8 [N, H, W] of the image's annotations, rasterized by pycocotools."""
        if not rec.ann_ids:
            return torch.zeros((0, rec.height, rec.width), dtype=torch.uint8)
        from pycocotools import mask as mask_utils

        rles = [self.coco.annToRLE(self.coco.anns[i]) for i in rec.ann_ids]
        with warnings.catch_warnings():
            # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = mask_utils.decode(rles)  # [H, W, N], Fortran order
        return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))

    def __getitem__(self, index: int) -> Tuple[Tensor, Target]:
        image = self.load_image(index)
        target = self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
