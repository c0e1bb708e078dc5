"""Detector-level benchmark: Faster vs Dynamic vs Cascade R-CNN (and the Mask variants).

What is measured, per architecture, all in ONE process on the same backbone, input and
(wherever the architectures share modules) the same weights:
  train step   forward + backward + SGD optimizer.step on a fixed synthetic batch
               (`--batch` random images with a few random ground-truth boxes, labels and,
               for the mask variants, box-shaped masks);
  inference    images/second at batch 1 (eval mode, torch.inference_mode);
  peak memory  the step's transient peak above the memory held before it, plus the model's
               resident bytes (parameters, buffers, optimizer state). CUDA: from
               torch.cuda.max_memory_allocated (other models' tensors are excluded by the
               baseline). CPU (Linux): peak RSS from /proc/self/status VmHWM after resetting
               it through /proc/self/clear_refs and releasing free heap with malloc_trim;
               "n/a" where that is impossible (tracemalloc cannot see torch's allocations
               and ru_maxrss only ever rises, so neither is used).

Rows: faster_rcnn; dynamic_rcnn as in the paper (RPN NMS 0.85); dynamic_rcnn with the
baseline's RPN NMS 0.7 (NMS 0.85 keeps more proposals, which changes the RPN's cost
independently of DLA/DSL: this row isolates the dynamic machinery); cascade_rcnn; and with
--masks mask_rcnn, dynamic_mask_rcnn and dynamic_mask_rcnn with RPN NMS 0.7.

Weights: faster_rcnn is built first (seeded); every later model loads, with strict=False,
every tensor of the models built before it whose name and shape match. The dynamic variants
thus get Faster R-CNN's weights exactly (their DynamicState buffers are extra), cascade_rcnn
gets the backbone and RPN only (its three stage heads have other names and are its own,
seeded), mask_rcnn gets Faster R-CNN's plus its own mask head, and dynamic_mask_rcnn gets
mask_rcnn's. The script checks this before timing (and that faster_rcnn and the NMS-0.7
dynamic_rcnn give identical detections). SGD uses a small learning rate so that the models
stay close to these shared weights during the run (the step's cost does not depend on it).

Timing: after warm-up rounds, every repetition runs each architecture's train step once
(round-robin, the order reversed every other repetition, so that machine drift hits all
of them equally), then each one's inference likewise; medians are reported, and ratios
are medians of the per-round ratios (paired, so drift between rounds cancels) with a 95%
confidence interval. CUDA times come from events, synchronized before and after.

Second stage: the code where Dynamic and Faster R-CNN differ in training (labelling and
sampling the RoIs, the box losses forward + backward) is also timed alone, on identical
proposals and head outputs: the cost of DLA + DSL without the data-dependent rest.

    python benchmarks/bench_detectors.py --device cpu
    python benchmarks/bench_detectors.py --device cuda --reps 30
    python benchmarks/bench_detectors.py --quick --size 192   # a quick end-to-end check
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import re
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn

try:
    from dynrcnn.modeling import build_detector
except ImportError:  # a source checkout that is not pip-installed: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dynrcnn.modeling import build_detector

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Candidate, environment, non_negative_int, positive_int, round_robin, time_once  # noqa: E402

SEED = 0
GT_PER_IMAGE = 5
ASPECT = 4 / 3  # image width / height (COCO's typical 640x480)
MAX_TO_MIN = 1333 / 800  # torchvision's max_size / min_size
LR, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 1e-4
BASELINE_NMS = 0.7  # torchvision's RPN NMS (Faster R-CNN); the dynamic variants default 0.85
MEM_SAMPLES = 2
STAGE_REPS_FACTOR = 5  # the second-stage code is ~1% of a step: more rounds, still cheap
MiB = float(1 << 20)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
Targets = List[Dict[str, Tensor]]


class BenchmarkError(RuntimeError):
    """The models do not share weights as intended, or a run cannot proceed."""


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One row: `arch` built with `kwargs`; ratios are taken against row `baseline`."""

    name: str
    arch: str
    baseline: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()


