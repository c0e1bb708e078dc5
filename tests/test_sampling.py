"""Data order of dynrcnn.engine.sampling: resumable, sharded batches and seeded
augmentation, independent of the number of loader workers."""

from __future__ import annotations

import os
from typing import List, Tuple

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from engine_helpers import HEIGHT, WIDTH, small_config  # noqa: E402

from dynrcnn.engine import Trainer, read_jsonl  # noqa: E402
from dynrcnn.engine.sampling import AugmentedDataset, ResumableBatchSampler, hflip  # noqa: E402

# One intra-op thread (conftest.single_thread): faster for tiny models on a shared machine,
# and bitwise comparisons between runs need the same thread count in every run.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_batch_sampler_resumes_mid_epoch_and_shards_disjointly():
    def take(sampler: ResumableBatchSampler, n: int) -> List[List[Tuple[int, int]]]:
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(ResumableBatchSampler(10, 3, seed=5), 9)
    assert take(ResumableBatchSampler(10, 3, seed=5, start_iter=4), 5) == full[4:]
    # 3 batches per epoch (the incomplete last one dropped); epochs are reshuffled
    assert [i for i, _ in sum(full[:3], [])] != [i for i, _ in sum(full[3:6], [])]
    ranks = [take(ResumableBatchSampler(10, 2, rank=r, world_size=2, seed=5), 2)
             for r in range(2)]
    seen = [i for batches in ranks for batch in batches for i, _ in batch]
    assert len(seen) == len(set(seen)) == 8
    # the per-sample seed depends on (seed, epoch, index), not on rank or position
    assert full[0][0][1] != take(ResumableBatchSampler(10, 3, seed=6), 1)[0][0][1]


def test_hflip_mirrors_boxes_and_masks(fake_coco):
    train_ds, _ = fake_coco
    image, target = train_ds[0]
    flipped, ft = hflip(image, {**target, "masks": torch.zeros(len(target["boxes"]),
                                                               HEIGHT, WIDTH)})
    torch.testing.assert_close(flipped.flip(-1), image)
    b, fb = target["boxes"], ft["boxes"]
    torch.testing.assert_close(fb[:, 0], WIDTH - b[:, 2])
    torch.testing.assert_close(fb[:, 2], WIDTH - b[:, 0])
    torch.testing.assert_close(fb[:, [1, 3]], b[:, [1, 3]])
    # augmentation is a function of the sample seed
    aug = AugmentedDataset(train_ds, hflip_prob=0.5)
    flips = [bool((aug[(0, s)][0] != image).any()) for s in range(16)]
    assert flips == [bool((aug[(0, s)][0] != image).any()) for s in range(16)]
    assert any(flips) and not all(flips)


def test_data_order_and_augmentation_do_not_depend_on_workers(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    logs = []
    for workers in (0, 2):
        run = str(tmp_path / f"run{workers}")
        Trainer(small_config(run, num_workers=workers, iterations=3, hflip=0.5),
                train_dataset=train_ds).train()
        logs.append([(r["total_loss"], r["iou_thr"], r["beta"])
                     for r in read_jsonl(os.path.join(run, "log.jsonl"))])
    assert logs[0] == logs[1]
