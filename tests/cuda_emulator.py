"""Runs fastnet's CUDA kernels on the CPU, so their results are checked in CI without a GPU.

``load()`` returns a fresh copy of ``fastnet.kernels.cupy_gpu`` whose ``cupy`` is this module's
stand-in: NumPy arrays are the device arrays, and each ``RawKernel``/``ElementwiseKernel`` the
launchers build is compiled from its own CUDA source (elementwise ones through
``fastnet.kernels.cuda_source``, the text ``tests/test_cuda_compile.py`` checks against CuPy's)
by g++ with ``cuda_emulator.h`` force-included, and launched with the launcher's grid, block and
arguments. So what runs is the kernels' code and the launchers' code; not emulated: the GPU's
arithmetic (``exp`` and friends are glibc's, no fused multiply-adds), the memory model (a
block's threads are fibers switched at barriers; blocks run one after the other). The cupy
backend on top of it is ``emulated_cupy.py``.

A launch is checked as the GPU would not: the argument count and every argument's dtype against
the kernel's parameters (a float64 scalar passed for a ``float`` parameter is garbage on a GPU),
C-contiguous arrays for raw pointers, writes outside each array (guard bytes around copies of
the arguments), elementwise ``CArray`` indexes, warp shuffles with missing lanes, barriers
reached from different lines or after threads returned, deadlocks; and races: a small launch
runs twice, blocks and threads in two orders, and must give the same memory (atomics within a
tolerance), with no byte written by two blocks but through atomics. Shared memory starts as
0xFF bytes in every block.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from fastnet.kernels.cuda_source import CUPY_HEADERS

HEADER = Path(__file__).with_name("cuda_emulator.h")
GUARD_BYTES = 64
#: launches whose argument bytes times blocks stay below this run twice, in two orders, and
#: have their blocks' writes compared (races): the first launch of each kernel, grid, block and
#: argument layout in a process (training repeats a few); larger ones run once, unchecked
CHECK_BYTES = int(os.environ.get("FASTNET_EMULATOR_CHECK_BYTES", 8 * 2**20))
_RACE_CHECKED: set[tuple] = set()
#: kernels whose results must be the same bits in any block order, float atomics included
#: (fastnet's clip norm: data-parallel ranks each compute it and must agree)
EXACT = {"sum_squares_partial", "sum_squares_total"}
_CACHE = Path(os.environ.get("FASTNET_EMULATOR_CACHE", tempfile.gettempdir())) / "fastnet-cuda-emu"


class EmulationError(RuntimeError):
    """A launch the GPU would get wrong or leave undefined."""


@cache
def missing() -> str | None:
    """Why kernels cannot be emulated here (no g++ >= 12: C++20, ``_Float16``), or None."""
    if shutil.which("g++") is None:
        return "g++ is not installed"
    version = subprocess.run(["g++", "-dumpversion"], capture_output=True, text=True).stdout
    major = version.strip().split(".")[0]
    if not major.isdigit() or int(major) < 12:
        return f"g++ {version.strip() or '?'} is older than 12 (C++20, _Float16)"
    return None


# ---------------------------------------------------------------------------- compiling
@dataclass(frozen=True)
class Param:
    ctype: str  # as written, without __restrict__
    name: str
    kind: str  # "pointer", "carray", "indexer" or "scalar"


def _signature(code: str, name: str) -> list[Param]:
    match = re.search(rf'extern\s+"C"\s+__global__\s+void\s+{re.escape(name)}\s*\(', code)
    if match is None:
        raise EmulationError(f'no extern "C" __global__ void {name}(...) in the source')
    depth, start, parts = 0, match.end(), []
    for k in range(match.end(), len(code)):
        c = code[k]
        if c in "(<":
            depth += 1
        elif c in ">)" and depth > 0:
            depth -= 1
        elif c == ")" and depth == 0 or c == "," and depth == 0:
            parts.append(code[start:k])
            start = k + 1
            if c == ")":
                break
    params = []
    for part in parts:
        text = " ".join(part.replace("__restrict__", " ").split())
        if not text:
            continue
        ctype, pname = text.rsplit(" ", 1)
        while pname.startswith("*"):
            ctype, pname = ctype + "*", pname[1:]
        if "CArray<" in ctype:
            kind = "carray"
        elif "CIndexer<" in ctype:
            kind = "indexer"
        elif ctype.endswith("*"):
            kind = "pointer"
        else:
            kind = "scalar"
        params.append(Param(ctype, pname, kind))
    return params


def _trampoline(name: str, params: list[Param]) -> str:
    call, dtypes = [], []
    for k, p in enumerate(params):
        plain = f"std::remove_cv_t<{p.ctype}>"
        if p.kind == "pointer":
            call.append(f"({p.ctype})args[{k}]")
            dtypes.append(f"emu_dtype<std::remove_pointer_t<{plain}>>()")
        elif p.kind == "carray":
            elem = f"emu_elem_t<{plain}>"
            call.append(f"{plain}(({elem}*)args[{k}], sizes[{k}])")
            dtypes.append(f"emu_dtype<{elem}>()")
        elif p.kind == "indexer":
            call.append(f"{plain}(sizes[{k}])")
            dtypes.append('"indexer"')
        else:
            call.append(f"*({plain}*)args[{k}]")
            dtypes.append(f"emu_dtype<{plain}>()")
    return f"""