def variants(masks: bool) -> List[Variant]:
    same_nms = (("rpn_nms_thresh", BASELINE_NMS),)
    rows = [
        Variant("faster_rcnn", "faster_rcnn", "faster_rcnn"),
        Variant("dynamic_rcnn", "dynamic_rcnn", "faster_rcnn"),
        Variant(f"dynamic_rcnn (rpn nms {BASELINE_NMS})", "dynamic_rcnn", "faster_rcnn",
                same_nms),
        Variant("cascade_rcnn", "cascade_rcnn", "faster_rcnn"),
    ]
    if masks:
        rows += [
            Variant("mask_rcnn", "mask_rcnn", "mask_rcnn"),
            Variant("dynamic_mask_rcnn", "dynamic_mask_rcnn", "mask_rcnn"),
            Variant(f"dynamic_mask_rcnn (rpn nms {BASELINE_NMS})", "dynamic_mask_rcnn",
                    "mask_rcnn", same_nms),
        ]
    return rows


# ----------------------------------------------------------------------------- inputs


def image_shape(size: int) -> Tuple[int, int]:
    """(height, width) of the synthetic images: `size` high, COCO's 4:3 aspect."""
    return size, round(size * ASPECT)


def transform_kwargs(size: int) -> Dict[str, int]:
    """min_size / max_size so that torchvision's transform keeps the image at its size."""
    return {"min_size": size, "max_size": math.ceil(size * MAX_TO_MIN)}


def random_boxes(gen: torch.Generator, n: int, height: int, width: int) -> Tensor:
    """`n` integer-cornered boxes, 16 px to ~40% of the image a side."""
    u = torch.rand(n, 4, generator=gen)
    w = (16 + u[:, 0] * 0.4 * width).floor()
    h = (16 + u[:, 1] * 0.4 * height).floor()
    x1 = (u[:, 2] * (width - w)).floor()
    y1 = (u[:, 3] * (height - h)).floor()
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """uint8 [G, H, W] masks filling each box."""
    masks = torch.zeros(boxes.shape[0], height, width, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        m[y1:y2, x1:x2] = 1
    return masks


def make_inputs(batch: int, size: int, num_classes: int, masks: bool,
                device: torch.device) -> Tuple[List[Tensor], Targets]:
    """Fixed random images and targets (generated on the CPU from SEED)."""
    gen = torch.Generator().manual_seed(SEED)
    height, width = image_shape(size)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=gen).to(device))
        boxes = random_boxes(gen, GT_PER_IMAGE, height, width)
        labels = torch.randint(1, num_classes, (GT_PER_IMAGE,), generator=gen)
        target = {"boxes": boxes.to(device), "labels": labels.to(device)}
        if masks:
            target["masks"] = box_masks(boxes, height, width).to(device)
        targets.append(target)
    return images, targets


# ----------------------------------------------------------------------------- models


@dataclass
class Subject:
    """A built model with its optimizer and what it took from the shared weights."""

    variant: Variant
    model: nn.Module
    optimizer: torch.optim.Optimizer
    shared_keys: List[str]
    own_keys: List[str]
    detections: int = 0


def frozen_trunk(backbone: str) -> bool:
    """ResNets are built as when fine-tuning from ImageNet, as in the paper; tiny_fpn always
    trains entirely."""
    return backbone.startswith("resnet")


def frozen_trunk_file(backbone: str, directory: Path) -> Optional[Path]:
    """For ResNet backbones, a (random) trunk checkpoint: passing it as backbone_weights builds
    the detectors as when fine-tuning (FrozenBatchNorm2d, stem and layer1 frozen)."""
    if not frozen_trunk(backbone):
        return None
    depth = backbone.split("_")[0]
    torch.manual_seed(SEED)
    trunk = torchvision.models.resnet.__dict__[depth](weights=None)
    path = directory / f"{depth}_random_trunk.pth"
    torch.save(trunk.state_dict(), path)
    return path


def share_weights(model: nn.Module, pool: Dict[str, Tensor]) -> Tuple[List[str], List[str]]:
    """Load every pool tensor whose name and shape match (strict=False), then add the model's
    remaining tensors to the pool. Returns (loaded keys, the model's own keys)."""
    own = model.state_dict()
    take = {k: v for k, v in pool.items() if k in own and own[k].shape == v.shape}
    result = model.load_state_dict(take, strict=False)
    if result.unexpected_keys:
        raise BenchmarkError(f"unexpected keys when sharing weights: {result.unexpected_keys}")
    for key, value in model.state_dict().items():
        pool.setdefault(key, value.detach().clone())
    return sorted(take), sorted(set(own) - set(take))


