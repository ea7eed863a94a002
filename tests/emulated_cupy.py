"""The cupy backend on the CPU: ``CupyBackend`` itself, its CUDA kernels run by
``cuda_emulator`` (a stand-in ``cupy``), its cuBLASLt and cuBLAS calls by
``fake_cublaslt.cpp``, CUDA graphs with ``capture_backend``'s semantics. The ``cupy-emulated``
backend of the test fixtures."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import types
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from cuda_emulator import (
    _CACHE,
    CAPTURING,
    DeviceArray,
    EmulationError,
    MemoryHook,
    _Device,
    load,
    missing,
    refuse_allocation,
    stand_in,
)

# ---------------------------------------------------------------------------- cuBLASLt
FAKE_CUBLASLT = Path(__file__).with_name("fake_cublaslt.cpp")


@cache
def fake_cublas_path() -> str:
    """The path of ``fake_cublaslt.cpp`` built for the CPU as ``libcublas.so`` (its GEMMs, for
    ``CublasGemm``), with a copy beside it as ``libcublasLt.so`` (what ``LtGemm`` loads)."""
    if why := missing():
        raise EmulationError(why)
    source = FAKE_CUBLASLT.read_text()
    folder = _CACHE / f"cublas-{hashlib.sha256(source.encode()).hexdigest()[:24]}"
    built = folder / "libcublasLt.so"
    if not built.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"libcublasLt.{os.getpid()}.tmp"
        command = ["g++", "-std=c++20", "-O3", "-shared", "-fPIC", str(FAKE_CUBLASLT), "-o"]
        result = subprocess.run([*command, str(partial)], capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationError(f"g++ could not compile the fake cuBLASLt:\n{result.stderr}")
        shutil.copyfile(partial, folder / f"libcublas.{os.getpid()}.tmp")
        Path(folder / f"libcublas.{os.getpid()}.tmp").replace(folder / "libcublas.so")
        partial.replace(built)
    return str(folder / "libcublas.so")


# ---------------------------------------------------------------------------- the cupy backend
class _Stream:
    """A CUDA stream of the emulated device: ``ptr`` 0 is the default stream. Entered, it is
    current; its capture is the backend's (``capture_backend``'s recording of ops), its
    events are nothing (work runs in order)."""

    def __init__(self, backend: Any, ptr: int = 0) -> None:
        self.backend, self.ptr = backend, ptr

    def __enter__(self) -> _Stream:
        self.backend.streams.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.backend.streams.pop()

    def is_capturing(self) -> bool:
        return bool(getattr(self.backend, "capturing", False)) and self.ptr != 0

    def record(self, event: Any = None) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def begin_capture(self) -> None:
        if self.ptr == 0:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: the legacy default stream")
        self.backend.begin_capture()

    def end_capture(self) -> Any:
        graph = self.backend.end_capture()
        return types.SimpleNamespace(launch=lambda stream: graph.replay())


def _on_device(value: Any) -> Any:
    """What an ``xp`` function returns, as CuPy's: arrays in device memory."""
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_on_device(v) for v in value)
    return value


_ALLOCATING = ("empty", "zeros", "ones", "full", "array", "copy", "concatenate", "stack")
_ALLOCATING += tuple(f"{name}_like" for name in ("empty", "zeros", "ones", "full"))


