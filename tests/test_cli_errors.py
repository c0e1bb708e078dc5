"""Known bad input to the `dynrcnn` command is one line, `dynrcnn COMMAND: error: ...`,
naming the flag or the file, with exit status 2 (issue 10, points 7, 10, 11, 12; the command
typed: issue 29, point 5); nothing is trained or evaluated first."""

from __future__ import annotations

import json

import pytest

from dynrcnn.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = ["--backbone", "tiny_fpn", "--min-size", "64", "--max-size", "64", "--num-workers", "0",
        "--no-progress", "--no-plot"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synthetic"))
    assert main(["make-synthetic", "--out", out, "--num-train", "4", "--num-val", "2",
                 "--image-size", "64", "64"]) == 0
    return out


def one_line_error(capsys, command: str, *needles: str) -> str:
    """The one line `dynrcnn COMMAND: error: ...`, naming the subcommand typed."""
    err = capsys.readouterr().err
    assert err.startswith(f"dynrcnn {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b'{"a": 1}'])
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, data_dir, capsys, content):
    """Point 7: was `KeyError: 101` or torch's weights_only advice."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(content)
    assert main(["eval", "--weights", str(weights), "--data-dir", data_dir]) == 2
    one_line_error(capsys, "eval", f"--weights {weights}", "checkpoint")


def test_a_state_dict_of_no_tensors_is_named(tmp_path, data_dir, capsys):
    import torch

    weights = tmp_path / "dict.pth"
    torch.save({"model": {"a": 1}}, weights)
    assert main(["eval", "--weights", str(weights), "--data-dir", data_dir]) == 2
    one_line_error(capsys, "eval", str(weights), "neither a dynrcnn training checkpoint")


def test_a_used_out_dir_is_refused_without_resume_or_overwrite(tmp_path, data_dir, capsys):
    """Point 10: a rerun into an old run's folder left its checkpoints and eval folders."""
    out = tmp_path / "run"
    (out / "eval_0000099").mkdir(parents=True)
    (out / "eval_0000099" / "metrics.json").write_text(json.dumps({"bbox": {"AP": 0.9}}))
    (out / "model_0000099.pth").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--data-dir", data_dir, "--out-dir", str(out),
                 "--iterations", "1", *TINY]) == 2
    one_line_error(capsys, "train", f"--out-dir {out}", "--resume", "--overwrite")
    assert (out / "model_0000099.pth").exists()

    assert main(["train", "--data-dir", data_dir, "--out-dir", str(out), "--iterations", "1",
                 "--overwrite", "--batch-size", "1", *TINY]) == 0
    assert not (out / "eval_0000099").exists() and not (out / "model_0000099.pth").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not a run file: left alone
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]


def test_bad_values_name_the_flag(data_dir, tmp_path, capsys):
    """Point 11: `--iterations must be >= 1`, not `iterations must be >= 1` in a traceback."""
    assert main(["train", "--data-dir", data_dir, "--out-dir", str(tmp_path / "r"),
                 "--iterations", "0"]) == 2
    one_line_error(capsys, "train", "--iterations must be >= 1, got 0")
    assert main(["train", "--data-dir", data_dir, "--out-dir", str(tmp_path / "r"),
                 "--dynamic-k-iou", "0"]) == 2
    one_line_error(capsys, "train", "--dynamic-k-iou")


def test_too_few_classes_name_the_flag(data_dir, tmp_path, capsys):
    assert main(["train", "--data-dir", data_dir, "--out-dir", str(tmp_path / "r"),
                 "--num-classes", "2", *TINY]) == 2
    one_line_error(capsys, "train", "--num-classes 2 is smaller than the training set's")


def test_an_out_dir_that_is_a_file(data_dir, tmp_path, capsys):
    """Point 11: was FileExistsError (train) and an error after inference (eval)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["train", "--data-dir", data_dir, "--out-dir", str(afile), *TINY]) == 2
    one_line_error(capsys, "train", f"--out-dir {afile}", "not a directory")
    assert main(["eval", "--weights", str(afile), "--data-dir", data_dir,
                 "--out-dir", str(afile)]) == 2
    one_line_error(capsys, "eval", f"--out-dir {afile}")


def test_a_missing_config_file(tmp_path, capsys):
    """Point 11: was a bare FileNotFoundError traceback."""
    assert main(["train", "--config", str(tmp_path / "nope.json")]) == 2
    one_line_error(capsys, "train", f"--config {tmp_path / 'nope.json'}", "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad)]) == 2
    one_line_error(capsys, "train", f"--config {bad}", "not valid JSON")
    bad.write_text('{"iterationz": 3}')
    assert main(["train", "--config", str(bad)]) == 2
    one_line_error(capsys, "train", f"--config {bad}", "iterationz")


def test_missing_data_paths_name_the_flag(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "nodata"),
                 "--out-dir", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "train", "--train-images", "does not exist")


def test_a_missing_image_is_found_before_training(data_dir, tmp_path, capsys):
    """Point 12: a missing image file was found when the loader reached it."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    missing = sorted((copy / "train").iterdir())[-1]
    missing.unlink()
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(copy), "--out-dir", str(out),
                 "--iterations", "1", *TINY]) == 2
    one_line_error(capsys, "train", str(missing), "does not exist")
    assert not (out / "log.jsonl").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("command", ["train", "eval"])
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, data_dir, capsys, command):
    args = [command, "--data-dir", data_dir, "--device", "cuda", "--out-dir",
            str(tmp_path / "run")]
    if command == "eval":
        args += ["--weights", str(tmp_path / "missing.pth")]
    else:
        args += ["--iterations", "1", *TINY]
    assert main(args) == 2
    one_line_error(capsys, command, "--device cuda", "CUDA is not available")


def test_weights_that_do_not_fit_the_model_are_named(tmp_path, data_dir, capsys):
    """A bare state_dict of another class count or architecture: one line naming --weights,
    the first tensor or keys that differ, and the flags that may be wrong."""
    import os

    import torch

    from dynrcnn.modeling import build_detector

    bare = tmp_path / "dynamic6.pth"
    torch.save(build_detector("dynamic_rcnn", backbone="tiny_fpn", num_classes=6,
                              min_size=64, max_size=64).state_dict(), bare)
    image = os.path.join(data_dir, "val", sorted(os.listdir(os.path.join(data_dir, "val")))[0])
    predict = ["predict", "--weights", str(bare), "--backbone", "tiny_fpn", "--image", image,
               "--score-thresh", "0.0", "--out", str(tmp_path / "p.png")]
    assert main([*predict, "--num-classes", "3"]) == 2
    one_line_error(capsys, "predict", f"--weights {bare} does not fit the model",
                   "roi_heads.box_predictor.cls_score.weight is [6, ", "--num-classes")
    assert main([*predict, "--num-classes", "6", "--arch", "cascade_rcnn"]) == 2
    one_line_error(capsys, "predict", f"--weights {bare} does not fit the model",
                   "missing keys", "unexpected keys ['roi_heads.box_head")
    # DynamicState buffers are exempt: a Dynamic R-CNN's weights load into a Faster R-CNN
    assert main([*predict, "--num-classes", "6", "--arch", "faster_rcnn"]) == 0
    assert ": error:" not in capsys.readouterr().err
