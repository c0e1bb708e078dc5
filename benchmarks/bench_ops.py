"""Op-level benchmark: dynrcnn's fused ops against the code a user has today.

Cases (see docs/design.md, "Op contracts"):
  match    torchvision per image (box_iou, Matcher, BoxCoder.encode_single of the foreground)
           plus the authors' batch statistics (topk(...).values[-1].item(),
           kthvalue(...).values.item()) versus one dynrcnn.ops.dynamic_match over the batch.
  dsl      F.smooth_l1_loss(beta=float) + backward versus dynamic_smooth_l1(beta tensor)
           + backward, forward and backward timed together.
  box_iou  torchvision.ops.box_iou versus dynrcnn.ops.box_iou.

Both sides of a case run in one process and their repetitions are interleaved (after a
warm-up, the order alternates every repetition) so that machine noise hits both; the
reported figure is the median. Fused and reference outputs are compared before any timing
and the script aborts if they disagree.

    python benchmarks/bench_ops.py --device cpu
    python benchmarks/bench_ops.py --device cuda --reps 200
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder, Matcher

try:
    import dynrcnn.ops as dops
except ImportError:  # a source checkout that is not pip-installed: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dynrcnn.ops as dops

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Candidate, environment, positive_int, time_interleaved  # noqa: E402

IMAGE_H, IMAGE_W = 800, 1333
PROPOSALS_PER_IMAGE = 2000
K_IOU_PER_IMAGE, K_ERR_PER_IMAGE = 75, 10
IOU_THR = 0.5
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
DSL_BETA = 0.5
SEED = 0
RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchmarkError(RuntimeError):
    """Fused and reference disagree, or the fused ops are unavailable."""


# ----------------------------------------------------------------------------- timing


def count_host_syncs(cand: Candidate, device: torch.device) -> Optional[int]:
    """Synchronizing CUDA calls in one `cand.run()`, from sync-debug-mode warnings."""
    if device.type != "cuda":
        return None
    if cand.prepare is not None:
        cand.prepare()
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            cand.run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------- inputs


def random_gt(gen: torch.Generator, n: int) -> Tensor:
    """`n` boxes inside an IMAGE_W x IMAGE_H image, 16 px to ~40% of the image a side."""
    u = torch.rand(n, 4, generator=gen)
    w = 16 + u[:, 0] * 0.4 * IMAGE_W
    h = 16 + u[:, 1] * 0.4 * IMAGE_H
    x1 = u[:, 2] * (IMAGE_W - w)
    y1 = u[:, 3] * (IMAGE_H - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def clip_boxes(boxes: Tensor) -> Tensor:
    """Order the corners, keep at least 1 px a side, clip to the image."""
    x1 = torch.minimum(boxes[:, 0], boxes[:, 2]).clamp(0, IMAGE_W - 1)
    y1 = torch.minimum(boxes[:, 1], boxes[:, 3]).clamp(0, IMAGE_H - 1)
    x2 = torch.maximum(torch.maximum(boxes[:, 0], boxes[:, 2]).clamp(max=IMAGE_W), x1 + 1)
    y2 = torch.maximum(torch.maximum(boxes[:, 1], boxes[:, 3]).clamp(max=IMAGE_H), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=1)


def random_proposals(gen: torch.Generator, gt: Tensor, n: int) -> Tensor:
    """75% jittered copies of the ground truth (jitter 0-50% of the size), 25% random boxes."""
    n_jit = (3 * n) // 4
    src = gt[torch.randint(gt.shape[0], (n_jit,), generator=gen)]
    wh = (src[:, 2:] - src[:, :2]).repeat(1, 2)
    scale = torch.rand(n_jit, 1, generator=gen) * 0.5
    jittered = src + torch.randn(n_jit, 4, generator=gen) * scale * wh
    boxes = torch.cat([jittered, random_gt(gen, n - n_jit)])
    return clip_boxes(boxes[torch.randperm(n, generator=gen)])


def make_batch(num_images: int, num_gt: int, device: torch.device,
               seed: int = SEED) -> tuple[list[Tensor], list[Tensor]]:
    """Per-image proposals and ground truth (float32), generated on CPU with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    gts = [random_gt(gen, num_gt) for _ in range(num_images)]
    props = [random_proposals(gen, g, PROPOSALS_PER_IMAGE) for g in gts]
    return [p.to(device) for p in props], [g.to(device) for g in gts]


# ----------------------------------------------------------------------------- ops


@dataclass
class FusedOps:
    """The candidate side: the compiled ops behind dynrcnn.ops."""

    dynamic_match: Callable[..., dops.MatchResult]
    dynamic_smooth_l1: Callable[..., Tensor]
    box_iou: Callable[[Tensor, Tensor], Tensor]


