"""`make demo`, the README's first command, as written: the Makefile rule and the installed
console script it calls, at tiny size through DEMO_ARGS (the demo's own flags; the later
--data/--out keep the repository's data/ and runs/ untouched). `make test` is what CI runs,
so it is tested by running it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_demo_runs_as_written_at_tiny_size(tmp_path):
    up_to_date = subprocess.run(["make", "-q", "install"], cwd=ROOT, env=make_env(),
                                capture_output=True)
    if up_to_date.returncode != 0:
        pytest.skip("the build is not up to date here: `make demo` would rebuild it first")
    args = (f"--data {tmp_path / 'data'} --out {tmp_path / 'run'} --iterations 4 "
            "--image-size 64 --num-train 8 --num-val 4 --interval 2")
    proc = subprocess.run(["make", "demo", f"DEMO_ARGS={args}"], cwd=ROOT, env=make_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert ".venv/bin/dynrcnn demo --data data/synthetic --out runs/demo" in out
    assert "trained: iterations=4" in out
    assert out.rstrip().splitlines()[-1].startswith("| bbox |")  # the AP table comes last
    assert (tmp_path / "run" / "model_final.pth").is_file()
    assert (tmp_path / "run" / "curves.png").is_file()
