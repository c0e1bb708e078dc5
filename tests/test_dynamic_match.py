"""dynamic_match: kernel vs the pure-torch reference on random batches and the edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SEEDS
from helpers import (
    assert_match_equal,
    generator,
    make_batch,
    random_counts,
    splits,
    to_cpu,
)

from dynrcnn.ops import MatchResult, _reference, dynamic_match

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def run_both(batch, iou_thr=0.5, k_iou=75, k_err=10, weights=WEIGHTS, per_image=False,
             thr_dtype=torch.float32):
    """The op on the batch's device and the reference on the CPU, same inputs."""
    p, g, ps, gs = batch
    thr = torch.tensor(iou_thr, dtype=thr_dtype, device=p.device)
    out = dynamic_match(p, g, ps, gs, thr, k_iou, k_err, weights, per_image)
    cp, cg, cps, cgs = to_cpu(batch)
    ref = _reference.dynamic_match(cp, cg, cps, cgs, thr.cpu(), k_iou, k_err, weights,
                                   per_image)
    return out, ref


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("iou_thr", [0.4, 0.6])
def test_random_batch_matches_reference(device, seed, per_image, iou_thr):
    gen = generator(seed + 1000)
    num_images = 4
    p_counts, g_counts = random_counts(num_images, gen, max_proposals=300, max_gt=15)
    batch = make_batch(p_counts, g_counts, seed, device=device)
    k_iou, k_err = (75, 10) if per_image else (75 * num_images, 10 * num_images)
    out, ref = run_both(batch, iou_thr, k_iou, k_err, per_image=per_image)
    assert isinstance(out, MatchResult)
    assert all(t.device == batch.proposals.device for t in out)
    assert out.kth_iou.shape == ((num_images,) if per_image else ())
    assert_match_equal(out, ref)
    # the inputs are realistic: foreground exists, IoUs span [0, 1], stats are finite
    assert ref.labels.sum() > 0 and (ref.labels == 0).sum() > 0
    assert ref.max_iou.max() == 1.0 and ref.max_iou.min() < 0.1
    assert torch.isfinite(ref.kth_iou).all()
    assert torch.isfinite(ref.kth_err).any()  # a small image may have no foreground


@pytest.mark.parametrize("k_iou,k_err", [(1, 1), (7, 3), (10**9, 10**9)])
@pytest.mark.parametrize("per_image", [False, True])
def test_k_values_and_clamping(device, seed, k_iou, k_err, per_image):
    batch = make_batch([60, 25, 80], [4, 2, 9], seed, device=device)
    out, ref = run_both(batch, 0.5, k_iou, k_err, per_image=per_image)
    assert_match_equal(out, ref)
    if k_iou == 10**9 and not per_image:  # k beyond the population clamps to its size
        assert out.kth_iou.item() == ref.max_iou.min().item()
        fg_err = _errors(to_cpu(batch), ref)
        torch.testing.assert_close(out.kth_err.cpu(), fg_err.max(), rtol=1e-6, atol=1e-6)
    if k_iou == 1 and not per_image:
        assert out.kth_iou.item() == ref.max_iou.max().item()


def _errors(batch, ref):
    """Regression errors of the foreground proposals of a batch whose images all have gt."""
    fg = ref.labels == 1
    return _reference.regression_error(batch.proposals[fg],
                                       batch.gt_boxes[ref.matched_idxs[fg]], WEIGHTS).float()


@pytest.mark.parametrize("per_image", [False, True])
def test_images_without_proposals_or_gt(device, seed, per_image):
    p_counts = [50, 0, 30, 0, 40, 20, 35]
    g_counts = [5, 3, 0, 0, 7, 0, 1]
    batch = make_batch(p_counts, g_counts, seed, device=device)
    out, ref = run_both(batch, 0.5, 5, 3, per_image=per_image)
    assert_match_equal(out, ref)
    ps = batch.proposal_splits.tolist()
    for b, n_g in enumerate(g_counts):
        rows = slice(ps[b], ps[b + 1])
        if n_g == 0:  # no ground truth: -1, IoU 0, background
            assert (out.matched_idxs[rows] == -1).all()
            assert (out.max_iou[rows] == 0).all()
            assert (out.labels[rows] == 0).all()
        else:  # matched into this image's own gt rows
            gs = batch.gt_splits.tolist()
            m = out.matched_idxs[rows]
            assert ((m >= gs[b]) & (m < gs[b + 1])).all()
    if per_image:
        empty = torch.tensor([p == 0 or g == 0 for p, g in zip(p_counts, g_counts)])
        assert out.kth_iou.cpu()[empty].isnan().all()
        assert out.kth_err.cpu()[empty].isnan().all()
        assert torch.isfinite(out.kth_iou.cpu()[~empty]).all()


