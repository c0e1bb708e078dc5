"""TrainConfig (command line, validation, round trip) and the learning-rate schedule."""

from __future__ import annotations

import argparse
import dataclasses
import os

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from dynrcnn.dynamic import DynamicConfig  # noqa: E402
from dynrcnn.engine import (  # noqa: E402
    TrainConfig,
    add_dataclass_args,
    build_scheduler,
    config_from_dict,
    config_to_dict,
    dataclass_from_args,
    effective_lr,
)
from dynrcnn.engine.schedule import milestones_for  # noqa: E402

# --------------------------------------------------------------------------- lr schedule


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
