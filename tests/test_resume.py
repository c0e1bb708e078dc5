"""Resuming a training run from its last checkpoint of dynrcnn.engine on the CPU."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from engine_helpers import assert_same_params, final_state, small_config  # noqa: E402

from dynrcnn.engine import Trainer, load_checkpoint, read_jsonl  # noqa: E402

# One intra-op thread (conftest.single_thread): faster for tiny models on a shared machine,
# and bitwise comparisons between runs need the same thread count in every run.
pytestmark = pytest.mark.usefixtures("single_thread")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    reference = Trainer(small_config(str(tmp_path / "ref")), train_dataset=train_ds)
    reference.train()

    class Interrupt(Exception):
        pass

    def stop_at_4(trainer: Trainer, n: int) -> None:
        if n == 4:
            raise Interrupt

    run_dir = str(tmp_path / "interrupted")
    with pytest.raises(Interrupt):
        Trainer(small_config(run_dir), train_dataset=train_ds, hooks=[stop_at_4]).train()
    assert read_jsonl(os.path.join(run_dir, "log.jsonl"))[-1]["iteration"] == 4

    resumed = Trainer(small_config(run_dir, resume=True), train_dataset=train_ds)
    ckpt = load_checkpoint(os.path.join(run_dir, "model_0000003.pth"))
    assert resumed.start_iter == 3
    assert resumed.resumed_from == os.path.join(run_dir, "model_0000003.pth")
    state = resumed.dynamic_state
    assert state.iou_thr.item() == ckpt["model"]["roi_heads.dynamic_state.iou_thr"].item()
    assert state.beta.item() == ckpt["model"]["roi_heads.dynamic_state.beta"].item()
    assert state.records == 3
    assert resumed.optimizer.param_groups[0]["lr"] == ckpt["optimizer"]["param_groups"][0]["lr"]
    summary = resumed.train()

    assert summary["start_iter"] == 3 and summary["iterations"] == 6
    assert final_state(resumed) == final_state(reference)
    assert_same_params(resumed.model, reference.model)
    # the log reads as one run: iterations 1..6 once each, same losses as the reference
    log_ref = read_jsonl(str(tmp_path / "ref" / "log.jsonl"))
    log_res = read_jsonl(os.path.join(run_dir, "log.jsonl"))
    assert [r["iteration"] for r in log_res] == list(range(1, 7))
    for a, b in zip(log_res, log_ref):
        assert a["total_loss"] == pytest.approx(b["total_loss"], rel=1e-5)
        assert (a["iou_thr"], a["beta"], a["lr"]) == (b["iou_thr"], b["beta"], b["lr"])


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_noop(tmp_path, fake_coco):
    train_ds, _ = fake_coco
    cfg = small_config(str(tmp_path / "run"), iterations=2, checkpoint_period=10, resume=True)
    assert Trainer(cfg, train_dataset=train_ds).train()["iterations"] == 2
    again = Trainer(cfg, train_dataset=train_ds)
    assert again.start_iter == 2
    summary = again.train()
    assert summary["iterations"] == 2 and summary["start_iter"] == 2


def test_resume_warns_on_a_changed_field_and_not_on_one_the_checkpoint_predates(
        tmp_path, fake_coco):
    """A field added after the checkpoint was written (DynamicConfig.mask_iou) is compared
    at its default, not as a change; a real change is named."""
    import warnings as w

    import torch

    train_ds, _ = fake_coco
    run_dir = str(tmp_path / "run")
    Trainer(small_config(run_dir, iterations=3), train_dataset=train_ds).train()
    checkpoints = [n for n in os.listdir(run_dir) if n.startswith("model_")]
    assert checkpoints
    for name in checkpoints:
        path = os.path.join(run_dir, name)
        ckpt = torch.load(path, weights_only=False)
        del ckpt["config"]["dynamic"]["mask_iou"]  # as written before the field existed
        torch.save(ckpt, path)
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        Trainer(small_config(run_dir, iterations=6, resume=True), train_dataset=train_ds)
    changes = [str(x.message) for x in caught if "config differs" in str(x.message)]
    assert changes == ["resume: config differs from the checkpoint's in iterations (3 -> 6); "
                       "the optimizer and schedule continue from the checkpoint"]
    with pytest.warns(RuntimeWarning, match=r"lr \(0.01 -> 0.02\)"):
        Trainer(small_config(run_dir, iterations=6, lr=0.02, resume=True),
                train_dataset=train_ds)


def test_a_mask_config_saved_before_mask_iou_compares_as_the_mask_head_at_t() -> None:
    """with_defaults: a saved config without DynamicConfig.mask_iou trained its mask head
    at T (mask_iou None), so resuming it with today's default (0.5) is a change to name;
    without `before` the field is compared at its default."""
    from dynrcnn.dynamic import MASK_IOU_BEFORE
    from dynrcnn.engine import TrainConfig
    from dynrcnn.engine.config import config_to_dict, with_defaults

    saved = config_to_dict(TrainConfig(arch="dynamic_mask_rcnn"))
    del saved["dynamic"]["mask_iou"]
    del saved["seed"]  # a top-level field it lacks stays absent
    mask = with_defaults(TrainConfig, saved, {"dynamic": {"mask_iou": MASK_IOU_BEFORE}})
    assert mask["dynamic"]["mask_iou"] is None and "seed" not in mask
    assert with_defaults(TrainConfig, saved)["dynamic"]["mask_iou"] == 0.5
    saved["unknown_field"] = 1  # a newer config: compared as saved
    assert with_defaults(TrainConfig, saved)["unknown_field"] == 1
