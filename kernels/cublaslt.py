"""cuBLASLt GEMMs: every matmul of a step, the Dense forward as ``out = act(x @ w + b)`` in one
call with the bias (and ReLU) in the GEMM's epilogue; per shape, layout and pointer alignment
the algorithm is cuBLASLt's heuristic choice, or (opt-in) the fastest of its candidates, timed
once at the shape's first eager call.

Loaded with ctypes beside the cuBLAS CuPy uses (CuPy has no cuBLASLt module); enum values from
``cublasLt.h``/``cublas_api.h``/``library_types.h`` (CUDA 12.9, unchanged since CUDA 11).
Written on a machine without a GPU: ``lt_operands`` (the row-major to column-major mapping) and
``lt_types`` are checked on CPU; the calls themselves first run on a GPU machine.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numpy as np

CUDA_R_32F, CUDA_R_64F, CUDA_R_16F, CUDA_R_16BF = 0, 1, 2, 14
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
OP_N, OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
DESC_EPILOGUE_AUX_POINTER, DESC_EPILOGUE_AUX_LD, DESC_BIAS_DATA_TYPE = 11, 12, 26
EPILOGUE_DEFAULT, EPILOGUE_BIAS, EPILOGUE_RELU_BIAS = 1, 4, 6
EPILOGUE_RELU_AUX_BIAS, EPILOGUE_DRELU_BGRAD, EPILOGUE_BGRADA = 134, 152, 256
#: epilogues whose vector is written (a bias gradient), not read (a bias)
GRADIENT_EPILOGUES = (EPILOGUE_DRELU_BGRAD, EPILOGUE_BGRADA)
HALF_NAMES = ("float16", "bfloat16")  # mixed precision's operand dtypes (bfloat16: ml_dtypes)
PREF_MAX_WORKSPACE_BYTES = 1
PREF_MIN_ALIGNMENT = (5, 6, 7, 8)  # bytes of A, B, C, D (uint32)
#: errors of the device (CuPy's, or the CPU emulator's) that a probe passes on, never hides
#: errors a probe propagates (the device's own, and a capture's refused allocation)
DEVICE_ERRORS: tuple[str, ...] = ("CUDARuntimeError", "CUDADriverError", "OutOfMemoryError")
DEVICE_ERRORS += ("EmulationError", "CaptureObstacleError")
BIAS_ALIGNMENT = 16  # bytes: a bias less aligned gets no epilogue (a separate kernel adds it)


def mask_ld(units: int) -> int:
    """The ReLU bit-mask's leading dimension in bits for ``units`` outputs per row (D's rows):
    cuBLASLt wants a multiple of 128."""
    return -(-units // 128) * 128


def mask_bytes(rows: int, units: int) -> int:
    """Bytes of the ReLU bit-mask of a ``rows`` x ``units`` output."""
    return rows * mask_ld(units) // 8


def grad_dtype(dtype: Any) -> np.dtype:
    """The weight and bias gradients' dtype for operands of ``dtype``: float32 (mixed
    precision's master gradients) for half operands, else ``dtype``."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.name in HALF_NAMES else dtype


#: The operand layouts (``x``, ``w`` F-contiguous?) the gradient probes run each epilogue on
PROBED_LAYOUTS = {EPILOGUE_BGRADA: (True, False), EPILOGUE_DRELU_BGRAD: (False, True)}


def as_probed(x: Any, w: Any, code: int) -> bool:
    """Whether ``x @ w`` with the gradient epilogue ``code`` is shaped as its probe ran it: no
    dimension of 1 (nvmath-python refuses DRELU_BGRAD at k = 1 and BGRADA at n = 1, a batch of
    one or a one-unit layer; the probes try neither) and the probe's operand layouts (BGRADA
    on a transposed A is documented unsupported). Anything else goes through the kernels."""
    if min(x.shape[0], x.shape[1], w.shape[1]) < 2:
        return False
    x_f, w_f = PROBED_LAYOUTS[code]
    layout = lambda a, f: a.flags.f_contiguous if f else a.flags.c_contiguous  # noqa: E731
    return bool(layout(x, x_f) and layout(w, w_f))


