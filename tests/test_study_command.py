"""`dynrcnn study` on a user's COCO-format data, through the installed console script:
a 2-arm x 2-seed study at tiny sizes, its report's numbers against the metrics files it read;
killed during a run and rerun (finished runs are not retrained, the report is the same);
`--plan` commands run by hand, then `--report` (the same report); bad input in one line; the
GPU path with nothing mocked but the device count."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynrcnn.engine.config import UsageError

SCRIPT = Path(sys.executable).parent / "dynrcnn"
TINY = ["--backbone", "tiny_fpn", "--iterations", "4", "--min-size", "64", "--max-size", "64",
        "--batch-size", "2", "--num-workers", "0", "--checkpoint-period", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def dynrcnn(*args: str, cwd: Path, check: bool = True, timeout: int = 600
            ) -> subprocess.CompletedProcess:
    done = subprocess.run([str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def make_study_data(root: Path) -> Path:
    """root/d: 8 train, 4 val and 4 test synthetic images of 64 px."""
    dynrcnn("make-synthetic", "--out", "d", "--num-train", "8", "--num-val", "4",
            "--num-test", "4", "--image-size", "64", "64", cwd=root)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_study_data(tmp_path_factory.mktemp("study_data"))


def study_args(out: str, *extra: str) -> list:
    return ["study", "--data-dir", "d", "--arms", "baseline", "dla_dsl", "--seeds", "2",
            *TINY, "--out-dir", out, *extra]


def body(report: Path) -> str:
    """A report below its header (the header names the command, date and paths)."""
    text = report.read_text()
    return text[text.index("\n## "):]


@pytest.fixture(scope="module")
def uninterrupted(data) -> Path:
    done = dynrcnn(*study_args("s_full", "--jobs", "2"), cwd=data)
    assert "## Verdict" in done.stdout and "report written to" in done.stdout
    return data / "s_full"


def test_study_report_holds_the_numbers_of_the_metrics_files(uninterrupted) -> None:
    report = json.loads((uninterrupted / "report.json").read_text())
    assert report["spec"]["split"] == "test" and report["spec"]["images"] == 4
    assert sorted((r["arm"], r["seed"]) for r in report["runs"]) == [
        ("baseline", 0), ("baseline", 1), ("dla_dsl", 0), ("dla_dsl", 1)]
    for run in report["runs"]:
        metrics = json.loads((uninterrupted / run["arm"] / f"seed{run['seed']}" /
                              "eval_test_own" / "metrics.json").read_text())["bbox"]
        for column in ("AP", "AP50", "AP75", "AP90"):
            assert run[column] == pytest.approx(100 * metrics[column], abs=1e-9)
    text = (uninterrupted / "report.md").read_text()
    assert "- numbers below: the test split (4 images)" in text
    assert re.search(r"^- dla_dsl - baseline: AP [+-]\d+\.\d \[", text, re.M)
    assert "Verdicts follow fixed rules" in text and "rpn_nms_thresh': 0.85" in text
    for png in ("report_ap_vs_iou.png", "report_dynamics.png"):
        assert (uninterrupted / png).stat().st_size > 0
    job = json.loads((uninterrupted / "dla_dsl" / "seed1" / "job.json").read_text())
    assert job["backbone"] == "tiny_fpn" and job["seed"] == 1 and job["iterations"] == 4
    assert job["dynamic"]["k_iou"] == 75 and job["model_kwargs"]["rpn_nms_thresh"] == 0.85


def test_a_killed_study_continues_without_retraining(data, uninterrupted) -> None:
    out = data / "s_killed"
    proc = subprocess.Popen([str(SCRIPT), *study_args("s_killed", "--jobs", "1")], cwd=data,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "study.log"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill while the second run trains
        if log.is_file() and "starting dla_dsl seed 0" in log.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    first = out / "baseline" / "seed0" / "model_final.pth"
    assert first.is_file()
    stamp = first.stat().st_mtime_ns
    dynrcnn(*study_args("s_killed", "--jobs", "1"), cwd=data)
    assert first.stat().st_mtime_ns == stamp  # the finished run was not trained again
    assert "1 finished earlier" in log.read_text()
    assert "starting baseline seed 0" not in log.read_text().split("stopped by signal")[-1]
    assert body(out / "report.md") == body(uninterrupted / "report.md")


def test_plan_commands_then_report_give_the_same_report(data, uninterrupted) -> None:
    done = dynrcnn(*study_args("s_plan", "--plan"), cwd=data)
    commands = [line for line in done.stdout.splitlines() if line.startswith("dynrcnn train")]
    assert len(commands) == 4 and "4 of 4 runs to train" in done.stdout
    assert not list((data / "s_plan").glob("*/seed*/model_final.pth"))  # nothing trained
    for line in commands:
        argv = shlex.split(line)
        dynrcnn(*argv[1:], cwd=Path("/"))  # a cluster job starts anywhere
    again = dynrcnn(*study_args("s_plan", "--plan"), cwd=data)
    assert "0 of 4 runs to train" in again.stdout
    then = again.stdout.rsplit("then: ", 1)[1].strip()  # the report command it prints runs
    assert shlex.split(then)[:2] == ["dynrcnn", "study"] and "--plan" not in shlex.split(then)
    dynrcnn(*shlex.split(then)[1:], cwd=data)
    assert body(data / "s_plan" / "report.md") == body(uninterrupted / "report.md")


@pytest.mark.parametrize("args,flag", [
    (["--arms", "baseline", "nope"], "--arms"),
    (["--seeds", "0"], "--seeds"),
    (["--data-dir", "missing"], "--data-dir"),
    (["--gpus", "3"], "--gpus"),
    (["--test-ann", "d/annotations/instances_test.json"], "--test-images"),
    (["--arch", "faster_rcnn"], "--arch"),
])
def test_bad_input_is_one_line_naming_the_flag(data, args, flag) -> None:
    done = dynrcnn(*study_args("s_bad"), *args, cwd=data, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynrcnn study: error: ")
    assert flag in lines[0] and "Traceback" not in done.stderr
    assert not (data / "s_bad" / "baseline").exists()


def test_data_without_val_is_refused(data, tmp_path) -> None:
    from dynrcnn.study.command import StudyRequest, build_spec

    base = {"train_images": str(data / "d" / "train"),
            "train_ann": str(data / "d" / "annotations" / "instances_train.json")}
    with pytest.raises(UsageError, match="--val-ann: a study needs a val split"):
        build_spec(StudyRequest(out_dir=str(tmp_path), base=base))


def test_mask_arms_need_masks(tmp_path) -> None:
    from dynrcnn.study.command import StudyRequest, build_spec

    for name, flags in (("m", []), ("n", ["--no-masks"])):
        dynrcnn("make-synthetic", "--out", name, "--num-train", "2", "--num-val", "1",
                "--image-size", "64", "64", *flags, cwd=tmp_path)
    arms = ["mask_baseline", "mask_dla_dsl"]
    spec = build_spec(StudyRequest(out_dir=str(tmp_path / "s"),
                                   base={"data_dir": str(tmp_path / "m")}, arms=arms))
    assert spec.arms == arms
    done = dynrcnn("study", "--data-dir", "n", "--arms", *arms, cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("dynrcnn study: error: --arms: a mask arm needs "
                                   "segmentation masks, and n/annotations/"
                                   "instances_train.json has none")


def test_gpus_one_run_each_with_only_the_device_count_mocked(data, monkeypatch,
                                                              capsys) -> None:
    from dynrcnn.study import command

    monkeypatch.chdir(data)
    monkeypatch.setattr(command, "visible_gpus", lambda: 2)
    with pytest.raises(UsageError, match="--gpus 0,2: GPUs 0-1 are visible"):
        command.build_spec(command.StudyRequest(out_dir="x", base={"data_dir": "d"},
                                                gpus="0,2"))
    request = command.StudyRequest(out_dir="s_gpu", base={
        "data_dir": "d", "backbone": "tiny_fpn", "iterations": 2, "min_size": 64,
        "max_size": 64, "batch_size": 2, "num_workers": 0}, arms=["baseline", "dla_dsl"],
        seeds=1)
    assert command.run(request, "run", echo=print) == 0
    log = (data / "s_gpu" / "study.log").read_text()
    assert "2 at a time" in log
    assert re.search(r"starting \w+ seed 0 -> .* on GPU 0", log)
    assert re.search(r"starting \w+ seed 0 -> .* on GPU 1", log)
    assert "report written to" in capsys.readouterr().out


def test_best_vs_best_reuses_the_study_and_chooses_on_val(data, uninterrupted) -> None:
    """A finished study gains --best-vs-best: its runs are kept (not retrained, their test
    evaluations found under the setting's name), each arm trains again at NMS 0.7, and the
    chosen candidates and their differences equal what the metrics files give."""
    import shutil

    out = data / "s_bvb"
    shutil.copytree(uninterrupted, out)
    kept = out / "baseline" / "seed0" / "model_final.pth"
    stamp = kept.stat().st_mtime_ns
    planned = dynrcnn(*study_args("s_bvb", "--best-vs-best", "--plan"), cwd=data)
    assert "4 of 8 runs to train" in planned.stdout
    assert all("/nms070/" in line for line in planned.stdout.splitlines()
               if line.startswith("dynrcnn train"))
    done = dynrcnn(*study_args("s_bvb", "--best-vs-best", "--jobs", "2"), cwd=data)
    assert kept.stat().st_mtime_ns == stamp
    assert "(best against best)" in done.stdout
    job = json.loads((out / "nms070" / "dla_dsl" / "seed1" / "job.json").read_text())
    assert job["model_kwargs"]["rpn_nms_thresh"] == 0.7 and job["dynamic"]["k_iou"] == 75
    # the paper-setting tables are the study's own, unchanged
    text = (out / "report.md").read_text()
    assert body(out / "report.md").split("\n## Best against best")[0].rstrip() == \
        body(uninterrupted / "report.md").rstrip()
    summary = json.loads((out / "report.json").read_text())["best_vs_best"]
    assert summary["seeds"] == [0, 1]

    def ap(run: Path, split: str, setting: str) -> dict:
        own = {0.85: "1000_nms085", 0.7: "1000_nms070"}[json.loads(
            (run / "job.json").read_text())["model_kwargs"]["rpn_nms_thresh"]]
        if split == "val" and setting == own:
            path = run / "eval_0000004" / "metrics.json"
        else:
            path = run / f"eval_{split}_{setting}" / "metrics.json"
            if setting == own and not path.is_file():
                path = run / f"eval_{split}_own" / "metrics.json"
        return {k: 100 * v for k, v in json.loads(path.read_text())["bbox"].items()}

    chosen = {}
    for arm in ("baseline", "dla_dsl"):
        scores = {}
        for trained in (out, out / "nms070"):
            for setting in ("1000_nms085", "1000_nms070"):
                runs = [trained / arm / f"seed{s}" for s in (0, 1)]
                scores[(trained, setting)] = sum(ap(r, "val", setting)["AP"] for r in runs) / 2
        chosen[arm] = max(scores, key=scores.get)
        trained, setting = chosen[arm]
        label = summary["chosen"][arm]
        assert ("0.85, tested" in label) == (trained == out)
        assert label.endswith("NMS 0.85" if setting == "1000_nms085" else "NMS 0.7")
    for column in ("AP", "AP90"):
        diffs = [ap(chosen["dla_dsl"][0] / "dla_dsl" / f"seed{s}", "test",
                    chosen["dla_dsl"][1])[column]
                 - ap(chosen["baseline"][0] / "baseline" / f"seed{s}", "test",
                      chosen["baseline"][1])[column] for s in (0, 1)]
        got = summary["differences"]["dla_dsl"][column]
        assert got["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-9) and got["n"] == 2
    assert re.search(r"^- dla_dsl - baseline \(best against best\): AP [+-]\d", text, re.M)


def test_best_vs_best_needs_a_test_split_and_the_rpn(data) -> None:
    from dynrcnn.study.command import StudyRequest, build_spec

    base = {k: str(data / "d" / v) for k, v in (
        ("train_images", "train"), ("train_ann", "annotations/instances_train.json"),
        ("val_images", "val"), ("val_ann", "annotations/instances_val.json"))}
    with pytest.raises(UsageError, match="--best-vs-best chooses each arm's setting on val"):
        build_spec(StudyRequest(out_dir="x", base=base, best_vs_best=True))
    done = dynrcnn(*study_args("s_bad", "--best-vs-best", "--model-kwargs",
                               '{"rpn_nms_thresh": 0.7}'), cwd=data, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("dynrcnn study: error: --model-kwargs: --best-vs-best sets "
                                   "the RPN of each candidate; leave out rpn_nms_thresh")


def test_a_mask_study_reports_segm_columns_and_the_mask_rois(data) -> None:
    """Mask arms: segm AP, AP50 and AP75 in report.json and the paired table, equal to the
    metrics files; mask_rois (the RoIs per image the mask head trained on) in the
    Figure-1 table, equal to the mean of the log's last window."""
    done = dynrcnn("study", "--data-dir", "d", "--arms", "mask_baseline", "mask_dla_dsl_m50",
                   "--seeds", "2", *TINY, "--log-period", "1", "--jobs", "2",
                   "--out-dir", "s_masks", cwd=data)
    assert "## Verdict" in done.stdout
    out = data / "s_masks"
    report = json.loads((out / "report.json").read_text())
    for run in report["runs"]:
        run_dir = out / run["arm"] / f"seed{run['seed']}"
        segm = json.loads((run_dir / "eval_test_own" / "metrics.json").read_text())["segm"]
        for column in ("AP", "AP50", "AP75"):
            assert run[f"segm {column}"] == pytest.approx(100 * segm[column], abs=1e-9)
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        last = [r["mask_rois"] for r in rows if r["iteration"] > 4 - 1]  # the last 10%
        assert run["late"]["mask_rois"] == pytest.approx(sum(last) / len(last))
        assert all(r["mask_rois"] > 0 for r in rows)  # the gt copies train the mask head
    text = (out / "report.md").read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| arm - reference | AP"))
    assert header.endswith("| segm AP | segm AP50 | segm AP75 |")
    assert "| mask_rois early |" in text and "| mask_rois end |" in text
    assert re.search(r"^- mask_dla_dsl_m50 - mask_baseline: segm AP [+-]\d+\.\d \[", text,
                     re.M)
