"""The fault suite: bad input through the installed `dynrcnn` console script never loses
data and never costs a run. Each case asserts the exit status, a one-line message naming
the file or flag, and for the data-loss cases that every earlier checkpoint is unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("single_thread")
SCRIPT = Path(sys.executable).parent / "dynrcnn"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--backbone", "tiny_fpn", "--min-size", "64", "--max-size", "64", "--num-workers", "0",
        "--no-progress", "--no-plot", "--batch-size", "2", "--warmup-iters", "1"]


def dynrcnn(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("dynrcnn ")]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"dynrcnn {command}: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def digests(run: Path) -> Dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.glob("model_*.pth"))}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    done = dynrcnn("make-synthetic", "--out", str(out), "--num-train", "4", "--num-val", "2",
                   "--image-size", "64", "64")
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    """A run with checkpoints at iterations 2, 4 and the final one (6, model_final.pth)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    done = dynrcnn("train", "--data-dir", str(data_dir), "--out-dir", str(run),
                   "--iterations", "6", "--checkpoint-period", "2", "--keep-checkpoints", "0",
                   *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in run.glob("model_*.pth")} == {
        "model_0000002.pth", "model_0000004.pth", "model_final.pth"}
    return run


def resume(run: Path, data_dir: Path, iterations: int = 6) -> subprocess.CompletedProcess:
    return dynrcnn("train", "--data-dir", str(data_dir), "--out-dir", str(run), "--resume",
                   "--iterations", str(iterations), "--checkpoint-period", "2",
                   "--keep-checkpoints", "0", *TINY)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage"])
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, trained, data_dir,
                                                               damage):
    """Case 1: the pointer's file gone or broken started the run over, overwriting the rest."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "model_final.pth").unlink()
    newest = run / "model_0000004.pth"
    (run / "last_checkpoint").write_text("model_0000004.pth\n")
    if damage == "deleted":
        newest.unlink()
    elif damage == "truncated":  # a disk that filled while writing
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.write_bytes(b"not a checkpoint")
    before = digests(run)
    done = resume(run, data_dir, iterations=2)  # nothing left to train from iteration 2
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {run / 'model_0000002.pth'} at iteration 2" in done.stdout
    if damage != "deleted":
        assert f"skipped {newest}" in done.stderr
    assert "from scratch" not in done.stderr + done.stdout
    after = digests(run)
    assert all(after[name] == digest for name, digest in before.items()
               if name != "model_0000004.pth"), "an earlier checkpoint was written over"


def test_resume_refuses_when_no_checkpoint_loads(tmp_path, trained, data_dir):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for path in run.glob("model_*.pth"):
        path.write_bytes(b"broken")
    before = digests(run)
    one_line_error(resume(run, data_dir), "train", "--resume", "none of the 3 checkpoint(s)",
                   "model_final.pth", "--overwrite")
    assert digests(run) == before


def test_resume_takes_a_newer_checkpoint_than_the_pointer_names(tmp_path, trained, data_dir):
    """The checkpoint was written, the pointer not (killed between the two renames)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "model_final.pth").unlink()
    (run / "last_checkpoint").write_text("model_0000002.pth\n")
    done = resume(run, data_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {run / 'model_0000004.pth'} at iteration 4" in done.stdout


def test_a_16_bit_image_is_scaled_not_clipped_to_white(tmp_path, trained, data_dir):
    """Case 2: 16-bit PNGs were read as all-white images (every pixel above 255 clipped)."""
    first = sorted((data_dir / "train").iterdir())[0]
    rgb = np.asarray(Image.open(first).convert("RGB"))
    grey8 = rgb[:, :, 1]
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    outs = []
    for name in ("grey8", "grey16"):
        out = tmp_path / f"{name}_pred.png"
        done = dynrcnn("predict", "--weights", str(trained / "model_final.pth"), "--image",
                       str(tmp_path / f"{name}.png"), "--out", str(out), "--score-thresh", "0")
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(np.asarray(Image.open(out)))
    assert np.array_equal(outs[0], outs[1])  # the same pixels, the same detections drawn

    from dynrcnn.data import CocoDetection  # the training loader reads it the same way

    ann = data_dir / "annotations" / "instances_train.json"
    images16 = tmp_path / "train16"
    shutil.copytree(data_dir / "train", images16)
    for path in images16.iterdir():
        channel = np.asarray(Image.open(path).convert("RGB"))[:, :, 1]
        Image.fromarray(channel.astype(np.uint16) * 257).save(path)
    eight = CocoDetection(data_dir / "train", ann).load_image(0)
    sixteen = CocoDetection(images16, ann).load_image(0)
    assert sixteen.std() > 0.01
    assert (sixteen == eight[1:2].expand(3, -1, -1)).all()


def test_an_image_of_unknown_range_is_one_line(tmp_path, trained):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.random.rand(32, 32).astype(np.float32)).save(path)
    done = dynrcnn("predict", "--weights", str(trained / "model_final.pth"), "--image",
                   str(path))
    one_line_error(done, "predict", f"--image {path}", "floating-point")