@pytest.mark.parametrize("per_image", [False, True])
def test_no_gt_in_batch(device, per_image):
    batch = make_batch([30, 20], [0, 0], 0, device=device)
    assert batch.gt_boxes.shape == (0, 4)
    out, ref = run_both(batch, 0.5, 5, 5, per_image=per_image)
    assert_match_equal(out, ref)
    assert (out.matched_idxs == -1).all() and (out.labels == 0).all()
    assert (out.max_iou == 0).all()
    assert out.kth_iou.isnan().all() and out.kth_err.isnan().all()


@pytest.mark.parametrize("per_image", [False, True])
def test_no_proposals_in_batch(device, per_image):
    batch = make_batch([0, 0, 0], [3, 0, 2], 0, device=device)
    out, ref = run_both(batch, 0.5, 5, 5, per_image=per_image)
    assert_match_equal(out, ref)
    assert out.matched_idxs.shape == (0,) and out.max_iou.shape == (0,)
    assert out.kth_iou.shape == ((3,) if per_image else ())
    assert out.kth_iou.isnan().all() and out.kth_err.isnan().all()


@pytest.mark.parametrize("per_image", [False, True])
def test_empty_batch(device, per_image):
    batch = make_batch([], [], 0, device=device)
    assert batch.proposal_splits.tolist() == [0]
    out, ref = run_both(batch, 0.5, 5, 5, per_image=per_image)
    assert_match_equal(out, ref)
    if per_image:
        assert out.kth_iou.shape == (0,) and out.kth_err.shape == (0,)
    else:
        assert out.kth_iou.shape == () and out.kth_iou.isnan() and out.kth_err.isnan()


def test_no_foreground_gives_nan_error_stat(device):
    batch = make_batch([40, 40], [3, 3], 1, device=device)
    out, ref = run_both(batch, 1.5, 5, 5)  # a threshold nobody reaches
    assert_match_equal(out, ref)
    assert (out.labels == 0).all()
    assert torch.isfinite(out.kth_iou) and out.kth_err.isnan()


def test_hand_computed_example(device):
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 140.0]], device=device)
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # gt0 exactly: IoU 1, error 0
            [1.0, 0.0, 11.0, 10.0],  # gt0 shifted by 1: IoU 90/110, dx = -1, error 0.5
            [100.0, 100.0, 120.0, 120.0],  # half of gt1: IoU 0.5, dy = 10*10/20, error 2.5
            [50.0, 50.0, 60.0, 60.0],  # nothing: IoU 0, matched to gt0 (lowest index)
        ],
        device=device,
    )
    out = dynamic_match(proposals, gt, splits([4], device), splits([2], device),
                        torch.tensor(0.5, device=device), k_iou=2, k_err=2)
    assert out.matched_idxs.tolist() == [0, 0, 1, 0]
    torch.testing.assert_close(out.max_iou.cpu(), torch.tensor([1.0, 90 / 110, 0.5, 0.0]))
    assert out.labels.tolist() == [1, 1, 1, 0]
    torch.testing.assert_close(out.kth_iou.cpu(), torch.tensor(90 / 110))  # 2nd largest
    torch.testing.assert_close(out.kth_err.cpu(), torch.tensor(0.5))  # 2nd smallest of 0,.5,2.5
    out3 = dynamic_match(proposals, gt, splits([4], device), splits([2], device),
                         torch.tensor(0.5, device=device), k_iou=3, k_err=3)
    torch.testing.assert_close(out3.kth_iou.cpu(), torch.tensor(0.5))
    torch.testing.assert_close(out3.kth_err.cpu(), torch.tensor(2.5))


def test_identical_boxes_and_ties_go_to_lowest_index(device):
    box = [10.0, 10.0, 50.0, 60.0]
    # image 0: gt rows 0..2, rows 1 and 2 equal the proposal; image 1: gt rows 3..5 all equal
    gt = torch.tensor(
        [[0.0, 0.0, 5.0, 5.0], box, box, box, box, [200.0, 200.0, 210.0, 220.0]],
        device=device,
    )
    far = [300.0, 300.0, 310.0, 310.0]
    proposals = torch.tensor([box, far, box, far], device=device)
    ps, gs = splits([2, 2], device), splits([3, 3], device)
    out = dynamic_match(proposals, gt, ps, gs, torch.tensor(0.7, device=device), 4, 4)
    assert out.matched_idxs.tolist() == [1, 0, 3, 3]  # far proposals: all IoU 0 -> first gt
    assert out.max_iou.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.labels.tolist() == [1, 0, 1, 0]
    assert out.kth_err.item() == 0.0
    ref = _reference.dynamic_match(proposals.cpu(), gt.cpu(), ps.cpu(), gs.cpu(),
                                   torch.tensor(0.7), 4, 4)
    assert_match_equal(out, ref)


