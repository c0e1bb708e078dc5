"""Fixtures shared by the op tests: devices (CPU, CUDA when its kernels exist) and seeds.

Seeds: DYNRCNN_TEST_SEED (default 0) shifts the seed list, so a run can use fresh inputs
(e.g. DYNRCNN_TEST_SEED=$RANDOM); a failing case names its seed in the test id.
"""

from __future__ import annotations

import os

import pytest
import torch

import dynrcnn.ops

BASE_SEED = int(os.environ.get("DYNRCNN_TEST_SEED", "0"))
SEEDS = [BASE_SEED + i for i in range(4)]


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    if not dynrcnn.ops.cuda_kernels_compiled():
        return "dynrcnn was built without its CUDA kernels (cuda_kernels_compiled() is False)"
    return None


CUDA_SKIP_REASON = _cuda_skip_reason()
CUDA_PARAM = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda,
           pytest.mark.skipif(CUDA_SKIP_REASON is not None, reason=str(CUDA_SKIP_REASON))],
)
DEVICES = ["cpu", CUDA_PARAM]

requires_extension = pytest.mark.skipif(
    not dynrcnn.ops.extension_available(), reason="the dynrcnn extension is not built"
)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed{s}")
def seed(request) -> int:
    return request.param


def pytest_report_header(config):
    return (
        f"dynrcnn: extension={dynrcnn.ops.extension_available()} "
        f"cuda_kernels={dynrcnn.ops.cuda_kernels_compiled()} "
        f"cuda_available={torch.cuda.is_available()} seeds={SEEDS}"
    )
