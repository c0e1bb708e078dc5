"""Shared input generators and comparison helpers of the op tests.

Boxes are generated in float64 on the CPU from a seeded torch.Generator, then converted to
the dtype and device under test, so that every device sees the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

IMAGE_SIZE = (800.0, 608.0)  # (width, height)


class Batch(NamedTuple):
    proposals: Tensor
    gt_boxes: Tensor
    proposal_splits: Tensor
    gt_splits: Tensor


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def random_boxes(n: int, gen: torch.Generator, image_size=IMAGE_SIZE,
                 min_size: float = 4.0) -> Tensor:
    """n valid boxes (float64 [n, 4]) inside the image, sizes from tiny to half the image."""
    w_img, h_img = image_size
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    w = min_size + u[:, 2] ** 2 * (0.5 * w_img - min_size)
    h = min_size + u[:, 3] ** 2 * (0.5 * h_img - min_size)
    x1 = u[:, 0] * (w_img - w)
    y1 = u[:, 1] * (h_img - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def jitter(boxes: Tensor, gen: torch.Generator, scale: Tensor) -> Tensor:
    """Shift and rescale boxes by relative amounts of order `scale` ([n] or scalar)."""
    n = boxes.shape[0]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cx = boxes[:, 0] + 0.5 * w
    cy = boxes[:, 1] + 0.5 * h
    z = torch.randn(n, 4, generator=gen, dtype=torch.float64) * scale.reshape(-1, 1)
    cx = cx + z[:, 0] * w
    cy = cy + z[:, 1] * h
    w = w * torch.exp(z[:, 2])
    h = h * torch.exp(z[:, 3])
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def make_proposals(gt: Tensor, n: int, gen: torch.Generator, image_size=IMAGE_SIZE,
                   fg_fraction: float = 0.5) -> Tensor:
    """RPN-like proposals: jittered ground truth (some exact copies) mixed with random boxes,
    so that the best IoUs span [0, 1] and there are foreground proposals."""
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.float64)
    n_fg = int(round(n * fg_fraction)) if gt.shape[0] > 0 else 0
    parts = []
    if n_fg > 0:
        idx = torch.randint(gt.shape[0], (n_fg,), generator=gen)
        scale = torch.rand(n_fg, generator=gen, dtype=torch.float64) * 0.35
        copy = torch.rand(n_fg, generator=gen) < 0.1
        jittered = jitter(gt[idx], gen, scale)
        jittered[copy] = gt[idx][copy]  # exact copies: IoU 1
        parts.append(jittered)
    parts.append(random_boxes(n - n_fg, gen, image_size, min_size=1.0))
    props = torch.cat(parts)
    return props[torch.randperm(n, generator=gen)]


def make_batch(proposal_counts: Sequence[int], gt_counts: Sequence[int], seed: int,
               dtype: torch.dtype = torch.float32, device="cpu",
               image_size=IMAGE_SIZE, scale: float = 1.0) -> Batch:
    """A batch of images: image b has proposal_counts[b] proposals and gt_counts[b] gts."""
    assert len(proposal_counts) == len(gt_counts)
    gen = generator(seed)
    props, gts = [], []
    for n_p, n_g in zip(proposal_counts, gt_counts):
        gt = random_boxes(n_g, gen, image_size)
        props.append(make_proposals(gt, n_p, gen, image_size))
        gts.append(gt)
    proposals = torch.cat(props) if props else torch.zeros(0, 4, dtype=torch.float64)
    gt_boxes = torch.cat(gts) if gts else torch.zeros(0, 4, dtype=torch.float64)
    return Batch(
        (proposals * scale).to(device=device, dtype=dtype),
        (gt_boxes * scale).to(device=device, dtype=dtype),
        splits(proposal_counts, device),
        splits(gt_counts, device),
    )


def random_counts(num_images: int, gen: torch.Generator, max_proposals: int = 200,
                  max_gt: int = 12) -> tuple:
    p = torch.randint(1, max_proposals + 1, (num_images,), generator=gen).tolist()
    g = torch.randint(1, max_gt + 1, (num_images,), generator=gen).tolist()
    return p, g


def splits(counts: Sequence[int], device="cpu") -> Tensor:
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + int(c))
    return torch.tensor(offsets, dtype=torch.int64, device=device)


def to_cpu(batch: Batch) -> Batch:
    return Batch(*(t.cpu() for t in batch))


def assert_match_equal(out, ref, iou_atol: float = 1e-6, err_rtol: float = 1e-5,
                       err_atol: float = 1e-6) -> None:
    """Kernel MatchResult vs reference MatchResult (reference may live on another device)."""
    assert out.matched_idxs.dtype == torch.int64
    assert out.max_iou.dtype == torch.float32
    assert out.labels.dtype == torch.int64
    assert out.kth_iou.dtype == torch.float32
    assert out.kth_err.dtype == torch.float32
    assert out.kth_iou.shape == ref.kth_iou.shape
    assert out.kth_err.shape == ref.kth_err.shape
    got = [t.cpu() for t in out]
    exp = [t.cpu() for t in ref]
    torch.testing.assert_close(got[0], exp[0], rtol=0, atol=0, msg=_msg("matched_idxs"))
    torch.testing.assert_close(got[1], exp[1], rtol=0, atol=iou_atol, msg=_msg("max_iou"))
    torch.testing.assert_close(got[2], exp[2], rtol=0, atol=0, msg=_msg("labels"))
    torch.testing.assert_close(got[3], exp[3], rtol=0, atol=iou_atol, equal_nan=True,
                               msg=_msg("kth_iou"))
    torch.testing.assert_close(got[4], exp[4], rtol=err_rtol, atol=err_atol, equal_nan=True,
                               msg=_msg("kth_err"))


def _msg(name: str):
    return lambda default: f"{name}: {default}"
