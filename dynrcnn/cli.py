"""The `dynrcnn` command: train, eval, study, predict, export, plot, compare, make-synthetic,
demo.

Every TrainConfig / EvalConfig field is a flag (`dynrcnn train --help`). `--config FILE`
starts from a saved config.json; a flag given on the command line always wins over the
file, which wins over the built-in defaults. `--resume` / `--overwrite` are read from the
command line only. Runs under `torchrun` too (train and eval): only rank 0 prints and
writes. Input errors (a bad flag value, a missing or wrong file) print one line naming the
command typed, `dynrcnn train: error: ...` (as argparse's own usage and error lines do), and
exit with status 2; any other exception is a bug and keeps its traceback. This module only
parses and dispatches: the work is in dynrcnn.engine.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Type

PROG = "dynrcnn"


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print(text: str) -> None:
    if _is_main_process():
        print(text, flush=True)


def _config_from(cls: Type[Any], args: argparse.Namespace) -> Any:
    """Flags given on the command line, over --config FILE, over the dataclass defaults."""
    from dynrcnn.engine.config import read_config_file
    from dynrcnn.engine.config_args import dataclass_from_args

    base = read_config_file(cls, args.config) if args.config else {}
    return dataclass_from_args(cls, args, base)


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from dynrcnn.engine import TrainConfig, format_metrics_table, train

    summary = train(_config_from(TrainConfig, args))
    _print(_summary_text(summary))
    if summary.get("metrics"):
        _print(format_metrics_table(summary["metrics"]))
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


def cmd_eval(args: argparse.Namespace) -> int:
    from dynrcnn.engine import EvalConfig, format_metrics_table, run_evaluation

    config = _config_from(EvalConfig, args)
    metrics = run_evaluation(config)
    _print(format_metrics_table(metrics))
    _print(f"metrics written to {os.path.join(config.out_dir, 'metrics.json')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Draw the detections of one image into a PNG."""
    import torch
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    from dynrcnn.data import rgb8_pixels
    from dynrcnn.engine import EvalConfig, UsageError, load_model_for_eval
    from dynrcnn.engine.checkpoint import refuse_overwrite

    if not os.path.isfile(args.image):
        raise UsageError(f"--image {args.image}: no such file")
    out = args.out or os.path.splitext(args.image)[0] + "_pred.png"
    refuse_overwrite(out, "--out", image=args.image, weights=args.weights)
    config = EvalConfig(weights=args.weights, arch=args.arch, backbone=args.backbone,
                        num_classes=args.num_classes, device=args.device)
    model, info = load_model_for_eval(config)
    names = _class_names(args.ann, info["num_classes"]) if args.ann else \
        {k + 1: c["name"] for k, c in enumerate(info["categories"] or [])}
    try:
        with Image.open(args.image) as img:
            image = torch.from_numpy(rgb8_pixels(img, f"--image {args.image}")).permute(2, 0, 1)
    except OSError as exc:
        raise UsageError(f"--image {args.image} cannot be read: {exc}") from None
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    with torch.no_grad():
        output = model([image.float().div(255).to(device)])[0]
    keep = output["scores"] >= args.score_thresh
    boxes, labels, scores = (output[k][keep].cpu() for k in ("boxes", "labels", "scores"))
    captions = [f"{names.get(int(label), int(label))} {float(s):.2f}"
                for label, s in zip(labels, scores)]
    # torchvision warns when given no box to draw: nothing detected is an answer, not a fault
    drawn = draw_bounding_boxes(image, boxes, labels=captions, width=2, colors="red") \
        if len(boxes) else image
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out)
    _print(f"{len(boxes)} detections (score >= {args.score_thresh}) drawn into {out}")
    return 0


def _class_names(ann: str, num_classes: int) -> Dict[int, str]:
    """Label -> category name from a COCO annotation file with the model's class count."""
    from dynrcnn.engine.builders import categories_from_ann

    return {i + 1: c["name"] for i, c in enumerate(categories_from_ann(ann, num_classes))}


