"""The statistics the detector benchmark reports (paired ratios, CI of the median)."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
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
