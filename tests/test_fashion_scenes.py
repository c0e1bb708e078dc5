"""benchmarks/fashion_scenes.py: scenes of Fashion-MNIST products in COCO format.

The real files are not fetched here (CI has no business downloading 30 MB); small IDX files
of the same format stand in for them, with the SHA-256 check switched off. What is checked
is what the committed study relies on: exact boxes, the classes of the source labels, splits
that never share a product, determinism, and one clear line for a bad source."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.benchmark_helpers import load_script, write_idx

ROOT = Path(__file__).resolve().parents[1]


fashion = load_script("fashion_scenes")
_write_idx = write_idx


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Fake Fashion-MNIST: products are bright rectangles of random size on 0, and the label
    of product k is k % 10 (so a box's class tells which product it came from)."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for part, count in (("train", 300), ("t10k", 10000)):
        images = np.zeros((count, 28, 28), np.uint8)
        for k in range(count):
            h, w = rng.integers(8, 27, size=2)
            y, x = rng.integers(0, 28 - h), rng.integers(0, 28 - w)
            images[k, y:y + h, x:x + w] = rng.integers(120, 255)
        _write_idx(root / f"{part}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{part}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return root


def _build(source: Path, out: Path, *extra: str) -> int:
    return fashion.main(["--out", str(out), "--num-train", "20", "--num-val", "15",
                         "--num-test", "15", "--image-size", "96", "--source", str(source),
                         "--no-verify", *extra])


def _load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def test_boxes_are_exact_and_classes_come_from_the_labels(source, tmp_path):
    assert _build(source, tmp_path / "set") == 0
    data = _load(tmp_path / "set", "val")
    assert [c["name"] for c in data["categories"]] == list(fashion.CLASSES)
    assert data["annotations"], "no product was placed"
    boxes = {}
    for ann in data["annotations"]:
        x, y, w, h = map(int, ann["bbox"])
        boxes.setdefault(ann["image_id"], []).append((x, y, x + w, y + h))
    for ann in data["annotations"]:
        image = np.asarray(Image.open(tmp_path / "set" / "val" / f"{ann['image_id'] - 1:06d}.png"))
        bright = image[:, :, 0] >= fashion.SceneConfig.ink
        x, y, w, h = map(int, ann["bbox"])
        inside = bright[y:y + h, x:x + w]
        # tight: the box's edge rows and columns hold product pixels, and it holds `area`
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() \
            and inside[:, -1].any()
        assert ann["area"] == inside.sum()
        # and no product pixel outside every box (the background stays below ink)
        covered = np.zeros_like(bright)
        for x1, y1, x2, y2 in boxes[ann["image_id"]]:
            covered[y1:y2, x1:x2] = True
        assert not (bright & ~covered).any()
        assert ann["category_id"] - 1 == ann["source"]["index"] % 10


def test_splits_never_share_a_product(source, tmp_path):
    assert _build(source, tmp_path / "set") == 0
    used = {}
    for split in ("train", "val", "test"):
        sources = [(a["source"]["file"], a["source"]["index"])
                   for a in _load(tmp_path / "set", split)["annotations"]]
        assert len(sources) == len(set(sources)), f"{split} uses a product twice"
        used[split] = set(sources)
    assert {f for f, _ in used["train"]} == {"train-images-idx3-ubyte.gz"}
    assert all(i < 5000 for f, i in used["val"]) and all(i >= 5000 for f, i in used["test"])
    assert not (used["val"] & used["test"])


def test_the_same_seed_gives_the_same_set_and_another_seed_another(source, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert _build(source, tmp_path / name, "--seed", seed) == 0
    assert _load(tmp_path / "a", "test") == _load(tmp_path / "b", "test")
    assert (tmp_path / "a/test/000003.png").read_bytes() == \
        (tmp_path / "b/test/000003.png").read_bytes()
    assert _load(tmp_path / "a", "test")["annotations"] != \
        _load(tmp_path / "c", "test")["annotations"]


def test_a_bad_source_is_one_line_and_exit_2(source, tmp_path, capsys):
    assert fashion.main(["--out", str(tmp_path / "x"), "--source", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing train-images-idx3-ubyte.gz" in err[0]
    # the real check: files that are not Fashion-MNIST's are refused by their SHA-256
    assert fashion.main(["--out", str(tmp_path / "x"), "--source", str(source)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SHA-256 differs" in err[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in fashion.FILES.values():
        (broken / name).write_bytes(b"not gzip")
    assert fashion.main(["--out", str(tmp_path / "x"), "--source", str(broken)]) == 2
    assert "not a readable gzip file" in capsys.readouterr().err


def test_masks_are_the_products_pixels_and_change_nothing_else(source, tmp_path):
    """--masks: every segmentation is RLE that pycocotools reads, of exactly `area` pixels,
    inside the box, on the product's pixels (>= ink); the images, boxes and areas are the
    plain run's, and runs without it are byte for byte the same."""
    from pycocotools import mask as mask_utils

    for name, extra in (("plain", ()), ("again", ()), ("masks", ("--masks",))):
        assert _build(source, tmp_path / name, *extra) == 0
    for split in ("train", "val", "test"):
        plain = (tmp_path / "plain" / "annotations" / f"instances_{split}.json").read_bytes()
        assert plain == \
            (tmp_path / "again" / "annotations" / f"instances_{split}.json").read_bytes()
        assert b"segmentation" not in plain
        with_masks = _load(tmp_path / "masks", split)
        stripped = [{k: v for k, v in a.items() if k != "segmentation"}
                    for a in with_masks["annotations"]]
        assert {**with_masks, "annotations": stripped} == json.loads(plain)
        for png in sorted((tmp_path / "plain" / split).iterdir()):
            assert png.read_bytes() == (tmp_path / "masks" / split / png.name).read_bytes()
    data = _load(tmp_path / "masks", "val")
    assert data["annotations"]
    for ann in data["annotations"]:
        rle = ann["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [96, 96]
        with warnings.catch_warnings():  # pycocotools and numpy 2's __array__(copy=...)
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert mask.shape == (96, 96) and int(mask.sum()) == ann["area"]
        x, y, w, h = map(int, ann["bbox"])
        inside = np.zeros_like(mask, dtype=bool)
        inside[y:y + h, x:x + w] = True
        assert not (mask.astype(bool) & ~inside).any()
        # tight: the mask touches every edge of the box
        assert mask[y].any() and mask[y + h - 1].any() and mask[:, x].any() \
            and mask[:, x + w - 1].any()
        image = np.asarray(Image.open(tmp_path / "masks" / "val"
                                      / f"{ann['image_id'] - 1:06d}.png"))[:, :, 0]
        assert (image[mask.astype(bool)] >= fashion.SceneConfig.ink).all()
        # exactly the product's pixels: boxes never overlap and the background is below ink
        assert np.array_equal(mask[y:y + h, x:x + w].astype(bool),
                              image[y:y + h, x:x + w] >= fashion.SceneConfig.ink)


def test_the_data_loader_reads_the_masks(source, tmp_path):
    from dynrcnn.data.coco import CocoDetection

    assert _build(source, tmp_path / "set", "--masks") == 0
    data = CocoDetection(tmp_path / "set" / "val",
                         tmp_path / "set" / "annotations" / "instances_val.json",
                         train=True, masks=True)
    _, target = data[0]
    n = target["boxes"].shape[0]
    assert n > 0 and target["masks"].shape == (n, 96, 96)
    assert target["masks"].sum(dim=(1, 2)).tolist() == \
        [int(a) for a in target["area"].tolist()]
