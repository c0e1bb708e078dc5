"""`dynrcnn study --iterations A B` through the installed console script, at tiny sizes:
one study directory per schedule, a run killed during the longer schedule and rerun
retrains nothing that finished, the schedule report holds the test metrics of the runs
(tests/test_readme.py checks the whole section, best fixed T included, on the README's
own command), one schedule reports alone, and --plan prints runnable commands."""

from __future__ import annotations

import json
import shlex
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_study_command import ENV, SCRIPT, TINY, dynrcnn, make_study_data

ARMS = ["baseline", "dla_dsl"]
SCHEDULES = (2, 4)


def _args(out: str, *extra: str) -> list:
    tiny = list(TINY)
    at = tiny.index("--iterations")
    tiny[at + 1:at + 2] = [str(n) for n in SCHEDULES]
    return ["study", "--data-dir", "d", "--arms", *ARMS, "--seeds", "2", *tiny,
            "--out-dir", out, *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_study_data(tmp_path_factory.mktemp("sched_data"))


@pytest.fixture(scope="module")
def interrupted(data) -> dict:
    """The study killed once a run of the longer schedule has started, then rerun."""
    out = data / "sched"
    proc = subprocess.Popen([str(SCRIPT), *_args("sched", "--jobs", "2")], cwd=data, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "study.log"
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.is_file() and f"-> {out / 'iters_4'}" in log.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("iters_*/*/seed*/model_final.pth")}
    rerun = dynrcnn(*_args("sched", "--jobs", "2"), cwd=data)
    return {"out": out, "done_before": done_before, "stdout": rerun.stdout}


def _metrics(run: Path, name: str) -> dict:
    return json.loads((run / name / "metrics.json").read_text())["bbox"]


def test_killed_and_rerun_retrains_nothing_that_finished(interrupted) -> None:
    assert interrupted["done_before"], "the kill came before any run finished"
    for path, stamp in interrupted["done_before"].items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was trained again"
    log = (interrupted["out"] / "study.log").read_text()
    assert f"{len(interrupted['done_before'])} finished earlier" in log.split("stopped by")[-1]
    # every schedule is an ordinary study directory
    for n in SCHEDULES:
        sub = interrupted["out"] / f"iters_{n}"
        assert json.loads((sub / "study.json").read_text())["iterations"] == n
        assert (sub / "report.md").is_file()
        for arm in ARMS:
            for seed in (0, 1):
                job = json.loads((sub / arm / f"seed{seed}" / "job.json").read_text())
                assert job["iterations"] == n and job["seed"] == seed


def test_schedule_section_holds_the_runs_test_numbers(interrupted) -> None:
    out = interrupted["out"]
    report = json.loads((out / "report.json").read_text())
    text = (out / "report.md").read_text()
    assert report["schedules"] == list(SCHEDULES) and report["split"] == "test"
    test = {}
    for n in SCHEDULES:
        for arm in ARMS:
            for seed in (0, 1):
                run = out / f"iters_{n}" / arm / f"seed{seed}"
                test[n, arm, seed] = 100 * _metrics(run, "eval_test_own")["AP"]
                got = report["runs"][str(n)][arm][str(seed)]["AP"]
                assert got == pytest.approx(test[n, arm, seed], abs=1e-9)
            aps = [test[n, arm, s] for s in (0, 1)]
            mean, sd = statistics.fmean(aps), statistics.stdev(aps)
            assert f"| {arm} | {n} | 0,1 | {mean:.1f} ± {sd:.1f} |" in text
        diff = statistics.fmean(test[n, "dla_dsl", s] - test[n, "baseline", s] for s in (0, 1))
        assert f"| {n} | dla_dsl - baseline | {diff:+.1f} [" in text
    for arm in ARMS:
        gain = statistics.fmean(test[4, arm, s] - test[2, arm, s] for s in (0, 1))
        assert f"| {arm} | 2 -> 4 | {gain:+.1f} [" in text
    assert "No schedule has two fixed-T arms" in text  # one fixed arm: no best-T choice
    assert (out / "report_schedules.png").stat().st_size > 0


def test_one_schedule_of_the_study_reports_alone(data, interrupted) -> None:
    """`--iterations 4 --out-dir sched/iters_4 --report` is the same study: nothing to do."""
    args = _args("sched/iters_4", "--report")
    at = args.index("--iterations")
    args[at + 1:at + 3] = ["4"]
    done = dynrcnn(*args, cwd=data)
    assert "evaluating" not in done.stdout and "## Verdict" in done.stdout


def test_plan_lists_every_schedule_and_a_runnable_report_command(data) -> None:
    done = dynrcnn(*_args("sched_plan", "--plan"), cwd=data)
    commands = [line for line in done.stdout.splitlines() if line.startswith("dynrcnn train")]
    assert len(commands) == 8 and "8 of 8 runs to train" in done.stdout
    assert sum("iters_2" in c for c in commands) == 4
    then = shlex.split(done.stdout.rsplit("then: ", 1)[1].strip())
    report = dynrcnn(*then[1:], cwd=data)  # runs: reports the (unfinished) study
    assert "report written to" in report.stdout
    assert "(0 of 8 runs finished)" in (data / "sched_plan" / "report.md").read_text()


def test_a_schedule_given_twice_is_one_line(data) -> None:
    args = _args("sched_bad")
    at = args.index("--iterations")
    args[at + 1:at + 3] = ["4", "4"]
    done = dynrcnn(*args, cwd=data, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "dynrcnn study: error: --iterations: 4 is given twice"
