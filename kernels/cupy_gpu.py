"""CuPy GPU kernels: built lazily on first use and memoized per (op, dtype, activation).

Elementwise work uses ``cupy.ElementwiseKernel``; reductions fused with elementwise work
(activation backward + bias gradient, softmax cross-entropy, correct counts) are ``RawKernel``s.
None of the launchers allocate when given their output buffers, so a training step built from
them can be captured in a CUDA graph.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cupy as cp
import numpy as np

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Activation of v (z + b) and derivative from the output y; codes as in fastnet.backends.base.
_ACT = {
    0: "v",
    1: "v > (T)0 ? v : (T)0",
    2: "v > (T)0 ? v : v * alpha",
    3: "v >= (T)0 ? (T)1 / ((T)1 + exp(-v)) : exp(v) / ((T)1 + exp(v))",
    4: "tanh(v)",
}
_DACT = {
    0: "(T)1",
    1: "(y > (T)0 ? (T)1 : (T)0)",
    2: "(y > (T)0 ? (T)1 : alpha)",
    3: "(y * ((T)1 - y))",
    4: "((T)1 - y * y)",
}


def ctype(dtype: Any) -> str:
    return _CTYPE[np.dtype(dtype)]


# ---------------------------------------------------------------------------- bias + activation
@cache
def _bias_act(code: int) -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "raw T b, int32 ncol, T alpha",
        "T z",
        f"T v = z + b[i % ncol]; z = {_ACT[code]};",
        f"fastnet_bias_act_{code}",
    )


def bias_act(z: Any, b: Any, code: int, alpha: float) -> Any:
    """In place ``z = act(z + b)`` for C-contiguous 2-D ``z``."""
    return _bias_act(code)(b, np.int32(z.shape[1]), z.dtype.type(alpha), z)


@cache
def _act(code: int) -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel("T v, T alpha", "T y", f"y = {_ACT[code]};", f"fastnet_act_{code}")


def activation(x: Any, code: int, alpha: float, out: Any) -> Any:
    return _act(code)(x, x.dtype.type(alpha), out)


@cache
def _act_grad(code: int) -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "T y, T dy, T alpha", "T dz", f"dz = dy * {_DACT[code]};", f"fastnet_act_grad_{code}"
    )


def activation_backward(y: Any, dy: Any, code: int, alpha: float, out: Any) -> Any:
    return _act_grad(code)(y, dy, y.dtype.type(alpha), out)


_ACT_BWD_BIAS_SRC = r"""
extern "C" __global__ void act_bwd_bias(const T* __restrict__ y, const T* __restrict__ dy,
                                        T* __restrict__ dz, T* __restrict__ db,
                                        int n, int m, T alpha) {
    // block (32, 8): 32 adjacent columns, 8 row lanes; each block covers ROWS rows.
    __shared__ T partial[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int row0 = blockIdx.y * ROWS;
    T acc = 0;
    if (col < m) {
        for (int r = row0 + threadIdx.y; r < min(row0 + ROWS, n); r += 8) {
            size_t k = (size_t)r * m + col;
            T yv = y[k];
            T g = dy[k] * DACT;
            dz[k] = g;
            acc += g;
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < m) {
        T s = 0;
        for (int j = 0; j < 8; ++j) s += partial[j][threadIdx.x];
        atomicAdd(&db[col], s);
    }
}
"""
_ROWS_PER_BLOCK = 128


@cache
def _act_bwd_bias(dtype: str, code: int) -> cp.RawKernel:
    deriv = _DACT[code].replace("y", "yv")
    src = (
        f"#define T {dtype}\n#define ROWS {_ROWS_PER_BLOCK}\n#define DACT {deriv}\n"
        + _ACT_BWD_BIAS_SRC
    )
    return cp.RawKernel(src, "act_bwd_bias")


def act_backward_bias(y: Any, dy: Any, code: int, alpha: float, dz: Any, db: Any) -> None:
    """``dz = dy * act'(y)`` and ``db = dz.sum(axis=0)`` in one kernel (``db`` is zeroed here)."""
    n, m = y.shape
    db.fill(0)
    grid = ((m + 31) // 32, (n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK)
    _act_bwd_bias(ctype(y.dtype), code)(
        grid, (32, 8), (y, dy, dz, db, np.int32(n), np.int32(m), y.dtype.type(alpha))
    )


# ---------------------------------------------------------------------------- softmax + CE
_SOFTMAX_XENT_SRC = r"""
__device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
// One warp per row: stable max, sum of exp, then dlogits = (softmax - onehot) * inv_n.
// Adds loss_scale * (log(sum) - (x[label] - max)) into *loss (zeroed by the caller).
extern "C" __global__ void softmax_xent(const T* __restrict__ logits,
                                        const long long* __restrict__ labels,
                                        T* __restrict__ dlogits, T* __restrict__ loss,
                                        int n, int m, T inv_n, T loss_scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= n) return;
    const T* x = logits + (size_t)row * m;
    T* d = dlogits + (size_t)row * m;
    T mx = x[0];
    for (int j = lane; j < m; j += 32) mx = fmax(mx, x[j]);
    mx = warp_max(mx);
    T s = 0;
    for (int j = lane; j < m; j += 32) s += exp(x[j] - mx);
    s = warp_sum(s);
    long long label = labels[row];
    T scale = inv_n / s;
    for (int j = lane; j < m; j += 32) {
        T p = exp(x[j] - mx) * scale;
        d[j] = (j == label) ? p - inv_n : p;
    }
    if (lane == 0) atomicAdd(loss, loss_scale * (log(s) - (x[label] - mx)));
}
"""


@cache
def _softmax_xent(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _SOFTMAX_XENT_SRC, "softmax_xent")


def softmax_xent(logits: Any, labels: Any, dlogits: Any, loss: Any, loss_scale: float) -> None:
    """Fused softmax cross-entropy: writes mean-reduced ``dlogits`` and adds
    ``loss_scale * sum(row losses)`` into the 0-d ``loss`` (int64 ``labels``)."""
    n, m = logits.shape
    rows_per_block = 8
    grid = ((n + rows_per_block - 1) // rows_per_block,)
    t = logits.dtype.type
    _softmax_xent(ctype(logits.dtype))(
        grid,
        (32 * rows_per_block,),
        (logits, labels, dlogits, loss, np.int32(n), np.int32(m), t(1.0 / n), t(loss_scale)),
    )


_COUNT_CORRECT_SRC = r"""
extern "C" __global__ void count_correct(const T* __restrict__ logits,
                                         const long long* __restrict__ labels,
                                         unsigned long long* __restrict__ hits, int n, int m) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    const T* x = logits + (size_t)row * m;
    int best = 0;
    for (int j = 1; j < m; ++j) if (x[j] > x[best]) best = j;
    if (best == labels[row]) atomicAdd(hits, 1ULL);
}
"""


@cache
def _count_correct(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _COUNT_CORRECT_SRC, "count_correct")


def count_correct(logits: Any, labels: Any, hits: Any) -> None:
    """Add the number of rows whose argmax equals the label into uint64 ``hits``."""
    n, m = logits.shape
    _count_correct(ctype(logits.dtype))(
        ((n + 255) // 256,), (256,), (logits, labels, hits, np.int32(n), np.int32(m))
    )


# ---------------------------------------------------------------------------- optimizer updates
# Optimizer kernels run over a flat arena group: weight decay (L2 ``wd`` and the decoupled
# ``shrink``) for elements [0, n_decay) only; the gradient is scaled by ``gscale`` (global-norm
# clipping) and clipped to [-clip, clip] first (NaN kept), as in the numba kernels.
_PRE = "T gscale, T clip, T shrink_all, T wd_all, int64 n_decay"
_WD = (
    "T wd = i < n_decay ? wd_all : (T)0; T shrink = i < n_decay ? shrink_all : (T)1;"
    "T gc = g * gscale; gc = gc > clip ? clip : (gc < -clip ? -clip : gc);"
)


@cache
def sgd_kernel() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "T g, T lr, " + _PRE,
        "T p",
        _WD + "T gi = gc + wd * p; p = p * shrink - lr * gi;",
        "fastnet_sgd",
    )


@cache
def momentum_kernel() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "T g, T lr, T mu, bool nesterov, " + _PRE,
        "T p, T v",
        _WD + "T gi = gc + wd * p; T vi = mu * v - lr * gi; v = vi; p *= shrink;"
        "p += nesterov ? mu * vi - lr * gi : vi;",
        "fastnet_momentum",
    )


@cache
def adagrad_kernel() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "T g, T lr, T eps, " + _PRE,
        "T p, T h",
        _WD + "T gi = gc + wd * p; T hi = h + gi * gi; h = hi;"
        "p = p * shrink - lr * gi / (sqrt(hi) + eps);",
        "fastnet_adagrad",
    )


@cache
def rmsprop_kernel() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "T g, T lr, T rho, T eps, " + _PRE,
        "T p, T h",
        _WD + "T gi = gc + wd * p; T hi = rho * h + ((T)1 - rho) * gi * gi; h = hi;"
        "p = p * shrink - lr * gi / (sqrt(hi) + eps);",
        "fastnet_rmsprop",
    )


_ADAM_BODY = (
    "T gi = gc + wd * p; T mi = beta1 * m + ((T)1 - beta1) * gi;"
    "T vi = beta2 * v + ((T)1 - beta2) * (gi * gi); m = mi; v = vi;"
    "p = p * shrink - step * mi / (sqrt(vi) + eps_hat);"
)


@cache
def adam_kernel() -> cp.ElementwiseKernel:
    """Adam; bias correction folded into ``step`` and ``eps_hat`` by the caller."""
    return cp.ElementwiseKernel(
        "T g, T step, T beta1, T beta2, T eps_hat, " + _PRE,
        "T p, T m, T v",
        _WD + _ADAM_BODY,
        "fastnet_adam",
    )


@cache
def adam_device_scalars_kernel() -> cp.ElementwiseKernel:
    """Adam reading ``step`` and ``eps_hat`` from device memory (``sc[0]``, ``sc[1]``), so a
    captured CUDA graph can replay it with a new step count."""
    return cp.ElementwiseKernel(
        "T g, raw T sc, T beta1, T beta2, " + _PRE,
        "T p, T m, T v",
        _WD + "T step = sc[0]; T eps_hat = sc[1];" + _ADAM_BODY,
        "fastnet_adam_dev",
    )


_ADAM_SCALARS_SRC = r"""
extern "C" __global__ void adam_scalars(long long* t, T* sc, double lr, double beta1,
                                        double beta2, double eps) {
    long long s = t[0] + 1;
    t[0] = s;
    double c = sqrt(1.0 - pow(beta2, (double)s));
    sc[0] = (T)(lr * c / (1.0 - pow(beta1, (double)s)));
    sc[1] = (T)(eps * c);
}
"""


@cache
def _adam_scalars(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _ADAM_SCALARS_SRC, "adam_scalars")


def adam_scalars(t: Any, sc: Any, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """On the device: ``t += 1`` then ``sc = [bias-corrected step, eps_hat]`` for that step."""
    _adam_scalars(ctype(sc.dtype))(
        (1,), (1,), (t, sc, float(lr), float(beta1), float(beta2), float(eps))
    )


# ---------------------------------------------------------------------------- cuBLAS GEMM
# CuPy refuses cuBLAS calls while a stream is being captured (a guard in its setStream), although
# cuBLAS supports capture. We call cublas{S,D}gemm_v2 on CuPy's own handle through ctypes, with a
# workspace we own, so that the same GEMM runs eagerly and inside CUDA graphs (and with less
# Python overhead per call than cupy.matmul).
class CublasGemm:
    WORKSPACE_BYTES = 32 * 2**20

    def __init__(self) -> None:
        import ctypes

        path = _loaded_library("libcublas.so")
        if path is None:
            cp.cuda.device.get_cublas_handle()  # makes CuPy load cuBLAS
            path = _loaded_library("libcublas.so")
        if path is None:
            raise OSError("libcublas is not loaded in this process")
        lib = ctypes.CDLL(path)
        vp, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
            fn = getattr(lib, name)
            fn.argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
            fn.restype = i
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetMathMode.argtypes = [vp, i]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, f]
        self.lib, self.ctypes = lib, ctypes
        self.handle = cp.cuda.device.get_cublas_handle()
        self.workspace = cp.empty(self.WORKSPACE_BYTES, dtype=np.uint8)
        self._check(
            lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, self.WORKSPACE_BYTES),
            "cublasSetWorkspace",
        )
        self.one = {
            np.dtype(np.float32): ctypes.c_float(1.0),
            np.dtype(np.float64): ctypes.c_double(1.0),
        }
        self.zero = {
            np.dtype(np.float32): ctypes.c_float(0.0),
            np.dtype(np.float64): ctypes.c_double(0.0),
        }

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    @staticmethod
    def supports(*arrays: Any) -> bool:
        dtype = arrays[0].dtype
        return dtype in _CTYPE and all(
            a.ndim == 2 and a.dtype == dtype and (a.flags.c_contiguous or a.flags.f_contiguous)
            for a in arrays
        )

    def __call__(self, a: Any, b: Any, out: Any, tf32: bool = False) -> Any:
        """``out = a @ b`` for 2-D C- or F-contiguous ``a``, ``b`` and C-contiguous ``out``; the
        math mode is set per call (the handle is shared), TF32 tensor cores only with ``tf32``."""
        m_rows, k = a.shape
        n_cols = b.shape[1]
        # Row-major C = A @ B is column-major C^T = B^T @ A^T.
        if b.flags.c_contiguous:
            op_b, ld_b = 0, n_cols
        else:
            op_b, ld_b = 1, k
        if a.flags.c_contiguous:
            op_a, ld_a = 0, k
        else:
            op_a, ld_a = 1, m_rows
        ct = self.ctypes
        lib = self.lib
        self._check(
            lib.cublasSetStream_v2(self.handle, cp.cuda.get_current_stream().ptr), "cublasSetStream"
        )
        mode = 3 if tf32 else 0  # CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH
        self._check(lib.cublasSetMathMode(self.handle, mode), "cublasSetMathMode")
        gemm = lib.cublasSgemm_v2 if a.dtype == np.float32 else lib.cublasDgemm_v2
        status = gemm(
            self.handle,
            op_b,
            op_a,
            n_cols,
            m_rows,
            k,
            ct.byref(self.one[a.dtype]),
            b.data.ptr,
            ld_b,
            a.data.ptr,
            ld_a,
            ct.byref(self.zero[a.dtype]),
            out.data.ptr,
            n_cols,
        )
        self._check(status, "cublasGemm")
        return out