extern "C" const char* emu_param_dtype(int k) {{
  static const char* names[] = {{{", ".join(dtypes) or '""'}}};
  return names[k];
}}
extern "C" const char* emu_launch(const unsigned int* grid, const unsigned int* block,
                                  int fibers, void** args, const long long* sizes,
                                  const long long* nbytes, long long check_bytes) {{
  static std::string error;
  std::vector<EmuBuffer> buffers;
  for (int k = 0; k < {len(params)}; ++k)
    if (nbytes[k] > 0) buffers.push_back({{static_cast<unsigned char*>(args[k]),
                                           static_cast<size_t>(nbytes[k])}});
  auto kernel = [&] {{ {name}({", ".join(call)}); }};
  error = emu_run(grid, block, fibers != 0, kernel, buffers, check_bytes);
  return error.c_str();
}}
"""


def _include_dir() -> Path:
    """CuPy's header names, each pointing at the emulator (the kernels include them)."""
    root = _CACHE / "include"
    (root / "cupy").mkdir(parents=True, exist_ok=True)
    for stem in (*(h.split("/")[1] for h in CUPY_HEADERS), "float16.cuh", "bfloat16.cuh"):
        if not (root / "cupy" / stem).exists():
            (root / "cupy" / stem).write_text("#pragma once\n")  # all in cuda_emulator.h
    return root


_FLAGS = ("g++", "-std=c++20", "-O1", "-fPIC", "-w")


@cache
def _precompiled_header() -> Path:
    """A copy of ``cuda_emulator.h`` named by its hash, precompiled beside it (a kernel then
    compiles in 0.3 s rather than 1 s)."""
    text = HEADER.read_text()
    _CACHE.mkdir(parents=True, exist_ok=True)
    copy = _CACHE / f"cuda_emulator-{hashlib.sha256(text.encode()).hexdigest()[:24]}.h"
    gch = copy.with_suffix(".h.gch")
    if not gch.exists():
        copy.write_text(text)
        partial = _CACHE / f"{gch.name}.{os.getpid()}.tmp"
        command = [*_FLAGS, "-x", "c++-header", str(copy), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationError(f"g++ could not compile cuda_emulator.h:\n{result.stderr}")
        partial.replace(gch)
    return copy


@dataclass
class Compiled:
    lib: Any
    params: list[Param]
    dtypes: list[str]
    fibers: bool  # the kernel waits at barriers: its threads run as fibers


@cache
def compile_kernel(code: str, name: str) -> Compiled:
    """Compile ``name`` from CUDA ``code`` for the CPU (memoized; built files cached on disk)."""
    if why := missing():
        raise EmulationError(why)
    params = _signature(code, name)
    source = code + _trampoline(name, params)
    header = _precompiled_header()
    key = hashlib.sha256((header.name + source).encode()).hexdigest()[:24]
    built = _CACHE / f"{name}-{key}.so"
    if not built.exists():
        src = _CACHE / f"{name}-{key}.{os.getpid()}.cpp"  # processes compile side by side
        src.write_text(source)
        partial = built.with_suffix(f".{os.getpid()}.tmp")
        command = [*_FLAGS, "-shared", f"-I{_include_dir()}", "-include", str(header), str(src)]
        result = subprocess.run([*command, "-o", str(partial)], capture_output=True, text=True)
        src.unlink()
        if result.returncode != 0:
            raise EmulationError(f"g++ could not compile {name}:\n{result.stderr[-4000:]}")
        partial.replace(built)
    lib = ctypes.CDLL(str(built))
    lib.emu_param_dtype.restype = ctypes.c_char_p
    lib.emu_param_dtype.argtypes = [ctypes.c_int]
    lib.emu_launch.restype = ctypes.c_char_p
    u32p, vpp, i64p = (
        ctypes.POINTER(ctypes.c_uint),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_longlong),
    )
    lib.emu_launch.argtypes = [u32p, u32p, ctypes.c_int, vpp, i64p, i64p, ctypes.c_longlong]
    dtypes = [lib.emu_param_dtype(k).decode() for k in range(len(params))]
    fibers = "__syncthreads" in code or "__shfl" in code
    return Compiled(lib, params, dtypes, fibers)