def build_subject(variant: Variant, args: argparse.Namespace, trunk: Optional[Path],
                  pool: Dict[str, Tensor], device: torch.device) -> Subject:
    torch.manual_seed(SEED)
    kwargs: Dict[str, Any] = {**transform_kwargs(args.size), **dict(variant.kwargs)}
    if args.score_thresh is not None:
        kwargs["box_score_thresh"] = args.score_thresh
    model = build_detector(variant.arch, args.backbone, args.num_classes,
                           backbone_weights=trunk, **kwargs).to(device)
    shared, own = share_weights(model, pool)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return Subject(variant, model, optimizer, shared, own)


def key_groups(keys: List[str]) -> List[str]:
    """Keys shortened to their first two components (backbone.body, rpn.head, ...)."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def check_sharing(subjects: List[Subject]) -> None:
    """Every model after the first has the first one's backbone and RPN; the dynamic variants
    own nothing but their DynamicState; cascade owns only its stage heads."""
    for s in subjects[1:]:
        own = s.own_keys
        if any(k.startswith(("backbone.", "rpn.")) for k in own):
            raise BenchmarkError(f"{s.variant.name}: backbone/RPN weights not shared: {own}")
        if s.variant.arch.startswith("dynamic") and any(".dynamic_state." not in f".{k}"
                                                        for k in own):
            raise BenchmarkError(f"{s.variant.name}: owns more than its DynamicState: {own}")
        if s.variant.arch == "cascade_rcnn" and any(not k.startswith("roi_heads.stage_")
                                                    for k in own):
            raise BenchmarkError(f"cascade_rcnn owns unexpected tensors: {own}")


def check_same_detections(subjects: List[Subject], image: Tensor) -> None:
    """faster_rcnn and the same-NMS dynamic_rcnn must detect identically (same weights)."""
    by_name = {s.variant.name: s for s in subjects}
    pair = [by_name.get("faster_rcnn"), by_name.get(f"dynamic_rcnn (rpn nms {BASELINE_NMS})")]
    if pair[0] is None or pair[1] is None:
        return
    outs = [infer(s, image) for s in pair]
    a, b = (o[0]["boxes"].cpu() for o in outs)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-3):
        raise BenchmarkError("faster_rcnn and dynamic_rcnn (same RPN NMS) detect differently "
                             f"({a.shape[0]} vs {b.shape[0]} boxes): weights are not shared")


# ----------------------------------------------------------------------------- steps


def train_step(s: Subject, images: List[Tensor], targets: Targets) -> None:
    s.optimizer.zero_grad(set_to_none=True)
    losses = s.model(images, targets)
    torch.stack(list(losses.values())).sum().backward()
    s.optimizer.step()


def infer(s: Subject, image: Tensor) -> List[Dict[str, Tensor]]:
    with torch.inference_mode():
        return s.model([image])


# ----------------------------------------------------------------------------- timing


def candidates(subjects: List[Subject], images: List[Tensor],
               targets: Targets) -> Tuple[List[Candidate], List[Candidate]]:
    """(train, inference) candidates of every subject."""
    train, inference = [], []
    for s in subjects:
        def run_train(s: Subject = s) -> None:
            train_step(s, images, targets)

        def run_infer(s: Subject = s) -> None:
            s.detections = int(infer(s, images[0])[0]["boxes"].shape[0])

        train.append(Candidate(run_train, s.model.train))
        inference.append(Candidate(run_infer, s.model.eval))
    return train, inference


def time_all(subjects: List[Subject], images: List[Tensor], targets: Targets, reps: int,
             warmup: int, device: torch.device) -> Tuple[List[List[float]], List[List[float]]]:
    """Per-subject train and inference samples; every round does all trains, then all
    inferences, the order reversed every other round."""
    train, inference = candidates(subjects, images, targets)
    train_s: List[List[float]] = [[] for _ in subjects]
    infer_s: List[List[float]] = [[] for _ in subjects]
    for rep in range(-warmup, reps):
        t = round_robin(train, rep % 2 == 1, device)
        i = round_robin(inference, rep % 2 == 1, device)
        if rep >= 0:
            for k in range(len(subjects)):
                train_s[k].append(t[k])
                infer_s[k].append(i[k])
        print(f"  {'warm-up' if rep < 0 else 'rep'} {rep + 1 if rep >= 0 else -rep}: "
              f"train {sum(t):.2f} s, infer {sum(i):.2f} s", file=sys.stderr, flush=True)
    return train_s, infer_s


# ----------------------------------------------------------------------------- second stage


@dataclass
class StageCost:
    """Median times of the only training code where Dynamic and Faster R-CNN differ, on
    identical inputs: labelling + sampling + encoding the RoIs (select_training_samples)
    and the box-head losses forward + backward."""

    name: str
    select_ms: float
    loss_ms: float
    select_samples_ms: List[float] = field(default_factory=list)
    loss_samples_ms: List[float] = field(default_factory=list)


def rpn_training_inputs(s: Subject, images: List[Tensor],
                        targets: Targets) -> Tuple[List[Tensor], Targets]:
    """The RPN's training proposals and the resized targets, as the RoI heads receive them."""
    model = s.model
    model.train()
    with torch.no_grad():
        batch, resized = model.transform(images, [dict(t) for t in targets])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features, resized)
    return [p.detach() for p in proposals], resized


