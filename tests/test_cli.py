"""The `dynrcnn` command end to end on a tiny synthetic set whose category ids are not
1..K (as in a user's own COCO file): make-synthetic, train, eval, plot, compare, predict,
and the issue-10 behaviours that need a trained run (weights of another interval, category
names in predictions, class checks before inference, file modes, checkpoint pruning,
progress lines). One training run serves the module."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from dynrcnn.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = ["--backbone", "tiny_fpn", "--min-size", "96", "--max-size", "96", "--num-workers", "0"]
CAT_IDS = {1: 7, 2: 12, 3: 40, 4: 41, 5: 90}  # synthetic id -> this data set's id (not 1..5)
ITERATIONS = 4


def remap_categories(ann_file: str) -> None:
    with open(ann_file) as f:
        data = json.load(f)
    for cat in data["categories"]:
        cat["id"] = CAT_IDS[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = CAT_IDS[ann["category_id"]]
    with open(ann_file, "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synthetic"))
    assert main(["make-synthetic", "--out", out, "--num-train", "6", "--num-val", "3",
                 "--image-size", "96", "96"]) == 0
    for split in ("train", "val"):
        remap_categories(os.path.join(out, "annotations", f"instances_{split}.json"))
    return out


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """(run directory, captured stdout) of a 4-iteration run that logs every iteration,
    checkpoints every iteration and keeps 2 periodic checkpoints."""
    out = str(tmp_path_factory.mktemp("run"))
    capture = pytest.MonkeyPatch()
    import io
    import sys

    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        assert main(["train", "--data-dir", data_dir, "--out-dir", out, "--iterations",
                     str(ITERATIONS), "--batch-size", "2", "--warmup-iters", "1",
                     "--eval-period", str(ITERATIONS), "--dynamic-interval", "2",
                     "--checkpoint-period", "1", "--keep-checkpoints", "2",
                     "--log-period", "1", "--log-seconds", "0", "--no-progress", *TINY]) == 0
    finally:
        capture.undo()
    return out, buffer.getvalue()


@pytest.fixture(scope="module")
def run_dir(run) -> str:
    return run[0]


def final(run_dir: str) -> str:
    return os.path.join(run_dir, "model_final.pth")


def test_train_writes_config_log_checkpoint_metrics(run_dir):
    for name in ("config.json", "log.jsonl", "model_final.pth",
                 os.path.join("eval_0000004", "metrics.json")):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    assert saved["dynamic"]["interval"] == 2
    assert "resume" not in saved and "overwrite" not in saved  # per invocation, not saved


def test_eval_prints_the_paper_columns(run_dir, data_dir, tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main(["eval", "--weights", final(run_dir), "--data-dir", data_dir,
                 "--out-dir", out, "--no-progress", "--num-workers", "0"]) == 0
    table = capsys.readouterr().out
    for column in ("AP50", "AP60", "AP70", "AP80", "AP90"):
        assert column in table
    assert os.path.isfile(os.path.join(out, "metrics.json"))


def test_eval_save_detections_uses_the_datasets_ids(run_dir, data_dir, tmp_path):
    """Point 5: COCO results JSON with the data set's own category and image ids."""
    out = tmp_path / "eval"
    assert main(["eval", "--weights", final(run_dir), "--data-dir", data_dir,
                 "--out-dir", str(out), "--save-detections", "--no-progress",
                 "--num-workers", "0", "--model-kwargs", '{"box_score_thresh": 0.0}']) == 0
    results = json.loads((out / "results_bbox.json").read_text())
    with open(os.path.join(data_dir, "annotations", "instances_val.json")) as f:
        image_ids = {img["id"] for img in json.load(f)["images"]}
    assert results, "box_score_thresh 0 keeps detections"
    assert {r["category_id"] for r in results} <= set(CAT_IDS.values())  # not labels 1..5
    assert {r["image_id"] for r in results} <= image_ids
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}


