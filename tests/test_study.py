"""The study library's pieces without training (issue 9, points 2-4): arms, seeds, the
statistics (mean ± sd, paired 95% t-intervals, the schedule rule), the report from given
numbers, and the runner's input checks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys

import pytest

from dynrcnn.engine.config import UsageError
from dynrcnn.study import ARMS, BASELINE, CORE, TABLES, StudySpec, plan, select_arms
from dynrcnn.study.arms import KBETA, KI, scaled_k, seeds_for
from dynrcnn.study.curve import curve_report
from dynrcnn.study.report import RunResult, paired_table, table1_direction, write_report
from dynrcnn.study.runner import StudyLock, recorded_run_settings
from dynrcnn.study.stats import (
    paired_difference,
    pick_schedule,
    schedule_ladder,
    summarize,
    t_quantile_975,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import experiment  # noqa: E402


def test_arms_cover_the_papers_tables_and_the_controls() -> None:
    tables = {a.table for a in ARMS.values()}
    assert {"Table 1", "Table 3", "Table 4", "Table 5", "Cascade", "control"} <= tables
    assert set(CORE) == {"baseline", "dla", "dsl", "dla_dsl", "t060", "cascade"}
    assert (KI, KBETA) == (22, 3)  # 7.5% and 1% of 300 proposals, as 75 / 10 of 1000
    assert [scaled_k(k) for k in (64, 75, 100)] == [19, 22, 30]
    base = ARMS[BASELINE].dynamic_config(20)
    assert base["init_iou"] == 0.5 and not base["update_iou"] and not base["update_beta"]
    assert ARMS["t060"].dynamic_config(20)["iou_floor"] == 0.6
    assert ARMS["beta_tv"].dynamic_config(20)["init_beta"] == pytest.approx(1 / 9)
    assert ARMS["authors_stats"].dynamic_config(20)["stats_with_gt"] is True
    assert ARMS["c_half"].dynamic_config(20)["interval"] == 10
    assert ARMS["cascade"].dynamic_config(20) is None
    assert all(a.model_kwargs()["rpn_nms_thresh"] == 0.7 for a in ARMS.values())


def test_no_two_arms_train_the_same_detector() -> None:
    # training is deterministic, so two arms with one configuration would only repeat runs
    # bit for bit (KI = 75 of Table 4 is the `dla` arm, listed there by name)
    configs = {}
    for arm in ARMS.values():
        key = json.dumps([arm.arch, arm.dynamic_config(50), arm.model_kwargs(), arm.schedule],
                         sort_keys=True)
        assert key not in configs, f"{arm.name} trains what {configs.get(key)} trains"
        configs[key] = arm.name
    assert TABLES["Table 4"] == ("dla_ki64", "dla", "dla_ki100")
    assert ARMS["dla"].dynamic_config(50)["k_iou"] == scaled_k(75)


def test_seeds_core_arms_get_more_and_the_baseline_the_most() -> None:
    assert seeds_for(ARMS["dla_dsl"], 5, 2) == [0, 1, 2, 3, 4]
    assert seeds_for(ARMS["t040"], 5, 2) == [0, 1]
    assert seeds_for(ARMS[BASELINE], 2, 3) == [0, 1, 2]
    assert [a.name for a in select_arms(["dla", "core"])][:2] == ["dla", "baseline"]
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        select_arms(["nope"])


def test_plan_makes_one_resumable_run_per_arm_and_seed(tmp_path) -> None:
    spec = StudySpec(out_dir=str(tmp_path), data_dir="d", arms=["core", "dla_dsl_2x"],
                     iterations=100, core_seeds=3, other_seeds=2)
    jobs = plan(spec)
    assert len(jobs) == 6 * 3 + 2
    j = next(j for j in jobs if j.arm.name == "dla_dsl_2x" and j.seed == 1)
    assert j.run_dir == os.path.join(str(tmp_path), "dla_dsl_2x", "seed1")
    assert j.config.iterations == 200 and j.config.seed == 1
    assert j.config.dynamic.k_iou == 22 and j.config.model_kwargs["rpn_nms_thresh"] == 0.7
    assert jobs[0].seed == 0 and jobs[-1].seed == 2  # seed-major: pairs complete early
    assert not j.finished() and not j.started()


@pytest.mark.parametrize("field,value,flag", [("jobs", 0, "--jobs"), ("iterations", 0,
                                              "--iterations"), ("arms", ["x"], "--arms")])
def test_spec_errors_name_the_flag(field, value, flag) -> None:
    with pytest.raises(UsageError, match=flag):
        StudySpec(out_dir="o", data_dir="d", **{field: value})


def test_t_quantiles_and_summaries() -> None:
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776
    assert t_quantile_975(40) == pytest.approx(2.021, abs=1e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    s = summarize([1.0, 2.0, 4.0])
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(7 / 3), pytest.approx(statistics.stdev(
        [1.0, 2.0, 4.0])))
    assert summarize([3.0]).sd is None and summarize([3.0]).text() == "3.0"


def test_paired_difference_is_a_t_interval_over_the_common_seeds() -> None:
    arm = {0: 42.0, 1: 40.5, 2: 43.5, 3: 50.0}
    base = {0: 40.0, 1: 39.0, 2: 41.0}  # seed 3 has no pair
    d = paired_difference(arm, base)
    diffs = [2.0, 1.5, 2.5]
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(2.0)
    assert (d.low, d.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert d.excludes_zero and "(n=3)" in d.text()
    wide = paired_difference({0: 42.0, 1: 40.0, 2: 44.0}, base)  # diffs 2, 1, 3: sd 1
    assert wide.low < 0 < wide.high and not wide.excludes_zero
    one = paired_difference({0: 1.0}, {0: 3.0})
    assert one.n == 1 and one.low is None and not one.excludes_zero
    assert paired_difference({1: 1.0}, {0: 1.0}) is None


def test_pick_schedule_on_synthetic_curves() -> None:
    curve = {600: 30.0, 1200: 36.0, 2400: 37.5, 4800: 38.0}
    assert pick_schedule(curve) == 1200  # 600 -> 1200 adds 6; 1200 -> 2400 adds 1.5
    assert pick_schedule(curve, min_gain=1.0) == 2400
    assert pick_schedule({600: 30.0, 1200: 33.0}) is None  # still gaining
    assert pick_schedule({600: 30.0, 1000: 30.5}) is None  # no measured doubling
    assert schedule_ladder(4800, 4) == [600, 1200, 2400, 4800]
    picked, text = curve_report(curve, {1200: 20.0, 4800: 38.0})
    assert picked == 1200 and "**1200 iterations**" in text and "+1.5" in text


def results(ap_t060: float, ap90_t060: float):
    out = []
    for seed, noise in enumerate((0.0, 0.5, -0.4)):
        m = {c: 40.0 + noise for c in ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")}
        out.append(RunResult(BASELINE, seed, m, 0.5, 1.0, {"props_iou50": 3.0},
                             {"props_iou50": 9.0}))
        m2 = dict(m, AP=ap_t060 + noise, AP90=ap90_t060 + noise * 0.9)
        out.append(RunResult("t060", seed, m2, 0.6, 1.0, {"props_iou50": 2.0},
                             {"props_iou50": 8.0}))
    return out


def test_report_tables_and_table1_direction(tmp_path) -> None:
    shown = results(39.0, 43.0)
    assert "the means point that way, both intervals exclude 0" in table1_direction(shown)
    assert "do NOT point that way" in table1_direction(results(41.0, 43.0))
    spread = results(39.0, 43.0)
    spread[-1].metrics["AP90"] = 30.0  # one seed's AP90 far below: the interval holds 0
    assert "point that way, not resolved" in table1_direction(spread)
    assert "| t060 - baseline | -1.0 [" in paired_table(shown, [("t060", BASELINE)])
    path = str(tmp_path / "r" / "study.md")
    spec = {"threads": 1, "jobs": 1, "recipe": "study", "iterations": 10}
    text = write_report(shown, path, spec, "python benchmarks/experiment.py", planned=8)
    assert text.startswith("# Accuracy study (6 of 8 runs finished)")
    for needle in ("- hardware:", "- commit:", "- command: `python benchmarks/experiment.py`",
                   "baseline 0,1,2", "## Table 1", "40.0 ± 0.5", "## Figure-1 diagnostics"):
        assert needle in text
    assert "## Table 5" not in text  # it would hold the baseline alone
    assert os.path.getsize(str(tmp_path / "r" / "study_ap_vs_iou.png")) > 0
    with open(tmp_path / "r" / "study.json") as f:
        assert len(json.load(f)["runs"]) == 6
    dla = [RunResult("dla", r.seed, r.metrics, 0.65, 1.0, {}, {}) for r in shown[::2]]
    text = write_report(shown + dla, path, spec, "x", planned=9)
    assert "## Table 3" in text and "## Table 4" not in text  # only its KI = 75 row, dla


def _renamed(runs, arm: str, shift: float = 0.0):
    return [RunResult(arm, r.seed, {c: v + shift for c, v in r.metrics.items()}, r.final_t,
                      r.final_beta, {}, {}) for r in runs]


def test_report_pairs_each_arm_with_its_reference_and_controls_with_their_arm(
        tmp_path) -> None:
    base = [r for r in results(39.0, 43.0) if r.arm == BASELINE]
    runs = (base + _renamed(base, "dla_dsl", -2.0) + _renamed(base, "authors_stats", 1.0)
            + _renamed(base, "baseline_2x", 5.0) + _renamed(base, "dla_dsl_2x", 8.0))
    spec = {"threads": 1, "jobs": 1, "recipe": "study", "iterations": 10}
    text = write_report(runs, str(tmp_path / "s.md"), spec, "x", planned=15)
    # the doubled schedule is paired with the doubled baseline (+3), not the 1x one (+8)
    assert "| dla_dsl_2x - baseline_2x | +3.0 [+3.0, +3.0] (n=3) *" in text
    assert "| baseline_2x - baseline | +5.0 [" in text
    assert "| authors_stats - baseline | +1.0 [" in text
    # a control is also paired with the arm it changes one thing of
    assert "## Against the arm they change" in text
    assert "| authors_stats - dla_dsl | +3.0 [" in text
    assert ARMS["dla_ki64"].variant_of == ARMS["dla_ki100"].variant_of == "dla"
    assert "dla_dsl_2x - dla_dsl" not in text
    assert all(ARMS[a].reference in ARMS for a in ARMS)
    assert all(ARMS[a].variant_of in (None, *ARMS) for a in ARMS)


def test_reference_pairs_every_other_arm_with_it_and_shows_each_seed(tmp_path) -> None:
    """--reference t060: the strongest fixed baseline as a second reference, with the
    per-seed differences a mean over two or three seeds would hide."""
    base = [r for r in results(39.0, 43.0) if r.arm == BASELINE]
    t060 = [r for r in results(39.0, 43.0) if r.arm == "t060"]
    runs = base + t060 + _renamed(base, "dla_dsl", -2.0)
    spec = {"threads": 1, "jobs": 1, "recipe": "study", "iterations": 10}
    path = str(tmp_path / "s.md")
    assert "## Against t060" not in write_report(runs, path, spec, "x", planned=9)
    text = write_report(runs, path, spec, "x", planned=9, references=["t060"])
    section = text[text.index("## Against t060 (95% CI)"):]
    assert "t060 has seeds 0, 1, 2" in section
    assert "| AP per seed | AP90 per seed |" in section
    # baseline AP 40.0 / 40.5 / 39.6, t060 39.0 / 39.5 / 38.6: +1.0 at every seed; AP90
    # 40.0 / 40.5 / 39.6 against 43.0 / 43.45 / 42.64: -3.0 / -2.95 / -3.04
    assert "| baseline - t060 | +1.0 [+1.0, +1.0] (n=3) *" in section
    assert "| -3.0 [-3.1, -2.9] (n=3) * | +1.0 / +1.0 / +1.0 | -3.0 / -3.0 / -3.0 |" in (
        section)
    assert "| dla_dsl - t060 | -1.0 [" in section and "t060 - t060" not in section
    only_two = [r for r in runs if not (r.arm == "dla_dsl" and r.seed == 1)]
    text = write_report(only_two, path, spec, "x", planned=9, references=["t060"])
    assert "-1.0 / -1.0 |" in text and "-1.0 / -1.0 / -1.0" not in text


def test_reference_must_be_an_arm_of_the_report(tmp_path, capsys) -> None:
    out = str(tmp_path / "s")
    for argv, needle in (
            (["--arms", "baseline", "dla_dsl", "--reference", "t060"],
             "--reference t060: not among --arms (baseline dla_dsl)"),
            (["--arms", "baseline", "t060", "--reference", "t060", "--status"],
             "--reference pairs arms in a report; --status writes none")):
        assert experiment.main(["--out", out, "--report-only", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]


def test_lock_refuses_a_second_live_runner(tmp_path) -> None:
    with open(tmp_path / "study.lock", "w") as f:
        f.write("1\n")  # pid 1 is alive on any Unix
    with pytest.raises(UsageError, match="still working"):
        with StudyLock(str(tmp_path)):
            pass
    with open(tmp_path / "study.lock", "w") as f:
        f.write("999999999\n")  # no such process: a stale lock is taken over
    with StudyLock(str(tmp_path)):
        assert os.path.isfile(tmp_path / "study.lock")
    assert not os.path.isfile(tmp_path / "study.lock")


def test_experiment_bad_input_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    assert experiment.main(["--out", str(tmp_path), "--jobs", "0", "--status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--jobs" in err[0]
    assert experiment.main(["--list-arms"]) == 0
    assert "authors_stats" in capsys.readouterr().out


def test_existing_data_must_be_the_studys(tmp_path) -> None:
    from dynrcnn.data import make_synthetic_coco
    from dynrcnn.study.runner import ensure_study_data

    make_synthetic_coco(tmp_path, num_train=2, num_val=1, image_size=(64, 64), masks=False)
    spec = StudySpec(out_dir="o", data_dir=str(tmp_path), image_size=64)
    with pytest.raises(UsageError, match="--data .* is not the 'study' set at 64 px"):
        ensure_study_data(spec, print)


def test_a_failing_run_is_logged_and_the_others_still_run(tmp_path, monkeypatch) -> None:
    import subprocess

    from dynrcnn.study import Runner, quick_spec

    runner = Runner(quick_spec(str(tmp_path)), echo=False, poll_s=0.05)
    monkeypatch.setattr("dynrcnn.study.runner.ensure_study_data", lambda spec, log: None)
    monkeypatch.setattr(runner, "_launch", lambda job: subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit(3)"]))
    assert runner.run() == []
    assert len(runner.failed) == 4
    with open(tmp_path / "study.log") as f:
        log = f.read()
    assert "FAILED baseline seed 0 (exit 3)" in log and "0/4 finished, 4 failed" in log
    assert not os.path.exists(tmp_path / "study.lock")
    # the report reads back how the runs ran from the runner's own line in study.log
    spec = runner.spec
    assert recorded_run_settings(str(tmp_path)) == {"jobs": str(spec.jobs),
                                                    "threads": str(spec.threads)}
    with open(tmp_path / "study.log", "a") as f:  # a later invocation with other settings
        f.write("study in x: 4 runs, 0 finished earlier, 4 to run (2 at a time, 3 thread(s) "
                "each)\nstudy in x: 4 runs, 4 finished earlier, 0 to run (5 at a time, "
                "9 thread(s) each)\n")
    assert recorded_run_settings(str(tmp_path)) == {
        "jobs": " or ".join(sorted({str(spec.jobs), "2"})),
        "threads": " or ".join(sorted({str(spec.threads), "3"}))}


def test_dynamics_curves_average_the_seeds_per_iteration(tmp_path) -> None:
    from dynrcnn.study.figures import lr_drops, mean_curves, plot_dynamics, read_logs

    runs = []
    for seed, thr in enumerate((0.5, 0.7)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        rows = [{"iteration": 10, "iou_thr": 0.4}, {"iteration": 20, "iou_thr": thr}]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        runs.append(str(run))
    its, values = mean_curves(read_logs(runs), "iou_thr")
    assert its == [10, 20] and values == pytest.approx([0.4, 0.6])
    assert mean_curves(read_logs(runs), "beta") is None  # e.g. Cascade R-CNN logs no T / beta
    assert lr_drops(read_logs(runs)) == []
    (tmp_path / "seed0" / "log.jsonl").write_text("".join(
        json.dumps({"iteration": i, "lr": lr}) + "\n"
        for i, lr in ((10, 0.01), (20, 0.02), (30, 0.002), (40, 0.0019), (50, 0.0002))))
    assert lr_drops(read_logs(runs)) == [30, 50]  # warmup's rise and a slow decay are not steps
    out = str(tmp_path / "dyn.png")
    assert plot_dynamics({"dla": read_logs(runs)}, out) == out and os.path.getsize(out) > 0
    assert plot_dynamics({"none": read_logs([str(tmp_path / "missing")])}, out + "2") is None


def test_label_noise_control_is_its_own_study(tmp_path, capsys) -> None:
    args = experiment.build_parser().parse_args(["--recipe", "study_exact", "--out", "o"])
    spec = experiment.spec_from_args(args)
    assert (spec.recipe, spec.data_dir) == ("study_exact", "data/study_exact_256")
    default = experiment.spec_from_args(experiment.build_parser().parse_args([]))
    assert (default.recipe, default.data_dir) == ("study", "data/study_256")
    # an --out holding the jittered study refuses the exact one (mixed data), in one line
    (tmp_path / "study.json").write_text(json.dumps({"recipe": "study"}))
    from dynrcnn.study.runner import check_same_study

    with pytest.raises(UsageError, match=r"--out .* recipe \('study' -> 'study_exact'\)"):
        check_same_study(dataclasses.replace(spec, out_dir=str(tmp_path)))


def test_git_commit_flags_code_changes_but_not_the_reports_own_output(tmp_path) -> None:
    import subprocess

    from dynrcnn.study.report import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "study.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    (tmp_path / "benchmarks" / "results" / "study.md").write_text("new report\n")
    assert "uncommitted" not in git_commit(str(tmp_path / "benchmarks"))
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(str(tmp_path / "benchmarks")).endswith("+ uncommitted changes")


def test_paper_protocol_gives_every_arm_the_papers_rpn_and_k(tmp_path) -> None:
    """Issue 18: 1000 proposals after RPN NMS 0.85 for every arm, the baseline and the
    cascade included, KI 75 / Kbeta 10 unscaled; the cpu protocol is unchanged."""
    spec = StudySpec(out_dir=str(tmp_path), data_dir="d", arms=["core"], protocol="paper")
    jobs = plan(spec)
    assert {j.arm.name for j in jobs} == set(CORE)
    for job in jobs:
        model = job.config.model_kwargs
        assert model["rpn_nms_thresh"] == 0.85
        assert model["rpn_post_nms_top_n_train"] == model["rpn_post_nms_top_n_test"] == 1000
        assert model["box_batch_size_per_image"] == 128
        if job.arm.arch == "dynamic_rcnn":
            assert (job.config.dynamic.k_iou, job.config.dynamic.k_err) == (75, 10)
    cpu = plan(dataclasses.replace(spec, protocol="cpu"))
    assert all(j.config.model_kwargs["rpn_nms_thresh"] == 0.7 for j in cpu)
    assert all((j.config.dynamic.k_iou, j.config.dynamic.k_err) == (KI, KBETA)
               for j in cpu if j.arm.name == "dla_dsl")
    with pytest.raises(UsageError, match="dla_ki64 fixes KI"):
        StudySpec(out_dir=str(tmp_path), data_dir="d", arms=["dla_ki64"], protocol="paper")
    assert experiment.default_results("study", "cpu") == experiment.DEFAULT_RESULTS
    assert experiment.default_results("study_exact", "cpu").endswith("/study_exact_cpu.md")
    assert experiment.default_results("study_exact", "paper").endswith(
        "/study_paper_exact_cpu.md")
    assert experiment.default_results("study_large_jitter", "paper").endswith(
        "/study_paper_large_jitter_cpu.md")
    assert experiment.default_results("study", "paper", fine_tuned=True).endswith(
        "/study_paper_finetune_cpu.md")
    args = experiment.build_parser().parse_args(["--recipe", "study_large", "--out", "o"])
    assert experiment.spec_from_args(args).data_dir == "data/study_large_256"


def test_init_weights_is_formatted_per_seed_and_checked_before_training(tmp_path) -> None:
    """The fine-tuning regime: "{seed}" in --init-weights becomes each run's seed; another
    placeholder, or a missing source for a run that will train, is a usage error naming
    the flag."""
    from dynrcnn.study.runner import check_init_weights

    template = str(tmp_path / "src{seed}.pth")
    spec = StudySpec(out_dir=str(tmp_path / "o"), data_dir="d", arms=["baseline"],
                     core_seeds=2, init_weights=template)
    jobs = plan(spec)
    assert [j.config.init_weights for j in jobs] == [template.format(seed=s) for s in (0, 1)]
    assert all(j.config.init_weights is None for j in plan(
        dataclasses.replace(spec, init_weights=None)))
    with pytest.raises(UsageError, match=r"--init-weights: no checkpoint .*src0.pth, .*src1"):
        check_init_weights(jobs, spec)
    (tmp_path / "src0.pth").write_bytes(b"")
    (tmp_path / "src1.pth").write_bytes(b"")
    check_init_weights(jobs, spec)
    for bad in ("w{arm}.pth", "w{0}.pth", "w{.pth"):
        with pytest.raises(UsageError, match="--init-weights .* only placeholder"):
            dataclasses.replace(spec, init_weights=bad)


def test_eta_counts_evaluation_only_runs_at_their_own_pace(tmp_path):
    """A study resumed with runs that only lack evaluations: their minute each must not
    make the ETA of the runs still to train look like minutes."""
    from types import SimpleNamespace

    from dynrcnn.study.runner import Runner, StudySpec

    runner = Runner(StudySpec(out_dir=str(tmp_path), data_dir=str(tmp_path)), echo=False,
                    jobs=[])
    train, evaluate = (SimpleNamespace(trains=lambda: True), SimpleNamespace(trains=lambda: False))
    assert runner._eta([train, train], {}, {True: [], False: [60.0]}) == ""  # nothing timed
    durations = {True: [900.0, 1020.0], False: [60.0]}
    assert runner._eta([train, evaluate], {}, durations) == ", about 17 min left"
    runner._running = {"x": None}
    assert runner._eta([], {"x": True}, durations) == ", about 16 min left"