def load_fused_ops(device: torch.device) -> FusedOps:
    """The compiled ops, or a clear error when they would silently fall back to Python."""
    if not dops.extension_available():
        raise BenchmarkError(
            "the dynrcnn extension is not built (dynrcnn.ops.extension_available() is False); "
            "build it with `pip install -e . --no-build-isolation` and rerun"
        )
    if device.type == "cuda" and not dops.cuda_kernels_compiled():
        raise BenchmarkError("dynrcnn was built without CUDA kernels; rebuild with the "
                             "CUDA toolkit available or run with --device cpu")
    return FusedOps(dops.dynamic_match, dops.dynamic_smooth_l1, dops.box_iou)


# ----------------------------------------------------------------------------- match case


@dataclass
class ReferenceMatch:
    matched_idxs: list[Tensor]  # per image, local gt index or negative (Matcher codes)
    labels: list[Tensor]
    kth_iou: float
    kth_err: float


def reference_match(props: list[Tensor], gts: list[Tensor], matcher: Matcher, coder: BoxCoder,
                    k_iou: int, k_err: int) -> ReferenceMatch:
    """torchvision matching one image at a time plus the authors' host-side statistics."""
    idxs_all, labels_all, ious, errs = [], [], [], []
    for p, g in zip(props, gts):
        iou = torchvision.ops.box_iou(g, p)  # [G, N], the Matcher's layout
        idxs = matcher(iou)
        fg = torch.nonzero(idxs >= 0).squeeze(1)
        targets = coder.encode_single(g[idxs[fg]], p[fg])
        idxs_all.append(idxs)
        labels_all.append((idxs >= 0).to(torch.int64))
        ious.append(iou.max(dim=0).values)
        errs.append(targets[:, :2].abs().mean(dim=1))
    max_iou, err = torch.cat(ious), torch.cat(errs)
    kth_iou = torch.topk(max_iou, min(k_iou, max_iou.numel())).values[-1].item()
    kth_err = math.nan
    if err.numel():
        kth_err = torch.kthvalue(err, min(k_err, err.numel())).values.item()
    return ReferenceMatch(idxs_all, labels_all, kth_iou, kth_err)


def fused_match(ops: FusedOps, props: list[Tensor], gts: list[Tensor], iou_thr: Tensor,
                k_iou: int, k_err: int) -> dops.MatchResult:
    """What a dynrcnn user writes for per-image lists: concatenate, build splits, one call."""
    device = props[0].device
    p_splits = dops.splits_from_counts([p.shape[0] for p in props], device)
    g_splits = dops.splits_from_counts([g.shape[0] for g in gts], device)
    return ops.dynamic_match(torch.cat(props), torch.cat(gts), p_splits, g_splits, iou_thr,
                             k_iou, k_err, BOX_WEIGHTS, per_image=False)


def check_match(ref: ReferenceMatch, fused: dops.MatchResult, gts: list[Tensor]) -> None:
    """Labels and foreground matches equal, the two statistics close; else BenchmarkError."""
    labels = torch.cat(ref.labels).cpu()
    offsets = torch.cumsum(torch.tensor([0] + [g.shape[0] for g in gts[:-1]]), 0)
    idxs = torch.cat([i.cpu() + o for i, o in zip(ref.matched_idxs, offsets.tolist())])
    f_labels, f_idxs = fused.labels.cpu(), fused.matched_idxs.cpu()
    # A proposal whose IoU is within rounding of the threshold may fall either side.
    clear = (fused.max_iou.cpu() - IOU_THR).abs() > 1e-6
    bad = int((labels != f_labels)[clear].sum())
    if bad:
        raise BenchmarkError(f"dynamic_match labels differ from the Matcher's on {bad} proposals")
    fg = labels == 1
    if not torch.equal(idxs[fg], f_idxs[fg]):
        bad = int((idxs[fg] != f_idxs[fg]).sum())
        raise BenchmarkError(f"dynamic_match matched_idxs differ on {bad} foreground proposals")
    for name, want, got in (("kth_iou", ref.kth_iou, float(fused.kth_iou)),
                            ("kth_err", ref.kth_err, float(fused.kth_err))):
        if not math.isclose(want, got, rel_tol=1e-4, abs_tol=1e-5):
            raise BenchmarkError(f"dynamic_match {name} = {got!r}, reference gives {want!r}")


