"""Helpers of the tests of benchmarks/ scripts: import a script as a module, and write
IDX files (Fashion-MNIST's format) for fake sources."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """benchmarks/<name>.py as module `name` (benchmarks/ on sys.path for its imports)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: images (N, rows, cols) with magic 2051, labels (N,) with magic 2049."""
    if array.ndim == 3:
        header = (2051).to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big")
                                                      for n in array.shape)
    else:
        header = (2049).to_bytes(4, "big") + len(array).to_bytes(4, "big")
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