@pytest.mark.parametrize("kwargs,needles", [
    ('{"rpn_nms_tresh": 0.85}', ["'rpn_nms_tresh' is not an argument of dynamic_rcnn",
                                 "did you mean 'rpn_nms_thresh'"]),
    ('{"rpn_nms_thresh": "high"}', ["rpn_nms_thresh must be a number", "'high'"]),
    ('{"rpn_post_nms_top_n_train": 1000.5}', ["rpn_post_nms_top_n_train must be an integer"]),
    ('{"box_fg_iou_thresh": 0.6}', ["dynamic_rcnn does not use 'box_fg_iou_thresh'"]),
])
def test_model_kwargs_are_checked_by_name_and_type(tmp_path, data_dir, kwargs, needles):
    """Case 3: a misspelt key was ignored (and saved), a wrong type a pybind traceback."""
    out = tmp_path / "run"
    done = dynrcnn("train", "--data-dir", str(data_dir), "--out-dir", str(out),
                   "--iterations", "1", "--model-kwargs", kwargs, *TINY)
    one_line_error(done, "train", "--model-kwargs", *needles)
    assert not out.exists()  # refused before anything was written


def test_model_kwargs_of_other_archs_pass_the_check():
    from dynrcnn.modeling.model_kwargs import check_model_kwargs

    check_model_kwargs("faster_rcnn", {"box_fg_iou_thresh": 0.6, "min_size": [96, 128]})
    check_model_kwargs("cascade_rcnn", {"cascade_iou_thresholds": [0.5, 0.6, 0.7],
                                        "trainable_backbone_layers": 3})
    check_model_kwargs("dynamic_mask_rcnn", {"mask_roi_pool": None, "rpn_nms_thresh": 1})
    with pytest.raises(ValueError, match="'cascade_iou_thresholds' is not an argument"):
        check_model_kwargs("faster_rcnn", {"cascade_iou_thresholds": [0.5]})


@pytest.mark.parametrize("how", ["no annotations", "all crowd"])
def test_a_train_split_without_a_usable_box_is_refused(tmp_path, data_dir, how):
    """Case 4: it trained to the end on nothing, exit 0."""
    import json

    ann = json.loads((data_dir / "annotations" / "instances_train.json").read_text())
    if how == "no annotations":
        ann["annotations"] = []
    else:
        for a in ann["annotations"]:
            a["iscrowd"] = 1
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ann))
    out = tmp_path / "run"
    done = dynrcnn("train", "--train-images", str(data_dir / "train"), "--train-ann", str(path),
                   "--out-dir", str(out), "--iterations", "2", *TINY)
    one_line_error(done, "train", f"--train-ann {path}", "no box to train on")
    assert not out.exists()


def test_a_val_split_with_other_categories_is_refused_before_training(tmp_path, data_dir):
    """Case 5: it trained, then died at the first evaluation with a KeyError."""
    import json

    ann = json.loads((data_dir / "annotations" / "instances_val.json").read_text())
    for c in ann["categories"]:
        c["id"] += 100
    for a in ann["annotations"]:
        a["category_id"] += 100
    path = tmp_path / "val.json"
    path.write_text(json.dumps(ann))
    out = tmp_path / "run"
    done = dynrcnn("train", "--data-dir", str(data_dir), "--val-ann", str(path), "--out-dir",
                   str(out), "--iterations", "2", "--eval-period", "1", *TINY)
    one_line_error(done, "train", f"--val-ann {path}", "category ids", "the same categories")
    assert not list(out.glob("model_*.pth"))


