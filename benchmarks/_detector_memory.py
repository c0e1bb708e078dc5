"""Peak memory of the detector benchmark's train step and inference: CUDA from the
allocator's peak, CPU (Linux) from the peak RSS after resetting it; plus the model's
resident bytes."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from _detector_models import Subject, Targets, infer, train_step
from torch import Tensor

MEM_SAMPLES = 2


def resident_bytes(s: Subject) -> int:
    """Parameters, buffers and optimizer state (gradients are freed between steps)."""
    tensors = list(s.model.parameters()) + list(s.model.buffers())
    for state in s.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


class CpuPeak:
    """Peak RSS of a block (Linux): reset VmHWM through /proc/self/clear_refs."""

    def __init__(self) -> None:
        self.reason = ""
        path = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(path) if path else None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._status_kb("VmHWM")
        except (OSError, ValueError) as exc:
            self.reason = f"cannot reset the peak RSS ({exc})"

    @staticmethod
    def _status_kb(field_name: str) -> int:
        text = Path("/proc/self/status").read_text()
        found = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
        if found is None:
            raise ValueError(f"no {field_name} in /proc/self/status")
        return int(found.group(1))

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        if self.reason:
            return None
        gc.collect()
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = self._status_kb("VmRSS")
        fn()
        return max(0, self._status_kb("VmHWM") - base) * 1024


def cuda_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def measure_memory(subjects: List[Subject], images: List[Tensor], targets: Targets,
                   device: torch.device) -> Tuple[List[List[int]], List[List[int]], str]:
    """Per-subject (train, inference) peak samples in bytes, transient peak + resident;
    empty lists and a reason when the peak cannot be measured."""
    cpu = CpuPeak() if device.type == "cpu" else None
    if cpu is not None and cpu.reason:
        return [[] for _ in subjects], [[] for _ in subjects], cpu.reason

    def peak(fn: Callable[[], object]) -> int:
        got = cuda_peak(fn, device) if cpu is None else cpu.measure(fn)
        return int(got or 0)

    train_b: List[List[int]] = [[] for _ in subjects]
    infer_b: List[List[int]] = [[] for _ in subjects]
    for _ in range(MEM_SAMPLES):
        for k, s in enumerate(subjects):
            s.model.train()
            s.optimizer.zero_grad(set_to_none=True)
            train_b[k].append(peak(lambda s=s: train_step(s, images, targets))
                              + resident_bytes(s))
            s.optimizer.zero_grad(set_to_none=True)
            s.model.eval()
            infer_b[k].append(peak(lambda s=s: infer(s, images[0])) + resident_bytes(s))
    return train_b, infer_b, ""
