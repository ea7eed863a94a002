"""The full CUDA source CuPy compiles for a ``cupy.ElementwiseKernel``, written without a GPU.

CuPy writes an elementwise kernel's source only at its first launch, from private Cython helpers
that take descriptors of the actual arguments and change between releases (``CArray`` has three
template flags in CuPy 14, four on its main branch). Rather than call those, we fill CuPy's
template (``_get_simple_elementwise_kernel_code`` in ``cupy/_core/_kernel.pyx``) from the kernel's
public attributes (``in_params``, ``out_params``, ``operation``, ``name``, ``preamble``) for the one
layout fastnet launches: C-contiguous arrays reduced to 1-D with 32-bit indexing. What a launch
passes as an array rather than a scalar is not in the kernel, so the caller names those inputs.
``tests/test_cuda_compile.py`` checks the text against CuPy's own generator for the CuPy version
pinned in the ``gpu-check`` extra; a new CuPy needs that test to pass before the pin moves.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

# Headers CuPy prepends to every elementwise source (``cupy._core.core._cupy_header_list``).
CUPY_HEADERS = ("cupy/complex.cuh", "cupy/carray.cuh", "cupy/atomics.cuh", "cupy/math_constants.h")
_C_NAME = {
    np.dtype(t): c
    for t, c in [
        (np.float32, "float"),
        (np.float64, "double"),
        (np.int32, "int"),
        (np.int64, "long long"),
        (np.uint32, "unsigned int"),
        (np.uint64, "unsigned long long"),
        (np.bool_, "bool"),
        (np.float16, "float16"),
    ]
}
HALF_NAMES = ("float16", "bfloat16")  # CuPy's classes (cupy/float16.cuh, cupy/bfloat16.cuh)


def _c_name(dtype: Any) -> str:
    return dtype if dtype in HALF_NAMES else _C_NAME[np.dtype(dtype)]


def elementwise_source(kernel: Any, dtype: Any, arrays: Collection[str]) -> str:
    """Source of ``kernel`` with ``T = dtype`` (or with each placeholder of the mapping
    ``dtype`` given its type, e.g. ``{"T": "float32", "H": "float16"}``); non-raw inputs named
    in ``arrays`` are arrays, the other non-raw inputs scalars; outputs and ``raw`` parameters
    are always arrays."""
    types = {k: _c_name(v) for k, v in (dtype if isinstance(dtype, dict) else {"T": dtype}).items()}
    params, loads = [], []
    for p in (*kernel.in_params, *kernel.out_params):
        c = types[p.ctype] if p.dtype is None else _C_NAME[np.dtype(p.dtype)]
        const = "const " if p.is_const else ""
        if p.raw:
            params.append(f"{const}CArray<{c}, 1, 1, 1> {p.name}")
        elif not p.is_const or p.name in arrays:
            params.append(f"{const}CArray<{c}, 1, 1, 1> _raw_{p.name}")
            loads.append(f"{const}{p.ctype} &{p.name} = _raw_{p.name}[_ind.get()];")
        else:
            params.append(f"{const}{c} {p.name}")
    params.append("CIndexer<1, 1> _ind")
    used = {p.ctype for p in kernel.params}
    typedef = "".join(f"typedef {c} {name};\n" for name, c in sorted(types.items()) if name in used)
    loop_prep = kernel.kwargs.get("loop_prep", "")
    after_loop = kernel.kwargs.get("after_loop", "")
    operation = "\n".join([*loads, kernel.operation])
    body = f"""
    {typedef}
    {kernel.preamble}
    extern "C" __global__ void {kernel.name}({", ".join(params)}) {{
      {loop_prep};
      #pragma unroll 1
      CUPY_FOR(i, _ind.size()) {{
        _ind.set(i);
        {operation};
      }}
      {after_loop};
    }}
    """
    return "\n".join(f"#include <{h}>" for h in CUPY_HEADERS) + body
