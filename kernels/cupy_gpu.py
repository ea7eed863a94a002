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

from .cublaslt import address, mask_ld

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Activation of v (z + b) and derivative from the output y; codes as in fastnet.backends.base.
_ACT = {
    0: "v",
    1: "(v > (T)0 || v != v) ? v : (T)0",  # NaN stays NaN, as np.maximum
    2: "v > (T)0 ? v : v * alpha",
    3: "v >= (T)0 ? (T)1 / ((T)1 + exp(-v)) : exp(v) / ((T)1 + exp(v))",
    4: "tanh(v)",
}
#: the gradient through each activation from its output Y and the gradient G above it: ReLU's
#: a select (0 where the unit is off, even for an infinite or NaN G), as cuBLASLt's DRELU
#: epilogue, PyTorch and JAX take it, not G times a 0/1 mask (inf * 0 is NaN)
_DACT = {
    0: "G",
    1: "(Y > (T)0 ? G : (T)0)",
    2: "(Y > (T)0 ? G : G * alpha)",
    3: "G * (Y * ((T)1 - Y))",
    4: "G * ((T)1 - Y * Y)",
}


def _dact(code: int, y: str, g: str, t: str = "(T)") -> str:
    """``_DACT[code]`` with the output named ``y``, the gradient ``g``, casts to ``t``."""
    return _DACT[code].replace("Y", y).replace("G", g).replace("(T)", t)


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
        "T y, T dy, T alpha", "T dz", f"dz = {_dact(code, 'y', 'dy')};", f"fastnet_act_grad_{code}"
    )


def activation_backward(y: Any, dy: Any, code: int, alpha: float, out: Any) -> Any:
    return _act_grad(code)(y, dy, y.dtype.type(alpha), out)


_ACT_BWD_BIAS_SRC = r"""
// T: the arrays' type; W: the math's (T, or float for half T); D: db's (W: float32 master
// gradients of half activations).
extern "C" __global__ void act_bwd_bias(const T* __restrict__ y, const T* __restrict__ dy,
                                        T* __restrict__ dz, D* __restrict__ db,
                                        int n, int m, W alpha) {
    // block (32, 8): 32 adjacent columns, 8 row lanes; each block covers ROWS rows.
    __shared__ D partial[8][33];
    // Blocks stride over chunks of ROWS rows (gridDim.y is at most 65535).
    int col = blockIdx.x * 32 + threadIdx.x;
    D acc = 0;
    if (col < m) {
        for (long long row0 = (long long)blockIdx.y * ROWS; row0 < n;
             row0 += (long long)gridDim.y * ROWS) {
            int end = (int)min(row0 + ROWS, (long long)n);
            for (int r = (int)row0 + threadIdx.y; r < end; r += 8) {
                size_t k = (size_t)r * m + col;
                W yv = (W)y[k];
                W gv = (W)dy[k];
                W g = DACT;
                dz[k] = (T)g;
                acc += g;
            }
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < m) {
        D s = 0;
        for (int j = 0; j < 8; ++j) s += partial[j][threadIdx.x];
        if (gridDim.y == 1) db[col] = s;  // one block of rows: no memset, no atomic
        else atomicAdd(&db[col], s);
    }
}
"""
_ROWS_PER_BLOCK = 128
_MAX_GRID_Y = 65535  # CUDA's limit of gridDim.y (and z)


def _act_bwd_bias_source(t: str, w: str, header: str, code: int) -> str:
    deriv = _dact(code, "yv", "gv", "(W)")
    defines = f"#define T {t}\n#define W {w}\n#define D {w}\n#define ROWS {_ROWS_PER_BLOCK}\n"
    return header + defines + f"#define DACT {deriv}\n" + _ACT_BWD_BIAS_SRC


@cache
def _act_bwd_bias(dtype: str, code: int) -> cp.RawKernel:
    return cp.RawKernel(_act_bwd_bias_source(dtype, dtype, "", code), "act_bwd_bias")


@cache
def _act_bwd_bias_half(half: str, code: int) -> cp.RawKernel:
    """The same for half activations: float math, float32 bias gradients."""
    return cp.RawKernel(
        _act_bwd_bias_source(half, "float", _HALF_HEADER[half], code), "act_bwd_bias"
    )


