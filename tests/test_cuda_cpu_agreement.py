"""CUDA kernels against the CPU kernels on the same inputs: identical bits, and no host sync.

The contract (docs in README / DESIGN): CPU and CUDA compute the same IoU, labels and
statistics bit for bit. That holds only because both sides round every product of
csrc/ops/box_math.h on its own (setup.py / CMakeLists.txt: -ffp-contract=off, --fmad=false);
with nvcc's default multiply-add contraction the union became fma(bw, bh, aw * ah) and
max_iou differed in ~10% of rows by up to 4 ulp. These tests compare bits, not tolerances.
They need a GPU and skip without one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA_SKIP_REASON, SEEDS
from helpers import generator, make_batch, random_counts

from dynrcnn.ops import box_iou, dynamic_match, dynamic_smooth_l1

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=str(CUDA_SKIP_REASON)),
]

BOX_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _bits_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    a, b = a.cpu(), b.cpu()
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.is_floating_point():
        # NaN == NaN bit for bit: compare the raw bytes through an integer view
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.contiguous().view(width), b.contiguous().view(width)
    diff = (a != b).nonzero()
    assert diff.numel() == 0, \
        f"{what}: {diff.shape[0]} elements differ, first at {diff[:5].tolist()}"


@pytest.mark.parametrize("dtype", BOX_DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_box_iou_cuda_equals_cpu_bit_for_bit(seed, dtype):
    gen = generator(seed + 7000)
    batch = make_batch([400], [30], seed, dtype=dtype)
    # awkward fractional coordinates, where a contracted multiply-add rounds differently
    jitter = torch.rand(batch.proposals.shape, generator=gen, dtype=torch.float64) * 0.37
    a = (batch.proposals.double() + jitter).to(dtype)
    b = batch.gt_boxes
    _bits_equal(box_iou(a.cuda(), b.cuda()), box_iou(a, b), f"box_iou {dtype}")


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("dtype", BOX_DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_dynamic_match_cuda_equals_cpu_bit_for_bit(seed, dtype, per_image):
    gen = generator(seed + 8000)
    num_images = 4
    p_counts, g_counts = random_counts(num_images, gen, max_proposals=500, max_gt=20)
    cpu = make_batch(p_counts, g_counts, seed, dtype=dtype)
    k_iou, k_err = (15, 4) if per_image else (15 * num_images, 4 * num_images)
    thr = torch.tensor(0.55)
    out_cpu = dynamic_match(*cpu, thr, k_iou, k_err, per_image=per_image)
    out_cuda = dynamic_match(*(t.cuda() for t in cpu), thr.cuda(), k_iou, k_err,
                             per_image=per_image)
    for name, a, b in zip(out_cpu._fields, out_cuda, out_cpu):
        _bits_equal(a, b, f"dynamic_match.{name} ({dtype}, per_image={per_image})")


@pytest.mark.parametrize("seed", SEEDS)
def test_labels_agree_when_the_threshold_is_exactly_an_iou(seed):
    """T taken from the IoUs themselves: any rounding difference flips a label."""
    gen = generator(seed + 9000)
    cpu = make_batch([300, 200], [10, 6], seed)
    probe = dynamic_match(*cpu, torch.tensor(0.5), 1, 1)
    fg = probe.max_iou[(probe.max_iou > 0.3) & (probe.max_iou < 0.95)]
    picks = fg[torch.randint(0, fg.numel(), (8,), generator=gen)]
    for thr in picks:
        a = dynamic_match(*(t.cuda() for t in cpu), thr.cuda(), 20, 5)
        b = dynamic_match(*cpu, thr, 20, 5)
        _bits_equal(a.max_iou, b.max_iou, f"max_iou at T={thr.item()!r}")
        _bits_equal(a.labels, b.labels, f"labels at T={thr.item()!r}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dsl_elementwise_loss_and_gradient_cuda_equal_cpu(dtype):
    """reduction='none' has no summation order: every element must be the same bits."""
    gen = generator(4242)
    x = (torch.randn(5000, 4, generator=gen, dtype=torch.float64) * 0.7).to(dtype)
    t = (torch.randn(5000, 4, generator=gen, dtype=torch.float64) * 0.7).to(dtype)
    w = torch.rand(5000, 4, generator=gen, dtype=torch.float64).to(dtype)
    for beta in (1.0, 0.1137, 1e-7):
        beta_t = torch.tensor(beta, dtype=torch.float32)
        xc = x.clone().requires_grad_()
        xg = x.cuda().requires_grad_()
        lc = dynamic_smooth_l1(xc, t, beta_t, w, reduction="none")
        lg = dynamic_smooth_l1(xg, t.cuda(), beta_t.cuda(), w.cuda(), reduction="none")
        _bits_equal(lg, lc, f"DSL loss {dtype} beta={beta}")
        grad = torch.randn(lc.shape, generator=gen, dtype=torch.float64).to(dtype)
        lc.backward(grad)
        lg.backward(grad.cuda())
        _bits_equal(xg.grad, xc.grad, f"DSL grad {dtype} beta={beta}")


def test_dsl_sum_is_close_to_cpu_and_repeatable():
    """The reduced loss sums in another order on the GPU: close to the CPU, and the same
    bits run to run with one binary."""
    gen = generator(77)
    x = torch.randn(1 << 20, generator=gen)
    t = torch.randn(1 << 20, generator=gen)
    beta = torch.tensor(0.3)
    cpu = dynamic_smooth_l1(x, t, beta)
    runs = [dynamic_smooth_l1(x.cuda(), t.cuda(), beta.cuda()) for _ in range(3)]
    torch.testing.assert_close(runs[0].cpu(), cpu, rtol=1e-5, atol=0)
    for r in runs[1:]:
        _bits_equal(r, runs[0], "DSL sum run to run")


def test_python_number_thresholds_do_not_sync():
    """iou_thr / beta given as Python numbers become device tensors by a fill, not by a
    blocking host-to-device copy."""
    batch = [t.cuda() for t in make_batch([200, 100], [8, 3], 5)]
    x = torch.randn(4096, device="cuda", requires_grad=True)
    y = torch.randn(4096, device="cuda")
    dynamic_match(*batch, 0.5, 10, 4)  # warm-up: lazy init may sync once
    dynamic_smooth_l1(x, y, 0.5).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            r = dynamic_match(*batch, 0.5, 10, 4)
            loss = dynamic_smooth_l1(x, y, 0.25) + dynamic_smooth_l1(x, y, r.kth_err)
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
