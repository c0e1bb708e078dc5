"""Precedence of the command line over a --config file (issue 10, point 2): an explicit
flag always wins, also when its value is the built-in default; resume / overwrite are
per-invocation and never come from a saved config."""

from __future__ import annotations

import json

import pytest

import dynrcnn.engine
from dynrcnn.cli import main
from dynrcnn.engine import TrainConfig, config_to_dict, save_config


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig `dynrcnn train` would run (training itself replaced)."""
    seen = []

    def fake_train(config):
        seen.append(config)
        return {"iterations": 0, "time_s": 0.0, "checkpoint": None}

    monkeypatch.setattr(dynrcnn.engine, "train", fake_train)
    return seen


def write_config(path, **fields) -> str:
    data = config_to_dict(TrainConfig())
    data.update(fields)
    path.write_text(json.dumps(data))
    return str(path)


def test_flags_equal_to_the_default_still_override_the_file(tmp_path, captured):
    cfg = write_config(tmp_path / "c.json", backbone="tiny_fpn", hflip=0.0,
                       out_dir="runs/merge", dynamic={"interval": 5})
    assert main(["train", "--config", cfg, "--backbone", "resnet50_fpn", "--hflip", "0.5",
                 "--out-dir", "runs/train", "--dynamic-interval", "100"]) == 0
    config = captured[0]
    assert (config.backbone, config.hflip, config.out_dir) == ("resnet50_fpn", 0.5,
                                                               "runs/train")
    assert config.dynamic.interval == 100


def test_unset_flags_keep_the_files_values(tmp_path, captured):
    cfg = write_config(tmp_path / "c.json", backbone="tiny_fpn", iterations=7,
                       dynamic={"interval": 5, "k_iou": 9})
    assert main(["train", "--config", cfg, "--dynamic-k-err", "3"]) == 0
    config = captured[0]
    assert (config.backbone, config.iterations) == ("tiny_fpn", 7)
    assert (config.dynamic.interval, config.dynamic.k_iou, config.dynamic.k_err) == (5, 9, 3)


def test_resume_is_never_read_from_a_config_file(tmp_path, captured):
    """A config written by a --resume run of the old code holds "resume": true."""
    cfg = write_config(tmp_path / "c.json", resume=True)
    assert main(["train", "--config", cfg, "--no-resume"]) == 0
    assert main(["train", "--config", cfg]) == 0
    assert main(["train", "--config", cfg, "--resume"]) == 0
    assert [c.resume for c in captured] == [False, False, True]


def test_saved_configs_leave_out_resume_and_overwrite(tmp_path):
    path = tmp_path / "config.json"
    save_config(TrainConfig(resume=True), str(path))
    saved = json.loads(path.read_text())
    assert "resume" not in saved and "overwrite" not in saved


@pytest.mark.parametrize("cls_name", ["TrainConfig", "EvalConfig"])
def test_every_flag_has_help_from_the_field_docs(cls_name):
    import argparse
    import dataclasses

    from dynrcnn.engine import config as config_module
    from dynrcnn.engine.config_args import add_dataclass_args

    cls = getattr(config_module, cls_name)
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, cls)
    helps = {a.dest: a.help or "" for a in parser._actions}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name == "dynamic":
            continue
        text = helps[f.name]
        assert not text.startswith("(default"), f"{cls_name}.{f.name} has no help"
