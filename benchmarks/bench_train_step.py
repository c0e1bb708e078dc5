"""One training step of the study's configuration: dynrcnn's detector against the same
network made stock torchvision, paired steps side by side in one process.

Arms (all start from the same weights and see the same batches):
- dynrcnn: Dynamic R-CNN as build_detector makes it (the CPU fast path: dynrcnn's
  batched_nms_topk in the RPN and roi_align in the RoI poolers);
- dynrcnn, torchvision ops: the same model with torchvision's RPN and poolers back
  (use_stock_modules); it must give the same proposals bit for bit and the same losses;
- stock torchvision: `to_torchvision(model)`, the comparator users have (its RoI heads are
  torchvision's RoIHeads, so its losses differ from the first step on).

Every round runs one step of each arm (forward, backward, SGD step) in alternating order,
each arm seeded the same; the ratio is the median of the per-round ratios with a bootstrap
95% interval over rounds. A torch.profiler pass then splits a step into its ops (self CPU
time per step) for the fast and the stock arm: the per-iteration breakdown before and after.

    python benchmarks/bench_train_step.py --data-dir data/fashion_128 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from _common import environment, positive_int
from _step_ops import op_ratios
from torch import Tensor, nn

from dynrcnn.data import CocoDetection
from dynrcnn.dynamic import DynamicConfig
from dynrcnn.modeling import build_detector, to_torchvision, use_stock_modules
from dynrcnn.study.arms import PAPER_MODEL

ARMS = ("dynrcnn", "dynrcnn, torchvision ops", "stock torchvision")
# The Fashion study's model (benchmarks/README.md): tiny_fpn, 128 px, the paper's RPN.
STUDY_MODEL: Dict[str, Any] = {**PAPER_MODEL, "box_batch_size_per_image": 128,
                               "rpn_batch_size_per_image": 128, "min_size": 128,
                               "max_size": 128}
# Ops a step's time is split into (self CPU time of every op whose name contains the key).
BREAKDOWN = (("RPN NMS", ("torchvision::nms", "dynrcnn::batched_nms_topk")),
             ("roi_align backward", ("torchvision::_roi_align_backward",
                                     "dynrcnn::roi_align_backward")),
             ("roi_align forward", ("torchvision::roi_align", "dynrcnn::roi_align",
                                    "GeneratedBackwardFor_torchvision_roi_align_default")),
             ("box head linear layers", ("aten::mm", "aten::addmm")),
             ("convolutions", ("aten::convolution", "aten::_convolution", "aten::mkldnn_conv",
                               "aten::convolution_backward", "aten::thnn_conv",
                               "aten::_slow_conv2d", "aten::native_batch_norm")))
Batch = Tuple[List[Tensor], List[Dict[str, Tensor]]]


def load_batches(data_dir: Path, count: int, batch_size: int, seed: int) -> List[Batch]:
    dataset = CocoDetection(data_dir / "train", data_dir / "annotations" / "instances_train.json",
                            train=True, skip_empty=True)
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    batches: List[Batch] = []
    for b in range(count):
        items = [dataset[order[(b * batch_size + k) % len(order)]] for k in range(batch_size)]
        batches.append(([im for im, _ in items], [t for _, t in items]))
    return batches


def build_arms(num_classes: int, seed: int) -> Dict[str, nn.Module]:
    torch.manual_seed(seed)
    fast = build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=num_classes,
                          dynamic=DynamicConfig(interval=50), **STUDY_MODEL)
    return {ARMS[0]: fast, ARMS[1]: use_stock_modules(copy.deepcopy(fast)),
            ARMS[2]: to_torchvision(fast)}


class Arm:
    """A model, its optimizer and what its last step gave (proposals, losses)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9,
                                         weight_decay=1e-4)
        self.proposals: List[Tensor] = []
        self.losses: Dict[str, float] = {}
        model.rpn.register_forward_hook(self._keep_proposals)

    def _keep_proposals(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training:  # the train step's, not the inference's after it
            self.proposals = [p.detach().clone() for p in output[0]]

    def infer(self, batch: Batch) -> None:
        """Detections for the batch's first image (eval mode, no grad)."""
        self.model.eval()
        with torch.no_grad():
            self.model(batch[0][:1])
        self.model.train()

    def step(self, batch: Batch, seed: int) -> None:
        torch.manual_seed(seed)  # the RoI and anchor samplers draw the same for every arm
        images, targets = batch
        losses = self.model(images, targets)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self.losses = {k: float(v.detach()) for k, v in losses.items()}


def timed_rounds(arms: Dict[str, Arm], batches: List[Batch], warmup: int, seed: int
                 ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]], Dict[str, Any]]:
    """Per-arm train-step and inference seconds over the rounds after `warmup`, and the
    equivalence checks."""
    import time

    times: Dict[str, List[float]] = {name: [] for name in arms}
    infer_times: Dict[str, List[float]] = {name: [] for name in arms}
    names = list(arms)
    same_proposals, first_round_proposals, max_loss_diff = True, True, 0.0
    for r, batch in enumerate(batches):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            arms[name].step(batch, seed + r)
            t1 = time.perf_counter()
            arms[name].infer(batch)
            if r >= warmup:
                times[name].append(t1 - t0)
                infer_times[name].append(time.perf_counter() - t1)
        fast, twin, stock = (arms[n] for n in names)
        same_proposals &= _equal(fast.proposals, twin.proposals)
        if r == 0:
            first_round_proposals = _equal(fast.proposals, stock.proposals)
        max_loss_diff = max([max_loss_diff] + [abs(fast.losses[k] - twin.losses[k])
                                                for k in fast.losses])
        print(f"  round {r + 1}/{len(batches)}: " + ", ".join(
            f"{n} {1e3 * (times[n][-1] if r >= warmup else 0):.0f} ms" for n in names),
            file=sys.stderr, flush=True)
    checks = {"rounds": len(batches),
              "proposals_equal_every_round (dynrcnn vs torchvision ops)": same_proposals,
              "proposals_equal_first_round (dynrcnn vs stock torchvision)": first_round_proposals,
              "max_abs_loss_difference (dynrcnn vs torchvision ops)": max_loss_diff}
    return times, infer_times, checks


