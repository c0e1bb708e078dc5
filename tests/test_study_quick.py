"""The study end to end at tiny size (issue 9, acceptance: `--quick` smoke run): four real
training runs in worker processes, the report, then a rerun that skips the finished runs,
resumes a half-finished one from its checkpoint and evaluates one that was killed between
its final checkpoint and its metrics."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import experiment  # noqa: E402


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    assert experiment.main(["--quick", "--out", out]) == 0
    return out


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_quick_study_writes_the_report(quick_study) -> None:
    out = quick_study
    report = read(os.path.join(out, "report.md"))
    assert report.startswith("# Accuracy study (4 of 4 runs finished)")
    for needle in ("- hardware:", "- commit:", "--quick", "baseline 0,1; dla_dsl 0,1",
                   "| dla_dsl | 0,1 |", "(n=2)", "## Figure-1 diagnostics"):
        assert needle in report
    assert "![training dynamics](report_dynamics.png)" in report
    for name in ("report_ap_vs_iou.png", "report_dynamics.png", "report.json", "study.log",
                 "study.json"):
        assert os.path.isfile(os.path.join(out, name))
    assert not os.path.exists(os.path.join(out, "study.lock"))


def test_archive_restores_the_finished_runs_without_checkpoints(quick_study, tmp_path,
                                                                 capsys) -> None:
    archive = os.path.join(quick_study, "report_runs")
    files = sorted(os.path.relpath(os.path.join(d, f), archive)
                   for d, _, names in os.walk(archive) for f in names)
    assert "dla_dsl/seed1/eval_0000004/metrics.json" in files
    assert "baseline/seed0/log.jsonl" in files and "study.json" in files
    assert not any(f.endswith(".pth") for f in files)
    # a new machine: the archive copied into an empty --out is a finished study
    fresh = str(tmp_path / "restored")
    shutil.copytree(archive, fresh)
    capsys.readouterr()
    assert experiment.main(["--quick", "--out", fresh, "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert len(status) == 4 and all(line.startswith("finished") for line in status)
    # --jobs here is this command's flag: the header keeps how the runs were run
    assert experiment.main(["--quick", "--out", fresh, "--report-only", "--jobs", "2"]) == 0
    assert "1 thread(s) per run, 1 run(s) side by side" in read(os.path.join(fresh,
                                                                            "report.md"))
    table = read(os.path.join(fresh, "report.md")).split("## Table 3")[1]
    assert table == read(os.path.join(quick_study, "report.md")).split("## Table 3")[1]


def test_rerun_skips_resumes_and_evaluates(quick_study, capsys) -> None:
    out = quick_study
    half = os.path.join(out, "dla_dsl", "seed1")  # back to its earliest kept checkpoint
    periodic = sorted(n for n in os.listdir(half) if n.startswith("model_0"))
    assert periodic, "the quick study keeps periodic checkpoints"
    for name in os.listdir(half):
        if name.startswith("eval_") or name == "model_final.pth" or name in periodic[1:]:
            path = os.path.join(half, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with open(os.path.join(half, "last_checkpoint"), "w") as f:
        f.write(periodic[0])
    killed = os.path.join(out, "baseline", "seed1")  # final checkpoint, no metrics
    shutil.rmtree(os.path.join(killed, "eval_0000004"))
    assert experiment.main(["--quick", "--out", out]) == 0
    log = read(os.path.join(out, "study.log")).split("study in ")[-1]
    assert "2 finished earlier, 2 to run" in log
    assert "resuming dla_dsl seed 1" in log and "resuming baseline seed 1" in log
    assert "starting" not in log and "FAILED" not in log
    assert os.path.isfile(os.path.join(half, "eval_0000004", "metrics.json"))
    assert f"resumed from {os.path.join(half, periodic[0])}" in read(os.path.join(half,
                                                                           "train.log"))
    capsys.readouterr()
    assert experiment.main(["--quick", "--out", out, "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert len(status) == 4 and all(line.startswith("finished") for line in status)


def test_every_run_is_evaluated_at_each_setting_on_val_and_test(quick_study, tmp_path) -> None:
    """Issue 18: each finished run has val and test metrics at both protocols' settings; the
    evaluation at the run's own setting on val repeats the trainer's final one exactly."""
    import json

    from dynrcnn.engine.config import TrainConfig, load_config
    from dynrcnn.study.settings import evaluate_setting, metrics_path, planned_evals

    run_dir = os.path.join(quick_study, "dla_dsl", "seed0")
    config = load_config(TrainConfig, os.path.join(run_dir, "job.json"))
    planned = planned_evals(config)
    assert len(planned) == 4 and {s for s, _ in planned} == {"val", "test"}
    for split, setting in planned:
        assert os.path.isfile(metrics_path(run_dir, config, split, setting))
    again = evaluate_setting(str(tmp_path), config, "val", "300_nms070",
                             weights=os.path.join(run_dir, "model_final.pth"))
    with open(metrics_path(run_dir, config, "val", "300_nms070")) as f:
        assert json.load(f)["bbox"] == pytest.approx(again["bbox"], abs=0)


def test_best_vs_best_over_the_quick_study(quick_study, tmp_path) -> None:
    out = str(tmp_path / "bvb.md")
    assert experiment.main(["--quick", "--out", quick_study, "--best-vs-best", quick_study,
                            "--arms", "baseline", "dla_dsl", "--results", out]) == 0
    report = read(out)
    assert report.startswith("# Best against best")
    assert "Seeds: 0, 1 (n = 2)" in report and report.count("| yes |") == 2
    assert "| dla_dsl - baseline |" in report


def test_archived_run_is_retrained_for_evaluations_it_lacks(quick_study, tmp_path) -> None:
    """A run restored from the archive (metrics, no checkpoints) that lacks an evaluation
    is trained again (deterministic: the same val metrics) and then evaluated."""
    import json

    fresh = str(tmp_path / "restored")
    shutil.copytree(os.path.join(quick_study, "report_runs"), fresh)
    run_dir = os.path.join(fresh, "baseline", "seed0")
    final = read(os.path.join(run_dir, "eval_0000004", "metrics.json"))
    shutil.rmtree(os.path.join(run_dir, "eval_test_1000_nms085"))
    shutil.copytree(os.path.join(quick_study, "data"), os.path.join(fresh, "data"))
    study_json = os.path.join(fresh, "study.json")  # --quick keeps its data inside --out
    with open(study_json) as f:
        recorded = json.load(f)
    with open(study_json, "w") as f:
        json.dump({**recorded, "data_dir": os.path.join(fresh, "data")}, f)
    assert experiment.main(["--quick", "--out", fresh]) == 0
    log = read(os.path.join(fresh, "study.log")).split("study in ")[-1]
    assert "3 finished earlier, 1 to run" in log and "retraining baseline seed 0" in log
    assert os.path.isfile(os.path.join(run_dir, "eval_test_1000_nms085", "metrics.json"))
    assert read(os.path.join(run_dir, "eval_0000004", "metrics.json")) == final
    assert "WARNING" not in read(os.path.join(run_dir, "train.log"))


@pytest.mark.slow  # 20 s of make test for a harness path (experiment.py --finetune)
def test_fine_tuning_study_starts_each_seed_from_its_source(quick_study, tmp_path) -> None:
    """Issue 18, point 5: --init-weights with {seed} starts every run of a study from the
    source detector of its seed (loaded before training, named in the run's log and in the
    report's header); a missing source is one usage error before anything trains."""
    import json

    source = os.path.join(quick_study, "baseline", "seed{seed}", "model_final.pth")
    out = str(tmp_path / "finetune")
    assert experiment.main(["--quick", "--out", out, "--init-weights", source]) == 0
    for arm in ("baseline", "dla_dsl"):
        for seed in (0, 1):
            run_dir = os.path.join(out, arm, f"seed{seed}")
            with open(os.path.join(run_dir, "job.json")) as f:
                assert json.load(f)["init_weights"] == source.format(seed=seed)
            log = read(os.path.join(run_dir, "train.log"))
            assert f"init-weights {source.format(seed=seed)}: loaded" in log
            assert f"starting at iteration 0 from {source.format(seed=seed)}" in log
    assert f"- fine-tuned: every run starts from `{source}`" in read(
        os.path.join(out, "report.md"))
    # the same --out with another source mixes two regimes: refused, as other settings are
    other = str(tmp_path / "other_seed{seed}.pth")
    assert experiment.main(["--quick", "--out", out, "--init-weights", other]) == 2
    assert experiment.main(["--quick", "--out", str(tmp_path / "missing"),
                            "--init-weights", other]) == 2
    assert not os.path.exists(tmp_path / "missing" / "baseline")