def test_plot_and_compare_write_pngs(run_dir, tmp_path):
    assert main(["plot", run_dir, "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert main(["compare", run_dir, run_dir, "--names", "a", "b",
                 "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "ap_vs_iou.png").stat().st_size > 0
    assert "| a |" in (tmp_path / "cmp" / "compare.md").read_text()


def _val_image(data_dir: str) -> str:
    return os.path.join(data_dir, "val", sorted(os.listdir(os.path.join(data_dir, "val")))[0])


def test_predict_names_classes_from_the_checkpoint(run_dir, data_dir, tmp_path, monkeypatch):
    """Point 6: without --ann, boxes are captioned with the data set's category names (the
    checkpoint stores ids and names), not the internal label numbers."""
    import torchvision.utils

    captions = []
    original = torchvision.utils.draw_bounding_boxes

    def spy(image, boxes, labels=None, **kwargs):
        captions.extend(labels or [])
        return original(image, boxes, labels=labels, **kwargs)

    monkeypatch.setattr(torchvision.utils, "draw_bounding_boxes", spy)
    out = tmp_path / "pred.png"
    assert main(["predict", "--weights", final(run_dir), "--image", _val_image(data_dir),
                 "--out", str(out), "--score-thresh", "0.0"]) == 0
    assert out.stat().st_size > 0
    ckpt = torch.load(final(run_dir), weights_only=True)
    assert [c["id"] for c in ckpt["categories"]] == sorted(CAT_IDS.values())
    names = {c["name"] for c in ckpt["categories"]}
    assert captions and all(c.rsplit(" ", 1)[0] in names for c in captions), captions[:3]


def test_predict_checks_the_ann_against_the_model(run_dir, data_dir, tmp_path, capsys):
    """Point 6: an --ann with another number of classes than the model is refused."""
    ann = tmp_path / "two.json"
    ann.write_text(json.dumps({"images": [], "annotations": [],
                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    assert main(["predict", "--weights", final(run_dir), "--image", _val_image(data_dir),
                 "--out", str(tmp_path / "p.png"), "--ann", str(ann)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynrcnn predict: error: --ann") and "2 categories" in err


def test_predict_missing_image_is_a_clear_error(run_dir, tmp_path, capsys):
    assert main(["predict", "--weights", final(run_dir),
                 "--image", str(tmp_path / "nope.png")]) == 2
    assert "--image" in capsys.readouterr().err


def test_weights_of_another_interval_load_in_train_eval_and_predict(run_dir, data_dir,
                                                                    tmp_path, capsys):
    """Point 3: the run used --dynamic-interval 2; its weights load into a model with the
    default interval (100): the history is dropped with a note, T and beta are kept."""
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(final(run_dir), weights_only=True)["model"], bare)
    with pytest.warns(RuntimeWarning, match="history of length 2 does not fit interval 100"):
        assert main(["train", "--data-dir", data_dir, "--out-dir", str(tmp_path / "ft"),
                     "--iterations", "1", "--weights", final(run_dir), "--no-progress",
                     "--no-plot", *TINY]) == 0
    with pytest.warns(RuntimeWarning, match="history of length 2"):
        assert main(["eval", "--weights", str(bare), "--arch", "dynamic_rcnn",
                     "--num-classes", "6", "--data-dir", data_dir, "--out-dir",
                     str(tmp_path / "ev"), "--no-progress", *TINY]) == 0
    with pytest.warns(RuntimeWarning, match="history of length 2"):
        assert main(["predict", "--weights", str(bare), "--backbone", "tiny_fpn",
                     "--num-classes", "6", "--image", _val_image(data_dir),
                     "--score-thresh", "0.0", "--out", str(tmp_path / "p.png")]) == 0
    assert ": error:" not in capsys.readouterr().err


def test_eval_rejects_model_flags_that_contradict_a_training_checkpoint(run_dir, data_dir,
                                                                         tmp_path, capsys):
    """Point 8: --arch cascade_rcnn on a Dynamic R-CNN checkpoint was silently ignored."""
    assert main(["eval", "--weights", final(run_dir), "--data-dir", data_dir,
                 "--arch", "cascade_rcnn", "--out-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynrcnn eval: error: --arch cascade_rcnn") and err.count("\n") == 1


def test_eval_on_other_classes_fails_before_inference(run_dir, data_dir, tmp_path,
                                                      monkeypatch, capsys):
    """Point 9: a data set with other categories is refused before any inference."""
    import dynrcnn.engine.evaluator as evaluator

    other = tmp_path / "other"
    assert main(["make-synthetic", "--out", str(other), "--num-train", "1", "--num-val", "2",
                 "--image-size", "64", "64", "--num-classes", "2"]) == 0
    capsys.readouterr()

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before the class check")

    monkeypatch.setattr(evaluator, "evaluate", no_inference)
    assert main(["eval", "--weights", final(run_dir), "--data-dir", str(other),
                 "--out-dir", str(tmp_path / "e"), "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--val-ann" in err and "category ids [1, 2]" in err


def test_run_files_honour_the_umask(run_dir):
    """Point 14: checkpoints, config.json, logs and metrics get 0666 & ~umask, as the PNGs
    do (tempfile.mkstemp alone gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("model_final.pth", "config.json", "log.jsonl", "last_checkpoint",
                 os.path.join("eval_0000004", "metrics.json"), "curves.png"):
        mode = stat.S_IMODE(os.stat(os.path.join(run_dir, name)).st_mode)
        assert mode == 0o666 & ~mask, f"{name}: {oct(mode)}"


def test_only_the_last_periodic_checkpoints_are_kept(run_dir):
    """Point 15: --keep-checkpoints 2 with a checkpoint every iteration keeps iterations
    2 and 3 (the run's 4th is model_final.pth, never deleted)."""
    names = sorted(n for n in os.listdir(run_dir) if n.endswith(".pth"))
    assert names == ["model_0000002.pth", "model_0000003.pth", "model_final.pth"]


def test_progress_lines_without_a_terminal(run):
    """Point 15: with --no-progress (and stdout not a terminal) a run prints one line per
    log iteration (log-seconds 0 here), with loss, T, beta, lr, speed and eta."""
    _, out = run
    lines = [line for line in out.splitlines() if line.startswith("it ")]
    assert [line.split()[1] for line in lines] == [f"{n}/{ITERATIONS}"
                                                   for n in range(1, ITERATIONS + 1)]
    for key in ("loss=", "T=", "beta=", "lr=", "it/s", "eta"):
        assert key in lines[-1]


def test_help_lists_arch_and_backbone_choices(capsys):
    """Point 15: --help names the values --arch and --backbone accept."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "faster_rcnn, dynamic_rcnn, cascade_rcnn" in text and "tiny_fpn" in text
