"""Fixtures shared by the tests: devices (CPU, CUDA when its kernels exist) and seeds for the
op tests; one intra-op thread for the model tests; the fake and the synthetic COCO data of
the engine and the data tests.

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


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of model tests (`pytestmark = usefixtures(...)`):
    the models are tiny, and on a shared 2-core machine OpenMP's barriers make multi-threaded
    small convolutions ~10x slower than one thread; bitwise resume comparisons also need the
    same thread count in every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fake_coco(tmp_path_factory):
    """The engine tests' fake COCO train / val sets (engine_helpers.fake_datasets), once per
    module. Imported here, not at the top: engine_helpers needs pycocotools, which the op
    tests do not."""
    from engine_helpers import fake_datasets

    return fake_datasets(str(tmp_path_factory.mktemp("fake_coco")))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The data tests' synthetic COCO set (12 train / 4 val images of data_helpers.SYN_SIZE,
    5 classes, masks), once per module."""
    from data_helpers import SYN_SIZE

    from dynrcnn.data import make_synthetic_coco

    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_coco(out, num_train=12, num_val=4, image_size=SYN_SIZE,
                               num_classes=5, seed=3, masks=True)


def pytest_report_header(config):
    return (
        f"dynrcnn: extension={dynrcnn.ops.extension_available()} "
        f"cuda_kernels={dynrcnn.ops.cuda_kernels_compiled()} "
        f"cuda_available={torch.cuda.is_available()} seeds={SEEDS}"
    )
