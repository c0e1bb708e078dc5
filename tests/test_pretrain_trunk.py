"""benchmarks/pretrain_trunk.py at tiny sizes (a few batches of fake Fashion-MNIST files):
the weights it writes load as the tiny_fpn trunk of a detector (`--backbone-weights`), its
report names the weights' SHA-256, an interrupted run continues to the same bits, and a bad
source is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.benchmark_helpers import load_script, write_idx

ROOT = Path(__file__).resolve().parents[1]


pretrain = load_script("pretrain_trunk")
_write_idx = write_idx


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Fake Fashion-MNIST: class k is a bright bar at row 2k (a learnable pattern)."""
    root = tmp_path_factory.mktemp("fmnist_pretrain")
    for part, count in (("train", 64), ("t10k", 24)):
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 3:2 * k + 6, 4:24] = 200
        _write_idx(root / f"{part}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{part}-labels-idx1-ubyte.gz", labels)
    return root


TINY = ["--epochs", "2", "--batch-size", "16", "--limit-test", "20", "--threads", "1",
        "--no-verify", "--save-every", "1"]


def test_weights_load_as_the_detector_trunk_and_the_report_names_them(source, tmp_path
                                                                      ) -> None:
    out, report = tmp_path / "w.pth", tmp_path / "report"
    assert pretrain.main(["--source", str(source), "--out", str(out), "--report",
                          str(report), *TINY]) == 0
    from dynrcnn.modeling import build_detector

    saved = torch.load(out, weights_only=True)
    model = build_detector("dynamic_rcnn", num_classes=3, backbone="tiny_fpn",
                           backbone_weights=str(out), min_size=64, max_size=64)
    body = model.backbone.body.state_dict()
    assert set(saved) == set(body)
    assert all(torch.equal(body[k], v) for k, v in saved.items())
    info = json.loads(Path(str(report) + ".json").read_text())
    assert info["sha256"] == pretrain.sha256(out)
    assert info["test_images"] == 20 and info["train_images"] == 64
    assert info["steps"] == 2 * (64 // 16) and len(info["epoch_losses"]) == 2
    assert 0.0 <= info["test_accuracy"] <= 1.0
    text = Path(str(report) + ".md").read_text()
    assert info["sha256"] in text and "python benchmarks/pretrain_trunk.py" in text


def test_an_interrupted_run_continues_to_the_same_weights(source, tmp_path) -> None:
    arrays = pretrain.load_fashion_mnist(source, verify=False)
    cfg = pretrain.PretrainConfig(epochs=2, batch_size=16, limit_test=20)
    whole = pretrain.pretrain(arrays, cfg, tmp_path / "whole.pth", log=lambda _t: None)
    cut = tmp_path / "cut.pth"
    assert pretrain.pretrain(arrays, cfg, cut, log=lambda _t: None, save_every=1,
                             stop_after=5)["stopped"]
    assert not cut.exists() and Path(str(cut) + ".state.pth").is_file()
    lines = []
    resumed = pretrain.pretrain(arrays, cfg, cut, log=lines.append)
    assert lines[0] == "resuming at epoch 2, batch 1"
    assert resumed["sha256"] == whole["sha256"]
    assert resumed["epoch_losses"] == pytest.approx(whole["epoch_losses"], abs=1e-6)
    # a state of other settings is refused, not silently continued
    with pytest.raises(SystemExit, match="other settings"):
        pretrain.pretrain(arrays, pretrain.PretrainConfig(epochs=3, batch_size=16), cut)


def test_draws_look_like_scene_products() -> None:
    cfg = pretrain.PretrainConfig()
    products = torch.zeros(8, 28, 28, dtype=torch.uint8)
    products[:, 4:24, 4:24] = 255
    x = pretrain.draw(products, torch.Generator().manual_seed(0), cfg)
    assert x.shape == (8, 3, cfg.canvas, cfg.canvas)
    grey = x[:, 0] * pretrain.IMAGE_STD[0] + pretrain.IMAGE_MEAN[0]
    bright = grey > cfg.ink / 255
    # each product shows, and the background stays below the ink level
    assert bright.flatten(1).any(1).all()
    assert (grey[~bright] < cfg.ink / 255).all()


def test_a_bad_source_is_one_line(tmp_path, capsys) -> None:
    assert pretrain.main(["--source", str(tmp_path), "--out", str(tmp_path / "w.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python benchmarks/pretrain_trunk.py: error: ")