# ---------------------------------------------------------------------------- launching
def _dim3(value: Any) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in (value if isinstance(value, tuple) else (value,)))
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise EmulationError(f"grid and block dimensions must be 1 to 3 positive sizes: {value}")
    return (*dims, *(1,) * (3 - len(dims)))  # type: ignore[return-value]


def _scalar_bytes(value: Any, dtype: str, what: str) -> np.ndarray:
    """A RawKernel scalar as CuPy passes it: NumPy scalars as they are, Python floats as
    float64, ints as int64, bools as bool; its dtype must be the parameter's."""
    if isinstance(value, np.generic):
        given = value.dtype
    elif isinstance(value, bool):
        given = np.dtype(np.bool_)
    elif isinstance(value, int):
        given = np.dtype(np.int64)
    elif isinstance(value, float):
        given = np.dtype(np.float64)
    else:
        raise EmulationError(f"{what}: {type(value).__name__} is not a scalar")
    if given.name != dtype:
        raise EmulationError(f"{what}: a {given.name} passed for a {dtype} parameter")
    return np.array([value], dtype=given)


class _Guarded:
    """Arguments copied between guard bytes; writes past either end are reported."""

    def __init__(self) -> None:
        self.copies: list[tuple[np.ndarray, np.ndarray, str]] = []

    def pointer(self, a: np.ndarray, what: str, others: list[np.ndarray]) -> int:
        twice = sum(o is a for o in others) > 1
        if twice or any(np.shares_memory(a, o) for o in others if o is not a):
            return int(a.ctypes.data)  # aliased arguments keep their memory
        raw = np.full(a.nbytes + 2 * GUARD_BYTES, 0xFF, dtype=np.uint8)
        raw[GUARD_BYTES : GUARD_BYTES + a.nbytes] = a.reshape(-1).view(np.uint8)
        self.copies.append((a, raw, what))
        return int(raw.ctypes.data) + GUARD_BYTES

    def finish(self) -> None:
        for a, raw, what in self.copies:
            if (raw[:GUARD_BYTES] != 0xFF).any() or (raw[-GUARD_BYTES:] != 0xFF).any():
                raise EmulationError(f"the kernel wrote outside {what}")
            a.reshape(-1).view(np.uint8)[:] = raw[GUARD_BYTES:-GUARD_BYTES]


#: [True] while the emulated backend captures a graph: a new device array then (a ufunc's or
#: reduction's result without ``out=``, ``astype``, ``where``) is an allocation CuPy's pool
#: would hand the graph and then give to other arrays while every replay writes it
CAPTURING = [False]


#: the memory hooks entered (``MemoryHook``): CuPy's pool calls theirs on every allocation
MEMORY_HOOKS: dict[str, Any] = {}


