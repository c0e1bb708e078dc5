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

This file is the command line; the parts live next to it: _detector_models.py (rows, inputs,
models on shared weights, the train / inference steps), _detector_timing.py (interleaved
rounds, the second stage alone), _detector_memory.py (peaks), _detector_stats.py (paired
ratios, the CI of the median) and _detector_report.py (rows, summary, markdown).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

if importlib.util.find_spec("dynrcnn") is None:  # a source checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, non_negative_int, positive_int  # noqa: E402
from _detector_memory import measure_memory  # noqa: E402
from _detector_models import (  # noqa: E402
    BenchmarkError,
    Subject,
    build_subject,
    check_same_detections,
    check_sharing,
    frozen_trunk_file,
    make_inputs,
    variants,
)
from _detector_report import (  # noqa: E402
    Row,
    config,
    make_rows,
    markdown_report,
    markdown_table,
    stage_cost_table,
    summary_line,
)
from _detector_timing import STAGE_REPS_FACTOR, StageCost, second_stage_costs, time_all  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