def cmd_plot(args: argparse.Namespace) -> int:
    from dynrcnn.engine import UsageError, plot_training_curves
    from dynrcnn.engine.checkpoint import refuse_overwrite

    log = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.isfile(log):
        raise UsageError(f"{args.run_dir} has no log.jsonl (not a training run directory?)")
    out = args.out or os.path.join(args.run_dir, "curves.png")
    refuse_overwrite(out, "--out", log=log)
    out = plot_training_curves(log, out)
    _print(f"curves written to {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dynrcnn.engine.compare import compare_runs

    _print(compare_runs(args.run_dirs, args.out, args.names))
    _print(f"table and plot written to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dynrcnn.engine.export import ExportConfig, export_model

    _print(export_model(ExportConfig(
        weights=args.weights, out=args.out, format=args.format, arch=args.arch,
        backbone=args.backbone, num_classes=args.num_classes, min_size=args.min_size,
        max_size=args.max_size, ann=args.ann)))
    return 0


def cmd_make_synthetic(argv: Sequence[str]) -> int:
    from dynrcnn.data.synthetic import main as synthetic_main

    # its own parser, help included: its usage and error lines name `dynrcnn make-synthetic`
    return synthetic_main(list(argv), prog=f"{PROG} make-synthetic")


def cmd_study(args: argparse.Namespace) -> int:
    """Arms x seeds on the user's data, then the paired report (dynrcnn.study.command)."""
    import shlex

    from dynrcnn.engine import TrainConfig
    from dynrcnn.engine.config_args import given_fields
    from dynrcnn.study.command import StudyRequest, common_config, run

    base = common_config(given_fields(TrainConfig, args), args.config, _print)
    out_dir = base.pop("out_dir", "runs/study")
    schedules = None
    if isinstance(base.get("iterations"), list):  # --iterations A [B ...]
        values = base.pop("iterations")
        if len(values) == 1:
            base["iterations"] = values[0]
        else:
            schedules = values
    request = StudyRequest(out_dir=out_dir, base=base, arms=args.arms, seeds=args.seeds,
                           test_images=args.test_images, test_ann=args.test_ann,
                           jobs=args.jobs, threads=args.threads, gpus=args.gpus,
                           best_vs_best=args.best_vs_best, schedules=schedules,
                           command=f"{PROG} study {shlex.join(args.argv)}")
    mode = "plan" if args.plan else "report" if args.report else "run"
    if schedules is not None:  # each schedule a study of its own, one report over them
        from dynrcnn.study.schedules import run_schedules

        return run_schedules(request, mode, echo=_print)
    return run(request, mode, echo=_print)


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded default job: synthetic data, a short Dynamic R-CNN training run on the
    small backbone, evaluation, curves; the AP table is printed last."""
    import time

    from dynrcnn.engine import UsageError, format_metrics_table, train
    from dynrcnn.engine.presets import ensure_synthetic_data, small_cpu_config

    # the demo's own flags, checked before any data is written (else a traceback from the
    # data writer, or an error naming the train flag --dynamic-interval)
    for flag, value, least in (("--iterations", args.iterations, 1),
                               ("--interval", args.interval, 1),
                               ("--image-size", args.image_size, 32),
                               ("--num-train", args.num_train, 1),
                               ("--num-val", args.num_val, 1)):
        if value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")
    start = time.perf_counter()
    # The demo is one fixed job: rerunning it replaces its previous run unless --resume.
    config = small_cpu_config(args.data, args.out, args.arch, args.iterations, args.interval,
                              args.image_size, args.resume, overwrite=not args.resume,
                              progress=args.progress)
    ensure_synthetic_data(args.data, args.num_train, args.num_val, args.image_size)
    summary = train(config)
    _print(_summary_text(summary))
    _print(f"demo: curves in {os.path.join(args.out, 'curves.png')}, log in "
           f"{os.path.join(args.out, 'log.jsonl')}; total {time.perf_counter() - start:.0f}s")
    _print(format_metrics_table(summary.get("metrics") or {}))
    return 0


# --------------------------------------------------------------------------- parser


def _choices() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    from dynrcnn.modeling import ARCHS, BACKBONES

    return ARCHS, BACKBONES


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that reports unknown arguments itself. argparse leaves them to
    the top-level parser, whose usage and error lines name only `dynrcnn`; here they read
    `usage: dynrcnn train ...` and `dynrcnn train: error: unrecognized arguments: ...`."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error("unrecognized arguments: " + " ".join(extra))
        return namespace, extra


def build_parser() -> argparse.ArgumentParser:
    from dynrcnn.engine import EvalConfig, TrainConfig, add_dataclass_args

    archs, backbones = _choices()
    choices = {"arch": archs, "backbone": backbones}
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_SubcommandParser)

    p = sub.add_parser("train", help="train a detector (torchrun for several processes)",
                       description="Train a detector. Flags override --config FILE.")
    p.add_argument("--config", metavar="FILE",
                   help="start from this config.json; flags given here override it")
    add_dataclass_args(p, TrainConfig, choices=choices)

    p = sub.add_parser("eval", help="COCO evaluation of a checkpoint (AP, AP50..AP90, ...)",
                       description="Evaluate a checkpoint on a COCO-format split; writes "
                       "metrics.json into --out-dir (give the run directory to have "
                       "`compare` read it).")
    p.add_argument("--config", metavar="FILE",
                   help="start from this EvalConfig JSON; flags given here override it")
    add_dataclass_args(p, EvalConfig, choices=choices)

    p = sub.add_parser("predict", help="draw detections on an image into a PNG")
    p.add_argument("--weights", required=True, help="checkpoint (model_*.pth) or state_dict")
    p.add_argument("--image", required=True)
    p.add_argument("--out", help="output PNG (default: <image>_pred.png)")
    p.add_argument("--ann", help="COCO annotation file whose category names to show "
                   "(default: the names stored in the checkpoint)")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--arch", choices=archs, help="for a bare state_dict (default: "
                   "dynamic_rcnn); one of " + ", ".join(archs))
    p.add_argument("--backbone", choices=backbones, help="for a bare state_dict (default: "
                   "resnet50_fpn); one of " + ", ".join(backbones))
    p.add_argument("--num-classes", type=int, default=None,
                   help="for a bare state_dict (background included)")
    p.add_argument("--device", default=None)

    p = sub.add_parser("plot", help="T, beta, loss and lr curves of a run and its Figure-1 "
                       "diagnostics (proposals above IoU 0.5/0.6/0.7, KI-th IoU, "
                       "Kbeta-th error), as PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output PNG (default: <run_dir>/curves.png)")

    p = sub.add_parser("compare", help="AP per IoU threshold of several runs: table + plot")
    p.add_argument("run_dirs", nargs="+", help="run directories: their metrics.json (from "
                   "`eval --out-dir RUN`) or, else, their last eval_*/metrics.json")
    p.add_argument("--names", nargs="+", help="row names (default: the folder names)")
    p.add_argument("--out", default="runs/compare", help="folder for compare.md and "
                   "ap_vs_iou.png (default: runs/compare)")

    from dynrcnn.engine.export import EXPORT_FORMATS

    p = sub.add_parser("export", help="a trained detector as a file plain torchvision "
                       "loads: its constructor + state_dict, or TorchScript",
                       description="Export a checkpoint for use without dynrcnn.")
    p.add_argument("--weights", required=True, help="checkpoint (model_*.pth) or state_dict")
    p.add_argument("--format", default="torchvision", choices=EXPORT_FORMATS,
                   help="torchvision: {constructor, kwargs, state_dict, categories} for "
                   "torchvision.models.detection; torchscript: torch.jit.save of the "
                   "scripted detector; onnx: for one [3, S, S] image, S = --min-size "
                   "(default: torchvision)")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--ann", help="COCO annotation file naming the classes of a bare "
                   "state_dict (default: the names stored in the checkpoint)")
    p.add_argument("--arch", choices=archs, help="for a bare state_dict (default: "
                   "dynamic_rcnn)")
    p.add_argument("--backbone", choices=backbones, help="for a bare state_dict "
                   "(default: resnet50_fpn)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="for a bare state_dict (background included)")
    p.add_argument("--min-size", type=int, default=None, help="test-time short side "
                   "(default: the checkpoint's; 800 for a bare state_dict)")
    p.add_argument("--max-size", type=int, default=None, help="test-time long side "
                   "(default: the checkpoint's; 1333 for a bare state_dict)")

    from dynrcnn.study.command import DEFAULT_ARMS

    p = sub.add_parser("study", help="does Dynamic training pay on your data? arms x seeds, "
                       "paired differences with 95%% intervals and a verdict",
                       description="A seeded paired study on your COCO-format data: every "
                       "arm (default: baseline, DLA + DSL, fixed T 0.6) trained at seeds "
                       "0..N-1 with the same configuration (every `train` flag below), then "
                       "report.md / report.json / PNGs in --out-dir (default runs/study). "
                       "Resumable: rerun the same command to continue.")
    p.add_argument("--config", metavar="FILE", help="common configuration from this "
                   "config.json; flags given here override it")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), metavar="ARM",
                   help="arms of dynrcnn.study.arms, 'core' or 'all' (default: "
                   + " ".join(DEFAULT_ARMS) + "); the first pair's reference is baseline")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every arm "
                   "(default 3)")
    p.add_argument("--test-images", help="held-out test split: the report's numbers come "
                   "from it (else from val)")
    p.add_argument("--test-ann", help="the test split's COCO annotation file")
    p.add_argument("--jobs", type=int, default=None, help="on the CPU: runs side by side "
                   "(default 1), the cores split between them")
    p.add_argument("--threads", type=int, default=None, help="on the CPU: threads per run "
                   "(default: cores / jobs)")
    p.add_argument("--gpus", default=None, help="GPUs to use, one run each, e.g. 0,1,2,3 "
                   "(default: every visible GPU; none: the CPU)")
    p.add_argument("--best-vs-best", action="store_true", help="also train every arm at "
                   "RPN NMS 0.7 (twice the runs), test every run at NMS 0.85 and 0.7, and "
                   "compare each arm at the setting of its best val AP, on test (needs a "
                   "test split)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="train nothing: print one "
                      "`dynrcnn train` command per pending run (for a cluster scheduler)")
    mode.add_argument("--report", action="store_true", help="train nothing: evaluate what "
                      "finished runs lack, then write the report")
    # --iterations A B ...: the study at each schedule, side by side in one report
    add_dataclass_args(p, TrainConfig, choices=choices, several=("iterations",))

    sub.add_parser("make-synthetic", add_help=False,
                   help="write a synthetic COCO-format data set (see make-synthetic --help)")

    p = sub.add_parser("demo", help="synthetic data + short Dynamic R-CNN run + evaluation")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="runs/demo", help="run directory (replaced on each "
                   "run unless --resume)")
    p.add_argument("--arch", default="dynamic_rcnn", choices=archs)
    p.add_argument("--iterations", type=int, default=1200)
    p.add_argument("--interval", type=int, default=20, help="C: iterations between updates")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=60)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on a terminal (else periodic lines)")
    return parser


def _input_errors() -> Tuple[Type[BaseException], ...]:
    from dynrcnn.data.coco import DatasetError
    from dynrcnn.engine.config import UsageError

    return UsageError, DatasetError


def _format_warning(message: Any, category: Type[Warning], filename: str, lineno: int,
                    line: Optional[str] = None) -> str:
    """dynrcnn's own warnings (a data set repaired, a setting ignored) as one line for the
    user, without the Python source line; others as Python formats them."""
    if f"{os.sep}dynrcnn{os.sep}" in filename or category.__name__ == "DatasetWarning":
        return f"{PROG}: warning: {message}\n"
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


_PYTHON_FORMAT_WARNING = warnings.formatwarning


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _format_warning
    handlers = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
                "plot": cmd_plot, "compare": cmd_compare, "demo": cmd_demo,
                "export": cmd_export, "study": cmd_study}
    # the command typed, as argparse names it in the subcommand's usage and error lines
    # (the top-level parser has no options but -h, so argv[0] is the subcommand)
    prog = f"{PROG} {argv[0]}" if argv and argv[0] in (*handlers, "make-synthetic") else PROG
    try:
        if argv and argv[0] == "make-synthetic":
            return cmd_make_synthetic(argv[1:])
        args = build_parser().parse_args(argv)
        args.argv = argv[1:]  # the subcommand's own arguments, for a report's header
        return handlers[args.command](args)
    except _input_errors() as exc:
        # known bad input: one line naming the flag or file, no traceback
        if _is_main_process():
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: what stopped where (a run says how to go on)
        from dynrcnn.engine.errors import Interrupted

        if _is_main_process():
            why = str(exc) if isinstance(exc, Interrupted) else "interrupted"
            print(f"{prog}: {why}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
