"""Pure-torch references of the fused ops.

These define the semantics the C++/CUDA kernels must reproduce (tests compare against them)
and serve as a fallback when the extension is not built. They favour clarity over speed:
`dynamic_match` loops over images in Python and synchronizes with the host.

Accumulation type: float32 for float16/bfloat16/float32 inputs, float64 for float64.
The arithmetic below is written in the same order as csrc/ops/box_math.h so that float32
results agree with the kernels to rounding.
"""

# No `from __future__ import annotations` here: the API reference (pdoc) reads the
# annotations of MatchResult's generated constructor, which could not resolve "Tensor".
import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
L1_BETA = 1e-6  # beta at or below this is plain L1


class MatchResult(NamedTuple):
    """Output of `dynamic_match`.

    matched_idxs: int64[N], row of `gt_boxes` (global index) of each proposal's best ground
        truth, -1 for proposals of images without ground truth. Ties go to the lowest index.
    max_iou: float32[N], that best IoU (0 for images without ground truth).
    labels: int64[N], 1 if the image has ground truth and max_iou >= iou_thr, else 0.
    kth_iou: float32[] (or [B] with per_image) k_iou-th largest max_iou among the proposals
        of images that have ground truth; NaN when there are none.
    kth_err: float32[] (or [B]) k_err-th smallest regression error among the foreground
        proposals (labels == 1, finite error); NaN when there are none.
    """

    matched_idxs: Tensor
    max_iou: Tensor
    labels: Tensor
    kth_iou: Tensor
    kth_err: Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU [N, M]; boxes with non-positive width/height or NaN give 0."""
    acc = acc_dtype(boxes1.dtype)
    a, b = boxes1.to(acc), boxes2.to(acc)
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    valid = ((aw > 0) & (ah > 0))[:, None] & ((bw > 0) & (bh > 0))[None, :]
    area_a, area_b = aw * ah, bw * bh
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    valid = valid & (iw > 0) & (ih > 0)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union
    iou = torch.where(valid & (iou >= 0), iou.clamp(max=1.0), torch.zeros_like(iou))
    return iou.to(boxes1.dtype)


def regression_error(proposals: Tensor, gts: Tensor, weights: Sequence[float]) -> Tensor:
    """mean(|dx|, |dy|) of the BoxCoder-encoded target, in the accumulation dtype."""
    acc = acc_dtype(proposals.dtype)
    p, g = proposals.to(acc), gts.to(acc)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    pcx, pcy = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    gcx, gcy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
    dx = weights[0] * (gcx - pcx) / pw
    dy = weights[1] * (gcy - pcy) / ph
    return (dx.abs() + dy.abs()) * 0.5


def kth_largest(values: Tensor, k: int) -> Tensor:
    """k-th largest of a 1-D float32 tensor, k clamped to its size; NaN if empty."""
    if values.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float32, device=values.device)
    k = min(k, values.numel())
    return torch.sort(values, descending=True).values[k - 1]


def kth_smallest(values: Tensor, k: int) -> Tensor:
    if values.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float32, device=values.device)
    k = min(k, values.numel())
    return torch.sort(values).values[k - 1]


def dynamic_match(
    proposals: Tensor,
    gt_boxes: Tensor,
    proposal_splits: Tensor,
    gt_splits: Tensor,
    iou_thr: Tensor,
    k_iou: int,
    k_err: int,
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
    per_image: bool = False,
) -> MatchResult:
    device = proposals.device
    n = proposals.shape[0]
    ps = [int(v) for v in proposal_splits.tolist()]
    gs = [int(v) for v in gt_splits.tolist()]
    num_images = len(ps) - 1
    acc = acc_dtype(proposals.dtype)
    thr = iou_thr.to(device=device, dtype=acc)

    matched = torch.full((n,), -1, dtype=torch.int64, device=device)
    max_iou = torch.zeros(n, dtype=torch.float32, device=device)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    err = torch.zeros(n, dtype=torch.float32, device=device)
    in_iou_pop = torch.zeros(n, dtype=torch.bool, device=device)
    in_err_pop = torch.zeros(n, dtype=torch.bool, device=device)

    for b in range(num_images):
        p0, p1, g0, g1 = ps[b], ps[b + 1], gs[b], gs[b + 1]
        if p1 == p0 or g1 == g0:
            continue
        iou = box_iou(proposals[p0:p1].to(acc), gt_boxes[g0:g1].to(acc))
        best = iou.max(dim=1).values
        idx = (iou == best[:, None]).to(torch.int64).argmax(dim=1)  # first max on ties
        fg = best >= thr
        e = regression_error(proposals[p0:p1], gt_boxes[g0:g1][idx], weights)
        matched[p0:p1] = idx + g0
        max_iou[p0:p1] = best.to(torch.float32)
        labels[p0:p1] = fg.to(torch.int64)
        err[p0:p1] = e.to(torch.float32)
        in_iou_pop[p0:p1] = True
        in_err_pop[p0:p1] = fg & torch.isfinite(e)

    if per_image:
        kth_iou = torch.stack(
            [kth_largest(max_iou[ps[b]:ps[b + 1]][in_iou_pop[ps[b]:ps[b + 1]]], k_iou)
             for b in range(num_images)]
        ) if num_images else torch.zeros(0, dtype=torch.float32, device=device)
        kth_err = torch.stack(
            [kth_smallest(err[ps[b]:ps[b + 1]][in_err_pop[ps[b]:ps[b + 1]]], k_err)
             for b in range(num_images)]
        ) if num_images else torch.zeros(0, dtype=torch.float32, device=device)
    else:
        kth_iou = kth_largest(max_iou[in_iou_pop], k_iou)
        kth_err = kth_smallest(err[in_err_pop], k_err)
    return MatchResult(matched, max_iou, labels, kth_iou, kth_err)


def dynamic_smooth_l1(
    input: Tensor,
    target: Tensor,
    beta: Tensor,
    weight: Optional[Tensor] = None,
    reduction: str = "sum",
) -> Tensor:
    """SmoothL1 with a tensor beta (beta <= 1e-6 is L1); differentiable by autograd."""
    acc = acc_dtype(input.dtype)
    diff = input.to(acc) - target.to(acc)
    b = beta.to(device=input.device, dtype=acc)
    ad = diff.abs()
    quadratic = 0.5 * diff * diff / b.clamp(min=L1_BETA)
    loss = torch.where(ad < b, quadratic, ad - 0.5 * b)
    loss = torch.where(b <= L1_BETA, ad, loss)
    if weight is not None:
        loss = loss * weight.to(acc)
    if reduction == "none":
        return loss.to(input.dtype)
    total = loss.sum()
    if reduction == "mean":
        total = total / loss.numel() if loss.numel() else total * math.nan
    return total.to(input.dtype)


# The two ops below reproduce torchvision's exactly; their reference is torchvision itself.

def batched_nms_topk(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                     max_keep: int) -> Tensor:
    """torchvision.ops.batched_nms(...)[:max_keep] (-1: all)."""
    from torchvision.ops import batched_nms

    keep = batched_nms(boxes, scores, idxs, iou_threshold)
    return keep if max_keep < 0 else keep[:max_keep]


def rois_from_boxes(boxes: Sequence[Tensor]) -> Tensor:
    """[K, 5] rois (image index, x1, y1, x2, y2) from per-image [K_b, 4] boxes."""
    from torchvision.ops._utils import convert_boxes_to_roi_format

    return convert_boxes_to_roi_format(list(boxes))


def roi_align(input: Tensor, rois: Tensor, output_size: Sequence[int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision.ops.roi_align."""
    from torchvision.ops import roi_align as tv_roi_align

    return tv_roi_align(input, rois, list(output_size), spatial_scale, sampling_ratio, aligned)
