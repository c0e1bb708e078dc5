"""dynrcnn.data.CocoDetection on broken input: each error or warning names the file and
the offending annotation or image."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from data_helpers import ann, assert_same, dataset, rect_polygon, write_coco  # noqa: E402

from dynrcnn.data import CocoDetection, DatasetError, DatasetWarning  # noqa: E402


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
