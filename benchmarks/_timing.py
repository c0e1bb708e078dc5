"""Timing shared by the benchmarks: one timed call, and interleaved rounds of several."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch


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