@pytest.mark.parametrize("iou_thr", [0.0, 0.5])
def test_degenerate_and_nan_proposals(device, seed, iou_thr):
    batch = make_batch([40, 30], [4, 3], seed, device=device)
    p = batch.proposals.clone()
    nan = math.nan
    p[0] = torch.tensor([10.0, 10.0, 10.0, 30.0])  # zero width
    p[1] = torch.tensor([10.0, 30.0, 40.0, 10.0])  # negative height
    p[2] = torch.tensor([nan, 0.0, 20.0, 20.0])
    p[41] = torch.tensor([nan, nan, nan, nan])
    p[42] = batch.gt_boxes[5] * torch.tensor([1.0, 1.0, 0.0, 1.0], device=device)  # x2 = 0
    g = batch.gt_boxes.clone()
    g[1] = torch.tensor([20.0, 20.0, 20.0, 20.0])  # a degenerate gt box
    batch = batch._replace(proposals=p, gt_boxes=g)
    out, ref = run_both(batch, iou_thr, 20, 20)
    assert_match_equal(out, ref)
    assert not out.max_iou.isnan().any()
    for i in (0, 1, 2, 41, 42):
        assert out.max_iou[i].item() == 0.0
    assert not (out.matched_idxs == 1).any()  # a degenerate gt never wins a proposal
    if iou_thr == 0.0:  # everything is foreground; non-finite errors are left out
        assert (out.labels == 1).all()
        assert torch.isfinite(out.kth_err)


@pytest.mark.parametrize("per_image", [False, True])
def test_large_coordinates(device, seed, per_image):
    gen = generator(seed + 7)
    p_counts, g_counts = random_counts(3, gen, max_proposals=150, max_gt=10)
    batch = make_batch(p_counts, g_counts, seed, device=device, scale=1e6 / 800.0)
    assert batch.proposals.abs().max() > 1e5
    out, ref = run_both(batch, 0.5, 30, 8, per_image=per_image)
    assert_match_equal(out, ref)
    assert not out.max_iou.isnan().any()


