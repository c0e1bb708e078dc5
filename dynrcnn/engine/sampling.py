"""Deterministic, resumable data order and augmentation.

Training reads an endless stream of batches: epoch e is a DistributedSampler shuffle
(seed, set_epoch(e)) of this rank's shard, cut into batches of batch_size (an incomplete
last batch is dropped, so every rank has the same number of batches per epoch). Iteration i
is therefore batch i % batches_per_epoch of epoch i // batches_per_epoch: a resumed run
starts exactly where the checkpoint stopped, without loading the skipped images.

Each sample carries its own seed (from seed, epoch and image index), and the random
horizontal flip, as well as any randomness inside the dataset's own transforms, draws from
it: augmentation is the same with any number of workers and after a resume.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler

SampleKey = Tuple[int, int]  # (dataset index, sample seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one (epoch, image) pair; independent of rank and worker layout."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class _LengthOnly:
    """DistributedSampler only needs len(dataset); avoids touching the real dataset."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class ResumableBatchSampler(Sampler[List[SampleKey]]):
    """Endless batches of (index, sample_seed) for one rank, starting at `start_iter`."""

    def __init__(self, dataset_size: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_iter: int = 0, shuffle: bool = True) -> None:
        self.sampler = DistributedSampler(_LengthOnly(dataset_size), num_replicas=world_size,
                                          rank=rank, shuffle=shuffle, seed=seed,
                                          drop_last=False)
        self.batch_size = batch_size
        self.seed = seed
        self.start_iter = start_iter
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {dataset_size} images: fewer than batch_size={batch_size} "
                f"per process x {world_size} processes")

    def position(self, iteration: int) -> Tuple[int, int]:
        """(epoch, batch within the epoch) of a 0-based iteration."""
        return divmod(iteration, self.batches_per_epoch)

    def __iter__(self) -> Iterator[List[SampleKey]]:
        epoch, skip = self.position(self.start_iter)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(skip, self.batches_per_epoch):
                chunk = indices[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(i, sample_seed(self.seed, epoch, i)) for i in chunk]
            epoch, skip = epoch + 1, 0


class ShardSampler(Sampler[int]):
    """Indices rank, rank + W, rank + 2W, ...: every image exactly once over all ranks (no
    padding duplicates, unlike DistributedSampler), for evaluation."""

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, dataset_size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed python random, numpy and torch (CPU) for a block, then restore their states, so
    a sample's augmentation is reproducible and the caller's RNG streams are untouched."""
    py, np_state, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(th)


def hflip(image: Tensor, target: Dict[str, Any]) -> Tuple[Tensor, Dict[str, Any]]:
    """Mirror an image [C,H,W] with its xyxy boxes and [N,H,W] masks."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1],
                                   width - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class AugmentedDataset(Dataset):
    """Wraps a detection dataset: item (index, sample_seed) -> the sample, flipped with
    probability `hflip_prob`, with every random draw seeded by sample_seed."""

    def __init__(self, dataset: Any, hflip_prob: float = 0.5) -> None:
        self.dataset = dataset
        self.hflip_prob = hflip_prob

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Tuple[Tensor, Dict[str, Any]]:
        index, seed = key
        with seeded_global_rng(seed):
            image, target = self.dataset[index]
            flip = random.random() < self.hflip_prob
        if flip:
            image, target = hflip(image, target)
        return image, target


def collate(batch: Sequence[Tuple[Tensor, Dict[str, Any]]]
            ) -> Tuple[List[Tensor], List[Dict[str, Any]]]:
    """(list of images, list of targets): detection images differ in size, so no stacking
    (dynrcnn.data.collate_fn's contract; defined here so the engine needs no data module)."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets


def move_to_device(images: Sequence[Tensor], targets: Sequence[Dict[str, Any]],
                   device: torch.device) -> Tuple[List[Tensor], List[Dict[str, Any]]]:
    """Images and the tensor fields of targets onto `device` (other fields as they are)."""
    non_blocking = device.type == "cuda"
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [{k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v
                for k, v in t.items()} for t in targets]
    return images, targets
