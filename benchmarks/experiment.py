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

Controls, run with --only (they are not part of the default set):

    faster          torchvision's Faster R-CNN RoIHeads (RPN NMS 0.7, as cascade)
    baseline_nms07  baseline with RPN NMS 0.7: against faster, our heads vs torchvision's;
                    against baseline, what the paper's RPN NMS 0.85 does with 300 proposals
    dla_dsl_nms07   Dynamic R-CNN with RPN NMS 0.7
    dla_nms07, dsl_nms07, dla_dsl_nms07_ki30
                    DLA only, DSL only, and Dynamic R-CNN with KI = 30, at RPN NMS 0.7

--seeds runs every variant once per seed (seed 0 in --out/<name>, seed s in
--out/seed<s>/<name>) and adds the mean and standard deviation over seeds to the report.

    python benchmarks/experiment.py --out runs/ablation            # ~35 min on 2 cores
    python benchmarks/experiment.py --only baseline dla_dsl --seeds 0 1 \
        --results benchmarks/results/ablation_cpu_seeds.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict

import torch

from dynrcnn.engine.compare import compare_runs, load_run_metrics
from dynrcnn.engine.presets import ensure_synthetic_data, small_cpu_config

FIXED = {"init_iou": 0.5, "iou_floor": 0.5, "update_iou": False}
VARIANTS: Dict[str, Dict[str, Any]] = {
    "baseline": {"arch": "dynamic_rcnn", "dynamic": {**FIXED, "update_beta": False}},
    "dla": {"arch": "dynamic_rcnn", "dynamic": {"update_beta": False}},
    "dsl": {"arch": "dynamic_rcnn", "dynamic": dict(FIXED)},
    "dla_dsl": {"arch": "dynamic_rcnn", "dynamic": {}},
    "cascade": {"arch": "cascade_rcnn", "dynamic": {}},
}
NMS07 = {"rpn_nms_thresh": 0.7}
CONTROLS: Dict[str, Dict[str, Any]] = {
    "faster": {"arch": "faster_rcnn", "dynamic": None},
    "baseline_nms07": {**VARIANTS["baseline"], "model": NMS07},
    "dla_dsl_nms07": {**VARIANTS["dla_dsl"], "model": NMS07},
    "dla_nms07": {**VARIANTS["dla"], "model": NMS07},
    "dsl_nms07": {**VARIANTS["dsl"], "model": NMS07},
    # KI doubled: T follows the 30th instead of the 15th largest IoU per image (lower T)
    "dla_dsl_nms07_ki30": {"arch": "dynamic_rcnn", "dynamic": {"k_iou": 30}, "model": NMS07},
}
ALL_RUNS = {**VARIANTS, **CONTROLS}


def run_dir(out: str, name: str, seed: int) -> str:
    return os.path.join(out, name) if seed == 0 else os.path.join(out, f"seed{seed}", name)


def run_variant(name: str, spec: Dict[str, Any], args: argparse.Namespace,
                seed: int) -> Dict[str, Any]:
    from dynrcnn.engine import train

    out = run_dir(args.out, name, seed)
    done = os.path.isfile(os.path.join(out, "model_final.pth"))
    if done:
        print(f"[{name} seed {seed}] finished earlier: reusing {out}", flush=True)
        return {"metrics": load_run_metrics(out)}
    config = small_cpu_config(args.data, out, spec["arch"], args.iterations, args.interval,
                              args.image_size, resume=os.path.isdir(out), seed=seed,
                              dynamic=spec["dynamic"], model_kwargs=spec.get("model"))
    start = time.perf_counter()
    summary = train(config)
    print(f"[{name} seed {seed}] {time.perf_counter() - start:.0f}s "
          f"T={summary.get('iou_thr')} beta={summary.get('beta')}", flush=True)
    return summary


def seed_statistics(dirs: Dict[str, Dict[int, str]]) -> str:
    """Markdown: per variant with two or more seeds, mean +- standard deviation (over seeds,
    n - 1) of AP and AP50..AP90."""
    from dynrcnn.engine.evaluator import IOU_COLUMNS

    columns = ["AP", *IOU_COLUMNS]
    lines = ["| | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, by_seed in dirs.items():
        if len(by_seed) < 2:
            continue
        metrics = [load_run_metrics(d) for d in by_seed.values()]
        cells = []
        for c in columns:
            values = [100 * m[c] for m in metrics]
            cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
        seeds = ",".join(str(s) for s in by_seed)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="run every variant once per seed (default: 0)")
    parser.add_argument("--only", nargs="+", choices=list(ALL_RUNS),
                        help="these runs instead of the default five (controls included)")
    parser.add_argument("--results", default="benchmarks/results/ablation_cpu.md",
                        help="Markdown report to write (with hardware and command)")
    args = parser.parse_args(argv)

    ensure_synthetic_data(args.data, 400, 60, args.image_size)
    names = args.only or list(VARIANTS)
    finals: Dict[str, Dict[str, Any]] = {}
    dirs: Dict[str, Dict[int, str]] = {name: {} for name in names}
    labels, paths = [], []
    for seed in args.seeds:
        for name in names:
            summary = run_variant(name, ALL_RUNS[name], args, seed)
            label = name if len(args.seeds) == 1 else f"{name} (seed {seed})"
            finals[label] = {k: summary.get(k) for k in ("iou_thr", "beta")}
            dirs[name][seed] = run_dir(args.out, name, seed)
            labels.append(label)
            paths.append(dirs[name][seed])
    table = compare_runs(paths, args.out, labels)
    spread = seed_statistics(dirs)
    if spread:
        table += "\nMean ± standard deviation over seeds:\n\n" + spread
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