def _exact(got: Any, want: np.ndarray) -> bool:
    """``got`` (any float dtype) holds exactly ``want``'s values, NaN where NaN."""
    return bool(np.array_equal(np.asarray(got).astype(np.float64), want, equal_nan=True))


class Epilogue(NamedTuple):
    """What a GEMM's epilogue does beyond ``out = x @ w`` (row-major terms): ``code`` is
    ``EPILOGUE_*``; ``vector`` the bias added to each row (BIAS, RELU_BIAS, RELU_AUX_BIAS) or
    the bias gradient written (DRELU_BGRAD: the column sums of the result; BGRADA: of ``w``);
    ``mask`` the ReLU bit-mask (uint8, ``mask_bytes(*out.shape)``) RELU_AUX_BIAS writes and
    DRELU_BGRAD reads, which zeroes the result where the mask's forward was not positive."""

    code: int = EPILOGUE_DEFAULT
    vector: Any = None
    mask: Any = None

    @staticmethod
    def of(bias: Any, relu: bool) -> Epilogue:
        """The forward's: none, the bias, or the bias and ReLU."""
        if bias is None:
            return Epilogue()
        return Epilogue(EPILOGUE_RELU_BIAS if relu else EPILOGUE_BIAS, bias)


class LtTypes(NamedTuple):
    """cuBLASLt's data types of a GEMM: of A and B, of C and D, the compute type, the type of
    alpha/beta (``scale``)."""

    ab: int
    cd: int
    compute: int
    scale: int


def lt_types(operands: Any, out: Any, tf32: bool) -> LtTypes | None:
    """The types for ``out = x @ w`` with ``x``, ``w`` of dtype ``operands``: float64 and
    float32 (TF32 tensor cores with ``tf32``) all in their own type; float16 operands (mixed
    precision) into float16 activations or float32 weight gradients, accumulated in float32
    (``CUBLAS_COMPUTE_32F``, float32 alpha/beta); bfloat16 (ml_dtypes) likewise. None for
    anything else."""
    operands, out = np.dtype(operands), np.dtype(out)
    half = {"float16": CUDA_R_16F, "bfloat16": CUDA_R_16BF}.get(operands.name)
    if half is not None and out.name in (operands.name, "float32"):
        cd = half if out == operands else CUDA_R_32F
        return LtTypes(half, cd, COMPUTE_32F, CUDA_R_32F)
    if operands == np.float64 and out == np.float64:
        return LtTypes(CUDA_R_64F, CUDA_R_64F, COMPUTE_64F, CUDA_R_64F)
    if operands == np.float32 and out == np.float32:
        compute = COMPUTE_32F_FAST_TF32 if tf32 else COMPUTE_32F
        return LtTypes(CUDA_R_32F, CUDA_R_32F, compute, CUDA_R_32F)
    return None


def _cupy() -> Any:
    """CuPy, imported when a GEMM runs (``lt_types``, ``lt_operands`` need none)."""
    import cupy

    return cupy


def address(a: Any) -> int:
    """The address of array ``a``'s first element (a CuPy or NumPy array)."""
    return int(a.ctypes.data) if isinstance(a, np.ndarray) else int(a.data.ptr)


def alignment(pointer: int) -> int:
    """The largest power of two up to 256 dividing ``pointer``: arrays may sit at any 4-byte
    offset (views, a user's arrays), and algorithms that assume more fail on Hopper."""
    return min(256, pointer & -pointer) if pointer else 256


class Layout(NamedTuple):
    """A stored column-major matrix as cuBLASLt describes it: rows, cols, leading dimension."""

    rows: int
    cols: int
    ld: int


class LtOperands(NamedTuple):
    """``D = op_a(A) @ op_b(B)`` in column-major terms for row-major ``out = x @ w``: A is
    ``w``'s memory, B is ``x``'s, D is ``out``'s (``out.T`` column-major: N x M)."""

    trans_a: int
    a: Layout
    trans_b: int
    b: Layout
    d: Layout