def match_case(ops: FusedOps, num_images: int, num_gt: int,
               device: torch.device) -> tuple[Candidate, Candidate]:
    props, gts = make_batch(num_images, num_gt, device)
    matcher = Matcher(IOU_THR, IOU_THR, allow_low_quality_matches=False)
    coder = BoxCoder(BOX_WEIGHTS)
    iou_thr = torch.tensor(IOU_THR, dtype=torch.float32, device=device)
    k_iou, k_err = K_IOU_PER_IMAGE * num_images, K_ERR_PER_IMAGE * num_images

    def ref() -> ReferenceMatch:
        return reference_match(props, gts, matcher, coder, k_iou, k_err)

    def fused() -> dops.MatchResult:
        return fused_match(ops, props, gts, iou_thr, k_iou, k_err)

    check_match(ref(), fused(), gts)
    return Candidate(ref), Candidate(fused)


# ----------------------------------------------------------------------------- dsl case


def dsl_inputs(numel: int, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    target = torch.randn(numel, generator=gen)
    pred = target + torch.randn(numel, generator=gen)  # |diff| straddles beta
    return pred.to(device), target.to(device)


def check_close(name: str, want: Tensor, got: Tensor, rtol: float, atol: float) -> None:
    if not torch.allclose(want.float(), got.float(), rtol=rtol, atol=atol):
        err = (want.float() - got.float()).abs().max().item()
        raise BenchmarkError(f"{name}: fused and reference differ (max abs diff {err:.3g})")


def dsl_case(ops: FusedOps, numel: int, device: torch.device) -> tuple[Candidate, Candidate]:
    base, target = dsl_inputs(numel, device)
    beta_t = torch.tensor(DSL_BETA, dtype=torch.float32, device=device)
    pred_ref = base.clone().requires_grad_(True)
    pred_fused = base.clone().requires_grad_(True)

    def ref() -> Tensor:
        loss = F.smooth_l1_loss(pred_ref, target, beta=DSL_BETA, reduction="sum")
        loss.backward()
        return loss

    def fused() -> Tensor:
        loss = ops.dynamic_smooth_l1(pred_fused, target, beta_t, reduction="sum")
        loss.backward()
        return loss

    def zero_ref() -> None:
        pred_ref.grad = None

    def zero_fused() -> None:
        pred_fused.grad = None

    loss_ref, loss_fused = ref(), fused()
    check_close("dynamic_smooth_l1 loss", loss_ref.detach(), loss_fused.detach(), 1e-4, 1e-3)
    assert pred_ref.grad is not None and pred_fused.grad is not None
    check_close("dynamic_smooth_l1 grad", pred_ref.grad, pred_fused.grad, 1e-5, 1e-6)
    return Candidate(ref, zero_ref), Candidate(fused, zero_fused)


# ----------------------------------------------------------------------------- box_iou case


def box_iou_case(ops: FusedOps, num_gt: int, device: torch.device) -> tuple[Candidate, Candidate]:
    props, gts = make_batch(1, num_gt, device)
    p, g = props[0], gts[0]
    check_close("box_iou", torchvision.ops.box_iou(p, g), ops.box_iou(p, g), 1e-5, 1e-6)
    return Candidate(lambda: torchvision.ops.box_iou(p, g)), Candidate(lambda: ops.box_iou(p, g))


# ----------------------------------------------------------------------------- driver


@dataclass
class CaseSpec:
    group: str  # match | dsl | box_iou
    key: str  # summary-line suffix, e.g. B2_G20, 1M
    size: str  # human-readable size
    reference: str  # what the reference side is
    build: Callable[[], tuple[Candidate, Candidate]]
    rep_scale: float = 1.0


@dataclass
class CaseResult:
    group: str
    key: str
    size: str
    reference: str
    reps: int
    ref_median_s: float
    fused_median_s: float
    ref_min_s: float
    fused_min_s: float
    speedup: float
    ref_host_syncs: Optional[int] = None
    fused_host_syncs: Optional[int] = None
    ref_samples_s: list[float] = field(default_factory=list)
    fused_samples_s: list[float] = field(default_factory=list)


def case_specs(ops: FusedOps, device: torch.device) -> list[CaseSpec]:
    specs: list[CaseSpec] = []
    for b in (2, 8):
        for g in (5, 20, 100):
            specs.append(CaseSpec(
                "match", f"B{b}_G{g}", f"B={b} x {PROPOSALS_PER_IMAGE} props, {g} gt/img",
                "torchvision Matcher+BoxCoder per image, topk/kthvalue .item()",
                lambda b=b, g=g: match_case(ops, b, g, device)))
    for numel, label, scale in ((1 << 12, "4096", 4.0), (1 << 20, "1M", 1.0),
                                (1 << 24, "16M", 0.2)):
        specs.append(CaseSpec(
            "dsl", label, f"{label} float32 (fwd+bwd)", "F.smooth_l1_loss(beta=float) + backward",
            lambda n=numel: dsl_case(ops, n, device), scale))
    for g in (20, 100):
        specs.append(CaseSpec(
            "box_iou", f"{PROPOSALS_PER_IMAGE}x{g}", f"{PROPOSALS_PER_IMAGE}x{g}",
            "torchvision.ops.box_iou", lambda g=g: box_iou_case(ops, g, device), 4.0))
    return specs


def run_case(spec: CaseSpec, reps: int, warmup: int, device: torch.device) -> CaseResult:
    ref, fused = spec.build()
    n = max(2, round(reps * spec.rep_scale))
    ref_s, fused_s = time_interleaved([ref, fused], n, warmup, device)
    ref_med, fused_med = statistics.median(ref_s), statistics.median(fused_s)
    return CaseResult(
        spec.group, spec.key, spec.size, spec.reference, n, ref_med, fused_med,
        min(ref_s), min(fused_s), ref_med / fused_med,
        count_host_syncs(ref, device), count_host_syncs(fused, device), ref_s, fused_s)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def markdown_table(results: list[CaseResult], device: torch.device) -> str:
    syncs = device.type == "cuda"
    head = ["case", "size", "reps", "reference median", "fused median", "speedup (ref/fused)"]
    if syncs:
        head.append("host syncs (ref / fused)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r.group, r.size, str(r.reps), fmt_time(r.ref_median_s),
               fmt_time(r.fused_median_s), f"{r.speedup:.2f}x"]
        if syncs:
            row.append(f"{r.ref_host_syncs} / {r.fused_host_syncs}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_report(env: dict[str, object], table: str) -> str:
    title = f"# dynrcnn op benchmark ({env['device']})"
    meta = "\n".join(f"- {k}: `{v}`" for k, v in env.items())
    method = ("Medians of interleaved repetitions (order alternating each round) after a "
              "warm-up; speedup = reference median / fused median. Fused match includes "
              "torch.cat of the per-image lists and building the splits.")
    return f"{title}\n\n{meta}\n\n{method}\n\n{table}\n"


def summary_line(results: list[CaseResult]) -> str:
    wanted = [("match", "B2_G20"), ("dsl", "1M"), ("match", "B8_G100"), ("dsl", "16M")]
    by_key = {(r.group, r.key): r for r in results}
    parts = [f"{g}_speedup_{k}={by_key[(g, k)].speedup:.2f}" for g, k in wanted
             if (g, k) in by_key]
    return " ".join(parts)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    p.add_argument("--reps", type=positive_int, default=None,
                   help="timed repetitions per side (small cases x4, the 16M loss x0.2); "
                        "default 30 on cpu, 100 on cuda")
    p.add_argument("--warmup", type=positive_int, default=None,
                   help="untimed rounds first (default 3; 1 with --quick)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch.set_num_threads for the CPU run (default: torch's default)")
    p.add_argument("--json", type=Path, default=None,
                   help="default benchmarks/results/ops_<device>.json")
    p.add_argument("--markdown", type=Path, default=None,
                   help="default benchmarks/results/ops_<device>.md")
    p.add_argument("--quick", action="store_true",
                   help="2 reps, 1 warm-up (for tests); default outputs get a _quick suffix")
    return p.parse_args(argv)


def resolve_defaults(args: argparse.Namespace) -> None:
    if args.reps is None:
        args.reps = 2 if args.quick else (100 if args.device == "cuda" else 30)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    stem = f"ops_{args.device}" + ("_quick" if args.quick else "")
    args.json = args.json or RESULTS_DIR / f"{stem}.json"
    args.markdown = args.markdown or RESULTS_DIR / f"{stem}.md"


def write_outputs(args: argparse.Namespace, env: dict[str, object], results: list[CaseResult],
                  report: str, summary: str) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "summary": summary, "results": [asdict(r) for r in results]}
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    args.markdown.write_text(report)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    resolve_defaults(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    try:
        ops = load_fused_ops(device)
        results = []
        for spec in case_specs(ops, device):
            results.append(run_case(spec, args.reps, args.warmup, device))
            print(f"  {spec.group} {spec.size}: done", file=sys.stderr, flush=True)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    env = environment(device, command)
    table = markdown_table(results, device)
    summary = summary_line(results)
    write_outputs(args, env, results, markdown_report(env, table), summary)
    print(table)
    print(f"\nwrote {args.markdown} and {args.json}")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
