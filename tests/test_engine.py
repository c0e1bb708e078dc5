"""Trainer, config and data order of dynrcnn.engine on the CPU (tiny backbone, tiny data).

The fake dataset here (FakeCocoDetection, write_fake_coco) implements dynrcnn.data's
CocoDetection interface on a tiny COCO json written with json.dump, so these tests do not
depend on the data module; test_checkpoint.py and the torchrun script import it from here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from pycocotools.coco import COCO  # noqa: E402

from dynrcnn.dynamic import DynamicConfig  # noqa: E402
from dynrcnn.engine import (  # noqa: E402
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    WarmupMultiStep,
    add_dataclass_args,
    build_scheduler,
    config_from_dict,
    config_to_dict,
    dataclass_from_args,
    effective_lr,
    load_checkpoint,
    load_config,
    read_jsonl,
)
from dynrcnn.engine.sampling import AugmentedDataset, ResumableBatchSampler, hflip  # noqa: E402
from dynrcnn.engine.schedule import milestones_for  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WIDTH, HEIGHT = 128, 96
# Non-contiguous COCO category ids: label k maps to CATEGORIES[k-1]["id"].
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "wide"}, {"id": 9, "name": "tall"}]
# Small RPN / sampler settings keep a step near 0.1 s; everything else is torchvision's.
SMALL_MODEL = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                   rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=100,
                   box_batch_size_per_image=64)


# --------------------------------------------------------------------------- fake data


def write_fake_coco(path: str, num_images: int, seed: int, first_id: int = 100) -> str:
    """A COCO instances json: num_images images of WIDTH x HEIGHT with 1-3 boxes each."""
    gen = torch.Generator().manual_seed(seed)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": WIDTH,
                       "height": HEIGHT})
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            w, h = (12 + torch.rand(2, generator=gen) * 40).tolist()
            x = float(torch.rand((), generator=gen)) * (WIDTH - w)
            y = float(torch.rand((), generator=gen)) * (HEIGHT - h)
            cat = CATEGORIES[int(torch.randint(0, len(CATEGORIES), (), generator=gen))]["id"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


class FakeCocoDetection:
    """dynrcnn.data.CocoDetection's interface; images are drawn from the annotations
    (noise plus one flat intensity per class inside each box), so nothing is read from disk
    but the json."""

    def __init__(self, images_dir: str, annotation_file: str, train: bool,
                 transforms: Any = None, masks: bool = False) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(annotation_file)
        self.ids = sorted(self.coco.getImgIds())
        cat_ids = sorted(self.coco.getCatIds())
        self.label_to_cat_id = {k + 1: c for k, c in enumerate(cat_ids)}
        self.cat_id_to_label = {c: k for k, c in self.label_to_cat_id.items()}
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in cat_ids]
        self.num_classes = len(cat_ids) + 1
        self.masks = masks
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        anns = self.coco.imgToAnns[image_id]
        gen = torch.Generator().manual_seed(image_id)
        image = 0.2 * torch.rand(3, h, w, generator=gen)
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns],
                             dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns],
                              dtype=torch.int64)
        masks = torch.zeros(len(anns), h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            image[int(labels[k]) - 1, y1:y2, x1:x2] = 0.9
            masks[k, y1:y2, x1:x2] = 1
        target: Dict[str, Any] = {"boxes": boxes, "labels": labels, "image_id": image_id}
        if self.masks:
            target["masks"] = masks
        return image, target


def fake_datasets(root: str, masks: bool = False, num_train: int = 8,
                  num_val: int = 5) -> Tuple[FakeCocoDetection, FakeCocoDetection]:
    train_ann = write_fake_coco(os.path.join(root, "train.json"), num_train, seed=1)
    val_ann = write_fake_coco(os.path.join(root, "val.json"), num_val, seed=2, first_id=500)
    return (FakeCocoDetection(root, train_ann, train=True, masks=masks),
            FakeCocoDetection(root, val_ann, train=False, masks=masks))


def small_config(out_dir: str, **overrides: Any) -> TrainConfig:
    """6 iterations of Dynamic R-CNN on tiny_fpn; T and beta update every 2 iterations
    (k = 1 per image, so they move away from 0.4 / 1.0 on this data)."""
    base = dict(arch="dynamic_rcnn", backbone="tiny_fpn", out_dir=out_dir, iterations=6,
                batch_size=2, lr=0.01, scale_lr=False, warmup_iters=2, checkpoint_period=3,
                log_period=1, num_workers=0, progress=False, plot=False, device="cpu",
                min_size=HEIGHT, max_size=WIDTH, model_kwargs=dict(SMALL_MODEL),
                dynamic=DynamicConfig(k_iou=1, k_err=1, interval=2), seed=0)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run faster that way, and
    bitwise resume comparisons need the same thread count in every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Tuple[FakeCocoDetection, FakeCocoDetection]:
    return fake_datasets(str(tmp_path_factory.mktemp("fake_coco")))


def final_state(trainer: Trainer) -> Dict[str, Any]:
    state = trainer.dynamic_state
    assert state is not None
    return {"iteration": trainer.iteration, "iou_thr": state.iou_thr.item(),
            "beta": state.beta.item(), "records": state.records,
            "lr": trainer.optimizer.param_groups[0]["lr"]}


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-6, atol=1e-7, equal_nan=True,
                                   msg=lambda m, k=key: f"{k}: {m}")


# --------------------------------------------------------------------------- training


def test_train_writes_log_config_checkpoints(tmp_path, data):
    train_ds, _ = data
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


def test_lr_schedule_warmup_then_steps():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.02, momentum=0.9)
    sched = build_scheduler(opt, max_iter=12, steps=(8 / 12, 11 / 12), gamma=0.1,
                            warmup_iters=4, warmup_factor=0.25)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.02 * (0.25 + 0.75 * i / 4) for i in range(4)] + [0.02] * 4 + \
        [0.002] * 3 + [0.0002]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert milestones_for(90000, (8 / 12, 11 / 12)) == (60000, 82500)
    # the schedule object travels in the scheduler's state_dict (numbers only)
    state = sched.state_dict()
    assert state["lr_lambdas"][0]["milestones"] == [8, 11]


def test_linear_lr_scaling():
    cfg = TrainConfig(lr=0.02, batch_size=2, lr_reference_batch=16)
    assert effective_lr(cfg, world_size=8) == pytest.approx(0.02)
    assert effective_lr(cfg, world_size=1) == pytest.approx(0.0025)
    assert effective_lr(dataclasses.replace(cfg, scale_lr=False), 1) == 0.02


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, data):
    train_ds, _ = data
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


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_noop(tmp_path, data):
    train_ds, _ = data
    cfg = small_config(str(tmp_path / "run"), iterations=2, checkpoint_period=10, resume=True)
    assert Trainer(cfg, train_dataset=train_ds).train()["iterations"] == 2
    again = Trainer(cfg, train_dataset=train_ds)
    assert again.start_iter == 2
    summary = again.train()
    assert summary["iterations"] == 2 and summary["start_iter"] == 2


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


def test_non_finite_loss_stops_without_checkpoint(tmp_path, data):
    train_ds, _ = data
    trainer = Trainer(small_config(str(tmp_path / "run")), train_dataset=train_ds)
    trainer.ddp_model = NaNAt(trainer.model, at=3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_classifier=nan"):
        trainer.train()
    assert not os.path.exists(tmp_path / "run" / "model_0000003.pth")
    assert trainer.checkpointer.last_checkpoint() is None
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_amp_is_ignored_on_cpu_with_a_warning(tmp_path, data):
    train_ds, _ = data
    with pytest.warns(RuntimeWarning, match="amp=True is ignored"):
        trainer = Trainer(small_config(str(tmp_path / "run"), amp=True, iterations=1),
                          train_dataset=train_ds)
    assert not trainer.amp and not trainer.scaler.is_enabled()
    assert math.isfinite(trainer.train()["total_loss"])


def test_non_dynamic_arch_trains_and_logs_null_t_beta(tmp_path, data):
    train_ds, _ = data
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
def test_every_parameter_gets_a_gradient(arch, data):
    """Why DDP runs with find_unused_parameters=False by default: no detector leaves a
    trainable parameter out of the loss (a batch with an image without objects included)."""
    from dynrcnn.engine.builders import build_model

    train_ds, _ = data
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


# --------------------------------------------------------------------------- data order


def test_batch_sampler_resumes_mid_epoch_and_shards_disjointly():
    def take(sampler: ResumableBatchSampler, n: int) -> List[List[Tuple[int, int]]]:
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(ResumableBatchSampler(10, 3, seed=5), 9)
    assert take(ResumableBatchSampler(10, 3, seed=5, start_iter=4), 5) == full[4:]
    # 3 batches per epoch (the incomplete last one dropped); epochs are reshuffled
    assert [i for i, _ in sum(full[:3], [])] != [i for i, _ in sum(full[3:6], [])]
    ranks = [take(ResumableBatchSampler(10, 2, rank=r, world_size=2, seed=5), 2)
             for r in range(2)]
    seen = [i for batches in ranks for batch in batches for i, _ in batch]
    assert len(seen) == len(set(seen)) == 8
    # the per-sample seed depends on (seed, epoch, index), not on rank or position
    assert full[0][0][1] != take(ResumableBatchSampler(10, 3, seed=6), 1)[0][0][1]


def test_hflip_mirrors_boxes_and_masks(data):
    train_ds, _ = data
    image, target = train_ds[0]
    flipped, ft = hflip(image, {**target, "masks": torch.zeros(len(target["boxes"]),
                                                               HEIGHT, WIDTH)})
    torch.testing.assert_close(flipped.flip(-1), image)
    b, fb = target["boxes"], ft["boxes"]
    torch.testing.assert_close(fb[:, 0], WIDTH - b[:, 2])
    torch.testing.assert_close(fb[:, 2], WIDTH - b[:, 0])
    torch.testing.assert_close(fb[:, [1, 3]], b[:, [1, 3]])
    # augmentation is a function of the sample seed
    aug = AugmentedDataset(train_ds, hflip_prob=0.5)
    flips = [bool((aug[(0, s)][0] != image).any()) for s in range(16)]
    assert flips == [bool((aug[(0, s)][0] != image).any()) for s in range(16)]
    assert any(flips) and not all(flips)


# --------------------------------------------------------------------------- config


def test_every_config_field_is_settable_from_the_command_line():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, TrainConfig)
    defaults = dataclass_from_args(TrainConfig, parser.parse_args([]))
    assert defaults == TrainConfig()
    args = parser.parse_args([
        "--arch", "faster_rcnn", "--iterations", "12", "--steps", "8/12", "0.9",
        "--amp", "--no-progress", "--grad-clip", "5", "--num-classes", "none",
        "--dynamic-k-iou", "50", "--dynamic-per-image", "--dynamic-beta-min", "0",
        "--model-kwargs", '{"rpn_nms_thresh": 0.8}', "--data-dir", "some/where"])
    cfg = dataclass_from_args(TrainConfig, args)
    assert cfg.arch == "faster_rcnn" and cfg.iterations == 12
    assert cfg.steps == pytest.approx((8 / 12, 0.9)) and isinstance(cfg.steps, tuple)
    assert cfg.amp and not cfg.progress and cfg.grad_clip == 5.0 and cfg.num_classes is None
    assert cfg.dynamic == DynamicConfig(k_iou=50, per_image=True, beta_min=0.0)
    assert cfg.model_kwargs == {"rpn_nms_thresh": 0.8}
    assert cfg.data_paths()["val_ann"] == os.path.join("some/where", "annotations",
                                                       "instances_val.json")
    options = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {"dynamic"} <= options
    assert {f"dynamic__{f.name}" for f in dataclasses.fields(DynamicConfig)} <= options
    assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg


def test_config_validation_errors_name_the_field():
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=(0.9, 0.5))
    with pytest.raises(ValueError, match="hflip"):
        TrainConfig(hflip=2.0)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        config_from_dict(TrainConfig, {"iteratons": 3})


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


def test_data_order_and_augmentation_do_not_depend_on_workers(tmp_path, data):
    train_ds, _ = data
    logs = []
    for workers in (0, 2):
        run = str(tmp_path / f"run{workers}")
        Trainer(small_config(run, num_workers=workers, iterations=3, hflip=0.5),
                train_dataset=train_ds).train()
        logs.append([(r["total_loss"], r["iou_thr"], r["beta"])
                     for r in read_jsonl(os.path.join(run, "log.jsonl"))])
    assert logs[0] == logs[1]


# --------------------------------------------------------------------------- torchrun

TORCHRUN_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
import torch
torch.set_num_threads(1)
from test_engine import fake_datasets, small_config
from dynrcnn.engine import Trainer, evaluate

out = {out!r}
rank = int(os.environ["RANK"])
train_ds, val_ds = fake_datasets(os.path.join(out, "data"))

def hook(trainer, n):
    s = trainer.dynamic_state
    with open(os.path.join(out, f"rank{{rank}}.jsonl"), "a") as f:
        f.write(json.dumps({{"iteration": n, "iou_thr": s.iou_thr.item(),
                            "beta": s.beta.item(), "records": s.records,
                            "lr": trainer.optimizer.param_groups[0]["lr"],
                            "param_sum": sum(float(p.double().sum())
                                             for p in trainer.model.parameters())}}) + "\\n")

trainer = Trainer(small_config(os.path.join(out, "run"), batch_size=1, iterations=6),
                  train_dataset=train_ds, hooks=[hook])
summary = trainer.train()
metrics = evaluate(trainer.model, val_ds, batch_size=1, progress=False, save_results=True,
                   out_dir=os.path.join(out, "eval") if rank == 0 else None)
if rank == 0:
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({{"summary": summary, "metrics": metrics}}, f)
trainer.close()
"""


