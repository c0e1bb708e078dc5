"""Detection transforms on (image, target) pairs, batching, and aspect-ratio grouping.

Images reach these transforms already as float32 [3, H, W] tensors (CocoDetection converts
them), so the usual ToTensor step is `ToTensor`, which only converts PIL images / numpy
arrays and passes tensors through. Transforms never modify their input target in place.
Randomness comes from torch's global generator (seeded per DataLoader worker by torch).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from dynrcnn.data.coco import rgb8_pixels

Target = Dict[str, Any]
Transform = Callable[[Tensor, Target], Tuple[Tensor, Target]]


class Compose:
    """Apply transforms in order; each maps (image, target) -> (image, target)."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def hflip(image: Tensor, target: Target) -> Tuple[Tensor, Target]:
    """Mirror left-right: x1' = W - x2, x2' = W - x1; masks mirrored too."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target.get("boxes")
    if boxes is not None:
        flipped = boxes.clone()
        flipped[:, 0] = width - boxes[:, 2]
        flipped[:, 2] = width - boxes[:, 0]
        target["boxes"] = flipped
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class RandomHorizontalFlip:
    """hflip with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        if self.p > 0 and float(torch.rand(())) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensor:
    """PIL image / HWC uint8 array -> float32 [3, H, W] in [0, 1]; tensors pass unchanged."""

    def __call__(self, image: Any, target: Target) -> Tuple[Tensor, Target]:
        if isinstance(image, Tensor):
            return image, target
        pixels = (rgb8_pixels(image, "the image") if hasattr(image, "convert")
                  else np.array(image, dtype=np.uint8))
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {pixels.shape}")
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)
        return tensor.contiguous().float().div_(255.0), target


def detection_transforms(train: bool, flip_prob: float = 0.5) -> Optional[Transform]:
    """The transforms of the detectors' recipes: a random horizontal flip in training, none
    in evaluation (torchvision's GeneralizedRCNNTransform resizes and normalizes)."""
    return Compose([RandomHorizontalFlip(flip_prob)]) if train and flip_prob > 0 else None


def collate_fn(batch: Sequence[Tuple[Tensor, Target]]) -> Tuple[List[Tensor], List[Target]]:
    """[(image, target), ...] -> ([images], [targets]): images of different sizes stay
    separate, as torchvision's detection models expect."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def aspect_ratio_group_ids(dataset: Any) -> List[int]:
    """0 for images with width / height <= 1 (portrait, square), 1 for landscape ones.

    `dataset` needs `aspect_ratios()` (CocoDetection) or `get_height_and_width(i)`; a
    torch Subset of such a data set works too.
    """
    indices = None
    if hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # torch Subset
        dataset, indices = dataset.dataset, list(dataset.indices)
    if hasattr(dataset, "aspect_ratios"):
        ratios = list(dataset.aspect_ratios())
    elif hasattr(dataset, "get_height_and_width"):
        ratios = [w / h for h, w in (dataset.get_height_and_width(i)
                                     for i in range(len(dataset)))]
    else:
        raise TypeError(f"{type(dataset).__name__} has neither aspect_ratios() nor "
                        "get_height_and_width(index)")
    if indices is not None:
        ratios = [ratios[i] for i in indices]
    return [1 if r > 1.0 else 0 for r in ratios]


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches of indices from `sampler` whose group ids (e.g. aspect_ratio_group_ids) agree,
    so that padding to the batch's largest image wastes little.

    Indices are buffered per group and a batch is emitted as soon as a group has batch_size
    of them. The leftovers at the end of an epoch (fewer than batch_size per group) are
    batched together in sampler order, so every index is used once and there are exactly
    ceil(len(sampler) / batch_size) batches (floor with drop_last=True, which drops the
    incomplete last batch only); only those last batches may mix groups.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[Tuple[int, int]]] = defaultdict(list)  # (position, index)
        for position, idx in enumerate(self.sampler):
            buf = buffers[self.group_ids[idx]]
            buf.append((position, idx))
            if len(buf) == self.batch_size:
                yield [i for _, i in buf]
                buf.clear()
        leftovers = [i for _, i in sorted(p for buf in buffers.values() for p in buf)]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
