"""Loading of the compiled extension `dynrcnn._C` and what it was built with."""

from __future__ import annotations

import os
import warnings

import torch

_LOAD_ERROR: str | None = None
try:
    from dynrcnn import _C  # noqa: F401  (loading registers torch.ops.dynrcnn.*)
except ImportError as exc:  # not built (e.g. a source checkout without `pip install -e .`)
    _LOAD_ERROR = str(exc)


def extension_available() -> bool:
    """True when the compiled kernels are loaded."""
    return _LOAD_ERROR is None


_CUDA_COMPILED: bool | None = None


def cuda_kernels_compiled() -> bool:
    """True when the extension was built with the CUDA kernels (asked once: every op call
    passes here, and the answer cannot change once the library is loaded)."""
    global _CUDA_COMPILED
    if _CUDA_COMPILED is None:
        _CUDA_COMPILED = extension_available() and bool(
            torch._C._dispatch_has_kernel_for_dispatch_key("dynrcnn::box_iou", "CUDA"))
    return _CUDA_COMPILED


def use_kernels(device: torch.device) -> bool:
    """Whether the fused kernels serve tensors on `device` (else the pure-torch reference)."""
    kind = device.type
    if kind == "cpu" and _LOAD_ERROR is None:  # the common case, first
        return True
    if not extension_available():
        _warn_fallback(f"the dynrcnn extension is not built ({_LOAD_ERROR})")
        return False
    if kind == "cuda" and not cuda_kernels_compiled():
        _warn_fallback("dynrcnn was built without CUDA kernels")
        return False
    return kind in ("cpu", "cuda")


_warned = False


def _warn_fallback(reason: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    if os.environ.get("DYNRCNN_REQUIRE_EXTENSION") == "1":
        raise RuntimeError(f"dynrcnn: {reason}, and DYNRCNN_REQUIRE_EXTENSION=1")
    warnings.warn(
        f"dynrcnn: {reason}; using the slow pure-torch reference ops. "
        "Build with `pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=3,
    )
