"""What the GPU machine holds, printed by ``gpu_run.sh``'s setup stage: versions of CuPy, CUDA,
fastnet and their helpers, the device, and what data-parallel stages need (mpirun, MPI, NCCL).
Exits non-zero only when CuPy or fastnet cannot be imported (every later stage needs both).

    python -m fastnet.bench.gpu_facts
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from typing import Any


def _fact(name: str, read: Callable[[], Any]) -> None:
    try:
        value = read()
    except Exception as exc:  # a fact that cannot be read is itself a fact
        value = f"unavailable ({type(exc).__name__}: {exc})"
    print(f"{name:18s} {value}")


def _version(module: str) -> str:
    return str(importlib.import_module(module).__version__)


def _device() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (
        f"{name}, sm_{props['major']}{props['minor']}, {cupy.cuda.runtime.getDeviceCount()} GPU(s)"
    )


def _nccl() -> str:
    from cupy.cuda import nccl

    return f"available={nccl.available} version={nccl.get_version() if nccl.available else '-'}"


def _mpi_library() -> str:
    from mpi4py import MPI

    return str(MPI.Get_library_version().splitlines()[0])


def _cublaslt() -> str:
    from fastnet.kernels.cublaslt import lt_gemm

    from fastnet.backends import get_backend

    be = get_backend("cupy")
    with be.device:  # loads libcublasLt and makes a handle (raises if it cannot)
        lt = lt_gemm(be._cublas_path)
        kinds = [("float32", False), ("float32", True), ("float64", False), ("float16", False)]
        keeps = {f"{d}{'/tf32' if t else ''}": lt.relu_keeps_nan(d, t) for d, t in kinds}
        grads = {
            f"{d}{'/tf32' if t else ''}/{which}": lt.gradient_epilogues_work(d, t, which)
            for d, t in kinds
            for which in ("relu_mask", "bgrada")
        }
        for d, t in kinds:
            grads[f"{d}{'/tf32' if t else ''}/kernel_mask"] = lt.kernel_mask_works(
                d, t, be.k.relu_mask
            )
    nan = f"ReLU epilogue keeps NaN (False also without an algorithm): {keeps}"
    probe = f"gradient epilogues agree with NumPy: {grads}; probe errors: {lt.probe_errors}"
    return f"{be._cublas_path or '-'} (+ cuBLASLt beside it; {nan}; {probe})"


def main() -> int:
    import cupy

    import fastnet

    print(f"{'cupy':18s} {cupy.__version__}")
    print(f"{'fastnet':18s} {fastnet.__version__}")
    _fact("cuda runtime", lambda: cupy.cuda.runtime.runtimeGetVersion())
    _fact("cuda driver", lambda: cupy.cuda.runtime.driverGetVersion())
    _fact("device", _device)
    for module in ("numpy", "numba", "ml_dtypes", "mpi4py", "torch", "jax", "setuptools"):
        _fact(module, lambda m=module: _version(m))
    _fact("mpirun", lambda: shutil.which("mpirun") or shutil.which("mpiexec") or "not on PATH")
    _fact("mpi library", _mpi_library)
    _fact("nccl", _nccl)
    _fact("cublas", _cublaslt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
