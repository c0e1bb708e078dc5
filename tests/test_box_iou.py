"""box_iou: kernel vs the pure-torch reference, torchvision, and the edge cases of the contract."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import generator, make_proposals, random_boxes

from dynrcnn.ops import _reference, box_iou

LOW_PRECISION_ATOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _pair(seed: int, n: int = 300, m: int = 40):
    """gt-like boxes b and proposal-like boxes a (jittered b + random), float64 on the CPU."""
    gen = generator(seed)
    b = random_boxes(m, gen)
    a = make_proposals(b, n, gen)
    return a, b


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_matches_reference(device, seed, dtype, atol):
    a, b = _pair(seed)
    a, b = a.to(device, dtype), b.to(device, dtype)
    out = box_iou(a, b)
    ref = _reference.box_iou(a.cpu(), b.cpu())
    assert out.shape == (a.shape[0], b.shape[0])
    assert out.dtype == dtype and out.device == a.device
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=atol)
    # The generator must produce the whole range of IoUs, else the test proves little.
    assert ref.max() == 1.0 and ref.min() == 0.0
    assert ((ref > 0.3) & (ref < 0.95)).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_reference(device, seed, dtype):
    a, b = _pair(seed)
    a, b = a.to(device, dtype), b.to(device, dtype)
    out = box_iou(a, b)
    assert out.dtype == dtype
    ref = _reference.box_iou(a.cpu(), b.cpu())  # upcasts the same half values to float32
    torch.testing.assert_close(out.cpu().float(), ref.float(), rtol=0,
                               atol=LOW_PRECISION_ATOL[dtype])
    assert not out.isnan().any()


def test_matches_torchvision(device, seed):
    torchvision = pytest.importorskip("torchvision")
    a, b = _pair(seed)
    a, b = a.to(device, torch.float32), b.to(device, torch.float32)
    out = box_iou(a, b)
    expected = torchvision.ops.box_iou(a.cpu(), b.cpu())
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,m", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_empty(device, n, m, dtype):
    a = random_boxes(n, generator(0)).to(device, dtype)
    b = random_boxes(m, generator(1)).to(device, dtype)
    out = box_iou(a, b)
    assert out.shape == (n, m)
    assert out.dtype == dtype and out.device == a.device


def test_degenerate_boxes_give_zero_not_nan(device):
    boxes = torch.tensor(
        [
            [10.0, 10.0, 10.0, 20.0],  # zero width
            [10.0, 10.0, 20.0, 10.0],  # zero height
            [20.0, 10.0, 10.0, 20.0],  # negative width
            [10.0, 20.0, 20.0, 10.0],  # negative height
            [20.0, 20.0, 10.0, 10.0],  # both negative
            [5.0, 5.0, 5.0, 5.0],  # a point
            [0.0, 0.0, 0.0, 0.0],  # all zero
        ],
        device=device,
    )
    valid = torch.tensor([[0.0, 0.0, 30.0, 30.0], [12.0, 12.0, 18.0, 18.0]], device=device)
    for a, b in [(boxes, valid), (valid, boxes), (boxes, boxes)]:
        out = box_iou(a, b)
        assert not out.isnan().any()
        assert (out == 0).all(), out
    torch.testing.assert_close(box_iou(boxes, boxes).cpu(),
                               _reference.box_iou(boxes.cpu(), boxes.cpu()), rtol=0, atol=0)


def test_nan_and_inf_coordinates_give_zero(device):
    nan, inf = math.nan, math.inf
    bad = torch.tensor(
        [
            [nan, 0.0, 10.0, 10.0],
            [0.0, nan, 10.0, 10.0],
            [0.0, 0.0, nan, 10.0],
            [0.0, 0.0, 10.0, nan],
            [nan, nan, nan, nan],
            [-inf, -inf, inf, inf],
            [0.0, 0.0, inf, 10.0],
            [inf, 0.0, inf, 10.0],
        ],
        device=device,
    )
    good = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 8.0, 8.0]], device=device)
    for a, b in [(bad, good), (good, bad), (bad, bad)]:
        out = box_iou(a, b)
        assert not out.isnan().any(), out
        assert ((out >= 0) & (out <= 1)).all()
        torch.testing.assert_close(out.cpu(), _reference.box_iou(a.cpu(), b.cpu()),
                                   rtol=0, atol=0)
    assert (box_iou(bad[:5], good) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_identical_boxes_give_one(device, seed, dtype):
    b = random_boxes(20, generator(seed)).to(dtype)
    b = b[((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)].to(device)  # bf16 may collapse
    out = box_iou(b, b)
    assert (out.diagonal() == 1).all()
    assert (out <= 1).all() and (out >= 0).all()


def test_known_values(device):
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    b = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # same: 1
            [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150
            [0.0, 0.0, 5.0, 5.0],  # contained: 25 / 100
            [10.0, 0.0, 20.0, 10.0],  # touching edge: 0
            [20.0, 20.0, 30.0, 30.0],  # disjoint: 0
        ],
        device=device,
    )
    expected = torch.tensor([[1.0, 1.0 / 3.0, 0.25, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b).cpu(), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(box_iou(b, a).cpu(), expected.t(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("scale", [1e4, 1e6])
def test_large_coordinates(device, seed, scale):
    a, b = _pair(seed, n=200, m=30)
    a32 = (a * (scale / 800.0)).float()
    b32 = (b * (scale / 800.0)).float()
    out = box_iou(a32.to(device), b32.to(device)).cpu()
    assert not out.isnan().any() and (out <= 1).all() and (out >= 0).all()
    torch.testing.assert_close(out, _reference.box_iou(a32, b32), rtol=0, atol=1e-6)
    # and close to the float64 truth of the same (float32-rounded) boxes
    exact = _reference.box_iou(a32.double(), b32.double()).float()
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-4)


def test_non_contiguous(device, seed):
    a, b = _pair(seed, n=120, m=30)
    a, b = a.to(device, torch.float32), b.to(device, torch.float32)
    a_t = a.t().contiguous().t()  # transposed view: strides (1, N)
    b_s = torch.stack([b, torch.zeros_like(b)], dim=1).reshape(-1, 4)[::2]  # row stride 8
    assert not a_t.is_contiguous() and not b_s.is_contiguous()
    expected = _reference.box_iou(a.cpu(), b.cpu())
    torch.testing.assert_close(box_iou(a_t, b_s).cpu(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(box_iou(a[1::3], b[::2]).cpu(), expected[1::3, ::2],
                               rtol=0, atol=1e-6)
    wide = torch.cat([a, a + 1.0], dim=1)  # [N, 8]; columns 4:8 are a view with offset
    torch.testing.assert_close(box_iou(wide[:, 4:], b).cpu(),
                               _reference.box_iou((a + 1.0).cpu(), b.cpu()), rtol=0, atol=1e-6)


def test_does_not_modify_inputs(device):
    a, b = _pair(3, n=50, m=10)
    a, b = a.to(device, torch.float32), b.to(device, torch.float32)
    a0, b0 = a.clone(), b.clone()
    box_iou(a, b)
    assert torch.equal(a, a0) and torch.equal(b, b0)