def test_a_wrong_image_folder_of_a_study_is_refused_before_training(tmp_path, data_dir):
    """Case 6: every run trained, then failed, naming --val-images."""
    out = tmp_path / "study"
    done = dynrcnn("study", "--data-dir", str(data_dir), "--test-images", str(tmp_path / "NOPE"),
                   "--test-ann", str(data_dir / "annotations" / "instances_val.json"),
                   "--out-dir", str(out), "--arms", "baseline", "--seeds", "1",
                   "--iterations", "2", *TINY)
    one_line_error(done, "study", "--test-images", "NOPE")
    assert not out.exists() or not list(out.rglob("model_*.pth"))


def test_train_weights_that_do_not_fit_are_one_line(tmp_path, trained, data_dir):
    """Case 9: `train --weights` of another class count was a RuntimeError traceback."""
    done = dynrcnn("train", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "run"),
                   "--iterations", "1", "--weights", str(trained / "model_final.pth"),
                   "--num-classes", "9", *TINY)
    one_line_error(done, "train", f"--weights {trained / 'model_final.pth'}", "does not fit")


def test_an_out_dir_that_cannot_be_written_is_one_line(data_dir):
    """Case 10: a PermissionError traceback (/sys refuses new files even to root)."""
    done = dynrcnn("train", "--data-dir", str(data_dir), "--out-dir", "/sys/dynrcnn_run",
                   "--iterations", "1", *TINY)
    one_line_error(done, "train", "--out-dir /sys/dynrcnn_run", "cannot write")


def test_plot_of_a_broken_log_is_one_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"iteration": 1, "total_lo\n')
    one_line_error(dynrcnn("plot", str(tmp_path)), "plot", "log.jsonl", "no curves")


def test_ctrl_c_says_where_the_checkpoint_is_and_exits_130(tmp_path, data_dir):
    """Case 10: Ctrl-C during training was a KeyboardInterrupt traceback."""
    import signal
    import time

    run = tmp_path / "run"
    # A shell without job control starts background commands (`make test &`) with SIGINT
    # ignored, and a child inherits that: Python would then install no KeyboardInterrupt
    # handler and Ctrl-C could not be tested. The child gets SIGINT's default back.
    proc = subprocess.Popen(
        [str(SCRIPT), "train", "--data-dir", str(data_dir), "--out-dir", str(run),
         "--iterations", "100000", "--checkpoint-period", "1", *TINY],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(run.glob("model_*.pth")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    line = [x for x in err.splitlines() if x.startswith("dynrcnn train: ")]
    assert len(line) == 1 and "interrupted after iteration" in line[0], err[-2000:]
    newest = line[0].split("the newest checkpoint is ")[1].split(":")[0]
    assert Path(newest).is_file() and "--resume" in line[0]


@pytest.mark.parametrize("damage", ["corrupt", "wrong size"])
def test_a_bad_image_in_a_loader_worker_is_one_line(tmp_path, data_dir, damage):
    """Case 7: with loader workers the message held a 25-line worker traceback."""
    images = tmp_path / "train"
    shutil.copytree(data_dir / "train", images)
    victim = sorted(images.iterdir())[1]
    if damage == "corrupt":
        victim.write_bytes(victim.read_bytes()[:40])
    else:
        Image.new("RGB", (13, 17)).save(victim)
    args = [a for a in TINY if a not in ("--num-workers", "0")]
    done = dynrcnn("train", "--train-images", str(images), "--train-ann",
                   str(data_dir / "annotations" / "instances_train.json"), "--out-dir",
                   str(tmp_path / "run"), "--iterations", "4", "--num-workers", "2", *args)
    one_line_error(done, "train", str(victim))


def test_a_broken_rle_is_named_not_a_pycocotools_crash(tmp_path, data_dir):
    """Case 8: run lengths past the image's pixels passed and crashed pycocotools."""
    import json

    ann = json.loads((data_dir / "annotations" / "instances_train.json").read_text())
    first = ann["annotations"][0]
    image = next(i for i in ann["images"] if i["id"] == first["image_id"])
    first["segmentation"] = {"size": [image["height"], image["width"]],
                             "counts": [5, image["height"] * image["width"]]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ann))
    done = dynrcnn("train", "--train-images", str(data_dir / "train"), "--train-ann",
                   str(path), "--arch", "dynamic_mask_rcnn", "--out-dir", str(tmp_path / "run"),
                   "--iterations", "1", *TINY)
    one_line_error(done, "train", str(path), f"annotation id {first['id']}", "broken RLE")


def test_study_jobs_0_is_refused_as_minus_1_is(tmp_path, data_dir):
    """Case 11: --jobs 0 ran as 1 while --jobs -1 was refused."""
    for jobs in ("0", "-1"):
        done = dynrcnn("study", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "s"),
                       "--jobs", jobs, "--iterations", "2", *TINY)
        one_line_error(done, "study", "--jobs must be >= 1", jobs)


