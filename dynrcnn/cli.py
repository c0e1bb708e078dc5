"""The `dynrcnn` command: train, eval, predict, plot, compare, make-synthetic, demo.

Every TrainConfig / EvalConfig field is a flag (`dynrcnn train --help`); `--config FILE`
starts from a saved config.json and the flags given on the command line override it.
Runs under `torchrun` too (train and eval): only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print(text: str) -> None:
    if _is_main_process():
        print(text, flush=True)


# --------------------------------------------------------------------------- configs


def _config_from(cls: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """Flags override --config FILE, which overrides the dataclass defaults."""
    from dynrcnn.engine.config import config_from_dict, config_to_dict, dataclass_from_args

    config = dataclass_from_args(cls, args)
    if not getattr(args, "config", None):
        return config
    with open(args.config) as f:
        base = config_to_dict(config_from_dict(cls, json.load(f)))
    defaults = config_to_dict(dataclass_from_args(cls, parser.parse_args([])))
    given = config_to_dict(config)
    merged = _merge_changed(base, given, defaults)
    return config_from_dict(cls, merged)


def _merge_changed(base: Dict[str, Any], given: Dict[str, Any],
                   defaults: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge_changed(base[key], value, defaults.get(key, {}))
        elif value != defaults.get(key):
            out[key] = value
    return out


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dynrcnn.engine import TrainConfig, train

    config = _config_from(TrainConfig, args, parser)
    summary = train(config)
    _print(_summary_text(summary))
    metrics = summary.get("metrics")
    if metrics:
        from dynrcnn.engine import format_metrics_table

        _print(format_metrics_table(metrics))
    return 0


def _summary_text(summary: Dict[str, Any]) -> str:
    parts = [f"iterations={summary.get('iterations')}",
             f"time={summary.get('time_s', 0.0):.1f}s"]
    if summary.get("total_loss") is not None:
        parts.append(f"loss={summary['total_loss']:.4f}")
    for key in ("iou_thr", "beta"):
        if summary.get(key) is not None:
            parts.append(f"{key}={summary[key]:.4f}")
    parts.append(f"checkpoint={summary.get('checkpoint')}")
    return "trained: " + " ".join(parts)


def cmd_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dynrcnn.engine import EvalConfig, format_metrics_table, run_evaluation

    config = _config_from(EvalConfig, args, parser)
    metrics = run_evaluation(config)
    _print(format_metrics_table(metrics))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Draw the detections of one image into a PNG."""
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from torchvision.utils import draw_bounding_boxes

    from dynrcnn.engine import EvalConfig, load_model_for_eval

    if not os.path.isfile(args.image):
        raise SystemExit(f"dynrcnn predict: image not found: {args.image}")
    config = EvalConfig(weights=args.weights, arch=args.arch, backbone=args.backbone,
                        num_classes=args.num_classes, device=args.device)
    model, _ = load_model_for_eval(config)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    try:
        image = pil_to_tensor(Image.open(args.image).convert("RGB"))
    except OSError as exc:
        raise SystemExit(f"dynrcnn predict: cannot read image {args.image}: {exc}") from exc
    with torch.no_grad():
        output = model([image.float().div(255).to(device)])[0]
    keep = output["scores"] >= args.score_thresh
    boxes, labels, scores = (output[k][keep].cpu() for k in ("boxes", "labels", "scores"))
    names = _class_names(args.ann)
    captions = [f"{names.get(int(label), int(label))} {float(s):.2f}"
                for label, s in zip(labels, scores)]
    drawn = draw_bounding_boxes(image, boxes, labels=captions, width=2, colors="red")
    out = args.out or os.path.splitext(args.image)[0] + "_pred.png"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out)
    _print(f"{len(boxes)} detections (score >= {args.score_thresh}) drawn into {out}")
    return 0


def _class_names(ann: Optional[str]) -> Dict[int, str]:
    """Contiguous label -> category name, from a COCO annotation file (labels are the
    sorted category ids numbered from 1, as dynrcnn.data.CocoDetection assigns them)."""
    if not ann:
        return {}
    with open(ann) as f:
        cats = sorted(json.load(f).get("categories", []), key=lambda c: c["id"])
    return {i + 1: c["name"] for i, c in enumerate(cats)}


