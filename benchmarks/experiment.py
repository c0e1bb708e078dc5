"""The paper's ablation (Table 3) at small scale on the synthetic data, on one CPU:

    baseline   fixed T = 0.5, beta = 1.0 (Faster R-CNN's sampling rule, SmoothL1 beta 1)
    dla        Dynamic Label Assignment only (T from the proposals, beta = 1.0)
    dsl        Dynamic SmoothL1 only (T = 0.5, beta from the regression errors)
    dla_dsl    Dynamic R-CNN
    cascade    Cascade R-CNN (0.5 / 0.6 / 0.7)

Same data, backbone, schedule and seed for all; each run is trained, then evaluated, and
the AP-per-IoU table (AP, AP50..AP90) and plot go to --out. The first four share the RoI
head code (DynamicRoIHeads with DLA / DSL switched on or off) and the RPN settings, so
only the dynamic parts differ. Runs are resumable: rerunning continues unfinished runs from
their last checkpoint and skips finished ones.

    python benchmarks/experiment.py --out runs/ablation            # ~50 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict

import torch

from dynrcnn.cli import compare_runs, ensure_synthetic_data, load_run_metrics, small_cpu_config

FIXED = {"init_iou": 0.5, "iou_floor": 0.5, "update_iou": False}
VARIANTS: Dict[str, Dict[str, Any]] = {
    "baseline": {"arch": "dynamic_rcnn", "dynamic": {**FIXED, "update_beta": False}},
    "dla": {"arch": "dynamic_rcnn", "dynamic": {"update_beta": False}},
    "dsl": {"arch": "dynamic_rcnn", "dynamic": dict(FIXED)},
    "dla_dsl": {"arch": "dynamic_rcnn", "dynamic": {}},
    "cascade": {"arch": "cascade_rcnn", "dynamic": {}},
}


def run_variant(name: str, spec: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    from dynrcnn.engine import train

    out = os.path.join(args.out, name)
    done = os.path.isfile(os.path.join(out, "model_final.pth"))
    if done:
        print(f"[{name}] finished earlier: reusing {out}", flush=True)
        return {"metrics": load_run_metrics(out)}
    config = small_cpu_config(args.data, out, spec["arch"], args.iterations, args.interval,
                              args.image_size, resume=os.path.isdir(out), seed=args.seed,
                              dynamic=spec["dynamic"])
    start = time.perf_counter()
    summary = train(config)
    print(f"[{name}] {time.perf_counter() - start:.0f}s T={summary.get('iou_thr')} "
          f"beta={summary.get('beta')}", flush=True)
    return summary


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="a subset of runs")
    parser.add_argument("--results", default="benchmarks/results/ablation_cpu.md",
                        help="Markdown report to write (with hardware and command)")
    args = parser.parse_args(argv)

    ensure_synthetic_data(args.data, 400, 60, args.image_size)
    names = args.only or list(VARIANTS)
    finals: Dict[str, Dict[str, Any]] = {}
    for name in names:
        summary = run_variant(name, VARIANTS[name], args)
        finals[name] = {k: summary.get(k) for k in ("iou_thr", "beta")}
    table = compare_runs([os.path.join(args.out, n) for n in names], args.out, names)
    print(table)
    header = (f"# Ablation at small scale (synthetic data, tiny_fpn, {args.iterations} it)\n\n"
              f"- hardware: {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads; torch {torch.__version__}\n"
              f"- command: `{' '.join([sys.executable.split('/')[-1]] + sys.argv)}`\n"
              f"- date: {time.strftime('%Y-%m-%d')}\n\n")
    finals_text = "Final T / beta: " + json.dumps(finals) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        f.write(header + table + "\n" + finals_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
