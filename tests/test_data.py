"""dynrcnn.data: synthetic generator, CocoDetection (and its errors), transforms, batching."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler

pytest.importorskip("pycocotools")

from dynrcnn.data import (  # noqa: E402
    SHAPE_CLASSES,
    CocoDetection,
    Compose,
    DatasetError,
    DatasetWarning,
    GroupedBatchSampler,
    RandomHorizontalFlip,
    ToTensor,
    aspect_ratio_group_ids,
    collate_fn,
    detection_transforms,
    hflip,
    make_synthetic_coco,
)
from dynrcnn.data.synthetic import main as synthetic_main  # noqa: E402
from dynrcnn.data.synthetic import mask_box, rasterize_polygons  # noqa: E402

SYN_SIZE = (96, 128)  # (H, W): not square, so that H / W mix-ups show


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_coco(out, num_train=12, num_val=4, image_size=SYN_SIZE,
                               num_classes=5, seed=3, masks=True)


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- synthetic


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_synthetic_is_deterministic_and_valid_coco(synthetic, tmp_path):
    from pycocotools.coco import COCO

    again = make_synthetic_coco(tmp_path / "again", num_train=12, num_val=4,
                                image_size=SYN_SIZE, num_classes=5, seed=3, masks=True)
    for split in ("train", "val"):
        assert (synthetic.annotation_file(split).read_bytes()
                == again.annotation_file(split).read_bytes())
        files = sorted(p.name for p in synthetic.images_dir(split).iterdir())
        assert files == sorted(p.name for p in again.images_dir(split).iterdir())
        for name in files:
            assert ((synthetic.images_dir(split) / name).read_bytes()
                    == (again.images_dir(split) / name).read_bytes())
    other = make_synthetic_coco(tmp_path / "other", num_train=2, num_val=0,
                                image_size=SYN_SIZE, seed=4)
    assert ((other.train_images / "000001.png").read_bytes()
            != (synthetic.train_images / "000001.png").read_bytes())

    height, width = SYN_SIZE
    coco = COCO(str(synthetic.train_annotations))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES[:5])
    assert len(coco.imgs) == 12
    empty = [i for i in coco.imgs if not coco.getAnnIds(imgIds=[i])]
    assert 1 <= len(empty) < 12  # a few images without objects
    assert len({a["category_id"] for a in coco.anns.values()}) >= 3
    for a in coco.anns.values():
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["area"] > 0 and w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert all(float(v).is_integer() for v in a["bbox"])  # pixel-edge exact boxes
        # the polygons describe the same pixels (up to pycocotools' boundary quantisation)
        m = coco.annToMask(a)
        assert m.shape == SYN_SIZE
        x1, y1, x2, y2 = mask_box(m.astype(bool))
        assert max(abs(x1 - x), abs(y1 - y), abs(x2 - x - w), abs(y2 - y - h)) <= 1
        assert abs(int(m.sum()) - a["area"]) <= 0.15 * a["area"] + 4
    with Image.open(synthetic.train_images / "000000.png") as img:
        assert img.size == (width, height) and img.mode == "RGB"


def test_synthetic_boxes_are_the_rasterized_extent():
    # a rectangle whose corners sit on pixel centres covers exactly the pixels in between
    mask = rasterize_polygons([np.array([[2.5, 3.5], [9.5, 3.5], [9.5, 6.5], [2.5, 6.5]])],
                              10, 12)
    assert mask_box(mask) == (2, 3, 9, 6)
    assert int(mask.sum()) == 7 * 3
    # a ring (two half-annuli) has a hole
    t = np.linspace(0, np.pi, 33)
    outer = np.stack([20 + 15 * np.cos(t), 20 + 15 * np.sin(t)], 1)
    inner = np.stack([20 + 7 * np.cos(t[::-1]), 20 + 7 * np.sin(t[::-1])], 1)
    top = np.concatenate([outer, inner])
    bottom = top.copy()
    bottom[:, 1] = 40 - bottom[:, 1]
    ring = rasterize_polygons([top, bottom], 40, 40)
    assert not ring[20, 20] and ring[20, 10] and ring[20, 30] and ring[10, 20]
    assert mask_box(np.zeros((4, 4), dtype=bool)) is None


def test_synthetic_cli_and_bad_arguments(tmp_path, capsys):
    assert synthetic_main(["--out", str(tmp_path / "cli"), "--num-train", "2", "--num-val",
                           "1", "--image-size", "64", "80", "--num-classes", "6",
                           "--no-masks"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    data = json.loads((tmp_path / "cli/annotations/instances_val.json").read_text())
    assert len(data["images"]) == 1 and data["images"][0]["width"] == 80
    assert len(data["categories"]) == 6
    assert all("segmentation" not in a for a in data["annotations"])
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_coco(tmp_path / "bad", num_classes=7)
    with pytest.raises(SystemExit):
        synthetic_main(["--out", str(tmp_path / "bad"), "--num-classes", "0"])


# --------------------------------------------------------------------------- data set


def test_items_shapes_dtypes_and_labels(synthetic):
    ds = CocoDetection(synthetic.train_images, synthetic.train_annotations, train=True)
    assert len(ds) == 12 and ds.num_classes == 6
    assert ds.cat_ids == [1, 2, 3, 4, 5]
    assert ds.class_names == ["__background__", *SHAPE_CLASSES[:5]]
    assert ds.ids == sorted(ds.coco.getImgIds())
    seen = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, *SYN_SIZE)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        n = target["boxes"].shape[0]
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
        assert target["area"].dtype == torch.float32 and target["area"].shape == (n,)
        assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].shape == (n,)
        assert isinstance(target["image_id"], int) and target["image_id"] == ds.ids[i]
        assert "masks" not in target
        anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[ds.ids[i]]))
        expected = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                     a["bbox"][1] + a["bbox"][3]] for a in anns]
        assert_same(target["boxes"], torch.tensor(expected).reshape(-1, 4))
        assert [ds.label_to_cat_id[int(k)] for k in target["labels"]] == \
            [a["category_id"] for a in anns]
        seen += n
    assert seen == len(ds.coco.anns)
    assert len(CocoDetection(synthetic.train_images, synthetic.train_annotations,
                             skip_empty=True)) < len(ds)


def test_non_contiguous_category_ids_map_to_contiguous_labels(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5]), ann(2, 1, 11, [2, 2, 6, 6]),
                                 ann(3, 2, 7, [0, 0, 10, 10])])
    ds = dataset(tmp_path, path)
    assert ds.cat_ids == [3, 7, 11] and ds.num_classes == 4
    assert ds.cat_id_to_label == {3: 1, 7: 2, 11: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    assert {v: k for k, v in ds.label_to_cat_id.items()} == ds.cat_id_to_label
    assert ds.class_names == ["__background__", "three", "seven", "eleven"]
    assert ds[0][1]["labels"].tolist() == [1, 3]
    assert ds[1][1]["labels"].tolist() == [2]
    assert_same(ds[0][1]["boxes"], torch.tensor([[1., 1., 6., 6.],
                                                                 [2., 2., 8., 8.]]))


def test_crowd_annotations_dropped_in_train_kept_in_eval(tmp_path):
    crowd = ann(2, 1, 3, [10, 10, 8, 8], iscrowd=1,
                segmentation={"counts": [310, 8, 22, 8, 22, 8, 22, 8, 22, 8, 22, 8, 22, 8, 22,
                                         8, 672], "size": [30, 40]})
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5], segmentation=rect_polygon(
        1, 1, 5, 5)), crowd])
    train = dataset(tmp_path, path, train=True, masks=True)
    t = train[0][1]
    assert t["boxes"].shape == (1, 4) and t["iscrowd"].tolist() == [0]
    assert t["masks"].shape == (1, 30, 40)
    ev = dataset(tmp_path, path, train=False, masks=True)
    t = ev[0][1]
    assert t["iscrowd"].tolist() == [0, 1] and t["labels"].tolist() == [1, 1]
    assert t["masks"].shape == (2, 30, 40) and int(t["masks"][1].sum()) == 64
    assert len(ev.coco.getAnnIds()) == 2  # the COCO object keeps everything


def test_masks_from_polygons(tmp_path):
    path = write_coco(tmp_path, [
        ann(1, 1, 3, [4, 6, 10, 5], segmentation=rect_polygon(4, 6, 10, 5)),
        ann(2, 1, 7, [20, 2, 12, 20], segmentation=[[20, 2, 32, 2, 26, 22]])])
    ds = dataset(tmp_path, path, masks=True)
    image, target = ds[0]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 30, 40)
    assert set(masks.unique().tolist()) <= {0, 1}
    assert int(masks[0].sum()) == 50 and int(masks[0, 6:11, 4:14].sum()) == 50
    ys, xs = torch.nonzero(masks[1], as_tuple=True)
    assert 20 <= int(xs.min()) and int(xs.max()) < 32 and 2 <= int(ys.min())
    empty = ds[1][1]["masks"]
    assert empty.shape == (0, 30, 40) and empty.dtype == torch.uint8


def test_image_without_annotations(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5])])
    ds = dataset(tmp_path, path, train=True)
    image, target = ds[1]
    assert image.shape == (3, 30, 40)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
    assert target["image_id"] == 2
    assert dataset(tmp_path, path, skip_empty=True).ids == [1]


# --------------------------------------------------------------------------- broken input


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.json.*does not exist"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(DatasetError, match=r"broken\.json.*not valid JSON.*line 2 column"):
        CocoDetection(tmp_path, path)


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, missing):
    path = tmp_path / "partial.json"
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    del data[missing]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=f"partial.json.*lacks.*'{missing}'"):
        CocoDetection(tmp_path, path)
    path.write_text("[]")
    with pytest.raises(DatasetError, match="partial.json.*JSON object"):
        CocoDetection(tmp_path, path)


def test_missing_image_file(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5])], write_images=False)
    ds = dataset(tmp_path, path)  # construction does not touch the images
    with pytest.raises(DatasetError, match=r"a\.png.*image id 1.*does not exist"):
        ds[0]
    with pytest.raises(DatasetError, match=r"images directory.*nowhere.*does not exist"):
        CocoDetection(tmp_path / "nowhere", path)


def test_corrupt_or_mis_sized_image_file(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5])])
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "images" / "b.png").write_bytes(b"")
    ds = dataset(tmp_path, path)
    with pytest.raises(DatasetError, match=r"a\.png.*image id 1.*cannot be read"):
        ds[0]
    with pytest.raises(DatasetError, match=r"b\.png.*image id 2.*cannot be read"):
        ds[1]
    Image.new("RGB", (20, 30)).save(tmp_path / "images" / "b.png")
    with pytest.raises(DatasetError, match=r"b\.png.*image id 2.*20x30.*40x30"):
        ds[1]


def test_non_positive_boxes_dropped_with_one_warning(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5]), ann(7, 1, 3, [2, 2, 0, 5]),
                                 ann(12, 2, 7, [2, 2, 4, -1]), ann(13, 2, 7, [3, 3, 4, 4])])
    with pytest.warns(DatasetWarning) as record:
        ds = dataset(tmp_path, path)
    assert len(record) == 1
    msg = str(record[0].message)
    assert "instances.json" in msg and "dropped 2 degenerate boxes" in msg
    assert "annotation ids 7, 12" in msg and "clipped" not in msg
    assert ds[0][1]["boxes"].shape == (1, 4) and ds[1][1]["boxes"].shape == (1, 4)


def test_out_of_image_boxes_clipped_and_counted(tmp_path):
    path = write_coco(tmp_path, [
        ann(1, 1, 3, [-4, 2, 10, 5]),   # left edge outside: clipped to x1 = 0
        ann(2, 1, 3, [35, 25, 10, 10]),  # bottom-right outside: clipped to (40, 30)
        ann(3, 2, 7, [50, 5, 5, 5]),    # entirely outside: empty after clipping, dropped
        ann(4, 2, 7, [1, 1, 5, 5])])    # fine
    with pytest.warns(DatasetWarning) as record:
        ds = dataset(tmp_path, path)
    assert len(record) == 1
    msg = str(record[0].message)
    assert msg.startswith("instances.json: clipped 2 boxes")
    assert "annotation ids 1, 2" in msg and "dropped 1 degenerate boxes (annotation ids 3)" in msg
    assert_same(ds[0][1]["boxes"], torch.tensor([[0., 2., 6., 7.],
                                                                 [35., 25., 40., 30.]]))
    assert_same(ds[1][1]["boxes"], torch.tensor([[1., 1., 6., 6.]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file warns about nothing
        dataset(tmp_path, write_coco(tmp_path, [ann(4, 2, 7, [1, 1, 5, 5])], name="ok.json"))


def test_unknown_category_id(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 3, [1, 1, 5, 5]), ann(42, 1, 5, [1, 1, 5, 5])])
    with pytest.raises(DatasetError,
                       match=r"instances\.json.*annotation id 42 has category id 5"):
        dataset(tmp_path, path)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_bbox_is_an_error(tmp_path, bad):
    path = tmp_path / "nan.json"
    path.write_text(json.dumps({  # json.dumps writes NaN / Infinity, which json.load reads
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, bad, 5, 5]}],
        "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DatasetError, match=r"nan\.json.*annotation id 9.*non-finite bbox"):
        CocoDetection(tmp_path, path)


@pytest.mark.parametrize("case, pattern", [
    ("unknown_image", r"annotation id 5 refers to image id 99"),
    ("bad_bbox", r"annotation id 5: 'bbox' must be"),
    ("no_bbox", r"annotation id 5 has no 'bbox'"),
    ("duplicate_ann", r"annotation id 1 appears twice"),
    ("duplicate_image", r"image id 1 appears twice"),
    ("bad_width", r"image id 1 \(a.png\) needs a positive integer 'width'"),
    ("no_segmentation", r"annotation id 5 \(image id 1\) has no usable 'segmentation'"),
])
def test_other_broken_annotations(tmp_path, case, pattern):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    good = ann(1, 1, 3, [1, 1, 5, 5], segmentation=rect_polygon(1, 1, 5, 5))
    anns = [good, ann(5, 1, 3, [1, 1, 5, 5], segmentation=rect_polygon(1, 1, 5, 5))]
    if case == "unknown_image":
        anns[1]["image_id"] = 99
    elif case == "bad_bbox":
        anns[1]["bbox"] = [1, 2, 3]
    elif case == "no_bbox":
        del anns[1]["bbox"]
    elif case == "duplicate_ann":
        anns[1]["id"] = 1
    elif case == "duplicate_image":
        images = images + [dict(images[0])]
    elif case == "bad_width":
        images = [{**images[0], "width": 0}]
    elif case == "no_segmentation":
        del anns[1]["segmentation"]
    path = write_coco(tmp_path, anns, images=images, write_images=False)
    with pytest.raises(DatasetError, match=r"instances\.json.*" + pattern):
        dataset(tmp_path, path, masks=True)


# --------------------------------------------------------------------------- transforms


def test_horizontal_flip_is_exact(synthetic):
    ds = CocoDetection(synthetic.train_images, synthetic.train_annotations, masks=True,
                       skip_empty=True)
    image, target = ds[0]
    width = image.shape[-1]
    flipped, ft = RandomHorizontalFlip(p=1.0)(image, target)
    b, fb = target["boxes"], ft["boxes"]
    assert b.shape[0] > 0
    assert_same(fb[:, 0], width - b[:, 2])
    assert_same(fb[:, 2], width - b[:, 0])
    assert_same(fb[:, [1, 3]], b[:, [1, 3]])
    assert_same(flipped, image.flip(-1))
    assert_same(ft["masks"], target["masks"].flip(-1))
    # the flipped box is still the exact extent of the flipped mask
    for box, mask in zip(fb.tolist(), ft["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert abs(int(xs.min()) - box[0]) <= 1 and abs(int(xs.max()) + 1 - box[2]) <= 1
    for key in ("labels", "area", "iscrowd", "image_id"):
        assert ft[key] is target[key]
    assert torch.equal(target["boxes"], ds[0][1]["boxes"])  # input target untouched
    back_image, back = hflip(flipped, ft)
    assert torch.equal(back_image, image) and torch.equal(back["boxes"], b)
    same, st = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and st is target


def test_random_flip_probability_and_compose():
    image = torch.arange(6.0).reshape(1, 1, 6).expand(3, 2, 6)
    target = {"boxes": torch.tensor([[1.0, 0.0, 2.0, 1.0]])}
    torch.manual_seed(0)
    flips = sum(float(RandomHorizontalFlip(0.5)(image, target)[1]["boxes"][0, 0]) == 4.0
                for _ in range(400))
    assert 150 < flips < 250
    twice = Compose([RandomHorizontalFlip(1.0), RandomHorizontalFlip(1.0), ToTensor()])
    out_image, out = twice(image, target)
    assert torch.equal(out_image, image) and torch.equal(out["boxes"], target["boxes"])
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)
    assert detection_transforms(train=False) is None
    pil = Image.fromarray(np.full((4, 5, 3), 255, dtype=np.uint8))
    tensor, _ = ToTensor()(pil, {})
    assert tensor.shape == (3, 4, 5) and float(tensor.min()) == 1.0


def test_collate_and_dataloader(synthetic):
    ds = CocoDetection(synthetic.train_images, synthetic.train_annotations, train=True,
                       transforms=detection_transforms(train=True))
    images, targets = collate_fn([ds[0], ds[1], ds[2]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert len(images) == 3 and len(targets) == 3
    assert [t["image_id"] for t in targets] == ds.ids[:3]
    loader = DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate_fn)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    assert all(img.shape == (3, *SYN_SIZE) for b in batches for img in b[0])


def test_grouped_batch_sampler():
    group_ids = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    sampler = SequentialSampler(range(len(group_ids)))
    batches = list(GroupedBatchSampler(sampler, group_ids, batch_size=3))
    assert len(batches) == len(GroupedBatchSampler(sampler, group_ids, 3)) == 4
    assert sorted(i for b in batches for i in b) == list(range(11))
    full = [b for b in batches if len(b) == 3]
    assert full == [[1, 2, 4], [0, 3, 5], [7, 8, 9]]
    assert all(len({group_ids[i] for i in b}) == 1 for b in full)
    dropped = list(GroupedBatchSampler(sampler, group_ids, 3, drop_last=True))
    assert len(dropped) == len(GroupedBatchSampler(sampler, group_ids, 3, True)) == 3


def test_aspect_ratio_group_ids(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.png", "width": 30, "height": 40},
              {"id": 3, "file_name": "c.png", "width": 30, "height": 30}]
    path = write_coco(tmp_path, [], images=images, write_images=False)
    ds = dataset(tmp_path, path)
    assert aspect_ratio_group_ids(ds) == [1, 0, 0]
    assert aspect_ratio_group_ids(torch.utils.data.Subset(ds, [2, 0])) == [0, 1]
    assert ds.get_height_and_width(1) == (40, 30)


def test_import_does_not_load_pycocotools():
    code = ("import sys, dynrcnn.data; "
            "assert 'pycocotools' not in sys.modules, 'pycocotools imported'; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- integration


@pytest.mark.parametrize("arch, masks", [("dynamic_rcnn", False), ("dynamic_mask_rcnn", True)])
def test_one_train_step_on_synthetic_batch(tmp_path, arch, masks):
    pytest.importorskip("torchvision")
    from dynrcnn.modeling import build_detector

    out = make_synthetic_coco(tmp_path, num_train=3, num_val=0, image_size=(128, 128),
                              num_classes=4, seed=1, empty_fraction=0.0)
    ds = CocoDetection(out.train_images, out.train_annotations, train=True, masks=masks,
                       transforms=detection_transforms(train=True))
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_detector(arch, backbone="tiny_fpn", num_classes=ds.num_classes,
                               min_size=128, max_size=128, rpn_pre_nms_top_n_train=300,
                               rpn_post_nms_top_n_train=150, box_batch_size_per_image=64)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert ("loss_mask" in losses) == masks
    for name, value in losses.items():
        assert torch.isfinite(value), (name, value)
    assert all(torch.isfinite(p).all() for p in model.parameters())