def act_backward_bias(y: Any, dy: Any, code: int, alpha: float, dz: Any, db: Any) -> None:
    """``dz = dy * act'(y)`` and ``db = dz.sum(axis=0)`` in one kernel; batches of more than
    ``_ROWS_PER_BLOCK`` rows add blocks' sums atomically into ``db``, zeroed here first. Half
    ``y``, ``dy``, ``dz`` (mixed precision) take a float32 ``db``."""
    n, m = y.shape
    grid = ((m + 31) // 32, min((n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK, _MAX_GRID_Y))
    if grid[1] > 1:
        db.fill(0)
    if y.dtype.itemsize == 2:
        kernel, a = _act_bwd_bias_half(y.dtype.name, code), np.float32(alpha)
    else:
        kernel, a = _act_bwd_bias(ctype(y.dtype), code), y.dtype.type(alpha)
    kernel(grid, (32, 8), (y, dy, dz, db, np.int32(n), np.int32(m), a))


# ---------------------------------------------------------------------------- ReLU bit-mask
# In place ReLU (NaN stays NaN) writing the bit-mask cuBLASLt's DRELU_BGRAD reads, as its
# RELU_AUX_BIAS epilogue would: bit i + j * ld of D (column-major, D[i, j] = y[j, i]) set where
# y > 0, least significant bit first, ``ld_bytes`` bytes per row of y (fastnet's reading of the
# documentation: the backend uses it only where a probe agrees). One thread per mask byte.
_RELU_MASK_SRC = r"""
extern "C" __global__ void relu_mask(T* y, unsigned char* bits, int n, int m, int ld_bytes) {
    int byte = blockIdx.x * blockDim.x + threadIdx.x;
    if (byte >= ld_bytes) return;
    for (int row = blockIdx.y * blockDim.y + threadIdx.y; row < n; row += gridDim.y * blockDim.y) {
        T* yr = y + (long long)row * m;
        unsigned int mask = 0;
        for (int b = 0; b < 8; ++b) {
            int col = byte * 8 + b;
            if (col >= m) break;
            W v = (W)yr[col];  // W: T, or float for half T
            if (v > (W)0) mask |= 1u << b;
            else if (v == v) yr[col] = T((W)0);  // NaN stays NaN, as np.maximum
        }
        bits[(long long)row * ld_bytes + byte] = (unsigned char)mask;
    }
}
"""


@cache
def _relu_mask(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n#define W {dtype}\n" + _RELU_MASK_SRC, "relu_mask")


def relu_mask(y: Any, bits: Any) -> None:
    """In place ReLU of C-contiguous 2-D ``y`` writing its bit-mask into ``bits`` (uint8, at
    least ``y.shape[0]`` rows of ``mask_ld(y.shape[1]) // 8`` bytes). A block: 128 threads
    over a row's bytes and rows (16 bytes, 8 rows for up to 128 units)."""
    n, m = y.shape
    ld_bytes = mask_ld(m) // 8
    if bits.dtype != np.uint8 or bits.size < n * ld_bytes or not bits.flags.c_contiguous:
        raise ValueError(f"bits must be {n * ld_bytes} contiguous uint8, got {bits.dtype}")
    block = (min(ld_bytes, 128), max(1, 128 // ld_bytes))
    grid = ((ld_bytes + block[0] - 1) // block[0], min((n + block[1] - 1) // block[1], 65535))
    args = (y, bits, np.int32(n), np.int32(m), np.int32(ld_bytes))
    half = y.dtype.itemsize == 2
    kernel = _relu_mask_half(y.dtype.name) if half else _relu_mask(ctype(y.dtype))
    kernel(grid, block, args)


# ---------------------------------------------------------------------------- half precision
_CUPY_MAJOR = int(cp.__version__.split(".")[0])
# Mixed precision's activations (float16, bfloat16: CuPy's classes) with float math: casts (the
# loss gradient times the device loss scale), bias + activation, activation and its gradient;
# fp16 loss scaling's unscale-and-count and scale update.
# CuPy 14 moved its float16 class out of carray.cuh (which CuPy 13's kernels must include).
_HALF_HEADER = {
    "float16": f"#include <cupy/{'float16' if _CUPY_MAJOR >= 14 else 'carray'}.cuh>\n",
    "bfloat16": "#include <cupy/bfloat16.cuh>\n",
}
_ACT_F = {code: expr.replace("(T)", "(float)") for code, expr in _ACT.items()}


def _half_kernel(half: str, params: str, out: str, body: str, name: str) -> Any:
    return cp.ElementwiseKernel(params, out, body, f"fastnet_{name}", preamble=_HALF_HEADER[half])


@cache
def _relu_mask_half(half: str) -> cp.RawKernel:
    source = _HALF_HEADER[half] + f"#define T {half}\n#define W float\n" + _RELU_MASK_SRC
    return cp.RawKernel(source, "relu_mask")


@cache
def _to_half(half: str) -> cp.ElementwiseKernel:
    body = "out = T(src * (float)scale[0]);"
    return _half_kernel(half, "float32 src, raw float64 scale", "T out", body, f"to_{half}")


@cache
def _from_half(half: str) -> cp.ElementwiseKernel:
    return _half_kernel(half, "T src", "float32 out", "out = (float)src;", f"from_{half}")


@cache
def _ones(device: int) -> cp.ndarray:
    return cp.ones(1, dtype=np.float64)


def cast(src: Any, out: Any, scale: Any = None) -> None:
    """``out = src`` (times ``scale[0]``, float64 on the device, multiplied in float: exact
    for the loss scale's powers of two) between float32 and a half dtype; C-contiguous arrays
    of one size (the first call, eager, allocates the ones)."""
    if out.dtype.itemsize == 2:
        scale = _ones(cp.cuda.Device().id) if scale is None else scale
        _to_half(out.dtype.name)(src, scale, out)
    else:
        _from_half(src.dtype.name)(src, out)


@cache
def _bias_act_half(half: str, code: int) -> cp.ElementwiseKernel:
    body = f"float v = (float)z + (float)b[i % ncol]; z = T({_ACT_F[code]});"
    params = "raw T b, int32 ncol, float32 alpha"
    return _half_kernel(half, params, "T z", body, f"bias_act_{half}_{code}")


@cache
def _act_half(half: str, code: int) -> cp.ElementwiseKernel:
    body = f"float v = (float)x; y = T({_ACT_F[code]});"
    return _half_kernel(half, "T x, float32 alpha", "T y", body, f"act_{half}_{code}")


@cache
def _act_grad_half(half: str, code: int) -> cp.ElementwiseKernel:
    body = f"float yv = (float)y, gv = (float)dy; dz = T({_dact(code, 'yv', 'gv', '(float)')});"
    return _half_kernel(half, "T y, T dy, float32 alpha", "T dz", body, f"act_grad_{half}_{code}")


def bias_act_half(z: Any, b: Any, code: int, alpha: float) -> Any:
    return _bias_act_half(z.dtype.name, code)(b, np.int32(z.shape[1]), np.float32(alpha), z)


def activation_half(x: Any, code: int, alpha: float, out: Any) -> Any:
    return _act_half(x.dtype.name, code)(x, np.float32(alpha), out)


def activation_backward_half(y: Any, dy: Any, code: int, alpha: float, out: Any) -> Any:
    return _act_grad_half(y.dtype.name, code)(y, dy, np.float32(alpha), out)


_UNSCALE_SRC = r"""
// g /= the loss scale; the count of non-finite results added into checks[1] (float64).
extern "C" __global__ void unscale(T* g, const double* state, double* checks, long long n) {
    T inv = (T)(1.0 / state[0]);
    int bad = 0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T v = g[i] * inv;
        g[i] = v;
        bad += !isfinite(v);
    }
    for (int offset = 16; offset > 0; offset >>= 1) {  // every lane gets here: a warp's sum
        bad += __shfl_down_sync(0xffffffffu, bad, offset);
    }
    if ((threadIdx.x & 31) == 0 && bad) atomicAdd(&checks[1], (double)bad);
}
"""


@cache
def _unscale(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _UNSCALE_SRC, "unscale")


def unscale(g: Any, state: Any, checks: Any) -> None:
    blocks = max(1, min(1024, (g.size + 255) // 256))
    _unscale(ctype(g.dtype))((blocks,), (256,), (g, state, checks, np.int64(g.size)))


_LOSS_SCALE_SRC = r"""
// Dynamic loss scaling after a step (one thread): state = [scale, clean steps].
extern "C" __global__ void update_loss_scale(double* state, const double* checks,
                                             double interval, double growth, double backoff) {
    if (checks[1] > 0.0) {
        state[0] *= backoff;
        state[1] = 0.0;
    } else if (state[1] + 1.0 >= interval) {
        state[0] *= growth;
        state[1] = 0.0;
    } else {
        state[1] += 1.0;
    }
}
"""


@cache
def _update_loss_scale() -> cp.RawKernel:
    return cp.RawKernel(_LOSS_SCALE_SRC, "update_loss_scale")


def update_loss_scale(
    state: Any, checks: Any, interval: int, growth: float, backoff: float
) -> None:
    values = (np.float64(interval), np.float64(growth), np.float64(backoff))
    _update_loss_scale()((1,), (1,), (state, checks, *values))


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
// The index of a row's first largest element, or of its first NaN (as NumPy's argmax): each
// lane scans j = lane, lane + 32, ... (keeping the first of equal values and the first NaN),
// then the warp keeps a NaN, else the larger value, the smaller index on ties (of NaNs too).
__device__ __forceinline__ int warp_argmax(const T* x, int m, int lane) {
    T best = x[lane < m ? lane : 0];  // lanes past m: x[0] at index m, which loses every tie
    int at = lane < m ? lane : m;
    for (int j = lane + 32; j < m; j += 32) {
        if (best == best && (x[j] > best || x[j] != x[j])) { best = x[j]; at = j; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        T other = __shfl_xor_sync(0xffffffff, best, o);
        int other_at = __shfl_xor_sync(0xffffffff, at, o);
        bool other_nan = other != other, best_nan = best != best;
        if (other_nan ? (!best_nan || other_at < at)
                      : (!best_nan && (other > best || (other == best && other_at < at)))) {
            best = other;
            at = other_at;
        }
    }
    return at;
}
// One warp per row: stable max, sum of exp, then the mean-reduced gradient. Targets are integer
// labels (dense == 0) or one-hot/soft rows (dense == 1); with smoothing e the target is
// (1 - e) t + e sum(t) / m; with weighted == 1 weights scale each row. Adds loss_scale times the
// (weighted) row loss into loss[0] (double); with count == 1, adds 1 into hits[0] (double) for
// a row whose argmax is its label (or its target row's argmax). Unused pointers are never read.
extern "C" __global__ void softmax_xent(const T* __restrict__ logits,
                                        const long long* __restrict__ labels,
                                        const T* __restrict__ targets,
                                        const T* __restrict__ weights,
                                        T* __restrict__ dlogits, double* __restrict__ loss,
                                        double* __restrict__ hits, int n, int m, int dense,
                                        int weighted, int count, T inv_n, T smoothing,
                                        double loss_scale) {
    int row = (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5);  // (32-bit: wraps
    int lane = threadIdx.x & 31;                                                  // at 2**27 rows)
    if (row >= n) return;
    const T* x = logits + (size_t)row * m;
    const T* t = dense ? targets + (size_t)row * m : NULL;
    T* d = dlogits + (size_t)row * m;
    T mx = x[0];
    for (int j = lane; j < m; j += 32) mx = fmax(mx, x[j]);
    mx = warp_max(mx);
    T s = 0, shifted = 0, t_sum = 0;
    for (int j = lane; j < m; j += 32) {
        s += exp(x[j] - mx);
        shifted += x[j] - mx;
        if (dense) t_sum += t[j];
    }
    s = warp_sum(s);
    shifted = warp_sum(shifted);
    if (dense) t_sum = warp_sum(t_sum); else t_sum = (T)1;
    long long label = dense ? -1 : labels[row];
    T w = weighted ? weights[row] : (T)1;
    T log_s = log(s);
    T scale = inv_n * w * t_sum / s;
    T row_loss = 0;
    for (int j = lane; j < m; j += 32) {
        T tj = dense ? t[j] : (j == label ? (T)1 : (T)0);
        if (smoothing != (T)0) tj = ((T)1 - smoothing) * tj + smoothing * t_sum / (T)m;
        d[j] = exp(x[j] - mx) * scale - tj * inv_n * w;
        if (dense && tj != (T)0) row_loss -= tj * ((x[j] - mx) - log_s);  // (0 * -inf: none)
    }
    if (dense) {
        row_loss = warp_sum(row_loss);
    } else {
        row_loss = log_s - (x[label] - mx);
        if (smoothing != (T)0)
            row_loss = ((T)1 - smoothing) * row_loss + smoothing * (log_s - shifted / (T)m);
    }
    if (lane == 0) atomicAdd(loss, loss_scale * (double)(row_loss * w));
    if (count) {
        int guess = warp_argmax(x, m, lane);
        long long truth = dense ? (long long)warp_argmax(t, m, lane) : label;
        if (lane == 0 && guess == truth) atomicAdd(hits, 1.0);
    }
}
"""


@cache
def _softmax_xent(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _SOFTMAX_XENT_SRC, "softmax_xent")


def softmax_xent(
    logits: Any,
    labels: Any,
    targets: Any,
    weights: Any,
    dlogits: Any,
    loss: Any,
    loss_scale: float,
    smoothing: float,
    hits: Any = None,
) -> None:
    """Fused softmax cross-entropy: writes the mean-reduced ``dlogits`` and adds ``loss_scale
    * sum(row losses)`` into the float64 ``loss[0]``; int64 ``labels`` or one-hot/soft
    ``targets`` (the other None), optional row ``weights``, label ``smoothing``; with ``hits``
    (float64), the rows whose argmax is the label's are counted into ``hits[0]``."""
    n, m = logits.shape
    dense, weighted = targets is not None, weights is not None
    rows_per_block = 8
    grid = ((n + rows_per_block - 1) // rows_per_block,)
    t = logits.dtype.type
    _softmax_xent(ctype(logits.dtype))(
        grid,
        (32 * rows_per_block,),
        (
            logits,
            _or_placeholder(labels, np.int64),
            _or_placeholder(targets, logits.dtype),
            _or_placeholder(weights, logits.dtype),
            dlogits,
            loss,
            _or_placeholder(hits, np.float64),
            np.int32(n),
            np.int32(m),
            np.int32(dense),
            np.int32(weighted),
            np.int32(hits is not None),
            t(1.0 / n),
            t(smoothing),
            float(loss_scale),
        ),
    )


_COUNT_CORRECT_SRC = r"""
// Adds to *hits the rows whose argmax equals the label (or the argmax of the target row).
extern "C" __global__ void count_correct(const T* __restrict__ logits,
                                         const long long* __restrict__ labels,
                                         const T* __restrict__ targets,
                                         double* __restrict__ hits, int n, int m, int dense) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    const T* x = logits + (size_t)row * m;
    int best = 0;  // the first largest, or the first NaN (as NumPy's argmax)
    for (int j = 1; j < m && x[best] == x[best]; ++j) if (x[j] > x[best] || x[j] != x[j]) best = j;
    long long label;
    if (!dense) {
        label = labels[row];
    } else {
        const T* t = targets + (size_t)row * m;
        int tb = 0;
        for (int j = 1; j < m && t[tb] == t[tb]; ++j) if (t[j] > t[tb] || t[j] != t[j]) tb = j;
        label = tb;
    }
    if (best == label) atomicAdd(hits, 1.0);
}
"""


@cache
def _count_correct(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _COUNT_CORRECT_SRC, "count_correct")


def count_correct(logits: Any, labels: Any, targets: Any, hits: Any) -> None:
    """Add the rows whose argmax equals the label (int64 ``labels``, or the argmax of
    ``targets`` rows) into the float64 ``hits[0]``."""
    n, m = logits.shape
    _count_correct(ctype(logits.dtype))(
        ((n + 255) // 256,),
        (256,),
        (
            logits,
            _or_placeholder(labels, np.int64),
            _or_placeholder(targets, logits.dtype),
            hits,
            np.int32(n),
            np.int32(m),
            np.int32(targets is not None),
        ),
    )


# ---------------------------------------------------------------------------- sigmoid + BCE
_SIGMOID_BCE_SRC = r"""
// Sigmoid binary cross-entropy over the n*k elements of logits z and targets t (row-major,
// k per row), rows weighted by weights[e / k] when weighted == 1: d = (sigmoid(z) - t) / size
// * w; adds sum(w (max(z, 0) - z t + log1p(exp(-|z|)))) / k into totals[0] and the outputs
// with (z > 0) == (t > 0.5), over k, into totals[1] (double): grid-stride partial sums, a
// block reduction, one atomicAdd each. As numba_cpu.sigmoid_bce, element for element.
extern "C" __global__ void sigmoid_bce(const T* __restrict__ z, const T* __restrict__ t,
                                       const T* __restrict__ weights, T* __restrict__ d,
                                       double* __restrict__ totals, long long size, int k,
                                       int weighted) {
    __shared__ double partial[2][256];
    double loss = 0, hits = 0;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < size;
         e += (long long)gridDim.x * blockDim.x) {
        T zi = z[e], ti = t[e];
        T w = weighted ? weights[e / k] : (T)1;
        T ex = exp(-fabs(zi));
        T p = zi >= (T)0 ? (T)1 / ((T)1 + ex) : ex / ((T)1 + ex);
        d[e] = (p - ti) / (T)size * w;
        T u = zi >= (T)0 ? (T)1 - ti : ti;  // max(z, 0) - z t = |z| u, 0 where u is (z = +-inf)
        loss += (double)(((u != (T)0 ? fabs(zi) * u : (T)0) + log1p(ex)) * w);
        hits += (zi > (T)0) == (ti > (T)0.5) ? 1.0 : 0.0;
    }
    partial[0][threadIdx.x] = loss;
    partial[1][threadIdx.x] = hits;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            partial[0][threadIdx.x] += partial[0][threadIdx.x + s];
            partial[1][threadIdx.x] += partial[1][threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        atomicAdd(totals, partial[0][0] / k);
        atomicAdd(totals + 1, partial[1][0] / k);
    }
}
"""


@cache
def _sigmoid_bce(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _SIGMOID_BCE_SRC, "sigmoid_bce")


def sigmoid_bce(logits: Any, targets: Any, weights: Any, dlogits: Any, totals: Any) -> None:
    """Fused sigmoid binary cross-entropy (``numba_cpu.sigmoid_bce``'s contract): C-contiguous
    ``logits``, ``targets`` and ``dlogits`` of one shape (n, k) and dtype, optional row
    ``weights`` (n,); the float64 ``totals[0]``, ``totals[1]`` accumulate the summed row mean
    losses and correct shares."""
    n, k = logits.shape
    blocks = max(1, min(1024, (logits.size + 255) // 256))
    _sigmoid_bce(ctype(logits.dtype))(
        (blocks,),
        (256,),
        (
            logits,
            targets,
            _or_placeholder(weights, logits.dtype),
            dlogits,
            totals,
            np.int64(logits.size),
            np.int32(k),
            np.int32(weights is not None),
        ),
    )


# ---------------------------------------------------------------------------- squared error
_SQUARED_ERROR_SRC = r"""
// scale times the squared error over the n*k elements of outputs y and targets t (row-major,
// k per row), rows weighted by weights[e / k] when weighted == 1: d = (y - t) * c * w with
// c = 2 scale / (n k) rounded to T; adds sum(w (y - t)^2) * scale / k into totals[0]
// (double): grid-stride partial sums, a block reduction, one atomicAdd. As
// numba_cpu.squared_error, element for element.
extern "C" __global__ void squared_error(const T* __restrict__ y, const T* __restrict__ t,
                                         const T* __restrict__ weights, T* __restrict__ d,
                                         double* __restrict__ totals, long long size, int k,
                                         int weighted, T c, double scale) {
    __shared__ double partial[256];
    double loss = 0;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < size;
         e += (long long)gridDim.x * blockDim.x) {
        T w = weighted ? weights[e / k] : (T)1;
        T diff = y[e] - t[e];
        d[e] = diff * c * w;
        loss += (double)(diff * diff * w);
    }
    partial[threadIdx.x] = loss;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(totals, partial[0] * (scale / k));
}
"""


@cache
def _squared_error(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n" + _SQUARED_ERROR_SRC, "squared_error")


def squared_error(
    outputs: Any, targets: Any, weights: Any, dout: Any, scale: float, totals: Any
) -> None:
    """Fused squared error (``numba_cpu.squared_error``'s contract): C-contiguous
    ``outputs``, ``targets`` and ``dout`` of one shape (n, k) and dtype, optional row
    ``weights`` (n,); the float64 ``totals[0]`` accumulates ``scale`` times the summed row
    mean squares."""
    n, k = outputs.shape
    blocks = max(1, min(1024, (outputs.size + 255) // 256))
    _squared_error(ctype(outputs.dtype))(
        (blocks,),
        (256,),
        (
            outputs,
            targets,
            _or_placeholder(weights, outputs.dtype),
            dout,
            totals,
            np.int64(outputs.size),
            np.int32(k),
            np.int32(weights is not None),
            outputs.dtype.type(2.0 * scale / outputs.size),
            float(scale),
        ),
    )


# ------------------------------------------------------------------------- in-graph batch gathers
@cache
def _gather_rows_at() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "raw T x, raw int64 order, raw int64 position, int64 offset, int64 width",
        "T out",
        "const long long r = i / width;"
        " out = x[order[position[0] + offset + r] * width + (i - r * width)];",
        "fastnet_gather_rows_at",
    )


def take_rows_at(x: Any, order: Any, position: Any, offset: int, out: Any) -> Any:
    """``out[:] = x[order[p:p + len(out)]]``, ``p = position[0] + offset`` read on the device;
    ``x``, ``order`` (int64) and ``out`` C-contiguous, rows of ``width`` elements."""
    width = int(np.prod(x.shape[1:], dtype=np.int64))
    flat = x.reshape(-1)  # a view: the kernel indexes rows itself
    return _gather_rows_at()(flat, order, position, np.int64(offset), np.int64(width), out)


@cache
def _advance_counter() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "int64 by", "int64 counter", "counter += by", "fastnet_advance_counter"
    )


def advance_counter(counter: Any, by: int) -> None:
    """``counter[0] += by`` on the device."""
    _advance_counter()(np.int64(by), counter)


# ---------------------------------------------------------------------------- dropout
# SplitMix64 at position (step * 2**32 + i) of the stream [key, step]: fastnet.backends.counter_rng
RANDOM_BITS = 24  # as counter_rng.BITS (a test checks)
_SPLITMIX = f"""
unsigned long long z = (unsigned long long)stream[0]
    + (((unsigned long long)stream[1] << 32) + (unsigned long long)i) * 0x9E3779B97F4A7C15ull;
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
z = (z ^ (z >> 31)) >> {64 - RANDOM_BITS};
"""


@cache
def _dropout() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel(
        "T x, raw int64 stream, uint64 threshold, T scale",
        "T out, T mask",
        _SPLITMIX + "mask = z >= threshold ? scale : (T)0; out = x * mask;",
        "fastnet_dropout",
    )


@cache
def _dropout_half(half: str) -> cp.ElementwiseKernel:
    """The same for half activations: the mask holds the rounded scale, ``out`` one rounding
    of ``x * mask`` (as NumPy's half arithmetic)."""
    body = _SPLITMIX + "mask = T(z >= threshold ? scale : 0.0f); out = T((float)x * (float)mask);"
    params = "T x, raw int64 stream, uint64 threshold, float32 scale"
    return _half_kernel(half, params, "T out, T mask", body, f"dropout_{half}")


def dropout(x: Any, stream: Any, threshold: int, scale: float, out: Any, mask: Any) -> None:
    """Inverted dropout: ``mask`` = ``scale`` where element i's random bits reach
    ``threshold``, else 0; ``out = x * mask`` (the step is read from ``stream`` on the device)."""
    if x.dtype.itemsize == 2:
        half_scale = np.float32(x.dtype.type(scale))  # rounded to half once, as the reference
        _dropout_half(x.dtype.name)(x, stream, np.uint64(threshold), half_scale, out, mask)
        return
    _dropout()(x, stream, np.uint64(threshold), x.dtype.type(scale), out, mask)


@cache
def _dropout_grad() -> cp.ElementwiseKernel:
    return cp.ElementwiseKernel("T dy, T mask", "T dx", "dx = dy * mask", "fastnet_dropout_grad")


@cache
def _dropout_grad_half(half: str) -> cp.ElementwiseKernel:
    body = "dx = T((float)dy * (float)mask);"
    return _half_kernel(half, "T dy, T mask", "T dx", body, f"dropout_grad_{half}")


def dropout_backward(dy: Any, mask: Any, out: Any) -> Any:
    if dy.dtype.itemsize == 2:
        return _dropout_grad_half(dy.dtype.name)(dy, mask, out)
    return _dropout_grad()(dy, mask, out)  # out


# ---------------------------------------------------------------------------- batch norm
_BATCHNORM_SRC = r"""
// Block (32, 8): 32 adjacent columns of x (n rows, d columns, C order), 8 row lanes, all rows.
// Training: the batch mean and (biased) variance in double, two passes reduced through shared
// memory; running averages (unbiased variance). Then inv_std, xhat = (x - mean) * inv_std and
// y = xhat * gamma + beta. Every thread reaches every barrier (loads are guarded instead).
// T: activations, gamma and beta; W: the math, running statistics and inv_std (T, or float
// for half T: mixed precision's float32 statistics).
extern "C" __global__ void batchnorm(const T* __restrict__ x, const T* __restrict__ gamma,
                                     const T* __restrict__ beta, W* __restrict__ running_mean,
                                     W* __restrict__ running_var, T* __restrict__ y,
                                     T* __restrict__ xhat, W* __restrict__ inv_std,
                                     long long n, long long d, W momentum, W keep, W eps,
                                     int training) {
    __shared__ double part[8][33];
    __shared__ W col_mean[32], col_is[32];
    int tx = threadIdx.x, ty = threadIdx.y;
    long long c = blockIdx.x * 32LL + tx;
    bool in = c < d;
    if (training) {
        double s = 0;
        if (in) for (long long r = ty; r < n; r += 8) s += (double)x[r * d + c];
        part[ty][tx] = s;
        __syncthreads();
        double mu = 0;
        for (int j = 0; j < 8; ++j) mu += part[j][tx];
        mu /= (double)n;
        __syncthreads();
        double q = 0;
        if (in) for (long long r = ty; r < n; r += 8) {
            double t = (double)x[r * d + c] - mu;
            q += t * t;
        }
        part[ty][tx] = q;
        __syncthreads();
        if (ty == 0 && in) {
            double v = 0;
            for (int j = 0; j < 8; ++j) v += part[j][tx];
            W mean = (W)mu, var = (W)(v / (double)n);  // keep: 1 - momentum, from the host
            running_mean[c] = running_mean[c] * momentum + keep * mean;
            running_var[c] = running_var[c] * momentum + keep * var * ((W)n / (W)(n - 1));
            W is = (W)1 / sqrt(var + eps);
            inv_std[c] = is;
            col_mean[tx] = mean;
            col_is[tx] = is;
        }
    } else if (ty == 0 && in) {
        W is = (W)1 / sqrt(running_var[c] + eps);
        inv_std[c] = is;
        col_mean[tx] = running_mean[c];
        col_is[tx] = is;
    }
    __syncthreads();
    if (!in) return;
    W mean = col_mean[tx], is = col_is[tx], g = (W)gamma[c], b = (W)beta[c];
    for (long long r = ty; r < n; r += 8) {
        long long k = r * d + c;
        W h = ((W)x[k] - mean) * is;
        xhat[k] = (T)h;
        y[k] = (T)(h * g + b);
    }
}
"""
_BATCHNORM_GRAD_SRC = r"""
// Gradients, block (32, 8) as above: dbeta = sum(dy), dgamma = sum(dy * xhat) (double, through
// shared memory); dx for batch statistics (training) or for the fixed running ones.
// T and W as in batchnorm: half dy, xhat, gamma and dx take float32 inv_std and gradients.
extern "C" __global__ void batchnorm_grad(const T* __restrict__ dy, const T* __restrict__ xhat,
                                          const W* __restrict__ inv_std,
                                          const T* __restrict__ gamma, W* __restrict__ dgamma,
                                          W* __restrict__ dbeta, T* __restrict__ dx,
                                          long long n, long long d, int training, int has_dx) {
    __shared__ double sums[8][33], dots[8][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    long long c = blockIdx.x * 32LL + tx;
    bool in = c < d;
    double sdy = 0, sdyx = 0;
    if (in) for (long long r = ty; r < n; r += 8) {
        long long k = r * d + c;
        sdy += (double)dy[k];
        sdyx += (double)dy[k] * (double)xhat[k];
    }
    sums[ty][tx] = sdy;
    dots[ty][tx] = sdyx;
    __syncthreads();
    sdy = 0;
    sdyx = 0;
    for (int j = 0; j < 8; ++j) {
        sdy += sums[j][tx];
        sdyx += dots[j][tx];
    }
    if (!in) return;
    if (ty == 0) {
        dbeta[c] = (W)sdy;
        dgamma[c] = (W)sdyx;
    }
    if (!has_dx) return;
    W gm = (W)gamma[c], is = inv_std[c];
    if (!training) {
        W f = gm * is;
        for (long long r = ty; r < n; r += 8) dx[r * d + c] = (T)((W)dy[r * d + c] * f);
        return;
    }
    // dxhat = dy * gamma: sum(dxhat) = gamma * sum(dy), sum(dxhat * xhat) = gamma * sum(dy xhat)
    W a = (W)(gm * sdy), b = (W)(gm * sdyx), f = is / (W)n;
    for (long long r = ty; r < n; r += 8) {
        long long k = r * d + c;
        dx[k] = (T)(f * ((W)n * ((W)dy[k] * gm) - a - (W)xhat[k] * b));
    }
}
"""


@cache
def _batchnorm(dtype: str) -> cp.RawKernel:
    return cp.RawKernel(f"#define T {dtype}\n#define W {dtype}\n" + _BATCHNORM_SRC, "batchnorm")


@cache
def _batchnorm_grad(dtype: str) -> cp.RawKernel:
    src = f"#define T {dtype}\n#define W {dtype}\n" + _BATCHNORM_GRAD_SRC
    return cp.RawKernel(src, "batchnorm_grad")


@cache
def _batchnorm_half(half: str) -> cp.RawKernel:
    """Half activations, float statistics (mixed precision)."""
    src = _HALF_HEADER[half] + f"#define T {half}\n#define W float\n" + _BATCHNORM_SRC
    return cp.RawKernel(src, "batchnorm")


@cache
def _batchnorm_grad_half(half: str) -> cp.RawKernel:
    src = _HALF_HEADER[half] + f"#define T {half}\n#define W float\n" + _BATCHNORM_GRAD_SRC
    return cp.RawKernel(src, "batchnorm_grad")


def _bn_kernel(dtype: Any, grad: bool) -> tuple[cp.RawKernel, Any]:
    """The batch-norm kernel for activations of ``dtype`` and the scalar type of its math."""
    if dtype.itemsize == 2:
        return (_batchnorm_grad_half if grad else _batchnorm_half)(dtype.name), np.float32
    return (_batchnorm_grad if grad else _batchnorm)(ctype(dtype)), dtype.type


def batchnorm(
    x: Any,
    gamma: Any,
    beta: Any,
    running: tuple,
    momentum: float,
    eps: float,
    training: bool,
    out: tuple,
) -> None:
    """Batch normalization of C-contiguous 2-D ``x`` into ``out = (y, xhat, inv_std)``; the
    running averages' ``1 - momentum`` computed in float64, rounded once (in float from a
    rounded momentum 0.999 it was 1.3e-5 off)."""
    (n, d), (kernel, w) = x.shape, _bn_kernel(x.dtype, False)
    sizes = (np.int64(n), np.int64(d), w(momentum), w(1.0 - momentum), w(eps), np.int32(training))
    kernel(((d + 31) // 32,), (32, 8), (x, gamma, beta, *running, *out, *sizes))


def batchnorm_backward(
    dy: Any, xhat: Any, inv_std: Any, gamma: Any, grads: tuple, training: bool, dx: Any
) -> None:
    """``grads = (dgamma, dbeta)`` and, unless ``dx`` is None, ``dx``."""
    n, d = dy.shape
    flags = (np.int64(n), np.int64(d), np.int32(training), np.int32(dx is not None))
    arrays = (dy, xhat, inv_std, gamma, *grads, _or_placeholder(dx, dy.dtype))
    _bn_kernel(dy.dtype, True)[0](((d + 31) // 32,), (32, 8), (*arrays, *flags))


@cache
def _placeholder(dtype: np.dtype, device: int) -> cp.ndarray:
    with cp.cuda.Device(device):
        return cp.zeros(1, dtype=dtype)


def _or_placeholder(a: Any, dtype: Any) -> Any:
    """``a``, or a one-element placeholder for a pointer the kernel will not read (made once
    per device and dtype, before any capture: the first eager step calls it)."""
    return a if a is not None else _placeholder(np.dtype(dtype), cp.cuda.Device().id)


_SUM_SQUARES_SRC = r"""
// out[0] += sum(g * g) in double, the same bits on every run (data-parallel ranks clip by it
// and must agree): each block's grid-stride partial sum, reduced in the block, to partial[b];
// then one block adds the partials up in a fixed order (no atomics: their order varies).
__device__ double block_sum(double acc, double* shared) {
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    return shared[0];
}
"""
_SUM_SQUARES_PARTIAL = r"""
extern "C" __global__ void sum_squares_partial(const T* __restrict__ g, long long n,
                                               double* __restrict__ partial) {
    __shared__ double shared[256];
    double acc = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        double v = (double)g[i];
        acc += v * v;
    }
    double total = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}
"""
_SUM_SQUARES_TOTAL = r"""
extern "C" __global__ void sum_squares_total(const double* __restrict__ partial, int blocks,
                                             double* __restrict__ out) {
    __shared__ double shared[256];
    double acc = 0;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x) acc += partial[i];
    double total = block_sum(acc, shared);
    if (threadIdx.x == 0) out[0] += total;
}
"""


@cache
def _sum_squares(dtype: str) -> cp.RawKernel:
    source = f"#define T {dtype}\n" + _SUM_SQUARES_SRC + _SUM_SQUARES_PARTIAL
    return cp.RawKernel(source, "sum_squares_partial")


@cache
def _sum_squares_total() -> cp.RawKernel:
    return cp.RawKernel(_SUM_SQUARES_SRC + _SUM_SQUARES_TOTAL, "sum_squares_total")


@cache
def _partials(device: int) -> cp.ndarray:
    return cp.empty(1024, dtype=np.float64)


def sum_squares(g: Any, out: Any) -> None:
    """``out[0] += sum(g**2)`` (float64, deterministic) without a host sync or an allocation
    (the first call, eager, allocates the partial sums)."""
    blocks = max(1, min(1024, (g.size + 255) // 256))
    partial = _partials(cp.cuda.Device().id)
    args = (g, np.int64(g.size), partial)
    _sum_squares(ctype(g.dtype))((blocks,), (256,), args)
    _sum_squares_total()((1,), (256,), (partial, np.int32(blocks), out))


# ---------------------------------------------------------------------------- optimizer updates
# Optimizer kernels run over a flat arena group. ``s`` is the group's float64 device-scalar array
# (fastnet.parameter: s[2] step size, s[3] eps, s[4] decoupled-decay shrink, s[5] clip scale),
# advanced on the device by ``advance_scalars`` in the same step, so a captured graph replays
# the right values. Weight decay (L2 ``wd`` and the shrink) applies to elements [0, n_decay)
# only; the gradient is scaled and clipped to [-clip, clip] first (NaN kept), as in the numba
# kernels. State is read and stored through FLUSH: subnormal values become 0 (as on the CPU).
# A rule is one entry of UPDATE_RULES: (extra inputs, state outputs, body). The extra inputs are
# the rule's constants, then what derives from them (``1 - beta``: the backend passes
# ``Optimizer.derived_constants``, computed in float64 on the host and rounded once; computed
# here in float from the rounded beta it would be off by up to 3e-8 / (1 - beta) relative).
_PRE = "raw float64 s, T wd_all, int64 n_decay, T clip, T tiny"
_WD = (
    "if (s[6] != 0.0) continue;"  # SKIP: a mixed-precision step whose gradients overflowed
    "T step = (T)s[2]; T eps = (T)s[3];"
    "T wd = i < n_decay ? wd_all : (T)0; T shrink = i < n_decay ? (T)s[4] : (T)1;"
    "T gc = g * (T)s[5]; gc = gc > clip ? clip : (gc < -clip ? -clip : gc);"
    "T gi = wd == (T)0 ? gc : gc + wd * p;"  # (an infinite weight undecayed: not 0 * inf)
)
_FLUSH = "#define FLUSH(x) (fabs(x) >= tiny ? (x) : (x) - (x))\n"

UPDATE_RULES: dict[str, tuple[str, str, str]] = {
    "sgd": ("", "T p", "p = p * shrink - step * gi;"),
    "momentum": (
        "T mu, T nesterov, ",
        "T p, T v",
        "T vi = FLUSH(mu * FLUSH(v) - step * gi); v = vi; p *= shrink;"
        "p += nesterov != (T)0 ? mu * vi - step * gi : vi;",
    ),
    "adagrad": (
        "",
        "T p, T h",
        "T hi = FLUSH(FLUSH(h) + gi * gi); h = hi; p = p * shrink - step * gi / (sqrt(hi) + eps);",
    ),
    "rmsprop": (
        "T rho, T keep, ",  # keep: 1 - rho
        "T p, T h",
        "T hi = FLUSH(rho * FLUSH(h) + keep * gi * gi); h = hi;"
        "p = p * shrink - step * gi / (sqrt(hi) + eps);",
    ),
    "adam": (
        "T beta1, T beta2, T keep1, T keep2, ",  # keep1, keep2: 1 - beta1, 1 - beta2
        "T p, T m, T v",
        "T mi = FLUSH(beta1 * FLUSH(m) + keep1 * gi);"
        "T vi = FLUSH(beta2 * FLUSH(v) + keep2 * (gi * gi)); m = mi; v = vi;"
        "p = p * shrink - step * mi / (sqrt(vi) + eps);",
    ),
}


@cache
def update_kernel(rule: str) -> cp.ElementwiseKernel:
    """The fused update kernel of ``rule``: inputs ``g``, the rule's constants and derived
    constants, then ``s, wd, n_decay, clip, tiny``; outputs the parameters and the state
    slots."""
    extra, outputs, body = UPDATE_RULES[rule]
    return cp.ElementwiseKernel(
        "T g, " + extra + _PRE, outputs, _WD + body, f"fastnet_{rule}", preamble=_FLUSH
    )


@cache
def update_kernel_half(rule: str, half: str) -> cp.ElementwiseKernel:
    """``update_kernel`` for float32 master weights that also writes their half copy ``ph``
    (mixed precision) in the same pass; a skipped step leaves it too."""
    extra, outputs, body = UPDATE_RULES[rule]
    return cp.ElementwiseKernel(
        "T g, " + extra + _PRE,
        outputs + ", H ph",
        _WD + body + "ph = H((float)p);",
        f"fastnet_{rule}_{half}",
        preamble=_HALF_HEADER[half] + _FLUSH,
    )


_ADVANCE_SRC = r"""
// A parameter group's scalars for its next update (fastnet.parameter's layout): t += 1, the step
// size and eps (Adam's bias correction when asked), the decoupled-decay shrink, the clip scale.
// None of it when checks[1] counts non-finite gradients (mixed precision): s[6] (skip) is set,
// and the update kernels then leave parameters and slots as they are.
extern "C" __global__ void advance_scalars(double* s, const double* checks, double eps,
                                           double beta1, double beta2, double bias_correction,
                                           double decoupled_wd, double clip_norm) {
    s[6] = checks[1] > 0.0 ? 1.0 : 0.0;
    if (s[6] != 0.0) return;
    double t = s[1] + 1.0, lr = s[0];
    s[1] = t;
    if (bias_correction != 0.0) {
        double c = sqrt(1.0 - pow(beta2, t));
        s[2] = lr * c / (1.0 - pow(beta1, t));
        s[3] = bias_correction == 2.0 ? eps : eps * c;  // 2: eps hat
    } else {
        s[2] = lr;
        s[3] = eps;
    }
    s[4] = 1.0 - lr * decoupled_wd;
    double ratio = clip_norm / (sqrt(checks[0]) + 1e-6);  // a NaN norm gives NaN, as NumPy
    s[5] = clip_norm != 0.0 ? (ratio >= 1.0 ? 1.0 : ratio) : 1.0;
}
"""


@cache
def _advance() -> cp.RawKernel:
    return cp.RawKernel(_ADVANCE_SRC, "advance_scalars")


def advance_scalars(s: Any, checks: Any, constants: tuple) -> None:
    """Advance the device scalars ``s`` (one thread; captured with the step)."""
    _advance()((1,), (1,), (s, checks, *map(float, constants)))


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
        self.path = path  # cuBLASLt is loaded from beside it
        vp, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
            fn = getattr(lib, name)
            fn.argtypes = [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i]
            fn.restype = i
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetMathMode.argtypes = [vp, i]
        lib.cublasGetMathMode.argtypes = [vp, ctypes.POINTER(i)]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, f]
        self.lib, self.ctypes = lib, ctypes
        self.handle = cp.cuda.device.get_cublas_handle()
        self.workspace = cp.empty(self.WORKSPACE_BYTES, dtype=np.uint8)
        self._check(
            lib.cublasSetWorkspace_v2(self.handle, address(self.workspace), self.WORKSPACE_BYTES),
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
        ct, lib, handle = self.ctypes, self.lib, self.handle
        self._check(
            lib.cublasSetStream_v2(handle, cp.cuda.get_current_stream().ptr), "cublasSetStream"
        )
        # setStream puts cuBLAS back on its default workspace: ours again (no allocation)
        self._check(
            lib.cublasSetWorkspace_v2(handle, address(self.workspace), self.WORKSPACE_BYTES),
            "cublasSetWorkspace",
        )
        before = ct.c_int(0)
        self._check(lib.cublasGetMathMode(handle, ct.byref(before)), "cublasGetMathMode")
        mode = 3 if tf32 else 0  # CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH
        if mode != before.value:
            self._check(lib.cublasSetMathMode(handle, mode), "cublasSetMathMode")
        gemm = lib.cublasSgemm_v2 if a.dtype == np.float32 else lib.cublasDgemm_v2
        status = gemm(
            handle,
            op_b,
            op_a,
            n_cols,
            m_rows,
            k,
            ct.byref(self.one[a.dtype]),
            address(b),
            ld_b,
            address(a),
            ld_a,
            ct.byref(self.zero[a.dtype]),
            address(out),
            n_cols,
        )
        if mode != before.value:  # CuPy's handle is shared: leave its math mode as it was
            self._check(lib.cublasSetMathMode(handle, before.value), "cublasSetMathMode")
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


_GEMMS: dict[tuple[int, int], CublasGemm] = {}


def cublas_gemm() -> CublasGemm:
    """The GEMM for the current device and thread (CuPy's cuBLAS handle is per device and
    thread, and so is our workspace)."""
    import threading

    key = (cp.cuda.Device().id, threading.get_ident())
    if key not in _GEMMS:
        _GEMMS[key] = CublasGemm()
    return _GEMMS[key]


# ---------------------------------------------------------------------------- sources for CI
# Non-raw elementwise inputs the launchers pass as arrays (the rest are scalars).
_ARRAY_INPUTS = frozenset({"v", "x", "y", "dy", "g", "mask", "src"})


def kernel_sources() -> list[tuple[str, str]]:
    """``(name, full CUDA source)`` of every kernel this module builds, for every activation code
    and both float dtypes, as CuPy compiles them; needs no GPU (CI compiles them with NVRTC).

    Found by walking this module's factories: every function annotated to return an
    ``ElementwiseKernel`` or a ``RawKernel`` is called with each value of its parameters (``code``:
    the activation codes; ``dtype``: the C float types; ``rule``: the update rules), so a new
    factory is checked without being listed here; one with another parameter name raises until
    its values are added below. Kernel
    ``options`` are not part of the source (no kernel here passes any)."""
    import inspect
    import itertools

    from .cuda_source import elementwise_source

    values: dict[str, list[Any]] = {
        "code": sorted(_ACT),
        "dtype": sorted(set(_CTYPE.values())),
        "rule": sorted(UPDATE_RULES),
        "half": sorted(_HALF_HEADER),
    }
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
            dtypes = [args[names.index("half")]] if "half" in names else ["float32", "float64"]
            placeholders = {p.ctype for p in kernel.params if p.dtype is None}
            for dt in dtypes:
                types = {"T": "float32", "H": dt} if "H" in placeholders else {"T": dt}
                source = elementwise_source(kernel, types, _ARRAY_INPUTS)
                sources[f"{kernel.name}[{dt}]"] = source
    return list(sources.items())
