"""dynrcnn.data.CocoDetection on valid files: items, label mapping, crowds, masks, empty
images; and importing dynrcnn.data does not load pycocotools."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("pycocotools")

from data_helpers import SYN_SIZE, ann, assert_same, dataset, rect_polygon, write_coco  # noqa: E402

from dynrcnn.data import SHAPE_CLASSES, CocoDetection  # noqa: E402


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


def test_import_does_not_load_pycocotools():
    code = ("import sys, dynrcnn.data; "
            "assert 'pycocotools' not in sys.modules, 'pycocotools imported'; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
