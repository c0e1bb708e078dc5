"""scripts/gpu_check.sh: the dry run (its non-GPU parts, a fake card) runs in `make test`, so
the one-call GPU check cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
CARD = "DRYRUN_Fake_Card"


def run_script(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("gpu_results")
    proc = run_script(str(results), "--dry-run")
    return proc, results


def test_dry_run_passes_every_step(dry_run):
    proc, results = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (results / f"summary_{CARD}.md").read_text()
    assert "DRY RUN" in summary and torch.__version__ in summary
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in summary.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows.pop("step") == "result"
    assert rows == {"build": "skipped: dry run: uses the installed extension",
                    "tests": "ok", "bench_ops": "ok", "bench_det": "ok", "study": "ok"}


def test_dry_run_writes_results_named_after_the_card(dry_run):
    _, results = dry_run
    names = {p.name for p in results.iterdir()}
    for stem in ("ops_cpu", "detectors_cpu"):
        assert f"{stem}_{CARD}.json" in names and f"{stem}_{CARD}.md" in names
    ops = json.loads((results / f"ops_cpu_{CARD}.json").read_text())
    assert ops  # the benchmark wrote real rows, not an empty file
    det = json.loads((results / f"detectors_cpu_{CARD}.json").read_text())
    assert det
    # the CUDA test selection exists (collected, not run, without a GPU)
    log = (results / f"tests_{CARD}.log").read_text()
    assert "test_cuda_cpu_agreement.py" in log
    # the 2-run study wrote its report (on the CPU here; one run per GPU on the card)
    report = json.loads((results / f"study_{CARD}" / "report.json").read_text())
    assert sorted(r["arm"] for r in report["runs"]) == ["baseline", "dla_dsl"]


@pytest.mark.parametrize("args", [(), ("a", "b", "c"), ("dir", "--fast"), ("--dry-run",)])
def test_bad_usage_is_one_line_and_exit_2(args, tmp_path):
    proc = run_script(*args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("usage: scripts/gpu_check.sh RESULTS_DIR")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_the_real_run_refuses(tmp_path):
    proc = run_script(str(tmp_path / "r"), timeout=120)
    assert proc.returncode == 2
    assert "torch sees no CUDA device" in proc.stderr