def box_loss_step(s: Subject, labels: List[Tensor], regression_targets: List[Tensor],
                  logits: Tensor, deltas: Tensor) -> None:
    """The architecture's box-head losses (classification + box) forward and backward."""
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    from dynrcnn.modeling.dynamic_roi_heads import DynamicRoIHeads, dynamic_fastrcnn_loss

    heads = s.model.roi_heads
    logits.grad, deltas.grad = None, None
    if isinstance(heads, DynamicRoIHeads):
        cls, box = dynamic_fastrcnn_loss(logits, deltas, labels, regression_targets,
                                         heads.dynamic_state.beta)
    else:
        cls, box = fastrcnn_loss(logits, deltas, labels, regression_targets)
    (cls + box).backward()


def second_stage_costs(subjects: List[Subject], images: List[Tensor], targets: Targets,
                       reps: int, device: torch.device) -> List[StageCost]:
    """faster_rcnn against dynamic_rcnn with the same RPN NMS, on the same proposals (made by
    faster_rcnn's RPN) and the same head outputs: what DLA + DSL cost per step without the
    data-dependent rest of the step (which RoIs get sampled changes RoIAlign's backward).
    Runs after the step timing: recording statistics moves the dynamic model's T."""
    by_name = {s.variant.name: s for s in subjects}
    pair = [by_name.get("faster_rcnn"), by_name.get(f"dynamic_rcnn (rpn nms {BASELINE_NMS})")]
    if pair[0] is None or pair[1] is None:
        return []
    proposals, resized = rpn_training_inputs(pair[0], images, targets)
    gen = torch.Generator().manual_seed(SEED)
    costs = []
    cands: List[Tuple[Candidate, Candidate]] = []
    for s in pair:
        heads = s.model.roi_heads
        _, _, labels, reg = heads.select_training_samples(list(proposals), resized)
        n = sum(lab.shape[0] for lab in labels)
        num_classes = heads.box_predictor.cls_score.out_features
        logits = torch.randn(n, num_classes, generator=gen).to(device).requires_grad_()
        deltas = torch.randn(n, 4 * num_classes, generator=gen).to(device).requires_grad_()

        def select(heads: nn.Module = heads) -> None:
            heads.select_training_samples(list(proposals), resized)

        def loss(s: Subject = s, labels: List[Tensor] = labels, reg: List[Tensor] = reg,
                 logits: Tensor = logits, deltas: Tensor = deltas) -> None:
            box_loss_step(s, labels, reg, logits, deltas)

        cands.append((Candidate(select), Candidate(loss)))
        costs.append(StageCost(s.variant.name, math.nan, math.nan))
    for rep in range(-2, reps):
        for k in (range(2) if rep % 2 == 0 else range(1, -1, -1)):
            t_sel = time_once(cands[k][0], device)
            t_loss = time_once(cands[k][1], device)
            if rep >= 0:
                costs[k].select_samples_ms.append(t_sel * 1e3)
                costs[k].loss_samples_ms.append(t_loss * 1e3)
    for c in costs:
        c.select_ms = statistics.median(c.select_samples_ms)
        c.loss_ms = statistics.median(c.loss_samples_ms)
    return costs


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


