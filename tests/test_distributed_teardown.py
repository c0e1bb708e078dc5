"""How a rank leaves the process group: a barrier before destroy_process_group when the run
finished, none when an exception propagates (a peer may be stuck elsewhere), and nothing at
all for a group this process did not create. See distributed.shutdown for why."""

from __future__ import annotations

from typing import List

import pytest
import torch

from dynrcnn.engine import distributed
from dynrcnn.engine.distributed import DistInfo, shutdown


@pytest.fixture
def calls(monkeypatch) -> List[str]:
    log: List[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(distributed.dist, "barrier", lambda *a, **k: log.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda *a, **k: log.append("destroy"))
    return log


def info(initialized_here: bool) -> DistInfo:
    return DistInfo(0, 2, 0, torch.device("cpu"), initialized_here)


def test_clean_shutdown_waits_for_every_rank_first(calls):
    shutdown(info(True))
    assert calls == ["barrier", "destroy"]


def test_shutdown_after_an_error_does_not_wait(calls):
    shutdown(info(True), clean=False)
    assert calls == ["destroy"]


def test_a_group_created_elsewhere_is_left_alone(calls):
    shutdown(info(False))
    assert calls == []


def test_train_leaves_without_barrier_when_training_fails(monkeypatch):
    from dynrcnn.engine import trainer as trainer_mod

    seen: List[bool] = []

    class Boom(trainer_mod.Trainer):
        def __init__(self, *args, **kwargs) -> None:  # no model, no data: only the exit path
            self.dist = info(True)

        def train(self):
            raise RuntimeError("rank failed")

    monkeypatch.setattr(trainer_mod, "Trainer", Boom)
    monkeypatch.setattr(trainer_mod, "shutdown", lambda i, clean=True: seen.append(clean))
    with pytest.raises(RuntimeError, match="rank failed"):
        trainer_mod.train(None)
    assert seen == [False]


def test_train_leaves_with_barrier_when_training_succeeds(monkeypatch):
    from dynrcnn.engine import trainer as trainer_mod

    seen: List[bool] = []

    class Done(trainer_mod.Trainer):
        def __init__(self, *args, **kwargs) -> None:
            self.dist = info(True)

        def train(self):
            return {"iterations": 1}

    monkeypatch.setattr(trainer_mod, "Trainer", Done)
    monkeypatch.setattr(trainer_mod, "shutdown", lambda i, clean=True: seen.append(clean))
    assert trainer_mod.train(None) == {"iterations": 1}
    assert seen == [True]


def test_shutdown_waits_until_no_work_holds_a_collective_tensor(calls, monkeypatch):
    """The released-by-a-worker race of distributed._KEPT: a C++ holder of a collective's
    tensor (here a torch Future, as a gloo work would be) is dropped by another thread a
    moment after the barrier; destroy must come after that drop, not before."""
    import threading
    import time

    tensor = torch.zeros(4)
    monkeypatch.setattr(distributed, "_KEPT", distributed.deque([[tensor]], maxlen=8))
    holder = {"work": torch.futures.Future()}
    holder["work"].set_result(tensor)  # a C++ reference, as a work's
    del tensor
    dropped = []

    def worker() -> None:
        time.sleep(0.2)
        dropped.append(time.monotonic())
        holder.pop("work")

    thread = threading.Thread(target=worker)
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda *a, **k: calls.append(("destroy", time.monotonic())))
    thread.start()
    shutdown(info(True))
    thread.join()
    assert calls[0] == "barrier" and calls[1][0] == "destroy"
    assert dropped and calls[1][1] >= dropped[0]
    assert not distributed._KEPT


def test_collective_helpers_keep_no_tensor_a_caller_holds(monkeypatch):
    """The reference count test of _wait_for_release assumes _KEPT's tensors are referenced
    by nothing else: all_reduce_min must hand back a copy, not the tensor it reduced."""
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: None)
    monkeypatch.setattr(distributed, "_KEPT", distributed.deque(maxlen=8))
    result = distributed.all_reduce_min(torch.ones(2))
    kept = distributed._KEPT[-1][0]
    assert result is not kept and torch.equal(result, kept)
    import sys
    assert sys.getrefcount(kept) == 3  # distributed._KEPT's list, `kept`, getrefcount's
