"""Results of the detector benchmark: the rows with their paired ratios and confidence
intervals, the summary line, and the markdown report."""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from _detector_memory import MEM_SAMPLES
from _detector_models import (
    BASELINE_NMS,
    GT_PER_IMAGE,
    LR,
    MOMENTUM,
    WEIGHT_DECAY,
    Subject,
    frozen_trunk,
    image_shape,
    key_groups,
    transform_kwargs,
)
from _detector_stats import median_ci, paired_ratios
from _detector_timing import StageCost
from torch import nn

MiB = float(1 << 20)


# ----------------------------------------------------------------------------- results


@dataclass
class Row:
    name: str
    arch: str
    baseline: str
    rpn_nms_thresh: float
    train_median_s: float
    infer_median_s: float
    infer_images_per_s: float
    train_ratio: float = math.nan  # median over rounds of train time / baseline's
    infer_ratio: float = math.nan  # median over rounds of images/s / baseline's
    train_ratio_ci: Tuple[float, float] = (math.nan, math.nan)  # 95% CI of train_ratio
    infer_ratio_ci: Tuple[float, float] = (math.nan, math.nan)
    peak_train_bytes: Optional[int] = None
    peak_infer_bytes: Optional[int] = None
    detections_per_image: int = 0
    shared_from_earlier: List[str] = field(default_factory=list)
    own: List[str] = field(default_factory=list)
    train_samples_s: List[float] = field(default_factory=list)
    infer_samples_s: List[float] = field(default_factory=list)
    peak_train_samples_bytes: List[int] = field(default_factory=list)
    peak_infer_samples_bytes: List[int] = field(default_factory=list)


def rpn_nms(model: nn.Module) -> float:
    return float(model.rpn.nms_thresh)


def make_rows(subjects: List[Subject], train_s: List[List[float]], infer_s: List[List[float]],
              mem: Tuple[List[List[int]], List[List[int]], str]) -> List[Row]:
    rows = []
    for k, s in enumerate(subjects):
        t_med, i_med = statistics.median(train_s[k]), statistics.median(infer_s[k])
        mem_t, mem_i = mem[0][k], mem[1][k]
        rows.append(Row(
            s.variant.name, s.variant.arch, s.variant.baseline, rpn_nms(s.model), t_med, i_med,
            1.0 / i_med, peak_train_bytes=max(mem_t) if mem_t else None,
            peak_infer_bytes=max(mem_i) if mem_i else None, detections_per_image=s.detections,
            shared_from_earlier=key_groups(s.shared_keys), own=key_groups(s.own_keys),
            train_samples_s=train_s[k], infer_samples_s=infer_s[k],
            peak_train_samples_bytes=mem_t, peak_infer_samples_bytes=mem_i))
    by_name = {r.name: r for r in rows}
    for r in rows:
        base = by_name[r.baseline]
        r.train_ratio, *train_ci = median_ci(paired_ratios(r.train_samples_s,
                                                           base.train_samples_s))
        r.infer_ratio, *infer_ci = median_ci(paired_ratios(base.infer_samples_s,
                                                           r.infer_samples_s))
        r.train_ratio_ci, r.infer_ratio_ci = (train_ci[0], train_ci[1]), (infer_ci[0],
                                                                          infer_ci[1])
    return rows


def summary_values(rows: List[Row]) -> Tuple[float, float]:
    """(dynamic_rcnn images/s / cascade_rcnn images/s, train step of dynamic_rcnn with the
    baseline's RPN NMS / faster_rcnn's)."""
    by_name = {r.name: r for r in rows}
    dyn, cascade = by_name["dynamic_rcnn"], by_name["cascade_rcnn"]
    x = statistics.median(paired_ratios(cascade.infer_samples_s, dyn.infer_samples_s))
    y = by_name[f"dynamic_rcnn (rpn nms {BASELINE_NMS})"].train_ratio
    return x, y


def summary_line(rows: List[Row]) -> str:
    x, y = summary_values(rows)
    return f"dynamic_vs_cascade_infer_speedup={x:.3f} dynamic_vs_faster_train_ratio={y:.3f}"


# ----------------------------------------------------------------------------- second stage