def _equal(a: List[Tensor], b: List[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def paired_ratio(numerator: List[float], denominator: List[float], seed: int,
                 resamples: int = 2000) -> Dict[str, float]:
    """Median of per-round numerator/denominator ratios with a bootstrap 95% interval."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                  for _ in range(resamples))
    return {"ratio": statistics.median(ratios), "low": boot[int(0.025 * resamples)],
            "high": boot[int(0.975 * resamples) - 1]}


def breakdown(arm: Arm, batches: List[Batch], seed: int) -> Dict[str, float]:
    """Milliseconds per step by op group (self CPU time), over `batches`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for r, batch in enumerate(batches):
            arm.step(batch, seed + r)
    groups = {name: 0.0 for name, _ in BREAKDOWN}
    total = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        for name, keys in BREAKDOWN:
            if event.key in keys:
                groups[name] += event.self_cpu_time_total
                break
    steps = len(batches)
    out = {name: us / 1e3 / steps for name, us in groups.items()}
    out["everything else"] = (total - sum(groups.values())) / 1e3 / steps
    out["total"] = total / 1e3 / steps
    return out


def write_report(out: Path, env: Dict[str, Any], times: Dict[str, List[float]],
                 infer_times: Dict[str, List[float]], seed: int, checks: Dict[str, Any],
                 parts: Dict[str, Dict[str, float]], ops: List[Dict[str, Any]]) -> None:
    medians = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    infer_medians = {n: 1e3 * statistics.median(t) for n, t in infer_times.items()}
    fast = ARMS[0]
    # Against each other arm: dynrcnn's step time / the arm's (the README's "train step
    # time"), the arm's / dynrcnn's (the speedup), and images/s dynrcnn / the arm's.
    against = {name: {"train_time_ratio": paired_ratio(times[fast], times[name], seed),
                      "train_speedup": paired_ratio(times[name], times[fast], seed),
                      "infer_rate_ratio": paired_ratio(infer_times[name], infer_times[fast],
                                                       seed)}
               for name in ARMS[1:]}
    result = {"environment": env, "model": STUDY_MODEL, "median_train_ms": medians,
              "median_infer_ms": infer_medians, "against": against, "checks": checks,
              "breakdown_ms": parts, "ops": ops}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# One training step, dynrcnn vs stock torchvision ({env['device']}, "
             f"{env['threads']} thread{'s' if env['threads'] > 1 else ''})", ""]
    lines += [f"- {k}: `{v}`" for k, v in env.items()]
    lines += ["", "Dynamic R-CNN, tiny_fpn, 128-px Fashion-MNIST scenes, batch 4, the paper's "
              "RPN (2000 proposals before NMS 0.85, 1000 after), 128 RoIs per image; "
              "paired rounds (a train step of every arm, then one image's inference), order "
              "alternating each round; ratios are medians over rounds with bootstrap 95% "
              "intervals.", "",
              "| arm | median train step | dynrcnn's speedup [95% CI] | median inference "
              "(1 image) | dynrcnn's images/s ratio [95% CI] |", "|---|---|---|---|---|"]

    def cell(r: Dict[str, float]) -> str:
        return f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"
    for name in times:
        a = against.get(name)
        lines.append(f"| {name} | {medians[name]:.1f} ms | "
                     f"{'-' if a is None else cell(a['train_speedup'])} | "
                     f"{infer_medians[name]:.1f} ms | "
                     f"{'-' if a is None else cell(a['infer_rate_ratio'])} |")
    lines += ["", "Equivalence (the fast path must change nothing):", ""]
    lines += [f"- {k}: {v}" for k, v in checks.items()]
    names = list(parts)
    lines += ["", "Where a step goes (self CPU time per step, torch.profiler):", "",
              "| part | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in parts[names[0]]:
        lines.append(f"| {key} | " + " | ".join(f"{parts[n][key]:.1f} ms" for n in names) + " |")
    lines += ["", "The two ops alone, on the inputs one step gives them (all calls of a step, "
              "torchvision's op and dynrcnn's side by side, interleaved):", "",
              "| op | calls per step | torchvision | dynrcnn | speedup |", "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['calls_per_step']} | {r['torchvision_ms']:.2f} ms | "
              f"{r['dynrcnn_ms']:.2f} ms | {r['speedup']:.2f}x |" for r in ops]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="COCO-format scenes (benchmarks/fashion_scenes.py --out)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--rounds", type=positive_int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=positive_int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step_cpu"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ann = args.data_dir / "annotations" / "instances_train.json"
    if not ann.exists():
        parser.error(f"--data-dir {args.data_dir}: no annotations/instances_train.json")
    batches = load_batches(args.data_dir, args.rounds + args.warmup + args.profile_steps, 4,
                           args.seed)
    num_classes = CocoDetection(args.data_dir / "train", ann).num_classes
    arms = {name: Arm(model) for name, model in build_arms(num_classes, args.seed).items()}
    times, infer_times, checks = timed_rounds(arms, batches[:args.rounds + args.warmup],
                                              args.warmup, args.seed)
    profile_batches = batches[args.rounds + args.warmup:]
    parts = {"stock torchvision ops (before)": breakdown(arms[ARMS[1]], profile_batches,
                                                         args.seed),
             "dynrcnn (after)": breakdown(arms[ARMS[0]], profile_batches, args.seed)}
    fast = arms[ARMS[0]]
    ops = op_ratios(lambda: fast.step(profile_batches[0], args.seed), args.rounds)
    command = "python benchmarks/bench_train_step.py " + " ".join(argv or sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_report(args.out, environment(torch.device("cpu"), command), times, infer_times,
                 args.seed, checks, parts, ops)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