# ----------------------------------------------------------------------------- memory


def resident_bytes(s: Subject) -> int:
    """Parameters, buffers and optimizer state (gradients are freed between steps)."""
    tensors = list(s.model.parameters()) + list(s.model.buffers())
    for state in s.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


class CpuPeak:
    """Peak RSS of a block (Linux): reset VmHWM through /proc/self/clear_refs."""

    def __init__(self) -> None:
        self.reason = ""
        path = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(path) if path else None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._status_kb("VmHWM")
        except (OSError, ValueError) as exc:
            self.reason = f"cannot reset the peak RSS ({exc})"

    @staticmethod
    def _status_kb(field_name: str) -> int:
        text = Path("/proc/self/status").read_text()
        found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
        if found is None:
            raise ValueError(f"no {field_name} in /proc/self/status")
        return int(found.group(1))

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        if self.reason:
            return None
        gc.collect()
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = self._status_kb("VmRSS")
        fn()
        return max(0, self._status_kb("VmHWM") - base) * 1024


def cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def measure_memory(subjects: List[Subject], images: List[Tensor], targets: Targets,
                   device: torch.device) -> Tuple[List[List[int]], List[List[int]], str]:
    """Per-subject (train, inference) peak samples in bytes, transient peak + resident;
    empty lists and a reason when the peak cannot be measured."""
    cpu = CpuPeak() if device.type == "cpu" else None
    if cpu is not None and cpu.reason:
        return [[] for _ in subjects], [[] for _ in subjects], cpu.reason

    def peak(fn: Callable[[], object]) -> int:
        got = cuda_peak(fn, device) if cpu is None else cpu.measure(fn)
        return int(got or 0)

    train_b: List[List[int]] = [[] for _ in subjects]
    infer_b: List[List[int]] = [[] for _ in subjects]
    for _ in range(MEM_SAMPLES):
        for k, s in enumerate(subjects):
            s.model.train()
            s.optimizer.zero_grad(set_to_none=True)
            train_b[k].append(peak(lambda s=s: train_step(s, images, targets))
                              + resident_bytes(s))
            s.optimizer.zero_grad(set_to_none=True)
            s.model.eval()
            infer_b[k].append(peak(lambda s=s: infer(s, images[0])) + resident_bytes(s))
    return train_b, infer_b, ""


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


def median_ci(values: List[float], level: float = 0.95) -> Tuple[float, float, float]:
    """(median, low, high): a distribution-free confidence interval for the median from the
    order statistics (the ranks where Binomial(n, 1/2) covers `level`); (m, m, m) below 6
    samples, where no such interval exists at 95%."""
    xs = sorted(values)
    n, med = len(xs), statistics.median(xs)
    lo_rank = 0
    # largest j with P(B <= j - 1) <= (1 - level) / 2, B ~ Binomial(n, 1/2)
    cdf, alpha = 0.0, (1.0 - level) / 2.0
    for j in range(n):
        cdf += math.comb(n, j) / 2.0 ** n
        if cdf > alpha:
            lo_rank = j
            break
    if lo_rank == 0:
        return med, med, med
    return med, xs[lo_rank - 1], xs[n - lo_rank]