def stage_cost_table(costs: List[StageCost], rows: List[Row]) -> str:
    """Markdown: per architecture, the second-stage training costs and their share of
    faster_rcnn's median train step."""
    if not costs:
        return ""
    step_ms = {r.name: r.train_median_s * 1e3 for r in rows}["faster_rcnn"]
    head = ["arch", "select_training_samples (ms)", "box losses fwd+bwd (ms)", "sum (ms)",
            "share of faster_rcnn's step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in costs:
        total = c.select_ms + c.loss_ms
        lines.append(f"| {c.name} | {c.select_ms:.3f} | {c.loss_ms:.3f} | {total:.3f} | "
                     f"{100 * total / step_ms:.2f}% |")
    extra = (costs[1].select_ms + costs[1].loss_ms) - (costs[0].select_ms + costs[0].loss_ms)
    lines.append("")
    lines.append(f"Dynamic minus Faster: {extra:+.3f} ms per step = "
                 f"{100 * extra / step_ms:+.2f}% of faster_rcnn's {step_ms:.1f} ms step "
                 "(the cost of DLA + DSL themselves; negative = cheaper).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def fmt_mib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / MiB:.0f}"


def markdown_table(rows: List[Row]) -> str:
    head = ["arch", "rpn nms", "train step (ms)", "ratio to Faster † [95% CI]",
            "infer img/s", "ratio to Faster † [95% CI]", "peak mem train / infer (MiB)",
            "dets/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio(value: float, ci: Tuple[float, float]) -> str:
        return f"{value:.3f}x [{ci[0]:.3f}, {ci[1]:.3f}]"

    for r in rows:
        cells = [r.name, f"{r.rpn_nms_thresh:g}", f"{r.train_median_s * 1e3:.1f}",
                 ratio(r.train_ratio, r.train_ratio_ci), f"{r.infer_images_per_s:.2f}",
                 ratio(r.infer_ratio, r.infer_ratio_ci),
                 f"{fmt_mib(r.peak_train_bytes)} / {fmt_mib(r.peak_infer_bytes)}",
                 str(r.detections_per_image)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def config(args: argparse.Namespace) -> Dict[str, object]:
    height, width = image_shape(args.size)
    return {
        "backbone": args.backbone,
        "trunk": "FrozenBatchNorm2d, stem+layer1 frozen (fine-tuning setup)"
        if frozen_trunk(args.backbone)
        else "trained entirely, BatchNorm2d",
        "image (h x w)": f"{height} x {width}",
        **transform_kwargs(args.size),
        "train batch": args.batch,
        "gt boxes per image": GT_PER_IMAGE,
        "num_classes (with background)": args.num_classes,
        "box_score_thresh": "torchvision's 0.05" if args.score_thresh is None
        else args.score_thresh,
        "optimizer": f"SGD lr={LR} momentum={MOMENTUM} weight_decay={WEIGHT_DECAY}",
        "reps": args.reps,
        "warmup": args.warmup,
    }


def notes(rows: List[Row], mem_reason: str, device: torch.device) -> str:
    x, y = summary_values(rows)
    mem = ("CUDA: torch.cuda.max_memory_allocated above the allocation before the step"
           if device.type == "cuda" else
           "CPU: peak RSS (VmHWM, reset via /proc/self/clear_refs after malloc_trim) above "
           "the RSS before the step")
    lines = [
        "† Ratios are to faster_rcnn; the mask rows' are to mask_rcnn. Train ratio = train "
        "step time / baseline's (above 1 = slower); infer ratio = images/s / baseline's "
        "(below 1 = slower). Each is the median over rounds of the ratio within a round "
        "(paired: drift of the machine's speed between rounds cancels), with a "
        "distribution-free 95% confidence interval of that median.",
        f"- Peak memory: {mem}, plus the model's parameters, buffers and optimizer state; "
        f"max of {MEM_SAMPLES} samples." + (f" n/a: {mem_reason}." if mem_reason else ""),
        f"- dynamic_vs_faster_train_ratio = {y:.3f}: dynamic_rcnn with the baseline's RPN NMS "
        f"({BASELINE_NMS}) against faster_rcnn, so that only DLA/DSL differ. The paper's "
        "dynamic_rcnn row (RPN NMS 0.85) also has the RPN keep more proposals.",
        f"- dynamic_vs_cascade_infer_speedup = {x:.3f}: dynamic_rcnn as in the paper "
        "(RPN NMS 0.85) images/s over cascade_rcnn images/s.",
        "- Weights (tensors loaded from the models built before, by name and shape; the "
        "rest are the model's own, seeded):",
    ]
    for r in rows[1:]:
        own = ", ".join(r.own) or "nothing"
        lines.append(f"  - {r.name}: shares {', '.join(r.shared_from_earlier)}; own: {own}")
    if any(r.detections_per_image == 0 for r in rows):
        lines.append("- Warning: some model detects nothing with these random weights, so its "
                     "inference skips the post-processing NMS (and the mask head); lower "
                     "--score-thresh or --num-classes.")
    return "\n".join(lines)


def markdown_report(env: Dict[str, object], cfg: Dict[str, object], rows: List[Row],
                    mem_reason: str, device: torch.device,
                    costs: Optional[List[StageCost]] = None) -> str:
    title = f"# dynrcnn detector benchmark ({env['device']})"
    meta = "\n".join(f"- {k}: `{v}`" for k, v in {**env, **cfg}.items())
    method = ("Medians of interleaved repetitions after warm-up: every repetition runs each "
              "architecture's train step (forward + backward + SGD step, batch "
              f"{cfg['train batch']}) round-robin, then each one's batch-1 inference, the "
              "order reversed every other repetition. Same backbone, input and shared "
              "weights for all rows.")
    stage = ""
    if costs:
        stage = ("\n## The second stage's training code alone\n\n"
                 "select_training_samples and the box losses (forward + backward) of "
                 "faster_rcnn and of dynamic_rcnn with the same RPN NMS, on the same "
                 "proposals (faster_rcnn's RPN) and the same head outputs, interleaved, "
                 f"{len(costs[0].select_samples_ms)} rounds, medians. This is where the two "
                 "differ in training; the whole-step ratio above also carries the "
                 "data-dependent cost of which RoIs are sampled.\n\n"
                 f"{stage_cost_table(costs, rows)}\n")
    return (f"{title}\n\n{meta}\n\n{method}\n\n{markdown_table(rows)}\n\n"
            f"{notes(rows, mem_reason, device)}\n{stage}")
