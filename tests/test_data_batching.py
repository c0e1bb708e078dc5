"""dynrcnn.data batching (collate, grouped batch sampler, aspect-ratio groups) and one
training step of a detector on a synthetic batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

pytest.importorskip("pycocotools")

from data_helpers import SYN_SIZE, dataset, write_coco  # noqa: E402

from dynrcnn.data import (  # noqa: E402
    CocoDetection,
    GroupedBatchSampler,
    aspect_ratio_group_ids,
    collate_fn,
    detection_transforms,
    make_synthetic_coco,
)


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
