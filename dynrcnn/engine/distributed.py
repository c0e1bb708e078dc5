"""torch.distributed helpers: init from torchrun's environment, small collectives, and the
cross-rank check of Dynamic R-CNN's T and beta.

Every helper is a no-op (or the identity) in a single process, so the trainer and the
evaluator run the same code with and without torchrun.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dynrcnn.dynamic import DynamicState
from dynrcnn.engine.config import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands (init_distributed returns it).

    Attributes:
        rank: this process's rank (0 in a single process).
        world_size: the number of processes.
        local_rank: its rank on this machine (torchrun's LOCAL_RANK), its GPU's index.
        device: the device it computes on.
        initialized_here: whether init_distributed created the process group (then
            shutdown() destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and logs."""
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_device(device: Optional[str], local_rank: int = 0) -> torch.device:
    """'cuda' (or None with a GPU present) means this process's GPU, cuda:<local_rank>."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        # a UsageError (a ValueError): the CLI reports it as one line naming the flag
        raise UsageError(f"--device {device}: CUDA is not available here "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on GPUs, gloo on the CPU. Without those
    variables (or WORLD_SIZE=1) this is a single process and nothing is initialized.

    Args:
        device: cpu, cuda or cuda:N; None: CUDA when available. "cuda" means this process's
            GPU, cuda:<LOCAL_RANK>, which becomes the current CUDA device.
        timeout_s: the process group's timeout for collectives, in seconds.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and the *_object collectives use the current GPU
    if world <= 1 or not dist.is_available():
        return DistInfo(get_rank(), get_world_size(), local_rank, dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout_s))
        initialized_here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, initialized_here)


def shutdown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group init_distributed created (a no-op otherwise).

    clean=True (the run finished on this rank): a barrier first, so no rank destroys its
    group and exits while another is still communicating, and the last collective before
    exit is one whose work holds no Python tensor. Why that matters: DDP keeps references
    to the process group that nothing releases (torch 2.14: 10 Python references survive
    `del ddp` and destroy_process_group), so the gloo backend is never freed and its worker
    threads live until the interpreter exits. A worker that drops the last reference to a
    Python-owned tensor after finalization began must take the GIL, Python ends the thread
    with pthread_exit, and the forced unwind through C++ aborts the process: "terminate
    called without an active exception". The barrier makes every rank finish its previous
    collectives first; the object collectives keep their tensors referenced (_KEPT) so
    that no worker holds the last reference to one.
    clean=False (an exception is propagating): no barrier, which could hang on a peer that
    failed elsewhere; just destroy.
    """
    if not (info.initialized_here and dist.is_initialized()):
        return
    if clean and dist.get_world_size() > 1:
        dist.barrier()
        _wait_for_release()
    dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean over ranks (a copy; the input is left alone)."""
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().clone()
    dist.all_reduce(out)
    _KEPT.append([out])
    return out / dist.get_world_size()


def all_reduce_min(tensor: Tensor) -> Tensor:
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    _KEPT.append([out])
    return out.clone()


# The tensors this module hands to collectives, the last few of them. A gloo worker thread
# destroys a finished collective's work (and with it the work's references to its tensors)
# a moment after the caller saw it finish; the final barrier's work even keeps the works
# still in progress when it was queued. Each C++ reference to a tensor made in Python holds
# a reference to its Python object (torch >= 2.10), so that release takes the GIL, and at
# interpreter exit Python ends a thread that asks for it with pthread_exit: the process
# aborts with "terminate called without an active exception" (seen one run in six under
# load, the core showing ~AsyncBarrierWork -> ~AsyncBroadcastWork -> decref_pyobject on a
# gloo worker). So the collectives here run on tensors only this deque references, and
# shutdown() waits until no C++ reference to them is left (_wait_for_release).
_KEPT: Deque[List[Tensor]] = deque(maxlen=8)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_payloads(obj: Any) -> List[Any]:
    """Every rank's pickled `obj`, unpickled, in rank order (two all_gathers: the sizes,
    then the payloads padded to the longest)."""
    device = _collective_device()
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    world = dist.get_world_size()
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(n.item()) for n in sizes]
    payload = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    payload[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    outs = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(outs, payload)
    _KEPT.append([size, *sizes, payload, *outs])
    return [pickle.loads(out[:n].cpu().numpy().tobytes()) for out, n in zip(outs, lengths)]


def _wait_for_release(timeout_s: float = 10.0) -> None:
    """Until no collective's work references a tensor of _KEPT (each C++ reference adds one
    to its Python reference count: 3 here are the list's, the loop's and getrefcount's),
    at most `timeout_s`; then forget them."""
    deadline = time.monotonic() + timeout_s
    for group in list(_KEPT):
        for tensor in group:
            while sys.getrefcount(tensor) > 3 and time.monotonic() < deadline:
                time.sleep(0.001)
    _KEPT.clear()


def gather_objects(obj: Any, dst: int = 0) -> Optional[List[Any]]:
    """Every rank's `obj` as a list on rank `dst` (None elsewhere); [obj] in one process."""
    if not is_distributed():
        return [obj]
    gathered = _all_gather_payloads(obj)
    return gathered if get_rank() == dst else None


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's `obj` on every rank, in rank order; [obj] in one process."""
    if not is_distributed():
        return [obj]
    return _all_gather_payloads(obj)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not is_distributed():
        return obj
    device = _collective_device()
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if get_rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, src=src)
    payload = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if get_rank() == src:
        payload.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(payload, src=src)
    _KEPT.append([size, payload])
    return obj if get_rank() == src else pickle.loads(payload.cpu().numpy().tobytes())


