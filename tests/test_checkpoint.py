"""Crash safety of checkpoints: the atomic writer under simulated crashes, RNG state round
trips, and a training process killed with SIGKILL that resumes exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

from engine_helpers import (  # noqa: E402  (the fake COCO data and configs of the trainer tests)
    TESTS_DIR,
    assert_same_params,
    fake_datasets,
    final_state,
    small_config,
)

import dynrcnn.engine.checkpoint as checkpoint_module  # noqa: E402
from dynrcnn.engine import (  # noqa: E402
    Checkpointer,
    Trainer,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    read_jsonl,
    restore_rng_state,
)
from dynrcnn.engine.logger import JsonlWriter  # noqa: E402


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def leftovers(directory) -> list:
    return [n for n in os.listdir(directory) if n.startswith(checkpoint_module.TMP_PREFIX)]


# --------------------------------------------------------------------------- atomic writer


@pytest.mark.parametrize("where", ["torch.save", "fsync", "replace"])
def test_crash_during_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "model.pth"
    atomic_save({"w": torch.ones(3), "iteration": 1}, path)

    def half_written_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full (simulated)")

    def crash(*args, **kwargs):
        raise OSError(f"{where} failed (simulated)")

    if where == "torch.save":
        monkeypatch.setattr(checkpoint_module.torch, "save", half_written_then_crash)
    else:
        monkeypatch.setattr(checkpoint_module.os, where, crash)
    with pytest.raises(OSError, match="simulated"):
        atomic_save({"w": torch.zeros(3), "iteration": 2}, path)
    monkeypatch.undo()

    old = load_checkpoint(path)  # intact, and still weights_only-loadable
    assert old["iteration"] == 1 and torch.equal(old["w"], torch.ones(3))
    assert leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["model.pth"]


def test_interrupt_during_write_cleans_up(tmp_path, monkeypatch):
    """KeyboardInterrupt (a BaseException) mid-write also leaves no partial file."""
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": 1}, tmp_path / "new.pth")
    assert os.listdir(tmp_path) == []


def test_checkpointer_pointer_and_stale_temporaries(tmp_path):
    ckpt = Checkpointer(tmp_path)
    assert ckpt.last_checkpoint() is None
    first = ckpt.save({"iteration": 2}, 2)
    second = ckpt.save({"iteration": 4}, 4)
    assert ckpt.last_checkpoint() == second
    assert ckpt.checkpoints() == [first, second]
    (tmp_path / "last_checkpoint").write_text("model_9999999.pth\n")
    assert ckpt.last_checkpoint() is None  # a pointer to a missing file is no checkpoint
    stale = tmp_path / ".tmp-model_0000006.pth.abc"
    stale.write_bytes(b"half")
    assert ckpt.remove_stale_temporaries() == [str(stale)]
    assert not stale.exists()


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian is part of python's state
    atomic_save({"rng": [capture_rng_state()]}, tmp_path / "rng.pth")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
                torch.rand(3).tolist())
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"][0])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
           torch.rand(3).tolist())
    assert got == expected


def test_jsonl_log_skips_a_torn_line_and_truncates_on_resume(tmp_path):
    path = str(tmp_path / "log.jsonl")
    writer = JsonlWriter(path)
    for i in range(1, 6):
        writer.write({"iteration": i})
    writer.close()
    with open(path, "a") as f:
        f.write('{"iteration": 6, "lo')  # killed mid-line
    assert [r["iteration"] for r in read_jsonl(path)] == [1, 2, 3, 4, 5]
    JsonlWriter(path, truncate_after=3).close()
    assert [r["iteration"] for r in read_jsonl(path)] == [1, 2, 3]


# --------------------------------------------------------------------------- SIGKILL

KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests_dir!r})
import torch
torch.set_num_threads(1)
from engine_helpers import fake_datasets, small_config
from dynrcnn.engine import Trainer

def slow_down(trainer, n):
    # after the first checkpoint, slow enough that the parent kills it mid-run
    if n >= 2:
        time.sleep(0.25)

train_ds, _ = fake_datasets({data!r})
Trainer(small_config({run!r}, iterations=12, checkpoint_period=2), train_dataset=train_ds,
        hooks=[slow_down]).train()
"""


def test_sigkill_then_resume_continues_exactly(tmp_path):
    data, run, ref = str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "ref")
    script = textwrap.dedent(KILL_SCRIPT.format(tests_dir=TESTS_DIR, data=data, run=run))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pointer = os.path.join(run, "last_checkpoint")
    deadline = time.monotonic() + 120
    try:
        while not os.path.exists(pointer):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"training never wrote a checkpoint (rc={proc.returncode}):\n"
                            f"{out[-3000:]}")
            time.sleep(0.02)
        time.sleep(0.3)  # let it run on into later iterations / checkpoint writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"

    # every checkpoint on disk is complete and loads with weights_only=True
    checkpointer = Checkpointer(run)
    files = checkpointer.checkpoints()
    assert files and "model_final.pth" not in map(os.path.basename, files)
    iterations = [load_checkpoint(f)["iteration"] for f in files]
    assert iterations == sorted(iterations) and all(i % 2 == 0 for i in iterations)
    last = checkpointer.last_checkpoint()
    assert last is not None and last in files
    ckpt = load_checkpoint(last)
    k = ckpt["iteration"]
    assert 2 <= k < 12

    # an uninterrupted reference run of the same config
    train_ds, _ = fake_datasets(data)
    reference = Trainer(small_config(ref, iterations=12, checkpoint_period=2),
                        train_dataset=train_ds)
    reference.train()
    ref_log = read_jsonl(os.path.join(ref, "log.jsonl"))

    resumed = Trainer(small_config(run, iterations=12, checkpoint_period=2, resume=True),
                      train_dataset=train_ds)
    state = resumed.dynamic_state
    assert resumed.start_iter == k and resumed.resumed_from == last
    assert state.iou_thr.item() == ckpt["model"]["roi_heads.dynamic_state.iou_thr"].item()
    assert state.beta.item() == ckpt["model"]["roi_heads.dynamic_state.beta"].item()
    assert state.records == k
    lr = resumed.optimizer.param_groups[0]["lr"]
    assert lr == ckpt["optimizer"]["param_groups"][0]["lr"] == ref_log[k]["lr"]
    assert (state.iou_thr.item(), state.beta.item()) == \
        (ref_log[k - 1]["iou_thr"], ref_log[k - 1]["beta"])
    assert leftovers(run) == []  # stale temporaries of the killed writer are gone

    resumed.train()
    assert final_state(resumed) == final_state(reference)
    assert_same_params(resumed.model, reference.model)
    log = read_jsonl(os.path.join(run, "log.jsonl"))
    assert [r["iteration"] for r in log] == list(range(1, 13))
    assert [r["lr"] for r in log] == [r["lr"] for r in ref_log]
    assert [(r["iou_thr"], r["beta"]) for r in log] == \
        [(r["iou_thr"], r["beta"]) for r in ref_log]