def cmd_plot(args: argparse.Namespace) -> int:
    from dynrcnn.engine import plot_training_curves

    log = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.isfile(log):
        raise SystemExit(f"dynrcnn plot: no log.jsonl in {args.run_dir}")
    out = plot_training_curves(log, args.out or os.path.join(args.run_dir, "curves.png"))
    _print(f"curves written to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dynrcnn.engine.compare import compare_runs

    _print(compare_runs(args.run_dirs, args.out, args.names))
    _print(f"table and plot written to {args.out}")
    return 0


def cmd_make_synthetic(argv: List[str]) -> int:
    from dynrcnn.data.synthetic import main as synthetic_main

    return synthetic_main(argv)


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default job: synthetic data, a short Dynamic R-CNN training run on the
    small backbone, evaluation, curves; the AP table is printed last."""
    import time

    from dynrcnn.engine import format_metrics_table, train
    from dynrcnn.engine.presets import ensure_synthetic_data, small_cpu_config

    start = time.perf_counter()
    ensure_synthetic_data(args.data, args.num_train, args.num_val, args.image_size)
    config = small_cpu_config(args.data, args.out, args.arch, args.iterations, args.interval,
                              args.image_size, args.resume)
    summary = train(config)
    _print(_summary_text(summary))
    _print(f"demo: curves in {os.path.join(args.out, 'curves.png')}, log in "
           f"{os.path.join(args.out, 'log.jsonl')}; total {time.perf_counter() - start:.0f}s")
    _print(format_metrics_table(summary.get("metrics") or {}))
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from dynrcnn.engine import EvalConfig, TrainConfig, add_dataclass_args

    parser = argparse.ArgumentParser(prog="dynrcnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector (torchrun for several processes)")
    p.add_argument("--config", help="start from this config.json")
    add_dataclass_args(p, TrainConfig)

    p = sub.add_parser("eval", help="COCO evaluation of a checkpoint (AP, AP50..AP90, ...)")
    p.add_argument("--config", help="start from this config.json")
    add_dataclass_args(p, EvalConfig)

    p = sub.add_parser("predict", help="draw detections on an image into a PNG")
    p.add_argument("--weights", required=True, help="checkpoint (model_*.pth) or state_dict")
    p.add_argument("--image", required=True)
    p.add_argument("--out", help="output PNG (default: <image>_pred.png)")
    p.add_argument("--ann", help="COCO annotation file, for class names")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--arch", default="dynamic_rcnn", help="for a bare state_dict")
    p.add_argument("--backbone", default="resnet50_fpn", help="for a bare state_dict")
    p.add_argument("--num-classes", type=int, default=None, help="for a bare state_dict")
    p.add_argument("--device", default=None)

    p = sub.add_parser("plot", help="T, beta, loss and lr curves of a run, as PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output PNG (default: <run_dir>/curves.png)")

    p = sub.add_parser("compare", help="AP per IoU threshold of several runs: table + plot")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--names", nargs="+", help="row names (default: the folder names)")
    p.add_argument("--out", default="runs/compare")

    sub.add_parser("make-synthetic", add_help=False,
                   help="write a synthetic COCO-format data set (see make-synthetic --help)")

    p = sub.add_parser("demo", help="synthetic data + short Dynamic R-CNN run + evaluation")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--arch", default="dynamic_rcnn")
    p.add_argument("--iterations", type=int, default=1200)
    p.add_argument("--interval", type=int, default=20, help="C: iterations between updates")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=60)
    p.add_argument("--resume", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "make-synthetic":  # its own argparse, help included
        return cmd_make_synthetic(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "eval"):
        sub_parser = _subparser(parser, args.command)
        handler = cmd_train if args.command == "train" else cmd_eval
        return handler(args, sub_parser)
    handlers = {"predict": cmd_predict, "plot": cmd_plot, "compare": cmd_compare,
                "demo": cmd_demo}
    return handlers[args.command](args)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


if __name__ == "__main__":
    sys.exit(main())