@torch.no_grad()
def sync_dynamic_state(state: DynamicState) -> None:
    """Check that every rank holds the same DynamicState, then make it bitwise identical.

    DynamicState.update() all-gathers the histories, so all ranks compute the same T and
    beta as long as they call record() equally often (each training forward records once).
    A different record count means the ranks went out of step: that is an error, since
    their update() collectives no longer pair up. A different T or beta (which should not
    happen) is reported and overwritten with rank 0's values. Collective: call on all ranks.

    Args:
        state: this rank's DynamicState (the model's roi_heads.dynamic_state).
    """
    if not is_distributed():
        return
    dev = state.iou_thr.device
    local = torch.stack([torch.tensor(float(state.records), dtype=torch.float64, device=dev),
                         state.iou_thr.double(), state.beta.double()])
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    _KEPT.append([local, *parts])
    table = torch.stack(parts).cpu()
    if bool((table[:, 0] != table[0, 0]).any()):
        raise RuntimeError(
            "DynamicState is out of step across ranks: record counts "
            f"{[int(r) for r in table[:, 0].tolist()]} (one per rank) should all be equal")
    if bool((table[:, 1:] != table[0, 1:]).any()):
        warnings.warn(
            f"DynamicState T/beta differ across ranks ({table[:, 1:].tolist()}); using rank "
            "0's values", RuntimeWarning, stacklevel=2)
    # rank 0's values, gathered above (float32 -> float64 -> float32 is exact): no broadcast
    # of the buffers themselves, which _KEPT could not account for (see _KEPT)
    state.iou_thr.copy_(table[0, 1].to(state.iou_thr))
    state.beta.copy_(table[0, 2].to(state.beta))


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), DynamicState's
    excepted. Collective.

    The trainer runs DDP with broadcast_buffers=False (to keep each rank's DynamicState
    history its own), so the ranks' BatchNorm statistics drift apart: they only matter in
    eval mode, and this makes a distributed evaluation and the checkpoint use one set,
    rank 0's, as DDP's default per-forward broadcast would have.
    """
    if not is_distributed():
        return
    dynamic = {id(b) for m in model.modules() if isinstance(m, DynamicState)
               for b in m.buffers()}
    for buf in model.buffers():
        if id(buf) not in dynamic:
            copy = buf.detach().clone()  # a tensor only _KEPT references (see _KEPT)
            dist.broadcast(copy, src=0)
            buf.copy_(copy)
            _KEPT.append([copy])
