"""Build of the dynrcnn C++/CUDA extension (``dynrcnn._C``).

CUDA kernels are compiled whenever torch was built with CUDA and a CUDA toolkit is found.
Environment switches:
  FORCE_CUDA=1        build the CUDA kernels or fail loudly if no toolkit is found
  DYNRCNN_NO_CUDA=1   build the CPU kernels only
  CUDA_HOME=/path     toolkit root to use (its include/ must hold cuda_runtime_api.h)
  TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0+PTX" when no GPU is visible

Why the toolkit search: a `nvcc` on PATH may be a wrapper script, in which case torch guesses
the toolkit root from the script's folder and finds no headers. The real root is the folder
whose include/ holds cuda_runtime_api.h. torch's own headers include cuBLAS/cuSPARSE headers,
which pip-installed CUDA builds of torch ship in site-packages/nvidia/<cuXX>/include.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = Path("csrc")  # setuptools wants source paths relative to setup.py
os.chdir(ROOT)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _is_toolkit_root(path: Path) -> bool:
    return (path / "include" / "cuda_runtime_api.h").is_file() and (
        (path / "bin" / "nvcc").exists()
    )


def _nvcc_real_root(nvcc: str) -> Path | None:
    """Follow symlinks and one level of `exec /path/nvcc` wrapper scripts."""
    path = Path(os.path.realpath(nvcc))
    if _is_toolkit_root(path.parent.parent):
        return path.parent.parent
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    for token in head.decode(errors="ignore").split():
        token = token.strip("\"'")
        if token.endswith("/nvcc") and token != nvcc:
            candidate = Path(os.path.realpath(token)).parent.parent
            if _is_toolkit_root(candidate):
                return candidate
    return None


def find_cuda_home() -> Path | None:
    """Locate the CUDA toolkit root (the folder whose include/ holds cuda_runtime_api.h)."""
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = _nvcc_real_root(nvcc)
        if real is not None:
            candidates.append(real)
    candidates.append(Path("/usr/local/cuda"))
    candidates += sorted(Path(p) for p in glob.glob("/usr/local/cuda-*"))[::-1]
    for cand in candidates:
        if _is_toolkit_root(cand):
            return cand.resolve()
    return None


def nvidia_wheel_include_dirs() -> list[str]:
    """Header folders of pip's nvidia-* wheels (cuBLAS, cuSPARSE, ... for torch's headers)."""
    dirs: list[str] = []
    for site in sys.path:
        base = Path(site) / "nvidia"
        if not base.is_dir():
            continue
        for inc in sorted(base.glob("*/include")):
            if (inc / "cublas_v2.h").is_file() or (inc / "cusparse.h").is_file():
                dirs.append(str(inc))
    return list(dict.fromkeys(dirs))


def want_cuda(torch_module) -> tuple[bool, Path | None]:
    if _truthy("DYNRCNN_NO_CUDA"):
        return False, None
    cuda_home = find_cuda_home()
    has_torch_cuda = torch_module.version.cuda is not None
    if _truthy("FORCE_CUDA"):
        if cuda_home is None:
            raise RuntimeError(
                "FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the folder whose "
                "include/ holds cuda_runtime_api.h"
            )
        return True, cuda_home
    return (has_torch_cuda and cuda_home is not None), cuda_home


def build_extensions():
    import torch

    use_cuda, cuda_home = want_cuda(torch)
    if use_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME at import time: set it before importing.
        os.environ["CUDA_HOME"] = str(cuda_home)
        os.environ.setdefault("CUDA_PATH", str(cuda_home))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # With no GPU visible torch cannot pick the architectures itself.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    from torch.utils import cpp_extension

    if use_cuda:
        cpp_extension.CUDA_HOME = str(cuda_home)

    sources = [str(CSRC / "dynrcnn.cpp"), str(CSRC / "python_module.cpp")]
    sources += sorted(str(p) for p in (CSRC / "ops" / "cpu").glob("*.cpp"))
    sources += sorted(str(p) for p in (CSRC / "ops" / "autograd").glob("*.cpp"))
    include_dirs = [str(ROOT / CSRC)]
    define_macros: list[tuple[str, str | None]] = []
    # -fno-trapping-math lets gcc if-convert the branch-free selects in csrc/ops/box_math.h
    # (a division in a discarded lane cannot trap anyway): the CPU loops then vectorize.
    # It changes no rounding.
    # No multiply-add contraction on either side (-ffp-contract=off, --fmad=false): the CPU
    # and CUDA kernels share box_math.h and must round every product as the pure-torch
    # reference does, so that IoUs, labels at T == IoU and the statistics agree bit for bit.
    # nvcc contracts by default (the union `aw * ah + bw * bh` became one fma); gcc would
    # too wherever FMA is enabled (-march=native, an AVX2+FMA clone).
    extra_cxx = ["-O3", "-fno-trapping-math", "-ffp-contract=off"]
    extra_nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
    if sys.platform != "win32" and _has_openmp():
        # at::parallel_for is an inline `#pragma omp parallel` in torch's OpenMP build:
        # without -fopenmp our loops would silently run on one thread.
        extra_cxx.append("-fopenmp")

    if use_cuda:
        sources += sorted(str(p) for p in (CSRC / "ops" / "cuda").glob("*.cu"))
        include_dirs += nvidia_wheel_include_dirs()
        define_macros.append(("DYNRCNN_WITH_CUDA", None))
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": extra_cxx, "nvcc": extra_nvcc}
        print(f"dynrcnn: building CUDA kernels with toolkit {cuda_home} "
              f"for arch {os.environ.get('TORCH_CUDA_ARCH_LIST')}")
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": extra_cxx}
        print("dynrcnn: building CPU kernels only"
              + (" (DYNRCNN_NO_CUDA=1)" if _truthy("DYNRCNN_NO_CUDA") else
                 " (torch has no CUDA or no CUDA toolkit found)"))

    ext = ext_cls(
        name="dynrcnn._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
    )
    use_ninja = shutil.which("ninja") is not None or _ninja_module()
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)
    return [ext], {"build_ext": build_ext}


def _ninja_module() -> bool:
    try:
        import ninja  # noqa: F401
    except ImportError:
        return False
    return True


def _has_openmp() -> bool:
    """torch's CPU build parallelises at::parallel_for with OpenMP; match it when gcc can."""
    cxx = os.environ.get("CXX", "c++")
    try:
        proc = subprocess.run(
            [cxx, "-fopenmp", "-x", "c++", "-E", "-", "-o", os.devnull],
            input=b"#include <omp.h>\n", capture_output=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


ext_modules, cmdclass = build_extensions()

setup(
    name="dynrcnn",
    packages=find_packages(include=["dynrcnn", "dynrcnn.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