class _DeviceNumpy(types.ModuleType):
    """NumPy as the emulated backend's ``xp``: not ``numpy`` itself, so that ``Backend``'s
    device paths (``xp is not np``) run as on CuPy, with the CuPy extras the backend calls.
    Its allocating functions (and ``asarray``-like calls that copy) fail inside a capture, as
    CuPy's pool would hand the graph memory it then keeps writing."""

    def __init__(self, backend: Any) -> None:
        super().__init__("numpy_as_cupy")
        runtime = types.SimpleNamespace(
            CUDARuntimeError=type("CUDARuntimeError", (RuntimeError,), {})
        )
        driver = types.SimpleNamespace(CUDADriverError=type("CUDADriverError", (RuntimeError,), {}))
        self.cuda = types.SimpleNamespace(
            get_current_stream=backend.current_stream,
            Stream=lambda non_blocking=False: _Stream(backend, 1),
            MemoryHook=MemoryHook,
            runtime=runtime,
            driver=driver,
        )
        self._backend = backend
        self.ndarray = DeviceArray  # is_native: the device's arrays only

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if name in _ALLOCATING or name in ("asarray", "ascontiguousarray"):
            return self._guarded(name, value)
        if callable(value) and not isinstance(value, (type, np.ufunc)):
            return lambda *args, **kwargs: _on_device(value(*args, **kwargs))
        return value

    def _guarded(self, name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            copied = name in _ALLOCATING or not any(
                isinstance(a, np.ndarray) and np.shares_memory(a, result) for a in args[:1]
            )
            if copied and getattr(self._backend, "capturing", False):
                from capture_backend import CaptureError

                refuse_allocation(f"xp.{name}", result.nbytes, CaptureError)
            return _on_device(result)

        return call

    @staticmethod
    def asnumpy(a: Any) -> np.ndarray:
        return np.asarray(a)


def emulated_cupy_backend(steps_per_graph: int | None = None) -> Any:
    """``CupyBackend`` with its kernels on this emulator and NumPy arrays as device arrays:
    the backend's own op code (which kernel, which fallback, the launch arguments) and the
    kernels run; its GEMMs go through ``fastnet.kernels.cublaslt`` and ``CublasGemm`` into
    ``fake_cublaslt.cpp`` (cuBLASLt's and cuBLAS's calls on the CPU). CUDA graphs
    are ``CupyBackend.capture`` on emulated streams whose capture is ``capture_backend``'s: it
    records the backend's ops and replays them (the kernels run again); allocations inside one
    fail, as do the kernels module's own."""
    from capture_backend import CaptureError, CaptureSemantics

    from fastnet.backends.base import Backend
    from fastnet.backends.cupy_backend import CupyBackend
    from fastnet.backends.numpy_backend import NumpyBackend

    class EmulatedCupyBackend(CaptureSemantics, CupyBackend):
        name = "cupy-emulated"
        capture = CupyBackend.capture  # the real ones, on the emulated streams
        step_stream = CupyBackend.step_stream

        def __init__(self, steps_per_graph: int) -> None:
            Backend.__init__(self)
            self.streams: list[_Stream] = []
            self._start_recording(steps_per_graph)
            self.xp = _DeviceNumpy(self)
            self.k = load(device_only=True)
            self.device_id = 0
            self.device = _Device(0)
            self._stream = None
            self._lt_reason = ""
            self._relu_nan = {}
            self._gradients_ok = {}
            self._kernel_mask_ok = {}
            self._cublas_path = fake_cublas_path()
            self.lt = load("fastnet.kernels.cublaslt")
            cp = stand_in()
            cp.cuda.get_current_stream = self.current_stream  # type: ignore[attr-defined]
            self.lt._cupy = lambda: cp
            self.k.cp.cuda.get_current_stream = cp.cuda.get_current_stream
            for module in (self.k.cp, cp):  # the kernel modules' own allocations
                for name in ("zeros", "ones", "empty", "full", "asarray"):
                    allocate = np.array if name == "asarray" else getattr(np, name)  # a copy
                    setattr(module, name, self._allocation(allocate))
            fake = ctypes.CDLL(self._cublas_path)  # cuBLAS: CuPy's handle, then CublasGemm
            fake.cublasCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
            handle = ctypes.c_void_p()
            fake.cublasCreate_v2(ctypes.byref(handle))
            self.k.cp.cuda.device.get_cublas_handle = lambda: handle.value
            self.k._loaded_library = lambda stem: self._cublas_path
            self._gemm = self.k.cublas_gemm()
            self._gemm_name = "cublas-direct"

        def begin_capture(self) -> None:
            super().begin_capture()
            CAPTURING[0] = True

        def end_capture(self) -> Any:
            CAPTURING[0] = False
            return super().end_capture()

        def current_stream(self) -> _Stream:
            return self.streams[-1] if self.streams else _Stream(self)

        @property  # type: ignore[override]
        def stream(self) -> str:  # capture_backend's name of the current stream
            return "step" if self.current_stream().ptr else "default"

        @stream.setter
        def stream(self, name: str) -> None:
            return None

        def _allocation(self, allocate: Any) -> Any:
            def guarded(*args: Any, **kwargs: Any) -> Any:
                result = allocate(*args, **kwargs).view(DeviceArray)
                if self.capturing:
                    refuse_allocation("the kernels module", result.nbytes, CaptureError)
                return result

            return guarded

        def asarray(self, x: Any, dtype: Any = None) -> Any:
            copy = np.array(x, dtype=dtype, order="C")  # a copy, as host to device is
            return copy.view(DeviceArray)

        def to_numpy(self, x: Any) -> np.ndarray:
            if self.capturing:
                raise CaptureError(  # (CuPy's words)
                    "the current stream is capturing, so synchronous API calls are disallowed"
                )
            return np.array(x)  # a copy, as device to host is

        def rng(self, seed: int | None) -> Any:
            return np.random.RandomState(seed)

        def permutation(self, rng: Any, n: int) -> Any:
            return rng.permutation(n).view(DeviceArray)

        def uniform(self, rng: Any, shape: Any, dtype: Any) -> Any:
            return rng.random_sample(shape).astype(dtype).view(DeviceArray)

        def fits_on_device(self, nbytes: int) -> bool:
            limit = self.device_data_limit_bytes
            return limit is None or nbytes <= limit

        def pinned_empty(self, shape: Any, dtype: Any) -> np.ndarray:
            return np.empty(shape, dtype=dtype)

        def copy_from_host(self, dst: Any, src: np.ndarray) -> Any:
            dst[...] = src
            return None

        check_policy = NumpyBackend.check_policy
        emulate_mixed = True

        def synchronize(self) -> None:
            return None

        def device_info(self) -> str:
            return "emulated CUDA device (tests/cuda_emulator.py)"

        def peak_memory(self) -> int | None:
            return None

        def elapsed(self, fn: Any) -> float:
            return Backend.elapsed(self, fn)

    return EmulatedCupyBackend(steps_per_graph or CupyBackend.steps_per_graph)
