"""torch.library.opcheck on every op and torch.compile(fullgraph=True) of a training step."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_extension
from helpers import make_batch

from dynrcnn.ops import dynamic_match, dynamic_smooth_l1

pytestmark = requires_extension

WEIGHTS = [10.0, 10.0, 5.0, 5.0]


def _opcheck(op, args):
    eager = op(*args)
    outs = eager if isinstance(eager, (tuple, list)) else (eager,)
    if any(o.is_floating_point() and o.isnan().any() for o in outs):
        # opcheck's AOTDispatcher check compares with assert_close(equal_nan=False), so the
        # NaN that the contract gives for an empty population always "differs": run the
        # other checks, and the AOTDispatcher (dynamic shapes) comparison here with equal_nan.
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        result = torch.library.opcheck(op, args, test_utils=utils)
        torch._dynamo.reset()
        compiled = torch.compile(lambda *a: op(*a), backend="aot_eager", fullgraph=True,
                                 dynamic=True)
        got = compiled(*args)
        got = got if isinstance(got, (tuple, list)) else (got,)
        assert len(got) == len(outs)
        for a, b in zip(got, outs):
            assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    else:
        result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("n,m", [(17, 5), (0, 3), (4, 0)])
def test_opcheck_box_iou(device, dtype, n, m):
    batch = make_batch([n], [m], 0, dtype=dtype, device=device)
    _opcheck(torch.ops.dynrcnn.box_iou.default, (batch.proposals, batch.gt_boxes))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(
    "p_counts,g_counts,dtype",
    [
        ([40, 0, 25], [4, 2, 0], torch.float32),
        ([40, 10, 25], [4, 2, 0], torch.float32),
        ([30, 20], [3, 5], torch.float16),
        ([0, 0], [0, 0], torch.float32),
        ([], [], torch.float32),
    ],
    ids=["mixed", "gt-free-image", "half", "empty", "no-images"],
)
def test_opcheck_dynamic_match(device, per_image, p_counts, g_counts, dtype):
    batch = make_batch(p_counts, g_counts, 1, dtype=dtype, device=device)
    thr = torch.tensor(0.5, device=device)
    _opcheck(torch.ops.dynrcnn.dynamic_match.default,
             (*batch, thr, 10, 4, WEIGHTS, per_image))


def _loss_args(device, dtype, shape=(24, 4), requires_grad=True, weighted=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(requires_grad)
    t = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(requires_grad)
    w = torch.rand(shape, generator=gen).to(device, dtype) if weighted else None
    return x, t, w


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_dynamic_smooth_l1(device, reduction, weighted, dtype):
    x, t, w = _loss_args(device, dtype, weighted=weighted)  # requires_grad: autograd checked
    beta = torch.tensor(0.3, device=device)
    _opcheck(torch.ops.dynrcnn.dynamic_smooth_l1.default, (x, t, beta, w, reduction))
    # without grad, and L1 mode
    x0, t0 = x.detach(), t.detach()
    _opcheck(torch.ops.dynrcnn.dynamic_smooth_l1.default,
             (x0, t0, torch.tensor(0.0, device=device), w, reduction))


def test_opcheck_dynamic_smooth_l1_empty(device):
    x = torch.zeros(0, 4, device=device, requires_grad=True)
    t = torch.zeros(0, 4, device=device)
    beta = torch.tensor(1.0, device=device)
    for reduction in (0, 2):
        _opcheck(torch.ops.dynrcnn.dynamic_smooth_l1.default, (x, t, beta, None, reduction))


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_opcheck_dynamic_smooth_l1_backward(device, reduction, weighted):
    x, t, w = _loss_args(device, torch.float32, requires_grad=False, weighted=weighted)
    grad = torch.randn_like(x) if reduction == 0 else torch.tensor(1.5, device=device)
    beta = torch.tensor(0.3, device=device)
    _opcheck(torch.ops.dynrcnn.dynamic_smooth_l1_backward.default,
             (grad, x, t, beta, w, reduction))


@pytest.mark.parametrize("reduction", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_dynamic_smooth_l1_with_grad(reduction, weighted, dtype):
    x, t, w = _loss_args("cpu", dtype, requires_grad=False, weighted=weighted)
    beta = torch.tensor(0.3)
    _opcheck(torch.ops.dynrcnn.dynamic_smooth_l1_with_grad.default, (x, t, beta, w, reduction))


def test_autograd_matches_function_class(device):
    """The backward registered on the op and DynamicSmoothL1Function give the same grads."""
    from dynrcnn.ops import DynamicSmoothL1Function

    x, t, w = _loss_args(device, torch.float32)
    beta = torch.tensor(0.2, device=device)
    a = torch.autograd.grad(torch.ops.dynrcnn.dynamic_smooth_l1(x, t, beta, w, 2), (x, t))
    b = torch.autograd.grad(DynamicSmoothL1Function.apply(x, t, beta, w, 2), (x, t))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# torch.compile


def train_step(proposals, gt_boxes, proposal_splits, gt_splits, iou_thr, pred, target, beta):
    r = dynamic_match(proposals, gt_boxes, proposal_splits, gt_splits, iou_thr, k_iou=40,
                      k_err=8)
    fg = r.labels.to(pred.dtype)[:, None].expand_as(pred)
    loss = dynamic_smooth_l1(pred, target, beta, weight=fg, reduction="sum")
    loss = loss / fg[:, 0].sum().clamp(min=1.0)
    per_image = dynamic_match(proposals, gt_boxes, proposal_splits, gt_splits, iou_thr,
                              k_iou=10, k_err=3, per_image=True)
    return loss, r.kth_iou, r.kth_err, r.max_iou, r.matched_idxs, per_image.kth_iou


def _step_inputs(device, seed=0):
    batch = make_batch([60, 0, 45], [5, 3, 4], seed, device=device)
    n = batch.proposals.shape[0]
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, 4, generator=gen).to(device)
    target = (pred + torch.randn(n, 4, generator=gen).to(device) * 0.3).detach()
    return (*batch, torch.tensor(0.5, device=device), pred, target,
            torch.tensor(0.11, device=device))


def _run(fn, inputs):
    inputs = list(inputs)
    pred = inputs[5].detach().clone().requires_grad_()
    inputs[5] = pred
    out = fn(*inputs)
    out[0].backward()
    return out, pred.grad


def _check_compiled(backend, device, dynamic=None):
    torch._dynamo.reset()
    compiled = torch.compile(train_step, backend=backend, fullgraph=True, dynamic=dynamic)
    for seed in (0, 1):  # a second call reuses (or recompiles) the graph
        inputs = _step_inputs(device, seed)
        (eager, eager_grad) = _run(train_step, inputs)
        (got, got_grad) = _run(compiled, inputs)
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(got_grad, eager_grad, rtol=1e-6, atol=1e-7)
        assert eager_grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph(device, backend):
    _check_compiled(backend, device)


def test_compile_fullgraph_dynamic_shapes(device):
    _check_compiled("aot_eager", device, dynamic=True)


@pytest.mark.slow
def test_compile_inductor(device):
    _check_compiled("inductor", device)
