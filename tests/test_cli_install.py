"""The installed `dynrcnn` console script (issue 10, point 1) and the demo's output when it
is piped into a file (point 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")
SCRIPT = Path(sys.executable).parent / "dynrcnn"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_the_console_script_is_installed_and_runs(tmp_path):
    """`make install` (pip install -e .) must put `dynrcnn` next to the interpreter; a
    missing script is a failure, not a skip: every README command starts with it."""
    assert SCRIPT.is_file(), (f"{SCRIPT} is missing: the console script is not installed "
                              "(pyproject.toml [project.scripts]; rerun make install)")
    assert os.access(SCRIPT, os.X_OK)
    shown = run([str(SCRIPT), "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    for command in ("train", "eval", "predict", "plot", "compare", "make-synthetic", "demo"):
        assert command in shown.stdout
    made = run([str(SCRIPT), "make-synthetic", "--out", "data", "--num-train", "2",
                "--num-val", "1", "--image-size", "48", "48"], tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "data" / "annotations" / "instances_val.json").is_file()
    refused = run([str(SCRIPT), "train", "--iterations", "0"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "dynrcnn train: error: --iterations must be >= 1, got 0"


def test_demo_output_piped_to_a_file_grows_with_lines_not_iterations(tmp_path):
    """Piped (no terminal), the demo prints progress lines at most every 30 s, not a
    tqdm redraw per iteration (the 1200-iteration demo's log was ~1 MB)."""
    iterations = 40
    log = tmp_path / "demo.log"
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "dynrcnn", "demo", "--data", "data", "--out", "run",
             "--iterations", str(iterations), "--num-train", "8", "--num-val", "2",
             "--image-size", "64"], cwd=tmp_path, env=ENV, stdout=f,
            stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    progress = [line for line in text.splitlines() if line.startswith("it ")]
    assert progress and progress[-1].startswith(f"it {iterations}/{iterations} "), text
    assert len(progress) <= 2 + iterations // 10  # one per log iteration at the very most
    assert "\r" not in text  # no progress bar redraws
    per_line = len(text) / max(1, len(text.splitlines()))
    assert per_line < 200 and len(text) < 10_000, len(text)
