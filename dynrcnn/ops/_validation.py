"""Argument checks shared by the op wrappers: clear errors that name the argument.

Only shapes, dtypes and devices are checked unconditionally: they are known on the host.
Values (split offsets) are checked on CPU tensors; on CUDA reading them would stall the
stream, so they are checked only with DYNRCNN_CHECK_SPLITS=1. The CUDA kernels clamp every
offset into range, so bad splits there give wrong numbers, never out-of-bounds accesses.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from dynrcnn.ops._reference import REDUCTIONS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling")
                and compiler.is_compiling())


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float(name: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_boxes(name: str, boxes: object) -> Tensor:
    boxes = check_tensor(name, boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (x1, y1, x2, y2), got {list(boxes.shape)}")
    check_float(name, boxes)
    return boxes


def check_same_device(**tensors: Optional[Tensor]) -> None:
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                "all arguments must be on one device"
            )


def as_scalar_tensor(name: str, value: Union[Tensor, float], like: Tensor) -> Tensor:
    """A 0-dim floating tensor on `like`'s device; Python numbers are converted."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A fill, not torch.tensor(v, device=...): the latter copies from pageable host
        # memory, which blocks the host until the stream drains (a host sync on CUDA).
        return torch.full((), float(value), dtype=torch.float32, device=like.device)
    value = check_tensor(name, value)
    if value.numel() != 1 or value.dim() > 1:
        raise ValueError(f"{name} must be a 0-dim tensor, got shape {list(value.shape)}")
    check_float(name, value)
    if value.device != like.device:
        raise ValueError(
            f"{name} is on {value.device} but the boxes are on {like.device}: keep it on the "
            "op's device (moving it every call would synchronize)"
        )
    return value if value.dim() == 0 else value.reshape(())


def check_splits(name: str, splits: object, total: int, total_name: str,
                 num_images: Optional[int]) -> Tensor:
    splits = check_tensor(name, splits)
    if splits.dim() != 1 or splits.numel() < 1:
        raise ValueError(
            f"{name} must be a 1-D tensor of B+1 offsets, got shape {list(splits.shape)}"
        )
    if splits.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {splits.dtype}")
    if num_images is not None and splits.numel() != num_images + 1:
        raise ValueError(
            f"{name} has {splits.numel()} offsets but proposal_splits has {num_images + 1}: "
            "both must describe the same B images"
        )
    if _is_compiling():
        return splits
    if splits.device.type == "cpu" or os.environ.get("DYNRCNN_CHECK_SPLITS") == "1":
        values = splits.tolist()
        if values[0] != 0:
            raise ValueError(f"{name} must start at 0, got {values[0]}")
        if values[-1] != total:
            raise ValueError(
                f"{name} must end at {total_name} = {total}, got {values[-1]} "
                f"(the splits do not add up)"
            )
        if any(b < a for a, b in zip(values, values[1:])):
            raise ValueError(f"{name} must be non-decreasing, got {values}")
    return splits


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_weights(weights: Sequence[float]) -> list:
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}") from exc
    if len(values) != 4 or not all(v > 0 for v in values):
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
    return values


def check_reduction(reduction: str) -> int:
    code = REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return code