@pytest.mark.parametrize("per_image", [False, True])
def test_non_contiguous_inputs(device, seed, per_image):
    batch = make_batch([70, 0, 55], [6, 2, 4], seed, device=device)
    p, g, ps, gs = batch
    p_t = p.t().contiguous().t()
    g_s = torch.stack([g, torch.full_like(g, -7.0)], dim=1).reshape(-1, 4)[::2]
    ps_s = torch.stack([ps, ps], dim=1).reshape(-1)[::2]  # int64 offsets with stride 2
    assert not (p_t.is_contiguous() or g_s.is_contiguous() or ps_s.is_contiguous())
    thr = torch.tensor([0.3, 0.5], device=device)[1]  # a 0-dim view with an offset
    out = dynamic_match(p_t, g_s, ps_s, gs, thr, 40, 9, per_image=per_image)
    ref = _reference.dynamic_match(p.cpu(), g.cpu(), ps.cpu(), gs.cpu(), torch.tensor(0.5),
                                   40, 9, WEIGHTS, per_image)
    assert_match_equal(out, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_image", [False, True])
def test_other_dtypes(device, seed, dtype, per_image):
    gen = generator(seed + 3)
    p_counts, g_counts = random_counts(3, gen, max_proposals=150, max_gt=10)
    batch = make_batch(p_counts, g_counts, seed, dtype=dtype, device=device)
    out, ref = run_both(batch, 0.5, 40, 9, per_image=per_image, thr_dtype=dtype)
    # the reference upcasts the same half values to float32, as the kernels do
    assert_match_equal(out, ref)


@pytest.mark.parametrize("thr_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_iou_thr_dtype(device, seed, thr_dtype):
    batch = make_batch([120, 90], [8, 5], seed, device=device)
    out, ref = run_both(batch, 0.55, 30, 8, thr_dtype=thr_dtype)
    assert_match_equal(out, ref)
    as_float = dynamic_match(*batch, 0.55, 30, 8)  # a Python number is accepted too
    ref_float = _reference.dynamic_match(*to_cpu(batch), torch.tensor(0.55), 30, 8)
    assert_match_equal(as_float, ref_float)


def test_threshold_exactly_at_an_iou(device, seed):
    """label = max_iou >= iou_thr, including equality, and a float64 threshold is rounded to
    the accumulation type (float32) before the comparison, as in the reference."""
    batch = make_batch([100, 80], [6, 5], seed, device=device)
    base = _reference.dynamic_match(*to_cpu(batch), torch.tensor(0.5), 10, 10)
    candidates = base.max_iou[(base.max_iou > 0.2) & (base.max_iou < 0.99)]
    value = candidates[len(candidates) // 2].item()  # exactly representable in float32
    for thr in (value, math.nextafter(value, 2.0), value + 1e-12, value - 1e-12):
        for thr_dtype in (torch.float32, torch.float64):
            out, ref = run_both(batch, thr, 10, 10, thr_dtype=thr_dtype)
            assert_match_equal(out, ref)
    out, _ = run_both(batch, value, 10, 10)
    at_value = (out.max_iou == value).nonzero()
    assert (out.labels[at_value] == 1).all()


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (20.0, 5.0, 10.0, 10.0)])
def test_weights(device, seed, weights):
    batch = make_batch([90, 60], [5, 4], seed, device=device)
    out, ref = run_both(batch, 0.5, 30, 8, weights=weights)
    assert_match_equal(out, ref)
    default, _ = run_both(batch, 0.5, 30, 8)
    if weights == (1.0, 1.0, 1.0, 1.0):  # the error is linear in (wx, wy) = (10, 10)
        torch.testing.assert_close(default.kth_err.cpu(), 10 * out.kth_err.cpu(), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS[:2], ids=lambda s: f"seed{s}")  # the reference is slow
@pytest.mark.parametrize("per_image", [False, True])
def test_many_images(device, seed, per_image):
    """More than 128 images (the CUDA kernel keeps at most 128 offsets in shared memory)."""
    gen = generator(seed + 11)
    num_images = 140
    p_counts = torch.randint(0, 12, (num_images,), generator=gen).tolist()
    g_counts = torch.randint(0, 4, (num_images,), generator=gen).tolist()
    batch = make_batch(p_counts, g_counts, seed, device=device)
    out, ref = run_both(batch, 0.5, 3 if per_image else 500, 2 if per_image else 100,
                        per_image=per_image)
    assert_match_equal(out, ref)


def test_long_batch_across_threads(device, seed):
    """Thread ranges start in the middle of images and skip empty images."""
    gen = generator(seed + 21)
    num_images = 40
    p_counts = torch.randint(0, 300, (num_images,), generator=gen)
    p_counts[torch.rand(num_images, generator=gen) < 0.2] = 0
    g_counts = torch.randint(0, 6, (num_images,), generator=gen).tolist()
    batch = make_batch(p_counts.tolist(), g_counts, seed, device=device)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(dynamic_match(*batch, torch.tensor(0.5, device=device), 2000, 400))
    finally:
        torch.set_num_threads(threads)
    ref = _reference.dynamic_match(*to_cpu(batch), torch.tensor(0.5), 2000, 400)
    for out in results:
        assert_match_equal(out, ref)
        for a, b in zip(out, results[0]):
            assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all())


def test_does_not_modify_inputs(device):
    batch = make_batch([50, 30], [4, 3], 5, device=device)
    before = [t.clone() for t in batch]
    dynamic_match(*batch, torch.tensor(0.5, device=device), 10, 5)
    assert all(torch.equal(a, b) for a, b in zip(batch, before))


@pytest.mark.parametrize("per_image", [False, True])
def test_float64_error_beyond_float32_range(device, per_image):
    """float64 boxes: an error that is finite in the accumulation type (float64) but beyond
    float32's range is in the error population (reference and CUDA kernel test finiteness
    before the cast to float32), so it reports as +inf when it is the k-th smallest."""
    proposals = torch.tensor([[0.0, 0.0, 1e-40, 1.0], [0.0, 0.0, 2.0, 1.0]],
                             dtype=torch.float64, device=device)
    gt = torch.tensor([[0.0, 0.0, 2.0, 1.0]], dtype=torch.float64, device=device)
    batch = (proposals, gt, splits([2], device), splits([1], device))
    thr = torch.tensor(0.0, dtype=torch.float64, device=device)
    out = dynamic_match(*batch, thr, 2, 2, per_image=per_image)
    ref = _reference.dynamic_match(*(t.cpu() for t in batch), thr.cpu(), 2, 2,
                                   per_image=per_image)
    assert ref.labels.tolist() == [1, 1]
    assert ref.kth_err.isinf().all()  # errors 5e40 (-> inf in float32) and 0
    assert_match_equal(out, ref)
