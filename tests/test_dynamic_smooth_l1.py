"""dynamic_smooth_l1: forward and backward vs the reference, torch's smooth_l1_loss,
gradcheck, determinism of the reduced sum, and the edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_extension
from helpers import generator

from dynrcnn.ops import _reference, dynamic_smooth_l1

BETAS = [1.0, 0.11, 1e-3, 0.0, 1e-7]
REDUCTIONS = ["none", "mean", "sum"]
LOW_PRECISION_TOL = {torch.float16: dict(rtol=1e-3, atol=1e-3),
                     torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def make_inputs(seed, shape=(512, 4), dtype=torch.float32, device="cpu", spread=0.5):
    """Regression-like deltas: most differences small (quadratic zone), a tail of large ones."""
    gen = generator(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    t = t + (torch.rand(shape, generator=gen) < 0.05) * torch.randn(shape, generator=gen) * 5
    w = torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    w[torch.rand(shape, generator=gen) < 0.3] = 0.0  # background rows carry no weight
    return (x.to(device, dtype), t.to(device, dtype), w.to(device, dtype))


def _tol(dtype, reduction):
    if dtype in LOW_PRECISION_TOL:
        return LOW_PRECISION_TOL[dtype]
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12)
    if reduction == "none":
        return dict(rtol=1e-6, atol=1e-6)
    return dict(rtol=1e-5, atol=1e-5)  # summation order differs


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_matches_reference(device, seed, beta, reduction, weighted):
    x, t, w = make_inputs(seed, device=device)
    w = w if weighted else None
    b = torch.tensor(beta, device=device)
    out = dynamic_smooth_l1(x, t, b, w, reduction)
    ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), b.cpu(),
                                       None if w is None else w.cpu(), reduction)
    assert out.dtype == x.dtype and out.device == x.device
    assert out.shape == (x.shape if reduction == "none" else ())
    torch.testing.assert_close(out.cpu(), ref, **_tol(x.dtype, reduction))


@pytest.mark.parametrize("beta", [1.0, 0.11, 1e-3, 0.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_matches_torch_smooth_l1_loss(device, seed, beta, reduction):
    x, t, _ = make_inputs(seed, device=device)
    out = dynamic_smooth_l1(x, t, torch.tensor(beta, device=device), reduction=reduction)
    expected = F.smooth_l1_loss(x, t, beta=beta, reduction=reduction)
    torch.testing.assert_close(out, expected, **_tol(x.dtype, reduction))


@pytest.mark.parametrize("beta", [0.0, 1e-7, 1e-6])
def test_small_beta_is_l1(device, seed, beta):
    x, t, _ = make_inputs(seed, device=device)
    x[:8] = t[:8]  # zero differences
    x[8:16] = t[8:16] + 1e-8  # differences below beta
    b = torch.tensor(beta, device=device)
    torch.testing.assert_close(dynamic_smooth_l1(x, t, b, reduction="none"), (x - t).abs(),
                               rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    dynamic_smooth_l1(xg, t, b, reduction="sum").backward()
    assert torch.equal(xg.grad, torch.sign(x - t))  # 0 at d == 0, no division by beta


def test_beta_just_above_l1_switch_is_finite(device):
    x, t, _ = make_inputs(0, device=device)
    out = dynamic_smooth_l1(x, t, torch.tensor(2e-6, device=device), reduction="none")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, (x - t).abs(), rtol=0, atol=1.1e-6)


@pytest.mark.parametrize("beta_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_beta_dtype(device, seed, beta_dtype):
    x, t, w = make_inputs(seed, device=device)
    b = torch.tensor(0.11, dtype=beta_dtype, device=device)
    for reduction in REDUCTIONS:
        out = dynamic_smooth_l1(x, t, b, w, reduction)
        ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), b.cpu(), w.cpu(), reduction)
        torch.testing.assert_close(out.cpu(), ref, **_tol(x.dtype, reduction))


def test_python_float_beta(device):
    x, t, w = make_inputs(1, device=device)
    ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), torch.tensor(0.25), w.cpu(), "sum")
    out = dynamic_smooth_l1(x, t, 0.25, w)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 0.11, 0.0])
def test_low_precision_forward(device, seed, dtype, reduction, beta):
    x, t, w = make_inputs(seed, dtype=dtype, device=device)
    b = torch.tensor(beta, device=device)
    out = dynamic_smooth_l1(x, t, b, w, reduction)
    assert out.dtype == dtype
    ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), b.cpu(), w.cpu(), reduction)
    torch.testing.assert_close(out.cpu().float(), ref.float(), **LOW_PRECISION_TOL[dtype])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_low_precision_input_with_float32_weight(device, reduction):
    x, t, w = make_inputs(2, dtype=torch.float16, device=device)
    w32 = w.float()
    out = dynamic_smooth_l1(x, t, torch.tensor(0.5, device=device), w32, reduction)
    assert out.dtype == torch.float16
    ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), torch.tensor(0.5), w32.cpu(), reduction)
    torch.testing.assert_close(out.cpu().float(), ref.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0, 2)])
@pytest.mark.parametrize("weighted", [False, True])
def test_empty_input(device, shape, weighted):
    x = torch.zeros(shape, device=device)
    w = torch.ones(shape, device=device) if weighted else None
    b = torch.tensor(1.0, device=device)
    assert dynamic_smooth_l1(x, x, b, w, "sum").item() == 0.0
    assert math.isnan(dynamic_smooth_l1(x, x, b, w, "mean").item())
    none = dynamic_smooth_l1(x, x, b, w, "none")
    assert none.shape == shape and none.dtype == x.dtype
    xg = x.clone().requires_grad_()
    dynamic_smooth_l1(xg, x, b, w, "sum").backward()
    assert xg.grad.shape == shape


@pytest.mark.parametrize("shape", [(7,), (3, 5, 2), (1, 1), ()])
def test_shapes(device, shape):
    gen = generator(4)
    x = torch.randn(shape, generator=gen).to(device)
    t = torch.randn(shape, generator=gen).to(device)
    b = torch.tensor(0.3, device=device)
    for reduction in REDUCTIONS:
        out = dynamic_smooth_l1(x, t, b, reduction=reduction)
        ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), b.cpu(), None, reduction)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-6)


def test_non_contiguous(device, seed):
    x, t, w = make_inputs(seed, shape=(64, 8), device=device)
    views = [  # (view of input, of target, of weight): transposes, strided slices, offsets
        (lambda a: a.t(), lambda a: a.t(), lambda a: a.t()),
        (lambda a: a[::2, 1:5], lambda a: a[1::2, 2:6], lambda a: a[::2, :4]),
    ]
    b = torch.tensor(0.11, device=device)
    for vx, vt, vw in views:
        xn, tn, wn = vx(x), vt(t), vw(w)
        assert not (xn.is_contiguous() or tn.is_contiguous() or wn.is_contiguous())
        xc, tc, wc = (a.cpu().contiguous() for a in (xn, tn, wn))
        for reduction in REDUCTIONS:
            out = dynamic_smooth_l1(xn, tn, b, wn, reduction)
            ref = _reference.dynamic_smooth_l1(xc, tc, b.cpu(), wc, reduction)
            assert out.shape == (xn.shape if reduction == "none" else ())
            torch.testing.assert_close(out.cpu(), ref, **_tol(x.dtype, reduction))
        base = x.detach().clone().requires_grad_()
        dynamic_smooth_l1(vx(base), tn, b, wn, "sum").backward()
        xr = xc.clone().requires_grad_()
        _reference.dynamic_smooth_l1(xr, tc, b.cpu(), wc, "sum").backward()
        torch.testing.assert_close(vx(base.grad).cpu(), xr.grad, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# backward


def _grads(fn, x, t, b, w, reduction, grad_out):
    xg = x.detach().clone().requires_grad_()
    tg = t.detach().clone().requires_grad_()
    out = fn(xg, tg, b, w, reduction)
    out.backward(grad_out)
    return out, xg.grad, tg.grad


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_matches_reference(device, seed, beta, reduction, weighted, dtype):
    x, t, w = make_inputs(seed, shape=(256, 4), dtype=dtype, device=device)
    w = w if weighted else None
    b = torch.tensor(beta, device=device)
    gen = generator(seed + 99)
    if reduction == "none":
        grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    else:
        grad_out = torch.tensor(1.7, dtype=dtype, device=device)
    _, gx, gt = _grads(dynamic_smooth_l1, x, t, b, w, reduction, grad_out)
    cpu = [None if v is None else v.cpu() for v in (x, t, b, w, grad_out)]
    _, rx, rt = _grads(_reference.dynamic_smooth_l1, cpu[0], cpu[1], cpu[2], cpu[3],
                       reduction, cpu[4])
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    assert gx.dtype == dtype and gx.shape == x.shape
    torch.testing.assert_close(gx.cpu(), rx, **tol)
    torch.testing.assert_close(gt.cpu(), rt, **tol)
    torch.testing.assert_close(gt, -gx, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_low_precision_backward(device, dtype, reduction):
    x, t, w = make_inputs(5, shape=(128, 4), dtype=dtype, device=device)
    b = torch.tensor(0.11, device=device)
    grad_out = (torch.ones(x.shape, dtype=dtype, device=device) if reduction == "none"
                else torch.tensor(1.0, dtype=dtype, device=device))
    _, gx, gt = _grads(dynamic_smooth_l1, x, t, b, w, reduction, grad_out)
    _, rx, rt = _grads(_reference.dynamic_smooth_l1, x.cpu(), t.cpu(), b.cpu(), w.cpu(),
                       reduction, grad_out.cpu())
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.cpu().float(), rx.float(), **LOW_PRECISION_TOL[dtype])
    torch.testing.assert_close(gt.cpu().float(), rt.float(), **LOW_PRECISION_TOL[dtype])


def test_backward_of_none_through_sum(device):
    """loss(reduction='none').sum() hands the op an expanded (stride 0) grad_output."""
    x, t, w = make_inputs(6, device=device)
    b = torch.tensor(0.5, device=device)
    xg = x.clone().requires_grad_()
    (dynamic_smooth_l1(xg, t, b, w, "none") * 3.0).sum().backward()
    xr = x.cpu().clone().requires_grad_()
    (_reference.dynamic_smooth_l1(xr, t.cpu(), b.cpu(), w.cpu(), "none") * 3.0).sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xr.grad, rtol=1e-6, atol=1e-7)


def test_only_target_requires_grad(device):
    x, t, _ = make_inputs(7, device=device)
    tg = t.clone().requires_grad_()
    dynamic_smooth_l1(x, tg, torch.tensor(0.3, device=device), reduction="mean").backward()
    tr = t.cpu().clone().requires_grad_()
    _reference.dynamic_smooth_l1(x.cpu(), tr, torch.tensor(0.3), reduction="mean").backward()
    torch.testing.assert_close(tg.grad.cpu(), tr.grad, rtol=1e-6, atol=1e-8)


def _away_from_kinks(seed, beta, shape=(6, 4), device="cpu"):
    """float64 inputs whose differences keep |d| and ||d| - beta| above 0.05."""
    gen = generator(seed)
    mag = 0.05 + torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0
    bad = (mag - beta).abs() < 0.05
    mag = torch.where(bad, mag + 0.1, mag)
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = t + sign * mag
    w = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5
    return x.to(device), t.to(device), w.to(device)


@pytest.mark.parametrize("beta", [1.0, 0.11, 0.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck(device, beta, reduction, weighted):
    x, t, w = _away_from_kinks(beta=beta, seed=int(beta * 100) + 1, device=device)
    x.requires_grad_()
    t.requires_grad_()
    b = torch.tensor(beta, dtype=torch.float64, device=device)
    w = w if weighted else None

    def fn(x, t):
        return dynamic_smooth_l1(x, t, b, w, reduction)

    assert torch.autograd.gradcheck(fn, (x, t), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("weighted", [False, True])
def test_sum_is_deterministic(device, dtype, weighted):
    # several of the kernel's 32768-element chunks plus a ragged tail (a half sum must stay
    # below 65504: fewer, smaller terms)
    chunks, spread = (5, 0.5) if dtype == torch.float32 else (2, 0.05)
    x, t, w = make_inputs(8, shape=(chunks * 32768 + 1234,), dtype=dtype, device=device,
                          spread=spread)
    w = w if weighted else None
    b = torch.tensor(0.11, device=device)
    threads = torch.get_num_threads()
    bits = []
    try:
        for n in (1, 2, 1, 2, 3):
            torch.set_num_threads(n)
            for _ in range(2):
                for reduction in ("sum", "mean"):
                    bits.append((reduction, dynamic_smooth_l1(x, t, b, w, reduction)))
    finally:
        torch.set_num_threads(threads)
    first = {r: v for r, v in bits[:2]}
    for reduction, value in bits:
        assert torch.equal(value, first[reduction]), (reduction, value, first[reduction])
    ref = _reference.dynamic_smooth_l1(x.cpu(), t.cpu(), b.cpu(),
                                       None if w is None else w.cpu(), "sum")
    assert torch.isfinite(first["sum"])
    rtol = 1e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(first["sum"].cpu().float(), ref.float(), rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------------
# the one-pass forward+backward kernel (dynamic_smooth_l1_with_grad, CPU)


def _with_grad(x, t, b, w, reduction):
    code = {"mean": 1, "sum": 2}[reduction]
    return torch.ops.dynrcnn.dynamic_smooth_l1_with_grad(x, t, b, w, code)


@requires_extension
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.11, 0.0])
def test_with_grad_has_the_bits_of_forward_and_backward(seed, reduction, weighted, dtype, beta):
    """Same loss bits as the forward kernel, same gradient bits as the backward kernel."""
    # several 32768-element chunks and a ragged tail
    x, t, w = make_inputs(seed, shape=(2 * 32768 + 77,), dtype=dtype, spread=0.05)
    w = w if weighted else None
    b = torch.tensor(beta)
    code = {"mean": 1, "sum": 2}[reduction]
    loss, grad = _with_grad(x, t, b, w, reduction)
    want_loss = torch.ops.dynrcnn.dynamic_smooth_l1(x, t, b, w, code)
    want_grad = torch.ops.dynrcnn.dynamic_smooth_l1_backward(
        torch.tensor(1.0, dtype=dtype), x, t, b, w, code)
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == x.shape
    assert torch.equal(loss, want_loss)
    assert torch.equal(grad, want_grad)
    ref = _reference.dynamic_smooth_l1(x.double(), t.double(), b.double(),
                                       None if w is None else w.double(), reduction)
    torch.testing.assert_close(loss.double(), ref, **_tol(dtype, reduction))


@requires_extension
def test_with_grad_empty_and_bad_reduction():
    x = torch.zeros(0, 4)
    loss, grad = _with_grad(x, x, torch.tensor(1.0), None, "sum")
    assert loss.item() == 0.0 and grad.shape == (0, 4)
    loss, _ = _with_grad(x, x, torch.tensor(1.0), None, "mean")
    assert math.isnan(loss.item())
    with pytest.raises(RuntimeError, match="reduction must be 1 \\(mean\\) or 2 \\(sum\\)"):
        torch.ops.dynrcnn.dynamic_smooth_l1_with_grad(x, x, torch.tensor(1.0), None, 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_twice_with_retain_graph(device, reduction):
    """The first backward takes the gradient made in the forward pass; a second one (the
    graph retained) recomputes it: both equal the reference, and they accumulate."""
    x, t, w = make_inputs(11, device=device)
    b = torch.tensor(0.3, device=device)
    xg = x.clone().requires_grad_()
    loss = dynamic_smooth_l1(xg, t, b, w, reduction)
    (g1,) = torch.autograd.grad(loss, xg, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, xg, torch.tensor(2.0, device=device), retain_graph=True)
    loss.backward()
    xr = x.cpu().clone().requires_grad_()
    _reference.dynamic_smooth_l1(xr, t.cpu(), b.cpu(), w.cpu(), reduction).backward()
    torch.testing.assert_close(g1.cpu(), xr.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g2.cpu(), 2 * xr.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(xg.grad, g1, rtol=0, atol=0)


def test_no_gradient_work_without_grad(device):
    """Under no_grad (or inputs without requires_grad) the loss is the forward kernel's."""
    x, t, w = make_inputs(12, device=device)
    b = torch.tensor(0.3, device=device)
    with torch.no_grad():
        a = dynamic_smooth_l1(x.clone().requires_grad_(), t, b, w, "sum")
    c = dynamic_smooth_l1(x, t, b, w, "sum")
    d = dynamic_smooth_l1(x.clone().requires_grad_(), t, b, w, "sum")
    assert a.grad_fn is None and c.grad_fn is None and d.grad_fn is not None
    assert torch.equal(a, c) and torch.equal(c, d.detach())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nan_beta_gives_nan_loss_and_gradient(device, reduction):
    """As the reference: a NaN beta is not silently read as L1 in backward."""
    x = torch.tensor([0.1, -2.0, 0.0, 5.0], device=device)
    t = torch.zeros(4, device=device)
    b = torch.tensor(float("nan"), device=device)
    xg = x.clone().requires_grad_()
    loss = dynamic_smooth_l1(xg, t, b, reduction=reduction)
    loss.sum().backward()
    xr = x.cpu().clone().requires_grad_()
    want = _reference.dynamic_smooth_l1(xr, t.cpu(), b.cpu(), reduction=reduction)
    want.sum().backward()
    assert loss.isnan().all() and want.isnan().all()
    assert xg.grad.isnan().all() and xr.grad.isnan().all()
