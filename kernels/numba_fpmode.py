"""Flush-to-zero for the span of one numba kernel call (x86-64).

Intel cores take a microcode assist, many times the cost of the operation, for each subnormal
operand or result. With MXCSR's FTZ bit set, subnormal results are written as zero; with DAZ,
subnormal operands are read as zero: the hardware does what an explicit ``abs(x) < tiny``
select per value would do, at no cost per value (Adam over 235k float32 values: 0.65x the time
of the explicit selects on an Intel Xeon Skylake-SP). A kernel calls :func:`enter_flush_mode`
first and :func:`leave_flush_mode` with its result last, so the caller's mode (and its sticky
exception flags) are as before: no mode change leaks into user code. The mode is per thread:
work handed to other threads (``prange`` under ``parallel=True``) does not run in it. Nothing
between the two calls may raise (the update loops cannot with numba's default settings; with
``NUMBA_BOUNDSCHECK=1`` an out-of-range index would leave the mode set). numba's cache watches
only numba_cpu.py, which inlines this code: update numba_cpu.HELPERS_SHA256 with any change.
"""

from __future__ import annotations

import platform
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic as _numba_intrinsic

#: True where the intrinsics below exist (x86-64); elsewhere kernels flush explicitly.
AVAILABLE = platform.machine().lower() in ("x86_64", "amd64")

#: MXCSR bits: FTZ (bit 15) writes subnormal results as zero, DAZ (bit 6) reads them as zero.
FTZ_DAZ = 0x8040

#: typed as Any: called with numba's arguments from jitted code, not with the codegen's
intrinsic: Any = _numba_intrinsic
_I32 = ir.IntType(32)
_VOID_OF_PTR = ir.FunctionType(ir.VoidType(), [ir.PointerType(ir.IntType(8))])


def _csr_op(builder: Any, name: str, slot: Any) -> None:
    """``stmxcsr``/``ldmxcsr`` through the 4-byte stack ``slot``."""
    fn = cgutils.get_or_insert_function(builder.module, _VOID_OF_PTR, f"llvm.x86.sse.{name}")
    builder.call(fn, [builder.bitcast(slot, ir.PointerType(ir.IntType(8)))])


@intrinsic
def enter_flush_mode(typingctx: Any) -> Any:
    """Set FTZ and DAZ in this thread's MXCSR; return the previous MXCSR."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        slot = cgutils.alloca_once(builder, _I32)
        _csr_op(builder, "stmxcsr", slot)
        old = builder.load(slot)
        builder.store(builder.or_(old, ir.Constant(_I32, FTZ_DAZ)), slot)
        _csr_op(builder, "ldmxcsr", slot)
        return old

    return types.uint32(), codegen


@intrinsic
def leave_flush_mode(typingctx: Any, previous: Any) -> Any:
    """Restore the MXCSR that :func:`enter_flush_mode` returned."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        slot = cgutils.alloca_once(builder, _I32)
        builder.store(args[0], slot)
        _csr_op(builder, "ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(types.uint32), codegen


@intrinsic
def read_mode(typingctx: Any) -> Any:
    """This thread's MXCSR (for tests: the mode is restored after a kernel)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        slot = cgutils.alloca_once(builder, _I32)
        _csr_op(builder, "stmxcsr", slot)
        return builder.load(slot)

    return types.uint32(), codegen
