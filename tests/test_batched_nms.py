"""batched_nms_topk: torchvision's batched_nms + top-k, the same indices bit for bit, on random
and adversarial inputs (ties, NaN, degenerate boxes, empty levels, both of torchvision's
paths), and opcheck."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_extension
from helpers import generator
from torchvision.ops import batched_nms

from dynrcnn.ops import batched_nms_topk

pytestmark = requires_extension

THRESHOLDS = (0.3, 0.5, 0.7, 0.85)  # every RPN / box-head NMS the project uses, and lower


def rpn_like(n: int, gen: torch.Generator, levels: int = 5, size: float = 128.0,
             dtype: torch.dtype = torch.float32):
    """Clustered boxes (many overlaps at every IoU), scores in (0, 1), skewed level sizes."""
    centers = torch.rand(max(1, n // 8), 2, generator=gen, dtype=torch.float64) * size
    pick = torch.randint(0, centers.shape[0], (n,), generator=gen)
    xy = centers[pick] + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 4
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size / 4 + 1
    boxes = torch.cat([xy, xy + wh], 1).to(dtype)
    scores = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    weights = torch.tensor([2.0 ** -k for k in range(levels)])
    idxs = (torch.multinomial(weights, n, replacement=True, generator=gen) if n else
            torch.zeros(0, dtype=torch.int64))
    return boxes, scores, idxs


def expected(boxes, scores, idxs, thr, k):
    keep = batched_nms(boxes, scores, idxs, thr)
    return keep if k < 0 else keep[:k]


def check(boxes, scores, idxs, thr, k):
    got = batched_nms_topk(boxes, scores, idxs, thr, k)
    want = expected(boxes, scores, idxs, thr, k)
    assert got.dtype == torch.int64
    assert torch.equal(got, want), (thr, k, got[:20], want[:20])


@pytest.mark.parametrize("n", [700, 3000])  # torchvision's offset-trick path, per-level path
@pytest.mark.parametrize("thr", THRESHOLDS)
def test_random_inputs_match_torchvision(seed, n, thr):
    gen = generator(seed)
    boxes, scores, idxs = rpn_like(n, gen)
    for k in (1, 50, 1000, n, -1):
        check(boxes, scores, idxs, thr, k)


@pytest.mark.parametrize("n", [600, 3000])
def test_ties_match_torchvision(seed, n):
    """Equal scores: torchvision's nms sorts stably, its final sort is not stable; the op
    reproduces both, and falls back to the full NMS where a tie meets the cut."""
    gen = generator(seed)
    boxes, scores, idxs = rpn_like(n, gen)
    for quantum in (0.1, 0.01, 1.0):  # 1.0: every score equal
        tied = (scores / quantum).round() * quantum
        for thr in THRESHOLDS:
            for k in (10, 300, 1000, -1):
                check(boxes, tied, idxs, thr, k)


@pytest.mark.parametrize("n", [500, 2500])
def test_nan_and_degenerate_boxes_match_torchvision(seed, n):
    gen = generator(seed)
    boxes, scores, idxs = rpn_like(n, gen)
    rows = torch.randperm(n, generator=gen)[:20]
    boxes[rows[:5]] = float("nan")
    boxes[rows[5:10], 2] = boxes[rows[5:10], 0]  # zero width
    boxes[rows[10:15], 3] = boxes[rows[10:15], 1] - 3  # negative height
    boxes[rows[15:], :] = boxes[rows[15:16], :]  # duplicates
    scores[rows[:3]] = float("nan")
    scores[rows[3:6]] = -0.0
    scores[rows[6:9]] = 0.0
    for thr in THRESHOLDS + (0.0, 1.0):
        for k in (7, 400, -1):
            check(boxes, scores, idxs, thr, k)


def test_levels_dtypes_and_sizes(seed):
    gen = generator(seed)
    boxes, scores, idxs = rpn_like(2500, gen, levels=3)
    check(boxes, scores, idxs * 7 - 5, 0.7, 800)  # any integer ids, negative too
    check(boxes, scores, torch.zeros_like(idxs), 0.7, 800)  # one level
    check(boxes, scores, torch.arange(2500), 0.7, 800)  # a level per box
    check(boxes, scores, idxs.int(), 0.7, 800)  # int32 ids
    check(boxes.double(), scores.double(), idxs, 0.85, 1000)
    check(boxes.t().contiguous().t(), scores[::1], idxs, 0.85, 1000)  # non-contiguous boxes
    for n in (0, 1, 2, 1000, 1001):  # the paths switch at boxes.numel() > 4000
        check(boxes[:n], scores[:n], idxs[:n], 0.5, 100)
    assert batched_nms_topk(boxes, scores, idxs, 0.5, 0).numel() == 0


def test_bad_input_is_named():
    boxes, scores, idxs = rpn_like(10, generator(0))
    with pytest.raises(ValueError, match="boxes must have shape"):
        batched_nms_topk(boxes[:, :3], scores, idxs, 0.5)
    with pytest.raises(ValueError, match="scores and idxs must have shape"):
        batched_nms_topk(boxes, scores[:5], idxs, 0.5)
    with pytest.raises(ValueError, match="max_keep"):
        batched_nms_topk(boxes, scores, idxs, 0.5, -2)
    with pytest.raises(RuntimeError, match="scores are Double but boxes are Float"):
        torch.ops.dynrcnn.batched_nms_topk(boxes, scores.double(), idxs, 0.5, 3)
    with pytest.raises(RuntimeError, match="idxs must be an integer tensor"):
        torch.ops.dynrcnn.batched_nms_topk(boxes, scores, idxs.float(), 0.5, 3)
    # dtypes torchvision's CPU nms lacks go to torchvision, which names them itself
    with pytest.raises(RuntimeError):
        batched_nms_topk(boxes.half(), scores.half(), idxs, 0.5)


@pytest.mark.parametrize("n", [0, 30, 1200])
def test_opcheck(n):
    boxes, scores, idxs = rpn_like(n, generator(1))
    result = torch.library.opcheck(torch.ops.dynrcnn.batched_nms_topk.default,
                                   (boxes, scores, idxs, 0.7, 100))
    assert all(v == "SUCCESS" for v in result.values()), result
