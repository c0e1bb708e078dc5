"""Fine-tuning from a detector checkpoint with other classes (issue 17, point 2): what fits
by name and shape loads, the class-dependent predictor layers re-initialize, one line says
which; another architecture is an error naming a tensor; `--weights` stays strict."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision.models.detection as tvd

from dynrcnn.cli import main
from dynrcnn.modeling import (
    InitWeightsError,
    build_detector,
    load_detector_weights,
    load_fitting_weights,
)

pytestmark = pytest.mark.usefixtures("single_thread")
PREDICTOR = ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
             "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias")
SMALL = dict(min_size=128, max_size=128)


def stock_state(name: str, num_classes: int = 91) -> dict:
    torch.manual_seed(1)
    model = getattr(tvd, name)(weights=None, weights_backbone=None, num_classes=num_classes)
    return model.state_dict()


def test_a_class_count_change_reinitializes_only_the_predictor():
    state = stock_state("fasterrcnn_mobilenet_v3_large_fpn")
    torch.manual_seed(2)
    model = build_detector("dynamic_rcnn", "mobilenet_v3_large_fpn", num_classes=6, **SMALL)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_fitting_weights(model, state)
    assert [k for k, _, _ in report.reinitialized] == list(PREDICTOR)
    assert report.reinitialized[0][1:] == ([91, 1024], [6, 1024])
    assert not report.fresh and not report.skipped
    own = model.state_dict()
    assert report.loaded == report.total - 4
    for key, value in own.items():
        if key in PREDICTOR or "dynamic_state" in key:
            # kept its fresh initialization (empty DynamicState histories are NaN)
            torch.testing.assert_close(value, fresh[key], equal_nan=True, rtol=0, atol=0)
        else:
            assert torch.equal(value, state[key]), key
    line = report.summary("stock.pth")
    assert line.count("\n") == 0 and all(k in line for k in PREDICTOR)
    assert "[91, 1024]->[6, 1024]" in line


def test_mask_branch_fresh_or_skipped_and_other_layouts_refused():
    faster = stock_state("fasterrcnn_resnet50_fpn", num_classes=5)
    mask_model = build_detector("dynamic_mask_rcnn", "resnet50_fpn", num_classes=5, **SMALL)
    report = load_fitting_weights(mask_model, faster)
    assert report.fresh and all(k.startswith("roi_heads.mask_") for k in report.fresh)
    assert "roi_heads.mask_head.* (" in report.summary()

    mask = stock_state("maskrcnn_resnet50_fpn", num_classes=5)
    faster_model = build_detector("faster_rcnn", "resnet50_fpn", num_classes=5, **SMALL)
    report = load_fitting_weights(faster_model, mask)
    assert report.skipped and not report.reinitialized

    v2_model = build_detector("dynamic_rcnn", "resnet50_fpn_v2", num_classes=5, **SMALL)
    before = {k: v.clone() for k, v in v2_model.state_dict().items()}
    with pytest.raises(InitWeightsError, match=r"^\S+ (\[[\d, ]+\] )?is in the (file|model)"):
        load_fitting_weights(v2_model, faster)
    for key, value in v2_model.state_dict().items():  # nothing loaded
        torch.testing.assert_close(value, before[key], equal_nan=True, rtol=0, atol=0)


def test_build_detector_init_weights_logs_one_line(tmp_path, caplog):
    path = tmp_path / "stock91.pth"
    torch.save(stock_state("fasterrcnn_mobilenet_v3_large_fpn"), path)
    with caplog.at_level(logging.WARNING, logger="dynrcnn.modeling"):
        model = build_detector("faster_rcnn", "mobilenet_v3_large_fpn", num_classes=3,
                               init_weights=path, **SMALL)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "roi_heads.box_predictor.cls_score.weight" in lines[0]
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    with pytest.raises(ValueError, match="not both"):
        build_detector("faster_rcnn", "mobilenet_v3_large_fpn", num_classes=91, weights=path,
                       init_weights=path)


def test_weights_stays_strict_but_accepts_batchnorm_counters(tmp_path):
    """A stock weights=None model (BatchNorm2d, num_batches_tracked) loads with --weights
    into a model built for fine-tuning (FrozenBatchNorm2d): the counters are no mismatch;
    another class count still is."""
    path = tmp_path / "stock.pth"
    state = stock_state("fasterrcnn_resnet50_fpn")
    torch.save(state, path)
    model = build_detector("dynamic_rcnn", "resnet50_fpn", num_classes=91, weights=path,
                           **SMALL)
    own = model.state_dict()
    assert torch.equal(own["backbone.body.layer1.0.conv1.weight"],
                       state["backbone.body.layer1.0.conv1.weight"])
    with pytest.raises(RuntimeError, match=r"cls_score.weight is \[91, 1024\] in the file"):
        load_detector_weights(build_detector("faster_rcnn", "resnet50_fpn", num_classes=6,
                                             **SMALL), path)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes"))
    assert main(["make-synthetic", "--out", out, "--num-train", "4", "--num-val", "2",
                 "--image-size", "96", "96"]) == 0
    return out


def test_cli_fine_tunes_a_91_class_stock_v2_on_the_5_class_set(shapes, tmp_path, capsys):
    path = tmp_path / "stock_v2.pth"
    torch.save(stock_state("fasterrcnn_resnet50_fpn_v2"), path)
    run = tmp_path / "run"
    assert main(["train", "--data-dir", shapes, "--arch", "dynamic_rcnn", "--backbone",
                 "resnet50_fpn_v2", "--init-weights", str(path), "--iterations", "1",
                 "--batch-size", "1", "--out-dir", str(run), "--min-size", "96",
                 "--max-size", "96", "--num-workers", "0", "--no-progress",
                 "--no-plot"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("init-weights"))
    assert all(k in line for k in PREDICTOR) and "[91, 1024]->[6, 1024]" in line
    ckpt = torch.load(run / "model_final.pth", weights_only=True)
    assert torch.isfinite(ckpt["model"]["roi_heads.box_predictor.cls_score.weight"]).all()
    assert ckpt["model"]["roi_heads.box_predictor.cls_score.weight"].shape == (6, 1024)


def test_cli_refuses_another_architecture_in_one_line(shapes, tmp_path, capsys):
    path = tmp_path / "stock_v2.pth"
    torch.save(stock_state("fasterrcnn_mobilenet_v3_large_fpn"), path)
    common = ["train", "--data-dir", shapes, "--iterations", "1", "--num-workers", "0",
              "--min-size", "96", "--max-size", "96", "--out-dir", str(tmp_path / "r")]
    assert main([*common, "--backbone", "tiny_fpn", "--init-weights", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dynrcnn train: error: --init-weights")
    assert "backbone.body." in err  # names a tensor
    assert main([*common, "--backbone", "tiny_fpn", "--init-weights", str(path),
                 "--weights", str(path)]) == 2
    assert "contradict" in capsys.readouterr().err


def test_a_fine_tuning_run_resumes_without_its_init_file(shapes, tmp_path, capsys):
    path = tmp_path / "stock_mobilenet.pth"
    torch.save(stock_state("fasterrcnn_mobilenet_v3_large_fpn"), path)
    run = tmp_path / "run"
    assert main(["train", "--data-dir", shapes, "--backbone", "mobilenet_v3_large_fpn",
                 "--init-weights", str(path), "--iterations", "2", "--checkpoint-period", "1",
                 "--out-dir", str(run), "--num-workers", "0", "--no-progress", "--no-plot",
                 "--min-size", "96", "--max-size", "96"]) == 0
    assert "init-weights" in capsys.readouterr().out
    path.unlink()  # the user cleaned up; the run's checkpoints hold the weights
    with pytest.warns(RuntimeWarning, match=r"iterations \(2 -> 3\)"):
        assert main(["train", "--config", str(run / "config.json"), "--resume",
                     "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "init-weights" not in out and "iterations=3" in out
