"""Trainer of dynrcnn.engine on the CPU (tiny backbone, fake COCO data): what a run writes,
failure handling, every architecture, and training from the data module's files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from engine_helpers import HEIGHT, WIDTH, fake_datasets, small_config  # noqa: E402

from dynrcnn.engine import (  # noqa: E402
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    WarmupMultiStep,
    load_checkpoint,
    load_config,
    read_jsonl,
)
from dynrcnn.engine.schedule import milestones_for  # noqa: E402

# One intra-op thread (conftest.single_thread): faster for tiny models on a shared machine,
# and bitwise comparisons between runs need the same thread count in every run.
pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- training


def test_train_writes_log_config_checkpoints(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    cfg = small_config(str(tmp_path / "run"), plot=True)
    summary = Trainer(cfg, train_dataset=train_ds).train()

    run = tmp_path / "run"
    assert summary["iterations"] == 6 and summary["start_iter"] == 0
    assert math.isfinite(summary["total_loss"]) and summary["losses"]
    assert all(math.isfinite(v) for v in summary["losses"].values())
    assert summary["checkpoint"] == str(run / "model_final.pth")

    records = read_jsonl(str(run / "log.jsonl"))
    assert [r["iteration"] for r in records] == list(range(1, 7))
    for r in records:
        for key in ("total_loss", "loss_classifier", "loss_box_reg", "loss_objectness",
                    "loss_rpn_box_reg", "lr", "iou_thr", "beta", "time", "data_time"):
            assert key in r and math.isfinite(r[key]), key
    # T and beta follow DynamicState: they move at the updates (every 2 iterations) only
    assert records[0]["iou_thr"] == pytest.approx(0.4) and records[0]["beta"] == 1.0
    assert records[-1]["records"] == 6
    assert (records[-1]["iou_thr"], records[-1]["beta"]) != (0.4, 1.0)
    assert records[2]["iou_thr"] == records[1]["iou_thr"]

    # the logged lr is the schedule's: warmup over 2 iterations, decays at 4 and 6 (8/12,
    # 11/12 of 6 rounded)
    schedule = WarmupMultiStep(milestones_for(6, cfg.steps), 0.1, 2, cfg.warmup_factor)
    assert [r["lr"] for r in records] == pytest.approx([0.01 * schedule(i) for i in range(6)])

    saved = load_config(TrainConfig, str(run / "config.json"))
    assert saved == dataclasses.replace(cfg, num_classes=4)
    assert (run / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (run / "curves.png").stat().st_size > 0
    ckpt = load_checkpoint(run / "model_0000003.pth")
    assert ckpt["iteration"] == 3 and ckpt["world_size"] == 1
    assert "roi_heads.dynamic_state.iou_thr" in ckpt["model"]
    assert len(ckpt["rng"]) == 1 and ckpt["config"]["num_classes"] == 4


class NaNAt(nn.Module):
    """Wraps a detector; its loss_classifier is NaN from the `at`-th training call on."""

    def __init__(self, model: nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, images: List[Tensor], targets: Any) -> Dict[str, Tensor]:
        self.calls += 1
        losses = self.model(images, targets)
        if self.calls >= self.at:
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses


def test_non_finite_loss_stops_without_checkpoint(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    trainer = Trainer(small_config(str(tmp_path / "run")), train_dataset=train_ds)
    trainer.ddp_model = NaNAt(trainer.model, at=3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_classifier=nan"):
        trainer.train()
    assert not os.path.exists(tmp_path / "run" / "model_0000003.pth")
    assert trainer.checkpointer.last_checkpoint() is None
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_amp_is_ignored_on_cpu_with_a_warning(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    with pytest.warns(RuntimeWarning, match="amp=True is ignored"):
        trainer = Trainer(small_config(str(tmp_path / "run"), amp=True, iterations=1),
                          train_dataset=train_ds)
    assert not trainer.amp and not trainer.scaler.is_enabled()
    assert math.isfinite(trainer.train()["total_loss"])


def test_non_dynamic_arch_trains_and_logs_null_t_beta(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    cfg = small_config(str(tmp_path / "run"), arch="faster_rcnn", iterations=2,
                       grad_clip=1.0)
    summary = Trainer(cfg, train_dataset=train_ds).train()
    assert summary["iou_thr"] is None and math.isfinite(summary["total_loss"])
    assert read_jsonl(str(tmp_path / "run" / "log.jsonl"))[-1]["beta"] is None


def test_mask_arch_trains_and_evaluates_bbox_and_segm(tmp_path):
    train_ds, val_ds = fake_datasets(str(tmp_path / "data"), masks=True, num_val=2)
    cfg = small_config(str(tmp_path / "run"), arch="dynamic_mask_rcnn", iterations=2,
                       checkpoint_period=2, eval_period=2)
    summary = Trainer(cfg, train_dataset=train_ds, val_dataset=val_ds).train()
    assert math.isfinite(summary["losses"]["loss_mask"])
    assert set(summary["metrics"]) == {"bbox", "segm"}
    metrics = json.loads((tmp_path / "run" / "eval_0000002" / "metrics.json").read_text())
    assert metrics == summary["metrics"]
    assert read_jsonl(str(tmp_path / "run" / "eval.jsonl"))[0]["iteration"] == 2


@pytest.mark.parametrize("arch", ["faster_rcnn", "dynamic_rcnn", "cascade_rcnn", "mask_rcnn",
                                  "dynamic_mask_rcnn"])
def test_every_parameter_gets_a_gradient(arch, fake_coco):
    """Why DDP runs with find_unused_parameters=False by default: no detector leaves a
    trainable parameter out of the loss (a batch with an image without objects included)."""
    from dynrcnn.engine.builders import build_model

    train_ds, _ = fake_coco
    torch.manual_seed(0)
    model = build_model(small_config("unused", arch=arch), train_ds.num_classes)
    images, targets = zip(*(train_ds[i] for i in range(2)))
    targets = [dict(t) for t in targets]
    targets[1] = {**targets[1], "boxes": torch.zeros(0, 4),
                  "labels": torch.zeros(0, dtype=torch.int64)}
    for t in targets:
        n = t["boxes"].shape[0]
        t["masks"] = torch.zeros(n, HEIGHT, WIDTH, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(t["boxes"].round().long().tolist()):
            t["masks"][k, y1:y2, x1:x2] = 1
    model.train()
    sum(model(list(images), targets).values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


# --------------------------------------------------------------------------- real data module


def test_trains_from_config_paths_with_the_data_module(tmp_path):
    data_module = pytest.importorskip("dynrcnn.data")
    root = str(tmp_path / "synthetic")
    data_module.make_synthetic_coco(root, num_train=4, num_val=2, seed=0)
    cfg = small_config(str(tmp_path / "run"), data_dir=root, iterations=2,
                       checkpoint_period=2, eval_period=2)
    summary = Trainer(cfg).train()
    assert math.isfinite(summary["total_loss"])
    assert set(summary["metrics"]["bbox"]) >= {"AP", "AP50", "AP90"}
    assert (tmp_path / "run" / "eval_0000002" / "metrics.json").exists()

    # the CLI's eval path: rebuild the model from the checkpoint's config, same numbers
    from dynrcnn.engine import EvalConfig, run_evaluation

    out = tmp_path / "eval"
    metrics = run_evaluation(EvalConfig(weights=summary["checkpoint"], data_dir=root,
                                        out_dir=str(out), batch_size=2, num_workers=0,
                                        device="cpu", progress=False))
    assert metrics["bbox"] == pytest.approx(summary["metrics"]["bbox"])
    assert (out / "metrics.md").read_text().startswith("| | AP | AP50 |")