def _loaded_library(stem: str) -> str | None:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if stem in path.rsplit("/", 1)[-1]:
                    return path
    except OSError:
        return None
    return None


@cache
def cublas_gemm() -> CublasGemm:
    return CublasGemm()


# ---------------------------------------------------------------------------- sources for CI
# Non-raw elementwise inputs the launchers pass as arrays (the rest are scalars).
_ARRAY_INPUTS = frozenset({"v", "y", "dy", "g"})


def kernel_sources() -> list[tuple[str, str]]:
    """``(name, full CUDA source)`` of every kernel this module builds, for every activation code
    and both float dtypes, as CuPy compiles them; needs no GPU (CI compiles them with NVRTC).

    Found by walking this module's factories: every function annotated to return an
    ``ElementwiseKernel`` or a ``RawKernel`` is called with each value of its parameters (``code``:
    the activation codes; ``dtype``: the C float types), so a new factory is checked without being
    listed here; one with another parameter name raises until its values are added below. Kernel
    ``options`` are not part of the source (no kernel here passes any)."""
    import inspect
    import itertools

    from .cuda_source import elementwise_source

    values: dict[str, list[Any]] = {"code": sorted(_ACT), "dtype": sorted(set(_CTYPE.values()))}
    sources: dict[str, str] = {}
    for fname, factory in sorted(globals().items()):
        returns = str(getattr(factory, "__annotations__", {}).get("return", ""))
        if not callable(factory) or not returns.endswith(("ElementwiseKernel", "RawKernel")):
            continue
        names = list(inspect.signature(factory).parameters)
        if unknown := set(names) - set(values):
            raise TypeError(f"kernel_sources: give the values of {fname}'s {sorted(unknown)}")
        for args in itertools.product(*(values[n] for n in names)):
            kernel = factory(*args)
            if isinstance(kernel, cp.RawKernel):
                sources[f"{kernel.name}[{','.join(map(str, args))}]"] = kernel.code
                continue
            for dt in (np.dtype(np.float32), np.dtype(np.float64)):
                sources[f"{kernel.name}[{dt.name}]"] = elementwise_source(kernel, dt, _ARRAY_INPUTS)
    return list(sources.items())