class MemoryHook:
    """``cupy.cuda.MemoryHook``: entered, its ``malloc_preprocess`` sees each allocation of
    the emulated device that ``refuse_allocation`` reports (those inside a capture)."""

    name = "MemoryHook"

    def __enter__(self) -> MemoryHook:
        if self.name in MEMORY_HOOKS:
            raise KeyError(f"memory hook {self.name} already exists")
        MEMORY_HOOKS[self.name] = self
        return self

    def __exit__(self, *exc: Any) -> None:
        del MEMORY_HOOKS[self.name]

    def malloc_preprocess(self, **kwargs: Any) -> None:
        return None


def refuse_allocation(what: str, nbytes: int, error: type = RuntimeError) -> None:
    """An allocation inside a capture: the memory hooks see it (as CuPy's pool calls them),
    then ``error`` is raised (CuPy's pool would hand the graph memory it gives out again)."""
    for hook in list(MEMORY_HOOKS.values()):
        hook.malloc_preprocess(device_id=0, size=max(int(nbytes), 1), mem_size=int(nbytes))
    raise error(f"{what} allocates inside a captured step")


class DeviceArray(np.ndarray):
    """An array in the emulated device's memory (a NumPy array, marked): the kernels of a
    device-only stand-in refuse unmarked (host) arrays, where a GPU would fault. Inside a
    capture (``CAPTURING``) any operation that makes a new array raises."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if CAPTURING[0] and out is None and method != "at":
            size = max((x.nbytes for x in inputs if isinstance(x, np.ndarray)), default=1)
            refuse_allocation(f"{ufunc.__name__}.{method}", size, EmulationError)
        host = [x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, DeviceArray) else o for o in out
            )
        result = getattr(ufunc, method)(*host, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(r.view(DeviceArray) if isinstance(r, np.ndarray) else r for r in result)
        return result.view(DeviceArray) if isinstance(result, np.ndarray) else result

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        result = super().__array_function__(func, types, args, kwargs)
        if CAPTURING[0]:
            given = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
            _refuse_new(result, given, func.__name__)
        return result

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        return self._same_memory("astype", super().astype(*args, **kwargs))

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        return self._same_memory("copy", super().copy(*args, **kwargs))

    def dot(self, *args: Any, **kwargs: Any) -> Any:
        return self._same_memory("dot", super().dot(*args, **kwargs), out=kwargs.get("out"))

    def flatten(self, *args: Any, **kwargs: Any) -> Any:
        return self._same_memory("flatten", super().flatten(*args, **kwargs))

    def ravel(self, *args: Any, **kwargs: Any) -> Any:
        return self._same_memory("ravel", super().ravel(*args, **kwargs))

    def reshape(self, *args: Any, **kwargs: Any) -> Any:
        return self._same_memory("reshape", super().reshape(*args, **kwargs))

    def __getitem__(self, key: Any) -> Any:  # (fancy and boolean indexing copy)
        return self._same_memory("indexing", super().__getitem__(key))

    def _same_memory(self, what: str, result: Any, out: Any = None) -> Any:
        if CAPTURING[0]:
            _refuse_new(result, [self] if out is None else [self, out], what)
        return result


def _refuse_new(result: Any, given: list, what: str) -> None:
    """Inside a capture: refuse ``result`` where it is a new array (no memory of ``given``)."""
    if isinstance(result, np.ndarray) and result.size:
        if not any(np.may_share_memory(result, a) for a in given):
            refuse_allocation(what, result.nbytes, EmulationError)


def launch(
    compiled: Compiled, name: str, grid: Any, block: Any, args: tuple, device_only: bool = False
) -> None:
    """Launch a compiled kernel with CuPy's RawKernel argument rules, checked."""
    params = compiled.params
    if len(args) != len(params):
        raise EmulationError(f"{name} takes {len(params)} arguments, {len(args)} given")
    g3, b3 = _dim3(grid), _dim3(block)
    if b3[0] * b3[1] * b3[2] > 1024 or b3[2] > 64:
        raise EmulationError(f"{name}: a block of more than 1024 threads, or z over 64 {b3}")
    if g3[0] >= 2**31 or max(g3[1:]) > 65535:
        raise EmulationError(f"{name}: grid {g3} beyond CUDA's (2**31 - 1, 65535, 65535)")
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    guarded, keep = _Guarded(), []
    pointers = (ctypes.c_void_p * max(1, len(args)))()
    sizes = (ctypes.c_longlong * max(1, len(args)))()
    nbytes = (ctypes.c_longlong * max(1, len(args)))()
    for k, (p, dtype, a) in enumerate(zip(params, compiled.dtypes, args, strict=True)):
        what = f"{name}'s argument {k} ({p.name})"
        if p.kind in ("pointer", "carray"):
            if not isinstance(a, np.ndarray):
                raise EmulationError(f"{what}: an array is needed, not {type(a).__name__}")
            if device_only and not isinstance(a, DeviceArray):
                raise EmulationError(f"{what}: a host (NumPy) array, not the device's")
            if a.dtype.name != dtype:
                raise EmulationError(f"{what}: a {a.dtype.name} array for {dtype} elements")
            if not a.flags.c_contiguous:
                raise EmulationError(f"{what}: not C-contiguous (a kernel reads it flat)")
            pointers[k] = guarded.pointer(a, what, arrays)
            sizes[k], nbytes[k] = a.size, a.nbytes
        elif p.kind == "indexer":
            sizes[k] = int(a)
        else:
            value = _scalar_bytes(a, dtype, what)
            keep.append(value)
            pointers[k] = value.ctypes.data
    grid_c = (ctypes.c_uint * 3)(*g3)
    block_c = (ctypes.c_uint * 3)(*b3)
    layout = tuple((a.shape, a.dtype.str) if isinstance(a, np.ndarray) else type(a) for a in args)
    key = (id(compiled), g3, b3, layout)
    check = 0 if key in _RACE_CHECKED else CHECK_BYTES * (-1 if name in EXACT else 1)
    _RACE_CHECKED.add(key)
    checks = (pointers, sizes, nbytes, check)
    error = compiled.lib.emu_launch(grid_c, block_c, int(compiled.fibers), *checks)
    if error:
        raise EmulationError(f"{name}: {error.decode()}")
    guarded.finish()