def paired_ratios(num: List[float], den: List[float]) -> List[float]:
    """Per-round ratios of two series timed in the same rounds: machine-speed drift between
    rounds (large on a shared VM) cancels, which a ratio of two medians does not do."""
    return [a / b for a, b in zip(num, den)]


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
        "dynamic_rcnn row (RPN NMS 0.85) also pays for the RPN keeping more proposals.",
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


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    p.add_argument("--backbone", default=None,
                   help="default tiny_fpn on cpu, resnet50_fpn on cuda")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image height = min_size (width 4/3 of it; max_size = 1333/800 of "
                        "it); default 320 on cpu, 800 on cuda")
    p.add_argument("--batch", type=positive_int, default=2, help="train batch (default 2)")
    p.add_argument("--num-classes", type=positive_int, default=6,
                   help="including background (default 6: with random weights, many more "
                        "classes push every score below 0.05 and nothing is detected)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="box_score_thresh for every model (default torchvision's 0.05)")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="timed rounds (default 41 on cpu, 30 on cuda; 2 with --quick): a shared "
                        "CPU machine's noise needs many for a 3%%-wide ratio")
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help="untimed rounds first (default 2 on cpu, 5 on cuda; 1 with --quick)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--masks", action=argparse.BooleanOptionalAction, default=True,
                   help="include mask_rcnn and dynamic_mask_rcnn (default on)")
    p.add_argument("--json", type=Path, default=None,
                   help="default benchmarks/results/detectors_<device>.json")
    p.add_argument("--markdown", type=Path, default=None,
                   help="default benchmarks/results/detectors_<device>.md")
    p.add_argument("--quick", action="store_true",
                   help="2 reps, 1 warm-up; default outputs get a _quick suffix")
    return p.parse_args(argv)


def resolve_defaults(args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    args.backbone = args.backbone or ("resnet50_fpn" if cuda else "tiny_fpn")
    args.size = args.size or (800 if cuda else 320)
    if args.reps is None:
        args.reps = 2 if args.quick else (30 if cuda else 41)
    if args.warmup is None:
        args.warmup = 1 if args.quick else (5 if cuda else 2)
    stem = f"detectors_{args.device}" + ("_quick" if args.quick else "")
    args.json = args.json or RESULTS_DIR / f"{stem}.json"
    args.markdown = args.markdown or RESULTS_DIR / f"{stem}.md"


def write_outputs(args: argparse.Namespace, payload: Dict[str, object], report: str) -> None:
    for path in (args.json, args.markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    args.markdown.write_text(report)


def build_subjects(args: argparse.Namespace, trunk: Optional[Path],
                   device: torch.device) -> List[Subject]:
    pool: Dict[str, Tensor] = {}
    subjects = [build_subject(v, args, trunk, pool, device) for v in variants(args.masks)]
    check_sharing(subjects)
    return subjects


def run(args: argparse.Namespace,
        device: torch.device) -> Tuple[List[Row], str, List[StageCost]]:
    """Build, check, time and measure; returns the rows, why memory is n/a (or "") and the
    second-stage costs."""
    with tempfile.TemporaryDirectory() as tmp:
        trunk = frozen_trunk_file(args.backbone, Path(tmp))
        subjects = build_subjects(args, trunk, device)
    images, targets = make_inputs(args.batch, args.size, args.num_classes, args.masks, device)
    for s in subjects:
        s.model.eval()
    check_same_detections(subjects, images[0])
    print(f"built {len(subjects)} models; timing {args.warmup} warm-up + {args.reps} rounds",
          file=sys.stderr, flush=True)
    train_s, infer_s = time_all(subjects, images, targets, args.reps, args.warmup, device)
    mem = measure_memory(subjects, images, targets, device)
    print("timing the second stage's training code on identical inputs", file=sys.stderr,
          flush=True)
    costs = second_stage_costs(subjects, images, targets, STAGE_REPS_FACTOR * args.reps,
                               device)
    return make_rows(subjects, train_s, infer_s, mem), mem[2], costs


def main(argv: Optional[List[str]] = None) -> int:
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
        rows, mem_reason, costs = run(args, device)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    env, cfg = environment(device, command), config(args)
    summary = summary_line(rows)
    payload = {"environment": env, "config": cfg, "summary": summary,
               "memory_unavailable": mem_reason or None, "rows": [asdict(r) for r in rows],
               "second_stage": [asdict(c) for c in costs]}
    write_outputs(args, payload, markdown_report(env, cfg, rows, mem_reason, device, costs))
    print(markdown_table(rows))
    if costs:
        print("\n" + stage_cost_table(costs, rows))
    print(f"\nwrote {args.markdown} and {args.json}")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