def lt_operands(x_shape: tuple, x_fortran: bool, w_shape: tuple, w_fortran: bool) -> LtOperands:
    """The cuBLASLt operands for ``out[M, N] = x[M, K] @ w[K, N]`` with C-contiguous ``out`` and
    ``x``, ``w`` each C-contiguous or (``*_fortran``) F-contiguous. A C-contiguous ``w`` is,
    read column-major, ``w.T`` (N x K, ld N); an F-contiguous one is ``w`` (K x N, ld K), used
    transposed. Likewise ``x``. The bias (length N) runs along D's rows, as cuBLASLt wants."""
    m, k = x_shape
    n = w_shape[1]
    if w_fortran:
        trans_a, a = OP_T, Layout(k, n, k)
    else:
        trans_a, a = OP_N, Layout(n, k, n)
    if x_fortran:
        trans_b, b = OP_T, Layout(m, k, m)
    else:
        trans_b, b = OP_N, Layout(k, m, k)
    return LtOperands(trans_a, a, trans_b, b, Layout(n, m, n))


class _HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", ctypes.c_uint64 * 8),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


class _Plan(NamedTuple):
    desc: ctypes.c_void_p
    layouts: tuple[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    result: _HeuristicResult


class LtGemm:
    """cuBLASLt on the current device: ``matmul`` runs ``x @ w`` (with a bias/ReLU epilogue for
    a Dense forward), or returns False when cuBLASLt has no algorithm for it (the caller falls
    back to cuBLAS and the bias kernel)."""

    WORKSPACE_BYTES = 32 * 2**20
    CANDIDATES = 8  # heuristic results timed at a shape's first call
    TIMED_RUNS = 5

    def __init__(self, cublas_path: str) -> None:
        path = cublas_path.replace("libcublas.so", "libcublasLt.so")
        self.lib = lib = ctypes.CDLL(path)
        vp, i, u64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t
        ptr = ctypes.POINTER(vp)
        signatures: dict[str, list] = {
            "cublasLtCreate": [ptr],
            "cublasLtMatmulDescCreate": [ptr, i, i],
            "cublasLtMatmulDescSetAttribute": [vp, i, vp, sz],
            "cublasLtMatrixLayoutCreate": [ptr, i, u64, u64, ctypes.c_int64],
            "cublasLtMatmulPreferenceCreate": [ptr],
            "cublasLtMatmulPreferenceSetAttribute": [vp, i, vp, sz],
            "cublasLtMatmulAlgoGetHeuristic": [vp] * 7
            + [i, ctypes.POINTER(_HeuristicResult), ctypes.POINTER(i)],
            "cublasLtMatmul": [vp] * 14 + [sz, vp],
        }
        for name, argtypes in signatures.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = i
        self.handle = vp()
        self._check(lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        self.workspaces: dict[int, Any] = {}  # per stream: streams may run concurrently
        self.preference = vp()
        self._check(
            lib.cublasLtMatmulPreferenceCreate(ctypes.byref(self.preference)), "PreferenceCreate"
        )
        limit = ctypes.c_uint64(self.WORKSPACE_BYTES)
        set_preference = lib.cublasLtMatmulPreferenceSetAttribute
        self._set(set_preference, self.preference, PREF_MAX_WORKSPACE_BYTES, limit)
        self.plans: dict[tuple, _Plan | None] = {}
        self._relu_nan: dict[tuple[str, bool], bool] = {}
        self._gradients_ok: dict[tuple[str, bool], frozenset[str]] = {}
        self._kernel_mask_ok: dict[tuple[str, bool], bool] = {}
        self.probe_errors: list[str] = []  # what a probe raised (its feature then stays off)
        self.scalars = {
            np.dtype(np.float32): (ctypes.c_float(1.0), ctypes.c_float(0.0)),
            np.dtype(np.float64): (ctypes.c_double(1.0), ctypes.c_double(0.0)),
        }

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"cuBLASLt {what} failed with status {status}")

    @staticmethod
    def supports(x: Any, w: Any, out: Any, bias: Any = None, mask: Any = None) -> bool:
        """Types ``lt_types`` knows (``x`` and ``w`` of one dtype), 2-D, ``x``/``w`` C- or
        F-contiguous, C-contiguous ``out`` (and a bias, or bias gradient, of ``out``'s dtype,
        or float32 for a half ``out``, and a ReLU bit-mask, each at a 16-byte aligned address:
        some epilogue kernels assume it, and the alignment preferences cover only A-D)."""
        dtype = out.dtype
        if lt_types(x.dtype, dtype, False) is None or not out.flags.c_contiguous or out.ndim != 2:
            return False
        contiguous = all(a.flags.c_contiguous or a.flags.f_contiguous for a in (x, w))
        if not contiguous or any(a.ndim != 2 or a.dtype != x.dtype for a in (x, w)):
            return False
        if x.shape[1] != w.shape[0] or out.shape != (x.shape[0], w.shape[1]) or out.size == 0:
            return False
        if x.shape[1] == 0 or (bias is not None and bias.shape != (w.shape[1],)):
            return False
        if bias is not None:
            aligned = alignment(address(bias)) >= BIAS_ALIGNMENT
            wide = dtype.name in HALF_NAMES and bias.dtype == np.float32  # half D, float32 bias
            if not (aligned and (bias.dtype == dtype or wide) and bias.flags.c_contiguous):
                return False
        if mask is not None:
            aligned = alignment(address(mask)) >= BIAS_ALIGNMENT
            fits = mask.ndim == 1 and mask.size >= mask_bytes(*out.shape)
            return aligned and fits and mask.dtype == np.uint8 and mask.flags.c_contiguous
        return True

    def _plan(
        self, x: Any, w: Any, out: Any, epi: Epilogue, tf32: bool, timed: bool
    ) -> tuple[tuple, _Plan | None]:
        """The plan's key and the plan: descriptors and the algorithm for this shape, layout
        and epilogue (the heuristic's first candidate, or with ``timed`` the fastest candidate on
        these operands at the first call outside a capture)."""
        x_f, w_f = not x.flags.c_contiguous, not w.flags.c_contiguous
        vectors = [a for a in (epi.vector, epi.mask) if a is not None]
        aligned = [alignment(address(a)) for a in (w, x, out, *vectors)]
        vector_dtype = None if epi.vector is None else epi.vector.dtype
        dtypes = (str(x.dtype), str(out.dtype), str(vector_dtype))
        key = (x.shape, w.shape, x_f, w_f, dtypes, epi.code, tf32, timed, *aligned)
        if key in self.plans:
            return key, self.plans[key]
        cp = _cupy()
        lib, ct = self.lib, ctypes
        ops = lt_operands(x.shape, x_f, w.shape, w_f)
        types = lt_types(x.dtype, out.dtype, tf32)
        assert types is not None  # supports() checked
        desc = self._descriptor(ops, types, epi, out)
        layouts = []
        for layout, data in ((ops.a, types.ab), (ops.b, types.ab), (ops.d, types.cd)):
            handle = ct.c_void_p()
            status = lib.cublasLtMatrixLayoutCreate(ct.byref(handle), data, *layout)
            self._check(status, "MatrixLayoutCreate")
            layouts.append(handle)
        a_desc, b_desc, d_desc = layouts
        self._set_vectors(desc, epi)  # the heuristic reads their alignment
        set_preference = lib.cublasLtMatmulPreferenceSetAttribute
        for attr, least in zip(PREF_MIN_ALIGNMENT, aligned[:3] + aligned[2:3]):  # A, B, C, D
            self._set(set_preference, self.preference, attr, ct.c_uint32(least))
        results, found = (_HeuristicResult * self.CANDIDATES)(), ct.c_int(0)
        descs = (self.handle, desc, a_desc, b_desc, d_desc, d_desc, self.preference)
        status = lib.cublasLtMatmulAlgoGetHeuristic(
            *descs, self.CANDIDATES, results, ct.byref(found)
        )
        candidates = [
            _HeuristicResult.from_buffer_copy(results[i])
            for i in range(found.value if status == 0 else 0)
            if results[i].state == 0 and results[i].workspace_size <= self.WORKSPACE_BYTES
        ]
        plan = _Plan(desc, (a_desc, b_desc, d_desc), candidates[0]) if candidates else None
        capturing = cp.cuda.get_current_stream().is_capturing()
        if plan is not None and timed and len(candidates) > 1:
            if capturing:  # no timing (a host sync) in a capture: untimed, not kept
                return key, plan
            plan = self._fastest(plan, candidates, x, w, out, epi)
        if plan is not None or not capturing:  # a heuristic failing in a capture: ask again
            self.plans[key] = plan
        return key, plan

    def _descriptor(self, ops: LtOperands, types: LtTypes, epi: Epilogue, out: Any) -> Any:
        """The matmul descriptor: transposes, epilogue, a float32 bias (gradient) type for a
        half ``out``, the mask's leading dimension."""
        lib, ct = self.lib, ctypes
        desc = ct.c_void_p()
        status = lib.cublasLtMatmulDescCreate(ct.byref(desc), types.compute, types.scale)
        self._check(status, "DescCreate")
        attributes = [
            (DESC_TRANSA, ct.c_int32(ops.trans_a)),
            (DESC_TRANSB, ct.c_int32(ops.trans_b)),
            (DESC_EPILOGUE, ct.c_uint32(epi.code)),
        ]
        if epi.vector is not None and epi.vector.dtype != out.dtype:  # float32 for half D
            attributes.append((DESC_BIAS_DATA_TYPE, ct.c_int32(CUDA_R_32F)))
        if epi.mask is not None:  # bits per row of out (D's column)
            attributes.append((DESC_EPILOGUE_AUX_LD, ct.c_int64(mask_ld(out.shape[1]))))
        for attr, value in attributes:
            self._set(lib.cublasLtMatmulDescSetAttribute, desc, attr, value)
        return desc

    def _fastest(
        self, plan: _Plan, candidates: list, x: Any, w: Any, out: Any, epi: Epilogue
    ) -> _Plan | None:
        """The plan with the candidate that ran fastest (CUDA events, after two warm-up runs;
        each run rewrites ``out``, and a bias gradient or mask, with the same result), if 10%
        faster than the heuristic's first (small GEMMs time close to the host's launch rate);
        failing candidates skipped."""
        cp = _cupy()
        stream = cp.cuda.get_current_stream()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        best, best_ms = None, float("inf")
        for result in candidates:
            trial = plan._replace(result=result)
            if any(self._launch(trial, x, w, out, epi) for _ in range(2)):
                continue  # a nonzero status: this algorithm does not run here
            start.record(stream)
            failed = any([self._launch(trial, x, w, out, epi) for _ in range(self.TIMED_RUNS)])
            end.record(stream)
            end.synchronize()
            ms = cp.cuda.get_elapsed_time(start, end) * (1.0 if result is candidates[0] else 1.1)
            if not failed and ms < best_ms:
                best, best_ms = trial, ms
        return best

    def _launch(self, plan: _Plan, x: Any, w: Any, out: Any, epi: Epilogue) -> int:
        """One cuBLASLt matmul on the current stream; returns its status."""
        cp, lib, ct = _cupy(), self.lib, ctypes
        self._set_vectors(plan.desc, epi)  # per call: layers of one shape share the plan
        one, zero = self.scalars[np.dtype(np.float64 if out.dtype == np.float64 else np.float32)]
        a_desc, b_desc, d_desc = plan.layouts
        inputs = (ct.byref(one), address(w), a_desc, address(x), b_desc, ct.byref(zero))
        outputs = (address(out), d_desc, address(out), d_desc, ct.byref(plan.result.algo))
        stream = cp.cuda.get_current_stream().ptr
        if stream not in self.workspaces:  # first met eagerly (a warm-up precedes captures)
            self.workspaces[stream] = cp.empty(self.WORKSPACE_BYTES, dtype=np.uint8)
        scratch = (address(self.workspaces[stream]), self.WORKSPACE_BYTES, stream)
        return int(lib.cublasLtMatmul(self.handle, plan.desc, *inputs, *outputs, *scratch))

    def _set_vectors(self, desc: Any, epi: Epilogue) -> None:
        """The epilogue's bias (or bias gradient) and mask pointers."""
        for attr, array in ((DESC_BIAS_POINTER, epi.vector), (DESC_EPILOGUE_AUX_POINTER, epi.mask)):
            if array is not None:
                pointer = ctypes.c_void_p(address(array))
                self._set(self.lib.cublasLtMatmulDescSetAttribute, desc, attr, pointer)

    def _set(self, setter: Any, obj: Any, attr: int, value: Any) -> None:
        """One descriptor or preference attribute (a ctypes value of the attribute's type)."""
        status = setter(obj, attr, ctypes.byref(value), ctypes.sizeof(value))
        self._check(status, f"{setter.__name__}({attr})")

    def relu_keeps_nan(self, dtype: Any = np.float32, tf32: bool = False) -> bool:
        """Whether the RELU_BIAS epilogue keeps NaN as fastnet's ReLU does (cuBLASLt does not
        say; a max instruction drops it), for ``dtype`` (and TF32): probed once each (a host
        sync; False in a capture, or without an algorithm)."""
        key = (np.dtype(dtype).name, tf32)
        if key not in self._relu_nan:
            cp = _cupy()
            if cp.cuda.get_current_stream().is_capturing():
                return False
            x, w = cp.zeros((16, 16), dtype), cp.ones((16, 16), dtype)
            x[0, 0] = np.nan  # row 0 of x @ w is all NaN
            out, bias = cp.zeros((16, 16), dtype), cp.zeros(16, dtype)
            ran = self.matmul(x, w, out, tf32, bias, True, False)
            self._relu_nan[key] = ran and bool(np.isnan(cp.asnumpy(out[0])).all())
        return self._relu_nan[key]

    def gradient_epilogues_work(
        self, dtype: Any = np.float32, tf32: bool = False, which: str = "relu_mask"
    ) -> bool:
        """Whether cuBLASLt's gradient epilogues compute what fastnet's layers take from them
        (the documentation says neither what the mask's bits hold nor, in fastnet's terms,
        which operand BGRADA sums: ``_gradient_probe`` checks), ``which``: "relu_mask"
        (RELU_AUX_BIAS keeping NaN, and DRELU_BGRAD reading its mask) or "bgrada", for
        ``dtype`` (and TF32): probed once each (a host sync; False in a capture, without an
        algorithm, or on any difference)."""
        passed = self._probed(self._gradients_ok, frozenset(), self._gradient_probe, dtype, tf32)
        return which in passed

    def _gradient_probe(self, cp: Any, dtype: np.dtype, tf32: bool) -> frozenset[str]:
        """Two Dense layers' step against NumPy, at a small batch and a large one (where
        algorithms split the batch's sums across blocks): the lower forward with RELU_AUX_BIAS
        (NaN kept), the upper layer's input gradient with DRELU_BGRAD reading that mask (the
        lower dz and db): "relu_mask"; a weight-gradient GEMM with BGRADA (the bias gradient:
        the column sums of its ``w``, dz): "bgrada", for float32 also on values TF32 cannot
        hold (summed as float32 does). Half operands as mixed precision has them: float32
        weight and bias gradients. Small integers elsewhere: every result exact. Returns the
        names that passed."""
        r = np.random.default_rng(0)
        k, units, upper = 16, 136, 40  # 136 units: two 128-bit mask words per row
        grad = grad_dtype(dtype)

        def ints(*shape: int) -> np.ndarray:
            return r.integers(-2, 3, shape).astype(np.float64)

        w, b, w_up = ints(k, units), ints(units), ints(units, upper)
        w[:, 0], b[0], w_up[0], w_up[0, 0] = 0, 1, 0, 1  # dz[:, 0] = g[:, 0]: see below
        checks: dict[str, list] = {"relu_mask": [], "bgrada": []}
        for n in (24, 4096):
            x, g = ints(n, k), ints(n, upper)
            g[:, 0] = 1
            g[0, 0] = 2  # column 0 of dz sums to n + 1: odd, and past 2048 exact in float16
            z = x @ w + b
            dz = (g @ w_up.T) * (z > 0)
            mask = cp.full(mask_bytes(n, units), 0xA5, np.uint8)  # as stale bits would be
            relu = Epilogue(EPILOGUE_RELU_AUX_BIAS, b, mask)
            checks["relu_mask"] += [
                (x, w, relu, np.maximum(z, 0), dtype, None),
                (g, w_up.T, Epilogue(EPILOGUE_DRELU_BGRAD, None, mask), dz, dtype, dz.sum(0)),
            ]
            bgrada = Epilogue(EPILOGUE_BGRADA)
            checks["bgrada"].append((x.T, dz, bgrada, x.T @ dz, grad, dz.sum(0)))
        x_nan, y_nan = x[:8].copy(), np.maximum(z[:8], 0)
        x_nan[0, 0], y_nan[0] = np.nan, np.nan  # row 0 of the forward is NaN, and must stay so
        nan_mask = cp.full(mask_bytes(8, units), 0xA5, np.uint8)
        relu = Epilogue(EPILOGUE_RELU_AUX_BIAS, b, nan_mask)
        checks["relu_mask"].append((x_nan, w, relu, y_nan, dtype, None))
        if dtype == np.float32:  # 2**-12: below TF32's precision; the GEMM rounds in TF32
            fine = dz[:24] + 2.0**-12
            approx = (x[:24].T @ fine, 1e-2 if tf32 else 1e-6)
            bgrada = Epilogue(EPILOGUE_BGRADA)
            checks["bgrada"].append((x[:24].T, fine, bgrada, approx, grad, fine.sum(0)))
        return frozenset(
            name
            for name, calls in checks.items()
            if all(self._probe_call(cp, tf32, dtype, *call) for call in calls)
        )

    def kernel_mask_works(self, dtype: Any, tf32: bool, write_mask: Any) -> bool:
        """Whether DRELU_BGRAD reads the mask ``write_mask(y, bits)`` writes (fastnet's ReLU
        kernel, for a forward whose epilogue drops NaN) as RELU_AUX_BIAS's: on a small and a
        large batch, NaN in ``y`` kept, the lower dz and db exact. Probed once per dtype and
        TF32 (a host sync; False in a capture)."""
        probe = self._kernel_mask_probe
        return bool(self._probed(self._kernel_mask_ok, False, probe, dtype, tf32, write_mask))

    def _probed(
        self, answers: dict, failed: Any, probe: Any, dtype: Any, tf32: bool, *extra: Any
    ) -> Any:
        """``probe(cp, dtype, tf32, *extra)`` once per dtype and TF32 (``_safely``), kept in
        ``answers``; ``failed`` inside a capture, where it cannot run (asked again outside)."""
        key = (np.dtype(dtype).name, tf32)
        if key not in answers:
            cp = _cupy()
            if cp.cuda.get_current_stream().is_capturing():
                return failed
            answers[key] = self._safely(probe, failed, cp, np.dtype(dtype), tf32, *extra)
        return answers[key]

    def _kernel_mask_probe(self, cp: Any, dtype: np.dtype, tf32: bool, write_mask: Any) -> bool:
        r = np.random.default_rng(1)
        units, upper = 131, 40  # a partial last byte, two 128-bit words per row
        w_up = r.integers(-2, 3, (units, upper)).astype(np.float64)
        w_up[5], w_up[5, 0] = 0, 1  # dz[:, 5] = g[:, 0]
        for n in (24, 4096):
            z, g = (r.integers(-2, 3, s).astype(np.float64) for s in ((n, units), (n, upper)))
            z[0, :3] = np.nan
            z[:, 5], g[:, 0], g[1, 0] = 1, 1, 2  # db[5] = n + 1: past float16's exact 2048
            y, bits = cp.asarray(z.astype(dtype)), cp.full(mask_bytes(n, units), 0xA5, np.uint8)
            write_mask(y, bits)
            dz = (g @ w_up.T) * (z > 0)
            epi = Epilogue(EPILOGUE_DRELU_BGRAD, None, bits)
            same = _exact(cp.asnumpy(y), np.maximum(z, 0))
            if not (
                same and self._probe_call(cp, tf32, dtype, g, w_up.T, epi, dz, dtype, dz.sum(0))
            ):
                return False
        return True

    def _safely(self, probe: Any, failed: Any, *args: Any) -> Any:
        """``probe(*args)``, or ``failed`` where it raises (written without a GPU: a probe's
        own error turns its feature off, named in ``probe_errors``, rather than training);
        the device's own errors propagate."""
        try:
            return probe(*args)
        except Exception as exc:
            if type(exc).__name__ in DEVICE_ERRORS:
                raise
            self.probe_errors.append(f"{probe.__name__}{args[1:3]}: {type(exc).__name__}: {exc}")
            return failed

    def _probe_call(
        self,
        cp: Any,
        tf32: bool,
        dtype: np.dtype,
        x: np.ndarray,
        w: np.ndarray,
        epi: Epilogue,
        out: Any,
        out_dtype: Any,
        vector: Any,
    ) -> bool:
        """``x @ w`` with operands of ``dtype`` (from float64 ``x``, ``w``) and ``epi`` (its
        bias from the host, its mask on the device) gives ``out`` in ``out_dtype`` (exactly,
        or an ``(out, rtol)`` pair) and, if not None, writes ``vector`` (a bias gradient, in
        ``grad_dtype(dtype)``) exactly."""
        out, rtol = out if isinstance(out, tuple) else (out, 0.0)
        x_d, w_d = (
            cp.asarray(a.T.astype(dtype)).T
            if not a.flags.c_contiguous
            else cp.asarray(a.astype(dtype))
            for a in (x, w)
        )
        got = cp.empty(out.shape, out_dtype)
        if vector is None:
            vec = cp.asarray(epi.vector.astype(out_dtype))  # a bias: D's type
        else:
            vec = cp.full(vector.shape, np.nan, grad_dtype(dtype))
        epi = epi._replace(vector=vec)
        if not (
            self.supports(x_d, w_d, got, vec, epi.mask)
            and self.gemm(x_d, w_d, got, tf32, epi, False)
        ):
            return False
        result = cp.asnumpy(got).astype(np.float64)
        same = np.allclose(result, out, rtol=rtol, atol=rtol) if rtol else _exact(result, out)
        return same and (vector is None or _exact(cp.asnumpy(vec), vector))

    def matmul(
        self, x: Any, w: Any, out: Any, tf32: bool, bias: Any, relu: bool, timed: bool
    ) -> bool:
        """``out = x @ w`` (``+ bias``, then ReLU if ``relu``, in the epilogue): ``gemm``."""
        return self.gemm(x, w, out, tf32, Epilogue.of(bias, relu), timed)

    def gemm(self, x: Any, w: Any, out: Any, tf32: bool, epi: Epilogue, timed: bool) -> bool:
        """``out = x @ w`` with the epilogue ``epi``; False (nothing done) when cuBLASLt has no
        algorithm for it, or its algorithm failed to launch (that plan then stays off;
        CUBLASLT_LOG_LEVEL=1 prints why). ``timed``: see ``_plan``."""
        key, plan = self._plan(x, w, out, epi, tf32, timed)
        if plan is None:
            return False
        status = self._launch(plan, x, w, out, epi)
        if status != 0:
            self.plans[key] = None
            return False
        return True


_GEMMS: dict[tuple[int, int], LtGemm] = {}


def lt_gemm(cublas_path: str) -> LtGemm:
    """The cuBLASLt handle and workspace of the current device and thread."""
    import threading

    key = (_cupy().cuda.Device().id, threading.get_ident())
    if key not in _GEMMS:
        _GEMMS[key] = LtGemm(cublas_path)
    return _GEMMS[key]