class RawKernel:
    """``cupy.RawKernel`` on the CPU."""

    device_only = False  # True: arrays must be ``DeviceArray`` (a device-only stand-in)

    def __init__(self, code: str, name: str, options: tuple = (), **kwargs: Any) -> None:
        self.code, self.name, self.options = code, name, options

    def __call__(self, grid: Any, block: Any, args: tuple, *, shared_mem: int = 0) -> None:
        if shared_mem:
            raise EmulationError(f"{self.name}: dynamic shared memory is not emulated")
        compiled = compile_kernel(self.code, self.name)
        launch(compiled, self.name, grid, block, tuple(args), self.device_only)


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` on the CPU, for C-contiguous arguments of one size (or
    scalars; ``raw`` arguments any size): the layout fastnet's launchers use. Types follow
    CuPy 14 (``_decide_params_type_core``): a placeholder takes the dtype of the arrays bound to
    it (outputs first; they must agree), never a scalar's; scalars, Python or NumPy, are cast to
    their parameter's type; typed arrays must match."""

    device_only = False

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, **kwargs: Any):
        import cupy  # the real one: parses the parameters, needs no GPU

        self.kernel = cupy.ElementwiseKernel(in_params, out_params, operation, name, **kwargs)
        self.name = name

    def __call__(self, *args: Any) -> Any:
        from fastnet.kernels.cuda_source import elementwise_source

        k = self.kernel
        ins, outs = list(k.in_params), list(k.out_params)
        if len(args) not in (len(ins), len(ins) + len(outs)):
            raise EmulationError(f"{self.name} takes {len(ins)} inputs (+ {len(outs)} outputs)")
        params = ins + outs[: len(args) - len(ins)]
        types_: dict[str, np.dtype] = {}
        given = [*zip(params, args, strict=False)][len(ins) :] + [*zip(ins, args, strict=False)]
        for p, a in given:  # outputs, then inputs: CuPy's order
            if p.dtype is None and isinstance(a, np.ndarray):
                bound = types_.setdefault(p.ctype, a.dtype)
                if bound != a.dtype:
                    raise EmulationError(
                        f"{self.name}: {p.name} is {a.dtype}, {p.ctype} is already {bound}"
                    )
        shapes = {a.shape for p, a in zip(params, args, strict=False) if not p.raw and
                  isinstance(a, np.ndarray)}  # fmt: skip
        if len(shapes) > 1:
            raise EmulationError(f"{self.name}: arguments of different shapes {sorted(shapes)}")
        shape = shapes.pop() if shapes else ()
        values = list(args)
        for p in outs[len(args) - len(ins) :]:
            values.append(np.empty(shape, dtype=types_[p.ctype] if p.dtype is None else p.dtype))
        call, arrays = [], set()
        for p, a in zip(ins + outs, values, strict=True):
            want = types_.get(p.ctype) if p.dtype is None else np.dtype(p.dtype)
            if want is None:
                raise EmulationError(f"{self.name}: no argument fixes the type {p.ctype}")
            if isinstance(a, np.ndarray):
                if a.dtype != want:
                    raise EmulationError(f"{self.name}: {p.name} is {a.dtype}, not {want}")
                if not a.flags.c_contiguous:
                    raise EmulationError(f"{self.name}: {p.name} is not C-contiguous")
                if not p.raw:
                    arrays.add(p.name)
                call.append(a.reshape(-1))
                continue
            call.append(want.type(a))  # CScalar.apply_dtype
        size = int(np.prod(shape, dtype=np.int64))
        if size == 0:
            return values[len(ins)] if len(outs) == 1 else tuple(values[len(ins) :])
        names = {t: d.name for t, d in types_.items()}
        source = elementwise_source(k, names, arrays)
        compiled = compile_kernel(source, self.name)
        block = min(size, 128)
        grid = min((size + block - 1) // block, 8)
        for p, a in zip(ins + outs, values, strict=True):
            if self.device_only and isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
                raise EmulationError(f"{self.name}: {p.name} is a host (NumPy) array")
        launch(compiled, self.name, (grid,), (block,), (*call, size))
        return values[len(ins)] if len(outs) == 1 else tuple(values[len(ins) :])


# ---------------------------------------------------------------------------- the cupy stand-in
class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _no_cublas() -> Any:
    raise EmulationError("cuBLAS is not emulated")


class _DeviceRawKernel(RawKernel):
    device_only = True


class _DeviceElementwiseKernel(ElementwiseKernel):
    device_only = True


#: the version the stand-in ``cupy`` reports (``stand_in``)
CUPY_VERSION = ["14.2.0"]


def stand_in(device_only: bool = False) -> types.ModuleType:
    """A ``cupy`` module with what ``fastnet.kernels.cupy_gpu`` uses, on NumPy (with
    ``device_only``, its kernels take ``DeviceArray`` arrays only)."""
    cp = types.ModuleType("cupy")
    cp.__version__ = CUPY_VERSION[0]
    cp.RawKernel = _DeviceRawKernel if device_only else RawKernel  # type: ignore[attr-defined]
    kind = _DeviceElementwiseKernel if device_only else ElementwiseKernel
    cp.ElementwiseKernel = kind  # type: ignore[attr-defined]
    cp.ndarray = np.ndarray  # type: ignore[attr-defined]
    cp.zeros, cp.ones, cp.empty = np.zeros, np.ones, np.empty  # type: ignore[attr-defined]
    cp.full, cp.asarray = np.full, np.array  # type: ignore[attr-defined]
    cp.asnumpy = np.array  # type: ignore[attr-defined]
    cuda = types.SimpleNamespace(
        Event=_Event,
        get_elapsed_time=lambda start, end: (end.time - start.time) * 1e3,
        Device=_Device,
        get_current_stream=lambda: types.SimpleNamespace(ptr=0),
        device=types.SimpleNamespace(get_cublas_handle=_no_cublas),
    )
    cp.cuda = cuda  # type: ignore[attr-defined]
    return cp


def load(name: str = "fastnet.kernels.cupy_gpu", device_only: bool = False) -> types.ModuleType:
    """A fresh copy of module ``name`` whose ``cupy`` is the stand-in (the real module and
    ``sys.modules`` are left as they were)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = stand_in(device_only)
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = saved
    return module


class _Event:
    def __init__(self) -> None:
        self.time = 0.0

    def record(self, stream: Any = None) -> None:
        import time

        self.time = time.perf_counter()

    def synchronize(self) -> None:
        return None