def test_json_errors_read_well(tmp_path, data_dir):
    """Case 11: 'Unterminated string starting at at line 1'."""
    path = tmp_path / "train.json"
    path.write_text('{"images": [{"file_name": "a')
    done = dynrcnn("train", "--train-images", str(data_dir / "train"), "--train-ann", str(path),
                   "--out-dir", str(tmp_path / "run"), *TINY)
    line = one_line_error(done, "train", str(path), "not valid JSON")
    assert "at at" not in line and "starting at: line 1" in line
    done = dynrcnn("train", "--data-dir", str(data_dir), "--model-kwargs", "{bad", *TINY)
    assert done.returncode == 2 and "--model-kwargs: not valid JSON" in done.stderr


def test_data_set_warnings_are_one_line_and_an_empty_prediction_is_quiet(tmp_path, data_dir,
                                                                          trained):
    """Case 11: DatasetWarning printed a Python source line; predict a torchvision warning
    when nothing was detected."""
    import json

    ann = json.loads((data_dir / "annotations" / "instances_train.json").read_text())
    ann["annotations"][0]["bbox"] = [-5.0, -5.0, 20.0, 20.0]  # clipped: a DatasetWarning
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ann))
    done = dynrcnn("train", "--train-images", str(data_dir / "train"), "--train-ann", str(path),
                   "--out-dir", str(tmp_path / "run"), "--iterations", "1", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    warning = [x for x in done.stderr.splitlines() if "clipped 1 boxes" in x]
    assert warning == [f"dynrcnn: warning: {path.name}: clipped 1 boxes to the image "
                       f"(annotation ids {ann['annotations'][0]['id']})"], done.stderr
    image = sorted((data_dir / "train").iterdir())[0]
    done = dynrcnn("predict", "--weights", str(trained / "model_final.pth"), "--image",
                   str(image), "--score-thresh", "1.01", "--out", str(tmp_path / "p.png"))
    assert done.returncode == 0 and "0 detections" in done.stdout
    assert "warn" not in done.stderr.lower(), done.stderr


def test_no_command_writes_over_its_input_or_a_checkpoint(tmp_path, trained, data_dir):
    """Nothing destroys what a user has: --out naming an input or a run's checkpoint."""
    weights = tmp_path / "w.pth"
    shutil.copy(trained / "model_final.pth", weights)
    image = tmp_path / "image.png"
    shutil.copy(sorted((data_dir / "train").iterdir())[0], image)
    inputs = [weights, image, trained / "log.jsonl"]
    before = digests(trained)
    before_inputs = [p.read_bytes() for p in inputs]
    for command, args, needle in [
            ("export", ["--weights", str(weights), "--out", str(weights)], "--weights"),
            ("export", ["--weights", str(weights), "--out", str(trained / "model_0000002.pth")],
             "checkpoint of the run"),
            ("plot", [str(trained), "--out", str(trained / "log.jsonl")], "--log"),
            ("predict", ["--weights", str(weights), "--image", str(image), "--out", str(image)],
             "--image")]:
        one_line_error(dynrcnn(command, *args), command, "--out", needle, "written over")
    assert digests(trained) == before
    assert [p.read_bytes() for p in inputs] == before_inputs


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I"])
def test_every_image_mode_reads_as_8_bit_rgb(tmp_path, mode):
    """Image modes beyond RGB: the same grey values whatever the file's mode."""
    from dynrcnn.data import rgb8_pixels

    grey = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.uint8)
    if mode in ("I;16", "I"):
        image = Image.fromarray(grey.astype(np.uint16 if mode == "I;16" else np.int32) * 257)
    elif mode == "1":
        grey = np.where(grey > 100, 255, 0).astype(np.uint8)
        image = Image.fromarray(grey).convert("1")
    else:
        image = Image.fromarray(grey).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I") else "x.png")
    image.save(path)
    with Image.open(path) as opened:
        pixels = rgb8_pixels(opened, str(path))
    assert pixels.shape == (12, 10, 3) and pixels.dtype == np.uint8
    if mode != "CMYK":  # CMYK's conversion is PIL's naive one
        assert np.array_equal(pixels[:, :, 0], grey)
