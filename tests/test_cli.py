"""The `dynrcnn` command end to end on a tiny synthetic set: make-synthetic, train, eval,
plot, compare and predict."""

from __future__ import annotations

import json
import os

import pytest

from dynrcnn.cli import main

TINY = ["--backbone", "tiny_fpn", "--min-size", "96", "--max-size", "96", "--num-workers", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synthetic"))
    assert main(["make-synthetic", "--out", out, "--num-train", "6", "--num-val", "3",
                 "--image-size", "96", "96"]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("run"))
    assert main(["train", "--data-dir", data_dir, "--out-dir", out, "--iterations", "4",
                 "--batch-size", "2", "--warmup-iters", "1", "--eval-period", "4",
                 "--dynamic-interval", "2", "--no-progress", *TINY]) == 0
    return out


def test_train_writes_config_log_checkpoint_metrics(run_dir, capsys):
    for name in ("config.json", "log.jsonl", "model_final.pth",
                 os.path.join("eval_0000004", "metrics.json")):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["dynamic"]["interval"] == 2


def test_eval_prints_the_paper_columns(run_dir, data_dir, tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main(["eval", "--weights", os.path.join(run_dir, "model_final.pth"),
                 "--data-dir", data_dir, "--out-dir", out, "--no-progress",
                 "--num-workers", "0"]) == 0
    table = capsys.readouterr().out
    for column in ("AP50", "AP60", "AP70", "AP80", "AP90"):
        assert column in table
    assert os.path.isfile(os.path.join(out, "metrics.json"))


def test_plot_and_compare_write_pngs(run_dir, tmp_path):
    assert main(["plot", run_dir, "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert main(["compare", run_dir, run_dir, "--names", "a", "b",
                 "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "ap_vs_iou.png").stat().st_size > 0
    assert "| a |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_predict_draws_an_image(run_dir, data_dir, tmp_path):
    image = sorted(os.listdir(os.path.join(data_dir, "val")))[0]
    out = tmp_path / "pred.png"
    assert main(["predict", "--weights", os.path.join(run_dir, "model_final.pth"),
                 "--image", os.path.join(data_dir, "val", image), "--out", str(out),
                 "--score-thresh", "0.0",
                 "--ann", os.path.join(data_dir, "annotations", "instances_val.json")]) == 0
    assert out.stat().st_size > 0


def test_predict_missing_image_is_a_clear_error(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="image not found"):
        main(["predict", "--weights", os.path.join(run_dir, "model_final.pth"),
              "--image", str(tmp_path / "nope.png")])


def test_compare_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="metrics.json"):
        main(["compare", str(tmp_path)])
