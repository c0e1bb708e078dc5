"""dynrcnn.data transforms: exact horizontal flip, flip probability, Compose, ToTensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")

from data_helpers import assert_same  # noqa: E402

from dynrcnn.data import (  # noqa: E402
    CocoDetection,
    Compose,
    RandomHorizontalFlip,
    ToTensor,
    detection_transforms,
    hflip,
)


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
