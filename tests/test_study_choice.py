"""Issue 18, the user's comparison: each detector at its own best (training protocol, test
setting), chosen on val, reported on test, paired by seed (dynrcnn.study.choice)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from dynrcnn.engine.config import save_config
from dynrcnn.engine.presets import small_cpu_config
from dynrcnn.study.arms import PAPER_MODEL
from dynrcnn.study.choice import choice_report, choose, collect
from dynrcnn.study.settings import (
    STUDY_SETTINGS,
    metrics_path,
    own_setting,
    pending_evals,
    planned_evals,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import experiment  # noqa: E402


def write_run(study: str, arm: str, seed: int, data: str, paper: bool,
              ap: dict, init_weights: str | None = None) -> None:
    """A finished run: its job.json and metrics; ap[(split, setting)] = AP in percent (the
    other columns derived from it, AP90 = AP / 2)."""
    run_dir = os.path.join(study, arm, f"seed{seed}")
    config = small_cpu_config(data, run_dir, iterations=10, seed=seed,
                              model_kwargs=PAPER_MODEL if paper else {"rpn_nms_thresh": 0.7},
                              init_weights=init_weights)
    os.makedirs(run_dir, exist_ok=True)
    save_config(config, os.path.join(run_dir, "job.json"))
    for (split, setting), value in ap.items():
        path = metrics_path(run_dir, config, split, setting)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cols = {c: value / 100 for c in ("AP", "AP50", "AP60", "AP70", "AP80")}
        with open(path, "w") as f:
            json.dump({"bbox": {**cols, "AP90": value / 200}}, f)


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    for split in ("val", "test"):
        (root / "annotations" / f"instances_{split}.json").write_text("{}")
    return str(root)


def test_settings_name_each_protocols_rpn(data_dir) -> None:
    cpu = small_cpu_config(data_dir, "r", model_kwargs={"rpn_nms_thresh": 0.7})
    paper = small_cpu_config(data_dir, "r", model_kwargs=PAPER_MODEL)
    assert own_setting(cpu.model_kwargs) == "300_nms070"
    assert own_setting(paper.model_kwargs) == "1000_nms085"
    assert own_setting({"rpn_nms_thresh": 0.6}) is None
    # the trainer's own final evaluation stands for (val, own setting)
    assert metrics_path("r", cpu, "val", "300_nms070") == os.path.join(
        "r", "eval_0001200", "metrics.json")
    assert metrics_path("r", cpu, "val", "1000_nms085") == os.path.join(
        "r", "eval_val_1000_nms085", "metrics.json")
    assert planned_evals(cpu) == [(s, t) for s in ("val", "test") for t in STUDY_SETTINGS]
    os.remove(os.path.join(data_dir, "annotations", "instances_test.json"))
    assert pending_evals("r", cpu) == [("val", t) for t in STUDY_SETTINGS]


def test_choice_is_made_on_val_and_reported_on_test(tmp_path, data_dir) -> None:
    cpu, paper = str(tmp_path / "cpu"), str(tmp_path / "paper")
    for seed in range(3):
        # baseline: best on val trained and tested at 300 / 0.7; on test the other is better
        # (a choice made on test would flatter it)
        write_run(cpu, "baseline", seed, data_dir, False, {
            ("val", "300_nms070"): 60, ("val", "1000_nms085"): 50,
            ("test", "300_nms070"): 58 + seed, ("test", "1000_nms085"): 70})
        write_run(paper, "baseline", seed, data_dir, True, {
            ("val", "300_nms070"): 55, ("val", "1000_nms085"): 52,
            ("test", "300_nms070"): 90, ("test", "1000_nms085"): 90})
        write_run(paper, "dla_dsl", seed, data_dir, True, {
            ("val", "300_nms070"): 61, ("val", "1000_nms085"): 64,
            ("test", "300_nms070"): 60, ("test", "1000_nms085"): 60 + 2 * seed})
    write_run(paper, "dla_dsl", 3, data_dir, True, {("val", "1000_nms085"): 99})  # no test
    candidates = collect([cpu, paper], ["baseline", "dla_dsl"], STUDY_SETTINGS)
    choice = choose(candidates, ["baseline", "dla_dsl"])
    assert choice.seeds == [0, 1, 2]
    assert (choice.chosen["baseline"].trained, choice.chosen["baseline"].tested) == (
        "300_nms070", "300_nms070")
    assert (choice.chosen["dla_dsl"].trained, choice.chosen["dla_dsl"].tested) == (
        "1000_nms085", "1000_nms085")
    report = choice_report(choice)
    # test AP: dla_dsl 60, 62, 64; baseline 58, 59, 60 -> differences 2, 3, 4: mean 3,
    # sd 1, t(2) = 4.303 -> half width 4.303 / sqrt(3) = 2.48
    assert "| dla_dsl - baseline | +3.0 [+0.5, +5.5] (n=3) *" in report
    assert "| +2.0 / +3.0 / +4.0 |" in report  # AP per seed, seeds 0 / 1 / 2
    # a second reference (e.g. t060): every other arm against its choice, the baseline too
    both = choice_report(choice, ["baseline", "dla_dsl"])
    assert "| baseline - dla_dsl | -3.0 [-5.5, -0.5] (n=3) *" in both
    assert "| -2.0 / -3.0 / -4.0 |" in both and "dla_dsl - dla_dsl" not in both
    assert "each arm's choice minus dla_dsl's choice" in both
    assert report.count("| yes |") == 2
    assert "baseline, trained 300 @ NMS 0.7, tested 300 @ NMS 0.7 | 60.0 | 59.0" in report


def test_choice_needs_test_metrics(tmp_path, data_dir) -> None:
    write_run(str(tmp_path / "s"), "baseline", 0, data_dir, False,
              {("val", "300_nms070"): 60})
    with pytest.raises(ValueError, match="no run has both val and test metrics"):
        choose(collect([str(tmp_path / "s")], ["baseline"], STUDY_SETTINGS), ["baseline"])


def test_best_vs_best_bad_input_is_one_line(tmp_path, capsys) -> None:
    missing = str(tmp_path / "nope")
    assert experiment.main(["--best-vs-best", missing, "--arms", "baseline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--best-vs-best: no study directory" in err[0]
    (tmp_path / "empty").mkdir()
    assert experiment.main(["--best-vs-best", str(tmp_path / "empty"), "--arms",
                            "baseline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run has both val and test metrics" in err[0]


def test_fine_tuned_runs_are_their_own_candidates(tmp_path, data_dir) -> None:
    """A fine-tuned study and a from-scratch one in the same setting are two candidates,
    never pooled into one (their seed-0 runs are different detectors)."""
    scratch, tuned = str(tmp_path / "scratch"), str(tmp_path / "tuned")
    for seed in range(2):
        write_run(scratch, "baseline", seed, data_dir, True, {
            ("val", "1000_nms085"): 60, ("test", "1000_nms085"): 60})
        write_run(tuned, "baseline", seed, data_dir, True, {
            ("val", "1000_nms085"): 70, ("test", "1000_nms085"): 71},
            init_weights=f"src/seed{seed}/model_final.pth")
    candidates = collect([scratch, tuned], ["baseline"], ["1000_nms085"])
    assert sorted((c.fine_tuned, c.mean("val", "AP", [0, 1])) for c in candidates) == [
        (False, 60.0), (True, 70.0)]
    choice = choose(candidates, ["baseline"])
    assert choice.chosen["baseline"].fine_tuned
    assert "baseline, fine-tuned 1000 @ NMS 0.85, tested 1000 @ NMS 0.85 | 70.0 | 71.0" in (
        choice_report(choice))


def test_the_same_run_twice_is_refused(tmp_path, data_dir, capsys) -> None:
    """A study and a copy of its runs passed together would pool two copies of each seed;
    collect refuses, and the command says so in one line."""
    study, copy = str(tmp_path / "study"), str(tmp_path / "copy")
    for root in (study, copy):
        write_run(root, "baseline", 0, data_dir, True, {
            ("val", "1000_nms085"): 60, ("test", "1000_nms085"): 60})
    with pytest.raises(ValueError, match="are the same candidate"):
        collect([study, copy], ["baseline"], STUDY_SETTINGS)
    assert experiment.main(["--best-vs-best", study, copy, "--arms", "baseline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same candidate (baseline, seed 0" in err[0]
