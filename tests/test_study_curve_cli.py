"""`experiment.py --learning-curve` end to end at tiny size: the ladder of baseline runs,
then a report file that names hardware, commit and command (issue 9, point 4)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import experiment  # noqa: E402


@pytest.mark.slow  # a benchmark harness (experiment.py --learning-curve), 11 s
def test_learning_curve_writes_its_report(tmp_path) -> None:
    results = tmp_path / "curve.md"
    argv = ["--learning-curve", "--quick", "--longest", "4", "--steps", "2",
            "--out", str(tmp_path / "study"), "--results", str(results)]
    assert experiment.main(argv) == 0
    text = results.read_text()
    assert text.startswith("# Learning curve of the baseline")
    for needle in ("- hardware:", "- commit:", "--learning-curve", "| 2 |", "| 4 |",
                   "Shortest schedule after which doubling adds"):
        assert needle in text, needle
    for n in (2, 4):
        assert os.path.isdir(tmp_path / "study" / "curve" / f"baseline_it{n}" / "seed0")
