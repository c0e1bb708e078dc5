"""roi_align: torchvision's forward and gradient bit for bit on random inputs and edge cases,
gradcheck in float64, determinism across thread counts, and opcheck."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_extension
from helpers import generator
from torchvision.ops import roi_align as tv_roi_align

from dynrcnn.ops import roi_align

pytestmark = requires_extension

# (output size, spatial scale, sampling ratio, aligned): the box head's 7x7 at ratio 2, the
# mask head's 14x14, adaptive sampling (<= 0), odd shapes.
SETTINGS = [((7, 7), 0.25, 2, False), ((14, 14), 0.125, 2, False), ((7, 7), 0.5, 0, True),
            ((3, 5), 1.0, -1, False), ((1, 1), 0.0625, 1, True), ((2, 2), 0.25, 3, False)]


def make_inputs(gen: torch.Generator, dtype=torch.float32, batch=3, channels=5, height=23,
                width=31, rois=40, image=128.0):
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    # boxes inside, across and outside the image, tiny and large
    xy = torch.rand(rois, 2, generator=gen, dtype=torch.float64) * image * 1.2 - image * 0.1
    wh = torch.rand(rois, 2, generator=gen, dtype=torch.float64) * image / 2
    wh[: rois // 5] *= 0.02
    index = torch.randint(0, batch, (rois, 1), generator=gen).double()
    boxes = torch.cat([index, xy, xy + wh], 1)
    return x.to(dtype).requires_grad_(), boxes.to(dtype)


def both(x, rois, setting):
    size, scale, ratio, aligned = setting
    ours = roi_align(x, rois, size, scale, ratio, aligned)
    theirs = tv_roi_align(x, rois, size, scale, ratio, aligned)
    return ours, theirs


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_forward_and_gradient_equal_torchvision(seed, setting, dtype):
    x, rois = make_inputs(generator(seed), dtype)
    ours, theirs = both(x, rois, setting)
    assert ours.dtype == dtype
    assert torch.equal(ours, theirs)
    grad = torch.randn(ours.shape, generator=generator(seed + 99)).to(dtype)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    assert torch.equal(g_ours, g_theirs)
    assert g_ours.abs().sum() > 0  # the test moves real gradient


def test_non_contiguous_gradient_and_list_boxes(seed):
    x, rois = make_inputs(generator(seed))
    ours, theirs = both(x, rois, SETTINGS[0])
    grad = torch.randn(7, 7, ours.shape[1], ours.shape[0]).permute(3, 2, 0, 1)  # strided
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0],
                       torch.autograd.grad(theirs, x, grad)[0])
    per_image = [rois[rois[:, 0] == b, 1:] for b in range(3)]
    assert torch.equal(roi_align(x, per_image, 7, 0.25, 2),
                       tv_roi_align(x, per_image, 7, 0.25, 2))


def test_empty_and_degenerate():
    x, rois = make_inputs(generator(0))
    for k in (0, 1):
        ours, theirs = both(x, rois[:k], SETTINGS[0])
        assert ours.shape == theirs.shape and torch.equal(ours, theirs)
        ours.sum().backward()
    flat = rois[:4].clone()
    flat[:, 3] = flat[:, 1]  # zero width: torchvision's 1x1 (not aligned) or empty bins
    for setting in SETTINGS:
        ours, theirs = both(x, flat, setting)
        assert torch.equal(ours, theirs)


def test_gradcheck_float64():
    x, rois = make_inputs(generator(3), torch.float64, batch=2, channels=2, height=9, width=8,
                          rois=6, image=36.0)
    for setting in SETTINGS[:3]:
        assert torch.autograd.gradcheck(lambda t, s=setting: roi_align(t, rois, *s), (x,))


def test_same_bits_at_any_thread_count():
    x, rois = make_inputs(generator(4), channels=16, rois=200)
    before = torch.get_num_threads()
    try:
        grads = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = roi_align(x, rois, 7, 0.25, 2)
            grads.append((out, torch.autograd.grad(out.square().sum(), x)[0]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_bad_input_is_named():
    x, rois = make_inputs(generator(0))
    with pytest.raises(ValueError, match="boxes must be"):
        roi_align(x, rois[:, :4], 7)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, rois, (7, 0))
    bad = rois.clone()
    bad[0, 0] = 3
    with pytest.raises(RuntimeError, match=r"rois\[0, 0\] = 3 is not an image index"):
        roi_align(x, bad, 7)
    with pytest.raises(RuntimeError, match="use one dtype"):
        torch.ops.dynrcnn.roi_align(x, rois.double(), 1.0, 7, 7, 2, False)


@pytest.mark.parametrize("k", [0, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(k, dtype):
    x, rois = make_inputs(generator(5), dtype, rois=max(k, 1))
    rois = rois[:k]
    for setting in SETTINGS[:2]:
        size, scale, ratio, aligned = setting
        args = (x, rois, scale, size[0], size[1], ratio, aligned)
        result = torch.library.opcheck(torch.ops.dynrcnn.roi_align.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result
        grad = torch.randn(k, x.shape[1], *size, dtype=dtype)
        args = (grad, rois, scale, size[0], size[1], *x.shape, ratio, aligned)
        result = torch.library.opcheck(torch.ops.dynrcnn.roi_align_backward.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result
