"""Compile CUDA sources with NVRTC for a GPU architecture, without a GPU or a driver, and read the
registers and spills ptxas reports (``--ptxas-options=-v`` in the NVRTC log):

    python -m fastnet.bench.nvrtc_check [--arch 80,90]     (every kernel of kernel_sources())

It exits 1 when a kernel spills, 2 (with the reason, one line) where cupy or NVRTC is missing.

NVRTC is driven through ctypes from the ``nvidia-cuda-nvrtc-cu12`` wheel (CuPy's own wrapper asks
the device for its compute capability first); the include paths and flags are the ones CuPy passes
(``assemble_cupy_compiler_options``), taken from the installed ``cupy`` package. Both come with the
``gpu-check`` extra.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ARCHS = ("80", "90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass(frozen=True)
class PtxasInfo:
    """What ptxas says about one entry function (spills summed over the functions it reports)."""

    kernel: str
    arch: str
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    def __str__(self) -> str:
        return (
            f"sm_{self.arch} {self.kernel}: {self.registers} registers, {self.stack_bytes} B "
            f"stack, {self.spill_stores} B spill stores, {self.spill_loads} B spill loads"
        )


@cache
def nvrtc() -> ctypes.CDLL:
    """libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel (else the system's libnvrtc.so.12)."""
    try:
        import nvidia.cuda_nvrtc as wheel

        path = os.path.join(next(iter(wheel.__path__)), "lib", "libnvrtc.so.12")
    except ImportError:
        path = "libnvrtc.so.12"
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def missing() -> str:
    """Why the toolchain (cupy headers + NVRTC) cannot run here, or "" when it can."""
    try:
        import cupy  # noqa: F401

        version()
    except (ImportError, OSError) as exc:
        return f"{exc} (install the 'gpu-check' extra)"
    return ""


@cache
def cupy_options() -> tuple[str, ...]:
    """Include paths and flags as CuPy passes them to NVRTC; the CUDA headers (cuda_fp16.h,
    cuda_bf16.h: the half kernels) from the ``nvidia-cuda-runtime-cu12`` wheel, as CuPy finds
    them in a pip-installed CUDA, or from a toolkit's include folder."""
    import cupy

    inc = Path(cupy.__file__).parent / "_core" / "include"
    cccl = [f"-I{inc / 'cupy' / '_cccl' / d}" for d in ("cub", "thrust", "libcudacxx")]
    cuda = [f"-I{path}" for path in _cuda_includes()]
    flags = ("--std=c++17", f"-I{inc}", "-ftz=true", "--device-as-default-execution-space")
    return (*cccl, *cuda, *flags)


def _cuda_includes() -> list[Path]:
    try:
        import nvidia.cuda_runtime as runtime

        return [Path(p) / "include" for p in runtime.__path__][:1]
    except ImportError:
        home = os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        return [Path(home) / "include"] if (Path(home) / "include" / "cuda_fp16.h").exists() else []


def _check(status: int, what: str, log: str = "") -> None:
    if status != 0:
        err = nvrtc().nvrtcGetErrorString(status).decode()
        raise RuntimeError(f"{what}: {err}\n{log}")


def compile_log(source: str, arch: str, options: tuple[str, ...] = ()) -> str:
    """Compile ``source`` to a cubin for ``sm_<arch>``; return the NVRTC log (ptxas -v output).
    Raises RuntimeError with the log when the source does not compile."""
    lib, prog = nvrtc(), ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        opts = [*cupy_options(), f"-arch=sm_{arch}", "--ptxas-options=-v", *options]
        status = lib.nvrtcCompileProgram(
            prog, len(opts), (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        )
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace")
        _check(status, f"nvrtcCompileProgram (sm_{arch})", text)
        _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        if size.value == 0:
            raise RuntimeError(f"NVRTC wrote no cubin for sm_{arch}")
        return text
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def parse_ptxas(log: str) -> list[PtxasInfo]:
    """One PtxasInfo per entry function in a ``ptxas -v`` log."""
    found: list[PtxasInfo] = []
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", log):
        entry, regs = _ENTRY.search(block), _REGS.search(block)
        if entry is None or regs is None:
            continue
        props = [tuple(map(int, m)) for m in _PROPS.findall(block)] or [(0, 0, 0)]
        found.append(
            PtxasInfo(
                entry[1],
                entry[2],
                int(regs[1]),
                max(p[0] for p in props),
                sum(p[1] for p in props),
                sum(p[2] for p in props),
            )
        )
    return found


def check(source: str, arch: str, options: tuple[str, ...] = ()) -> list[PtxasInfo]:
    """Compile and report; raises when ptxas reported no entry function."""
    log = compile_log(source, arch, options)
    infos = parse_ptxas(log)
    if not infos:
        raise RuntimeError(f"no ptxas report for sm_{arch} in the NVRTC log:\n{log}")
    return infos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(ARCHS), help="comma list, e.g. 80,90")
    args = parser.parse_args(argv)
    reason = missing()
    if reason:  # one line, not an ImportError's traceback
        print(f"nvrtc_check: error: cannot compile here: {reason}", file=sys.stderr)
        return 2
    from fastnet.kernels.cupy_gpu import kernel_sources

    print(f"NVRTC {'.'.join(map(str, version()))}")
    spilled = 0
    for name, source in kernel_sources():
        for arch in args.arch.split(","):
            for info in check(source, arch):
                spilled += info.spills
                print(f"{name:28s} {info}")
    print(f"{spilled} spilling kernel(s)")
    return 1 if spilled else 0


if __name__ == "__main__":
    raise SystemExit(main())
