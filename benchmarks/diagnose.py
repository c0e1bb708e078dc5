"""Diagnose the difference between two arms of a study, seed by seed (issue 18, point 3;
library: dynrcnn.study.diagnose): exchange the classifier and the regressor on the same
proposals, the classifiers' scores and the regressors' refined IoU per IoU band, recall.

    python benchmarks/diagnose.py --reference runs/study_paper_exact/baseline \\
        --arm runs/study_paper_exact/dla_dsl --seeds 0 1 2 --setting 1000_nms085 \\
        --out benchmarks/results/diagnosis_paper_exact_cpu.md

Each seed's pair is <dir>/seed<s>/model_final.pth of both arms, run at one test-time RPN
setting (dynrcnn.study.settings) on the val split of the runs' data set.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import sys
from typing import Optional, Sequence

import torch

from dynrcnn.engine import EvalConfig
from dynrcnn.engine.checkpoint import atomic_write_text
from dynrcnn.engine.config import TrainConfig, UsageError, load_config
from dynrcnn.study.report import git_commit, hardware
from dynrcnn.study.settings import TEST_SETTINGS, split_files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/diagnose.py", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--reference", required=True, help="the reference arm's directory")
    p.add_argument("--arm", required=True, help="the other arm's directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--setting", default="1000_nms085", choices=sorted(TEST_SETTINGS))
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--max-images", type=int, default=0, help="0: the whole split")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="Markdown report (JSON beside it)")
    return p


def load_pair(args: argparse.Namespace, seed: int):
    from dynrcnn.engine.builders import load_model_for_eval

    models, config = [], None
    for root in (args.reference, args.arm):
        run_dir = os.path.join(root, f"seed{seed}")
        weights = os.path.join(run_dir, "model_final.pth")
        if not os.path.isfile(weights):
            raise UsageError(f"no {weights}: diagnose needs the runs' final checkpoints")
        config = config or load_config(TrainConfig, os.path.join(run_dir, "job.json"))
        model, _ = load_model_for_eval(EvalConfig(
            weights=weights, model_kwargs=dict(TEST_SETTINGS[args.setting]), device="cpu"))
        models.append(model)
    return models, config


def report_header(names: Sequence[str], command: str, setting: str, split: str) -> str:
    """The report's title and its hardware, commit, date, command and setting lines."""
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (f"# Diagnosis: {names[1]} against {names[0]}\n\n- hardware: {hardware()}; torch "
            f"{torch.__version__}\n- commit: {git_commit()}\n- date: {date}\n"
            f"- command: `{command}`\n- test-time RPN: {setting}; split: {split}\n\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dynrcnn.engine.builders import build_val_dataset
    from dynrcnn.study.diagnose import diagnose_pair, diagnosis_report

    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["benchmarks/diagnose.py", *(argv if argv is not None
                                                                else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    names = (os.path.basename(os.path.normpath(args.reference)),
             os.path.basename(os.path.normpath(args.arm)))
    if names[0] == names[1]:
        names = (args.reference, args.arm)
    diags = []
    try:
        for seed in args.seeds:
            models, config = load_pair(args, seed)
            images, ann = split_files(config.data_dir, args.split)
            dataset = build_val_dataset(EvalConfig(val_images=images, val_ann=ann))
            diags.append(diagnose_pair(models, names, dataset, args.max_images))
            print(f"seed {seed}: " + ", ".join(
                f"{k}: AP {v['AP']:.1f}" for k, v in diags[-1].swap.items()), flush=True)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    text = (report_header(names, command, args.setting, args.split)
            + diagnosis_report(diags, args.seeds))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(text, args.out)
    atomic_write_text(json.dumps({"seeds": args.seeds, "diagnoses": [
        dataclasses.asdict(d) for d in diags]}, indent=1),
        os.path.splitext(args.out)[0] + ".json")
    print(text)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
