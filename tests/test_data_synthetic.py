"""dynrcnn.data.synthetic: deterministic, valid COCO output, exact boxes, and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")

from data_helpers import SYN_SIZE  # noqa: E402

from dynrcnn.data import SHAPE_CLASSES, make_synthetic_coco  # noqa: E402
from dynrcnn.data.synthetic import main as synthetic_main  # noqa: E402
from dynrcnn.data.synthetic import mask_box, rasterize_polygons  # noqa: E402


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
