"""The statistics the detector benchmark reports (paired ratios, CI of the median), and the
headers every result file generator writes."""

from __future__ import annotations

import datetime
import importlib.util
import math
import random
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_detector_stats.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_detector_stats", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_detector_stats"] = module
    spec.loader.exec_module(module)
    return module


def test_median_ci_order_statistics(bench):
    values = [float(v) for v in (7, 1, 9, 3, 11, 5, 2, 10, 4, 8, 6)]  # 1..11 shuffled
    med, lo, hi = bench.median_ci(values)
    # n = 11: [x(2), x(10)] covers the median with 1 - 2 * 12 / 2048 = 98.8% >= 95%,
    # [x(3), x(9)] only with 93.5%
    assert (med, lo, hi) == (6.0, 2.0, 10.0)


def test_median_ci_needs_six_samples(bench):
    assert bench.median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (3.0, 3.0, 3.0)
    assert bench.median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (3.5, 1.0, 6.0)


def test_median_ci_covers_the_true_median(bench):
    """Coverage over many samples of a known distribution is at least the level."""
    rng = random.Random(0)
    hits, trials = 0, 2000
    for _ in range(trials):
        xs = [rng.expovariate(1.0) for _ in range(15)]
        _, lo, hi = bench.median_ci(xs)
        hits += lo <= math.log(2.0) <= hi
    assert hits / trials >= 0.94


def test_paired_ratios_cancel_common_drift(bench):
    base = [1.0, 2.0, 4.0, 8.0]  # the machine slows down 8x over the rounds
    other = [1.03 * b for b in base]
    ratios = bench.paired_ratios(other, base)
    assert all(r == pytest.approx(1.03) for r in ratios)


def _benchmark_modules():
    """The benchmark scripts' modules, imported from benchmarks/ (not a package)."""
    folder = str(_PATH.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import _common
    import _detector_report
    import bench_ops
    import diagnose
    import experiment
    return _common, _detector_report, bench_ops, diagnose, experiment


def _header_values(text: str) -> dict:
    """`- key: value` lines before the first table, values without backticks."""
    head = text.split("\n|", 1)[0]
    return {line[2:].split(":", 1)[0]: line.split(":", 1)[1].strip().strip("`")
            for line in head.splitlines() if line.startswith("- ") and ":" in line}


def _assert_commit_and_date(text: str, commit: str) -> None:
    values = _header_values(text)
    assert values.get("commit") == commit, values
    date = datetime.datetime.fromisoformat(values["date"])
    assert date.utcoffset() == datetime.timedelta(0)  # UTC
    assert abs(datetime.datetime.now(datetime.timezone.utc) - date).total_seconds() < 600


def test_result_headers_name_commit_date_and_machine():
    """Every generator of a committed result file writes commit, date (UTC) and machine
    lines into its header (issue 35); fake numbers, no benchmark runs."""
    import torch

    from dynrcnn.study.report import git_commit
    _common, report, bench_ops, diagnose, experiment = _benchmark_modules()
    commit = git_commit(cwd=str(_PATH.parents[1]))
    env = _common.environment(torch.device("cpu"), "cmd")
    assert env["commit"] == commit and env["hardware"]

    ops_md = bench_ops.markdown_report(env, "| case |\n|---|")
    _assert_commit_and_date(ops_md, commit)
    assert _header_values(ops_md)["hardware"] == env["hardware"]

    def row(name, baseline="faster_rcnn"):
        return report.Row(name, name.split()[0], baseline, 0.7, 0.1, 0.05, 20.0,
                          train_ratio=1.0, infer_ratio=1.0, train_ratio_ci=(1.0, 1.0),
                          infer_ratio_ci=(1.0, 1.0), detections_per_image=1,
                          infer_samples_s=[0.05, 0.05, 0.05])
    rows = [row("faster_rcnn"), row("dynamic_rcnn"),
            row(f"dynamic_rcnn (rpn nms {report.BASELINE_NMS})"), row("cascade_rcnn")]
    det_md = report.markdown_report(env, {"train batch": 2}, rows, "", torch.device("cpu"))
    _assert_commit_and_date(det_md, commit)
    assert _header_values(det_md)["hardware"] == env["hardware"]

    diag_md = diagnose.report_header(("baseline", "dla_dsl"), "cmd", "1000_nms085", "val")
    _assert_commit_and_date(diag_md, commit)
    assert _header_values(diag_md)["hardware"]

    spec = types.SimpleNamespace(threads=1, jobs=2, data_dir="data/x", num_train=4,
                                 num_val=2, image_size=64)
    curve_md = experiment.curve_header(spec, "cmd")
    _assert_commit_and_date(curve_md, commit)
    assert _header_values(curve_md)["hardware"]
