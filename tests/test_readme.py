"""README.md as a user follows it (issue 10, points 4 and 13): every command of "Training
and evaluating on your data" runs, in the README's order, through the installed `dynrcnn`
console script; the fused-ops snippet runs as written; the design notes it cites exist.

Only what a test cannot afford is shrunk: a data set of 8 + 4 images of 128 pixels, 2
iterations instead of 90000, the tiny_fpn backbone instead of resnet50_fpn, no loader
workers, and torchrun with 2 CPU processes instead of 8 GPUs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SCRIPT = Path(sys.executable).parent / "dynrcnn"
SHRINK = {"90000": "2", "180000": "4", "resnet50_fpn": "tiny_fpn",
          "--nproc_per_node=8": "--nproc_per_node=2"}
SMALL_RUN = ["--min-size", "128", "--max-size", "128", "--num-workers", "0"]


def code_block(language: str, after_heading: str) -> str:
    section = README[README.index(after_heading):]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {after_heading!r}"
    return match.group(1)


def readme_commands(heading: str = "## Train and evaluate on your data"
                    ) -> List[List[str]]:
    text = code_block("bash", heading)
    text = text.replace("\\\n", " ")  # continuation lines
    return [shlex.split(line, comments=True) for line in text.splitlines()
            if shlex.split(line, comments=True)]


def runnable(argv: List[str]) -> List[str]:
    argv = [SHRINK.get(a, a) for a in argv]
    if argv[0] == "python":
        argv = [sys.executable] + argv[1:]
    elif argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"] + argv[1:]
    elif argv[0] == "dynrcnn":
        argv = [str(SCRIPT)] + argv[1:]
    command = argv[argv.index("dynrcnn") + 1] if "dynrcnn" in argv else argv[1]
    if command == "make-synthetic":
        argv += ["--num-train", "8", "--num-val", "4", "--image-size", "128", "128"]
    if command in ("train", "study") and "--data-dir" in argv:
        argv += SMALL_RUN
    if command == "study":
        argv += ["--seeds", "2", "--jobs", "2"]
    if command == "eval":
        argv += ["--num-workers", "0"]
    return argv


def test_readme_lists_the_whole_workflow():
    commands = [c for c in readme_commands()]
    assert [c[0] for c in commands].count("dynrcnn") >= 8
    assert commands[0][:2] == ["dynrcnn", "make-synthetic"]
    assert any(c[0] == "torchrun" for c in commands)


def test_readme_commands_run_in_order(tmp_path):
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: run make install"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in readme_commands():
        done = subprocess.run(runnable(argv), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n" \
                                     f"{done.stderr[-4000:]}"
        assert ": error:" not in done.stderr
    runs = tmp_path / "runs"
    # `compare` read the metrics `eval --out-dir runs/<run>` wrote
    table = (runs / "cmp" / "compare.md").read_text()
    assert "| faster |" in table and "| dyn |" in table
    for path in ("faster/metrics.json", "dyn/metrics.json", "dyn/results_bbox.json",
                 "dyn/curves.png", "cmp/ap_vs_iou.png", "dyn-8gpu/model_final.pth"):
        assert (runs / path).is_file(), path
    assert (tmp_path / "pred.png").stat().st_size > 0
    # like with like: the baseline runs with the RPN NMS dynamic_rcnn builds with
    faster = json.loads((runs / "faster" / "config.json").read_text())
    assert faster["model_kwargs"]["rpn_nms_thresh"] == 0.85


def test_the_study_on_your_data_runs_as_written(tmp_path):
    """The README's study command after its make-synthetic (2 seeds instead of 3, 2 and 4
    iterations for 1x and 2x): each schedule is a study directory whose runs wrote the
    metrics the schedule report shows (each arm per schedule, what doubling did, the best
    fixed T chosen on val), and the PNG exists."""
    import statistics

    make = readme_commands()[0]
    study = readme_commands("## Does it pay on your data?")
    assert [c[:2] for c in study] == [["dynrcnn", "study"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (make, *study):
        done = subprocess.run(runnable(argv), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n" \
                                     f"{done.stderr[-4000:]}"
    out = tmp_path / "runs" / "study"
    report = json.loads((out / "report.json").read_text())
    text = (out / "report.md").read_text()
    assert report["schedules"] == [2, 4] and report["split"] == "val"
    val = {}
    for n in (2, 4):
        assert set(report["runs"][str(n)]) == {"baseline", "dla_dsl", "t060"}
        for arm, seeds in report["runs"][str(n)].items():
            assert sorted(seeds) == ["0", "1"]
            for seed, row in seeds.items():
                metrics = json.loads((out / f"iters_{n}" / arm / f"seed{seed}" /
                                      f"eval_{n:07d}" / "metrics.json").read_text())["bbox"]
                val[n, arm, int(seed)] = 100 * metrics["AP"]
                for column in ("AP", "AP50", "AP75", "AP90"):
                    assert row[column] == pytest.approx(100 * metrics[column], abs=1e-9)
        means = {a: statistics.fmean(val[n, a, s] for s in (0, 1)) for a in ("baseline", "t060")}
        best = max(means, key=means.get)
        assert report["best_fixed"][str(n)]["dynamic_rcnn"]["best"] == best
        assert f"- At {n} iterations: dla_dsl - {best} (best fixed T): AP" in text
    gain = statistics.fmean(val[4, "dla_dsl", s] - val[2, "dla_dsl", s] for s in (0, 1))
    assert f"| dla_dsl | 2 -> 4 | {gain:+.1f} [" in text
    assert (out / "report_schedules.png").stat().st_size > 0
    assert (out / "iters_2" / "report.md").is_file() and (out / "iters_4" / "report.md").is_file()


def test_start_from_a_torchvision_model_runs_in_order(tmp_path):
    """Save a stock 91-class fasterrcnn_resnet50_fpn_v2, fine-tune it with --init-weights
    on a 5-class set (2 iterations), export it in the three formats, load the torchvision
    file in plain torchvision: the README's commands as written."""
    commands = readme_commands("## Torchvision in and out")
    assert [c[0] for c in commands] == ["python", "dynrcnn", "dynrcnn", "dynrcnn", "dynrcnn",
                                        "dynrcnn", "python"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = []
    for argv in commands:
        done = subprocess.run(runnable(argv), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n" \
                                     f"{done.stderr[-4000:]}"
        outputs.append(done.stdout)
    init_line = next(x for x in outputs[2].splitlines() if x.startswith("init-weights"))
    assert "roi_heads.box_predictor.cls_score.weight [91, 1024]->[4, 1024]" in init_line
    assert outputs[-1].startswith("fasterrcnn_resnet50_fpn_v2 {'num_classes': 4")
    assert "['rectangle', 'ellipse', 'triangle']" in outputs[-1]
    for name in ("ft_tv.pth", "ft_scripted.pt", "ft.onnx"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_the_torchvision_snippet_runs_as_written(capsys):
    code = code_block("python", "## Torchvision in and out")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert re.search(r"^RoIHeads fasterrcnn_mobilenet_v3_large_fpn \{'num_classes': 4, "
                     r"'min_size': 128, 'max_size': 128, 'rpn_nms_thresh': 0.85\}$",
                     capsys.readouterr().out, re.M)


def test_the_ops_snippet_runs_as_written(capsys):
    pytest.importorskip("torch")
    code = code_block("python", "## Use the ops in your detector")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert re.search(r"T=0\.\d+ beta=1\.00 foreground=\d+ loss=\d", capsys.readouterr().out)


def test_readme_cites_documentation_inside_the_repository():
    assert "../shared" not in README and "DESIGN.md" not in README
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).is_file(), link
    assert "docs/design.md" in README
    design = (ROOT / "docs" / "design.md").read_text()
    for topic in ("## Layers", "## Op contracts", "## DynamicState", "## Conventions"):
        assert topic in design
