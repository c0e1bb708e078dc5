"""What the benchmarks share: timing (one timed call, interleaved rounds of several), the
description of the machine that every result file carries, and argument types."""

from __future__ import annotations

import argparse
import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torchvision

from dynrcnn.study.report import cpu_model_name, git_commit

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Candidate:
    """One side of a comparison: `run` is timed, `prepare` (if any) runs untimed before it."""

    run: Callable[[], object]
    prepare: Optional[Callable[[], object]] = None


def time_once(cand: Candidate, device: torch.device) -> float:
    """Seconds of one call of `cand.run` (CUDA: events, synchronized before and after)."""
    if cand.prepare is not None:
        cand.prepare()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        cand.run()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    cand.run()
    return time.perf_counter() - t0


def round_robin(cands: List[Candidate], reverse: bool, device: torch.device) -> List[float]:
    """One sample per candidate, run in list order or reversed; returned in list order.
    Alternating the order between rounds lets drift of the machine hit all sides equally."""
    order = list(range(len(cands)))
    if reverse:
        order.reverse()
    out = [0.0] * len(cands)
    for i in order:
        out[i] = time_once(cands[i], device)
    return out


def time_interleaved(cands: List[Candidate], reps: int, warmup: int,
                     device: torch.device) -> List[List[float]]:
    """Per-candidate samples of `reps` rounds after `warmup` untimed ones; the candidates'
    order is reversed every other round."""
    for _ in range(warmup):
        round_robin(cands, False, device)
    samples: List[List[float]] = [[] for _ in cands]
    for rep in range(reps):
        for i, t in enumerate(round_robin(cands, rep % 2 == 1, device)):
            samples[i].append(t)
    return samples


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the date line of result headers)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device, command: str) -> Dict[str, object]:
    """Hardware, versions, threads, command, date and commit: the header of every result
    file (the Markdown writers print every key)."""
    return {
        "device": device.type,
        "hardware": hardware_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "command": command,
        "date": utc_now(),
        "commit": git_commit(cwd=str(REPO_ROOT)),
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