def test_torchrun_two_ranks_share_t_and_beta(tmp_path, data):
    out = str(tmp_path)
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT.format(tests_dir=TESTS_DIR, out=out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    logs = [read_jsonl(str(tmp_path / f"rank{r}.jsonl")) for r in range(2)]
    assert [r["iteration"] for r in logs[0]] == list(range(1, 7))
    for a, b in zip(*logs):
        assert (a["iou_thr"], a["beta"], a["records"], a["lr"]) == \
            (b["iou_thr"], b["beta"], b["records"], b["lr"])
        assert a["param_sum"] == pytest.approx(b["param_sum"], rel=1e-9)  # DDP in step
    assert (logs[0][-1]["iou_thr"], logs[0][-1]["beta"]) != (0.4, 1.0)  # T/beta did move

    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["summary"]["world_size"] == 2
    ckpt = load_checkpoint(tmp_path / "run" / "model_final.pth")
    assert len(ckpt["rng"]) == 2 and ckpt["world_size"] == 2
    # linear scaling: total batch 2 -> lr as configured (scale_lr=False here)
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.01)

    # distributed evaluation (uneven shards of 3 + 2 images) equals a single-process one
    from dynrcnn.engine.builders import build_model
    from dynrcnn.engine.evaluator import run_inference

    _, val_ds = fake_datasets(str(tmp_path / "data"))
    cfg = config_from_dict(TrainConfig, ckpt["config"])
    model = build_model(cfg, cfg.num_classes)
    model.load_state_dict(ckpt["model"])
    single = run_inference(model.eval(), val_ds, torch.device("cpu"), progress=False)
    gathered = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert single, "the model should detect something to compare"

    def key(r: Dict[str, Any]) -> Tuple[int, float]:
        return r["image_id"], -r["score"]

    assert len(gathered) == len(single)
    for a, b in zip(sorted(gathered, key=key), sorted(single, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
    assert result["metrics"]["bbox"] == pytest.approx(
        json.loads((tmp_path / "eval" / "metrics.json").read_text())["bbox"])
