"""Bad input gets a clear error that names the argument (Python wrappers and the kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import requires_extension
from helpers import make_batch, splits

from dynrcnn.ops import box_iou, dynamic_match, dynamic_smooth_l1

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _check_split_values_on_cuda(monkeypatch):
    # On CUDA the wrappers read split values only with DYNRCNN_CHECK_SPLITS=1 (no host sync).
    monkeypatch.setenv("DYNRCNN_CHECK_SPLITS", "1")


@pytest.fixture
def batch(device):
    return make_batch([6, 0, 4], [2, 1, 3], 0, device=device)


def match(batch, **overrides):
    p, g, ps, gs = batch
    kwargs = dict(proposals=p, gt_boxes=g, proposal_splits=ps, gt_splits=gs,
                  iou_thr=torch.tensor(0.5, device=p.device), k_iou=5, k_err=2)
    kwargs.update(overrides)
    return dynamic_match(**kwargs)


# ---------------------------------------------------------------------------------------
# box_iou


@pytest.mark.parametrize(
    "a_shape,b_shape,name",
    [((5, 3), (2, 4), "boxes1"), ((5, 4), (2, 5), "boxes2"), ((4,), (2, 4), "boxes1"),
     ((5, 4), (2, 4, 1), "boxes2"), ((2, 2, 4), (2, 4), "boxes1")],
)
def test_box_iou_bad_shape(device, a_shape, b_shape, name):
    with pytest.raises(ValueError, match=rf"{name} must have shape \[N, 4\]"):
        box_iou(torch.zeros(a_shape, device=device), torch.zeros(b_shape, device=device))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_box_iou_bad_dtype(device, dtype):
    good = torch.zeros(3, 4, device=device)
    bad = torch.zeros(3, 4, dtype=dtype, device=device)
    with pytest.raises(TypeError, match="boxes1 must be float16, bfloat16, float32 or float64"):
        box_iou(bad, good)
    with pytest.raises(TypeError, match="boxes2 must be float16"):
        box_iou(good, bad)


def test_box_iou_mismatched_dtypes(device):
    with pytest.raises(TypeError, match="boxes1 is torch.float32 but boxes2 is torch.float16"):
        box_iou(torch.zeros(3, 4, device=device),
                torch.zeros(3, 4, dtype=torch.float16, device=device))


def test_box_iou_not_a_tensor(device):
    with pytest.raises(TypeError, match="boxes2 must be a torch.Tensor, got list"):
        box_iou(torch.zeros(1, 4, device=device), [[0.0, 0.0, 1.0, 1.0]])


def test_box_iou_other_device(device):
    with pytest.raises(ValueError, match="boxes2 is on meta"):
        box_iou(torch.zeros(1, 4, device=device), torch.zeros(1, 4, device="meta"))


# ---------------------------------------------------------------------------------------
# dynamic_match


def test_match_bad_box_shapes(batch):
    with pytest.raises(ValueError, match=r"proposals must have shape \[N, 4\]"):
        match(batch, proposals=batch.proposals[:, :3])
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[N, 4\].*\[6, 3\]"):
        match(batch, gt_boxes=batch.gt_boxes[:, 1:])


def test_match_int_boxes(batch):
    with pytest.raises(TypeError, match="proposals must be float16, bfloat16, float32"):
        match(batch, proposals=batch.proposals.long())
    with pytest.raises(TypeError, match="gt_boxes must be float16"):
        match(batch, gt_boxes=batch.gt_boxes.int())


def test_match_mismatched_dtypes(batch):
    with pytest.raises(TypeError, match="proposals are torch.float32 but gt_boxes are "
                                        "torch.float64"):
        match(batch, gt_boxes=batch.gt_boxes.double())


@pytest.mark.parametrize("name", ["proposal_splits", "gt_splits"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.float32, torch.int16])
def test_match_splits_not_int64(batch, name, dtype):
    bad = getattr(batch, name).to(dtype)
    with pytest.raises(TypeError, match=f"{name} must be int64, got {dtype}"):
        match(batch, **{name: bad})


@pytest.mark.parametrize("name", ["proposal_splits", "gt_splits"])
def test_match_splits_bad_shape(batch, name):
    s = getattr(batch, name)
    for bad in (s[None], s.new_zeros(0), s.new_zeros(())):
        with pytest.raises(ValueError, match=f"{name} must be a 1-D tensor of B\\+1 offsets"):
            match(batch, **{name: bad})


def test_match_splits_do_not_add_up(batch):
    dev = batch.proposals.device
    with pytest.raises(ValueError, match=r"proposal_splits must end at proposals.shape\[0\] = "
                                         r"10, got 9 \(the splits do not add up\)"):
        match(batch, proposal_splits=torch.tensor([0, 6, 6, 9], device=dev))
    with pytest.raises(ValueError, match=r"gt_splits must end at gt_boxes.shape\[0\] = 6, "
                                         r"got 7"):
        match(batch, gt_splits=torch.tensor([0, 2, 3, 7], device=dev))


def test_match_splits_not_starting_at_zero(batch):
    dev = batch.proposals.device
    with pytest.raises(ValueError, match="proposal_splits must start at 0, got 1"):
        match(batch, proposal_splits=torch.tensor([1, 6, 6, 10], device=dev))
    with pytest.raises(ValueError, match="gt_splits must start at 0, got -1"):
        match(batch, gt_splits=torch.tensor([-1, 2, 3, 6], device=dev))


def test_match_decreasing_splits(batch):
    dev = batch.proposals.device
    with pytest.raises(ValueError, match="proposal_splits must be non-decreasing"):
        match(batch, proposal_splits=torch.tensor([0, 7, 5, 10], device=dev))
    with pytest.raises(ValueError, match="gt_splits must be non-decreasing"):
        match(batch, gt_splits=torch.tensor([0, 4, 3, 6], device=dev))


def test_match_splits_length_mismatch(batch):
    dev = batch.proposals.device
    with pytest.raises(ValueError, match="gt_splits has 3 offsets but proposal_splits has 4"):
        match(batch, gt_splits=torch.tensor([0, 3, 6], device=dev))


@pytest.mark.parametrize("name", ["k_iou", "k_err"])
def test_match_bad_k(batch, name):
    for value in (0, -3):
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got {value}"):
            match(batch, **{name: value})
    for value in (2.0, True, torch.tensor(3)):
        with pytest.raises(TypeError, match=f"{name} must be an int"):
            match(batch, **{name: value})


@pytest.mark.parametrize(
    "weights", [(10.0, 10.0, 5.0), (10.0, 10.0, 5.0, 5.0, 1.0), (10.0, 0.0, 5.0, 5.0),
                (-1.0, 10.0, 5.0, 5.0), ()],
)
def test_match_bad_weights_values(batch, weights):
    with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
        match(batch, weights=weights)


@pytest.mark.parametrize("weights", [("a", 1.0, 1.0, 1.0), 5.0, None])
def test_match_bad_weights_type(batch, weights):
    with pytest.raises(TypeError, match="weights must be 4 numbers"):
        match(batch, weights=weights)


def test_match_iou_thr(batch):
    dev = batch.proposals.device
    with pytest.raises(ValueError, match=r"iou_thr must be a 0-dim tensor, got shape \[2\]"):
        match(batch, iou_thr=torch.tensor([0.5, 0.6], device=dev))
    with pytest.raises(ValueError, match=r"iou_thr must be a 0-dim tensor, got shape \[1, 1\]"):
        match(batch, iou_thr=torch.tensor([[0.5]], device=dev))
    with pytest.raises(TypeError, match="iou_thr must be float16, bfloat16, float32 or float64"):
        match(batch, iou_thr=torch.tensor(1, device=dev))
    with pytest.raises(ValueError, match="iou_thr is on meta"):
        match(batch, iou_thr=torch.tensor(0.5, device="meta"))
    with pytest.raises(TypeError, match="iou_thr must be a torch.Tensor, got str"):
        match(batch, iou_thr="0.5")


def test_match_other_device(batch, device):
    with pytest.raises(ValueError, match="gt_boxes is on meta"):
        match(batch, gt_boxes=batch.gt_boxes.to("meta"))
    # splits on another device than the boxes (values readable: CPU splits with boxes on
    # meta, or on CUDA, the real case)
    boxes_dev = "meta" if device.type == "cpu" else device
    on_boxes_dev = batch._replace(proposals=batch.proposals.to(boxes_dev),
                                  gt_boxes=batch.gt_boxes.to(boxes_dev),
                                  proposal_splits=batch.proposal_splits.cpu(),
                                  gt_splits=batch.gt_splits.cpu())
    with pytest.raises(ValueError, match="proposal_splits is on cpu"):
        match(on_boxes_dev, iou_thr=torch.tensor(0.5, device=boxes_dev))


def test_match_not_tensors(batch):
    with pytest.raises(TypeError, match="proposal_splits must be a torch.Tensor, got list"):
        match(batch, proposal_splits=[0, 6, 6, 10])
    with pytest.raises(TypeError, match="proposals must be a torch.Tensor"):
        match(batch, proposals=batch.proposals.tolist())


# ---------------------------------------------------------------------------------------
# dynamic_smooth_l1


@pytest.fixture
def loss_args(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=gen).to(device)
    t = torch.randn(8, 4, generator=gen).to(device)
    return x, t, torch.tensor(0.5, device=device)


def test_loss_target_shape(loss_args):
    x, t, b = loss_args
    with pytest.raises(ValueError, match=r"target has shape \[8, 3\] but input has \[8, 4\]"):
        dynamic_smooth_l1(x, t[:, :3], b)
    with pytest.raises(ValueError, match="target has shape"):
        dynamic_smooth_l1(x, t[0], b)  # no broadcasting


def test_loss_dtypes(loss_args):
    x, t, b = loss_args
    with pytest.raises(TypeError, match="target is torch.float64 but input is torch.float32"):
        dynamic_smooth_l1(x, t.double(), b)
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
        dynamic_smooth_l1(x.long(), t.long(), b)
    with pytest.raises(TypeError, match="weight must be float16"):
        dynamic_smooth_l1(x, t, b, weight=torch.ones_like(x, dtype=torch.int64))


def test_loss_bad_beta(loss_args):
    x, t, b = loss_args
    with pytest.raises(ValueError, match=r"beta must be a 0-dim tensor, got shape \[2\]"):
        dynamic_smooth_l1(x, t, torch.tensor([0.5, 1.0], device=x.device))
    with pytest.raises(ValueError, match=r"beta must be a 0-dim tensor, got shape \[8, 4\]"):
        dynamic_smooth_l1(x, t, torch.ones_like(x))
    with pytest.raises(TypeError, match="beta must be float16, bfloat16, float32 or float64"):
        dynamic_smooth_l1(x, t, torch.tensor(1, device=x.device))
    with pytest.raises(ValueError, match="beta is on meta"):
        dynamic_smooth_l1(x, t, torch.tensor(0.5, device="meta"))
    with pytest.raises(TypeError, match="beta must be a torch.Tensor, got NoneType"):
        dynamic_smooth_l1(x, t, None)


@pytest.mark.parametrize("reduction", ["avg", "SUM", "", None, 2])
def test_loss_bad_reduction(loss_args, reduction):
    x, t, b = loss_args
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum'"):
        dynamic_smooth_l1(x, t, b, reduction=reduction)


def test_loss_weight_shape(loss_args):
    x, t, b = loss_args
    with pytest.raises(ValueError, match=r"weight must have the input's shape \[8, 4\], got \[8\]"):
        dynamic_smooth_l1(x, t, b, weight=torch.ones(8, device=x.device))
    with pytest.raises(ValueError, match=r"weight must have the input's shape .* got \[1, 4\]"):
        dynamic_smooth_l1(x, t, b, weight=torch.ones(1, 4, device=x.device))


def test_loss_other_device(loss_args):
    x, t, b = loss_args
    with pytest.raises(ValueError, match="target is on meta"):
        dynamic_smooth_l1(x, t.to("meta"), b)
    with pytest.raises(ValueError, match="weight is on meta"):
        dynamic_smooth_l1(x, t, b, weight=torch.ones(8, 4, device="meta"))


def test_loss_not_tensors(loss_args):
    x, t, b = loss_args
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        dynamic_smooth_l1(x.tolist(), t, b)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        dynamic_smooth_l1(x, 1.0, b)


# ---------------------------------------------------------------------------------------
# the kernels' own checks (torch.ops callers bypass the Python wrappers)


@requires_extension
def test_kernel_checks_boxes(device):
    a = torch.zeros(3, 4, device=device)
    with pytest.raises(RuntimeError, match="box_iou: boxes1 must have shape"):
        torch.ops.dynrcnn.box_iou(torch.zeros(3, 3, device=device), a)
    with pytest.raises(RuntimeError, match="boxes2"):
        torch.ops.dynrcnn.box_iou(a, a.half())
    with pytest.raises(RuntimeError, match="boxes1"):
        torch.ops.dynrcnn.box_iou(a.long(), a.long())


@requires_extension
def test_kernel_checks_match_splits(device):
    b = make_batch([6, 0, 4], [2, 1, 3], 0, device=device)
    thr = torch.tensor(0.5, device=device)
    w = [10.0, 10.0, 5.0, 5.0]
    op = torch.ops.dynrcnn.dynamic_match
    with pytest.raises(RuntimeError, match="proposal_splits must be int64"):
        op(b.proposals, b.gt_boxes, b.proposal_splits.int(), b.gt_splits, thr, 5, 2, w, False)
    with pytest.raises(RuntimeError, match="gt_splits"):
        op(b.proposals, b.gt_boxes, b.proposal_splits, splits([2, 4], device), thr, 5, 2, w,
           False)
    with pytest.raises(RuntimeError, match="k_err must be >= 1"):
        op(*b, thr, 5, 0, w, False)
    with pytest.raises(RuntimeError, match="iou_thr"):
        op(*b, torch.tensor([0.5, 0.5], device=device), 5, 2, w, False)
    with pytest.raises(RuntimeError, match="weights"):
        op(*b, thr, 5, 2, w[:3], False)
    if device.type == "cpu":  # CUDA never reads split values on the host
        with pytest.raises(RuntimeError, match="proposal_splits must end at"):
            op(b.proposals, b.gt_boxes, splits([6, 0, 3]), b.gt_splits, thr, 5, 2, w, False)
        with pytest.raises(RuntimeError, match="gt_splits must be non-decreasing"):
            op(b.proposals, b.gt_boxes, b.proposal_splits, torch.tensor([0, 4, 3, 6]), thr, 5,
               2, w, False)


@requires_extension
def test_kernel_checks_loss(device):
    x = torch.zeros(4, 4, device=device)
    beta = torch.tensor(0.5, device=device)
    op = torch.ops.dynrcnn.dynamic_smooth_l1
    with pytest.raises(RuntimeError, match="target has shape"):
        op(x, x[:, :2], beta, None, 2)
    with pytest.raises(RuntimeError, match="reduction must be 0 \\(none\\), 1 \\(mean\\) or 2"):
        op(x, x, beta, None, 3)
    with pytest.raises(RuntimeError, match="beta"):
        op(x, x, torch.ones(2, device=device), None, 2)
    with pytest.raises(RuntimeError, match="weight"):
        op(x, x, beta, torch.ones(4, device=device), 2)
    with pytest.raises(RuntimeError, match="grad_output"):
        torch.ops.dynrcnn.dynamic_smooth_l1_backward(torch.ones(3, device=device), x, x, beta,
                                                     None, 0)


# ---------------------------------------------------------------------------------------
# `import dynrcnn` needs only torch


def test_import_without_torchvision_and_pycocotools():
    script = textwrap.dedent(
        """
        import sys

        BLOCKED = ("torchvision", "pycocotools", "matplotlib")

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked by the test")
                return None

        sys.meta_path.insert(0, Blocker())
        for name in BLOCKED:
            sys.modules[name] = None  # `import name` raises ImportError

        import torch
        import dynrcnn
        from dynrcnn.ops import MatchResult, box_iou, dynamic_match, dynamic_smooth_l1

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
        assert box_iou(boxes, boxes)[0, 0].item() == 1.0
        splits = torch.tensor([0, 2])
        r = dynamic_match(boxes, boxes, splits, splits, torch.tensor(0.5), 1, 1)
        assert isinstance(r, MatchResult) and r.labels.tolist() == [1, 1]
        loss = dynamic_smooth_l1(boxes, boxes + 1, torch.tensor(1.0))
        assert loss.item() == 4.0
        loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED
                  and sys.modules[m] is not None]
        assert not loaded, loaded
        print("ok", dynrcnn.__version__, dynrcnn.ops.extension_available())
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH"))
                                        if p)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(REPO_ROOT), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok 0.1.0"), proc.stdout
