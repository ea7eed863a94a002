"""Numba CPU kernels: pure array functions writing into caller-provided ``out`` buffers.

Every kernel is ``@njit(**SERIAL)``. Kernels that pay off from threads come in a serial and a
``parallel=True`` flavour sharing one row-level body; the backend picks by size (measured in
``bench/``). Activation codes: 0 linear, 1 relu, 2 leaky_relu, 3 sigmoid, 4 tanh.
"""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np
from numba import njit, prange

from .numba_blas import gemm
from .numba_fpmode import AVAILABLE as _FLUSH_MODE_AVAILABLE
from .numba_fpmode import enter_flush_mode, leave_flush_mode
from .numba_random import dropout_rows

#: sha256 of numba_blas.py + numba_fpmode.py + numba_random.py, whose code the cached kernels
#: below inline. numba re-compiles when this file changes, not when those do: a test fails
#: until this is updated.
HELPERS_SHA256 = "3e737a8c91c5077bd625416dca073ee3f3800339c193635fd06ab23b77a383a9"

# error_model="numpy": division by zero gives inf/nan instead of a per-element check, which
# would stop LLVM from vectorizing the loops. No ``fastmath``: its no-NaN/no-inf assumptions
# turn overflowing values (|g| = 1e20 squared in float32) into NaN where NumPy gives inf/0.
# Row reductions (softmax sums) allow only reassociation, which keeps inf/NaN semantics.
SERIAL: dict[str, Any] = {"cache": True, "error_model": "numpy"}
PARALLEL: dict[str, Any] = {**SERIAL, "parallel": True}
INLINE: dict[str, Any] = {**SERIAL, "inline": "always"}
#: the activation codes (``fastnet.backends.base.Act``) these kernels compute; others run
#: the backend's NumPy reference
ACTIVATIONS = (0, 1, 2, 3, 4)
REDUCE: dict[str, Any] = {**SERIAL, "fastmath": {"reassoc", "nsz", "contract"}}
REDUCE_PARALLEL: dict[str, Any] = {**REDUCE, "parallel": True}
REDUCE_INLINE: dict[str, Any] = {**REDUCE, "inline": "always"}

# ---------------------------------------------------------------------------- vectorizable exp
# llvmlite without SVML computes exp one element at a time. This float32 exp (Cephes expf:
# x = n*ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2**n assembled from integer bits) is plain
# arithmetic, so LLVM vectorizes it. Max relative error ~2e-7 on [-87, 88].
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0, _P1, _P2 = (
    np.float32(1.9875691500e-4),
    np.float32(1.3981999507e-3),
    np.float32(8.3334519073e-3),
)
_P3, _P4, _P5 = (
    np.float32(4.1665795894e-2),
    np.float32(1.6666665459e-1),
    np.float32(5.0000001201e-1),
)
_EXP_LO = np.float32(-87.0)


@njit(**REDUCE_INLINE)
def _expm_f32(x, poly, n):
    """poly[j] * 2**n[j] == exp(x[j]) for x <= 0 (clamped below at -87)."""
    for j in range(x.shape[0]):
        v = max(x[j], _EXP_LO)
        k = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - k * _LN2_HI - k * _LN2_LO
        r2 = r * r
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        poly[j] = p * r2 + r + np.float32(1.0)
        n[j] = (np.int32(k) + np.int32(127)) << np.int32(23)


# ---------------------------------------------------------------------------- bias + activation
@njit(**INLINE)
def _bias_act_row(row, b, code, alpha):
    m = row.shape[0]
    if code == 0:
        for j in range(m):
            row[j] = row[j] + b[j]
    elif code == 1:
        for j in range(m):
            v = row[j] + b[j]
            row[j] = v if v > 0 or v != v else 0  # NaN stays NaN (as np.maximum)
    elif code == 2:
        for j in range(m):
            v = row[j] + b[j]
            row[j] = v if v > 0 else v * alpha
    elif code == 3:
        one = row.dtype.type(1)
        for j in range(m):
            v = row[j] + b[j]
            e = math.exp(-abs(v))
            row[j] = one / (one + e) if v >= 0 else e / (one + e)
    elif code == 4:
        for j in range(m):
            row[j] = math.tanh(row[j] + b[j])
    else:  # a code without a branch here (callers check ACTIVATIONS): loud, never another's
        for j in range(m):
            row[j] = math.nan


def _bias_act(z, b, code, alpha):
    """In place: ``z = act(z + b)`` for a C-contiguous 2-D ``z``."""
    for i in prange(z.shape[0]):
        _bias_act_row(z[i], b, code, alpha)


# ---------------------------------------------------------------------------- activation backward
@njit(**INLINE)
def _act_grad_row(y, dy, dz, code, alpha):
    m = y.shape[0]
    if code == 0:
        for j in range(m):
            dz[j] = dy[j]
    elif code == 1:
        for j in range(m):
            dz[j] = dy[j] if y[j] > 0 else 0  # a select: 0 for an inf or NaN dy too
    elif code == 2:
        for j in range(m):
            dz[j] = dy[j] if y[j] > 0 else dy[j] * alpha
    elif code == 3:
        one = dz.dtype.type(1)
        for j in range(m):
            dz[j] = dy[j] * y[j] * (one - y[j])
    elif code == 4:
        one = dz.dtype.type(1)
        for j in range(m):
            dz[j] = dy[j] * (one - y[j] * y[j])
    else:
        for j in range(m):
            dz[j] = math.nan


@njit(**SERIAL)
def act_backward_bias(y, dy, code, alpha, dz, db):
    """``dz = dy * act'(y)`` and ``db = dz.sum(axis=0)`` in one pass (``db`` may be empty)."""
    m = y.shape[1]
    has_bias = db.shape[0] == m
    if has_bias:
        db[:] = 0
    for i in range(y.shape[0]):
        _act_grad_row(y[i], dy[i], dz[i], code, alpha)
        if has_bias:
            row = dz[i]
            for j in range(m):
                db[j] += row[j]


@njit(**PARALLEL)
def act_backward_bias_parallel(y, dy, code, alpha, dz, db):
    n, m = y.shape
    has_bias = db.shape[0] == m
    chunks = min(n, 16)
    partial = np.zeros((chunks, m), dtype=dz.dtype)
    for c in prange(chunks):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        acc = partial[c]
        for i in range(lo, hi):
            _act_grad_row(y[i], dy[i], dz[i], code, alpha)
            row = dz[i]
            for j in range(m):
                acc[j] += row[j]
    if has_bias:
        db[:] = 0
        for c in range(chunks):
            for j in range(m):
                db[j] += partial[c, j]


# ---------------------------------------------------------------------------- softmax + CE
@njit(**REDUCE_INLINE)
def _exp_rows(logits, d, lo, hi, fast_exp, mx):
    """``d[i] = exp(logits[i] - max(logits[i]))`` for rows ``[lo, hi)``, each row's max into
    ``mx[i - lo]``. The shift runs row by row, the exp as one pass over the block: with ten
    classes a row is too short for a vector loop (2-4x faster for 128 x 10, measured)."""
    m = logits.shape[1]
    for i in range(lo, hi):
        x, row = logits[i], d[i]
        best = x[0]
        for j in range(1, m):
            best = max(best, x[j])
        mx[i - lo] = best
        for j in range(m):
            row[j] = x[j] - best
    flat = d.reshape(d.size)[lo * m : hi * m]
    if fast_exp:
        poly = np.empty(flat.shape[0], dtype=d.dtype)
        bits = np.empty(flat.shape[0], dtype=np.int32)
        _expm_f32(flat, poly, bits)
        scale = bits.view(np.float32)
        for q in range(flat.shape[0]):
            flat[q] = poly[q] * scale[q]
    else:
        for q in range(flat.shape[0]):
            flat[q] = math.exp(flat[q])


@njit(**REDUCE_INLINE)
def _row_sum(d):
    total = d[0] - d[0]  # 0 in the row's dtype
    for j in range(d.shape[0]):
        total += d[j]
    return total


@njit(**REDUCE_INLINE)
def _softmax_xent_row(x, label, d, mx, inv_n, smoothing):
    """Row loss of integer ``label`` from ``d = exp(x - mx)``; ``d`` becomes the row's
    mean-reduced gradient. With ``smoothing`` e the target is ``(1 - e) onehot + e / k``."""
    total = _row_sum(d)
    scale_row = inv_n / total
    for j in range(x.shape[0]):
        d[j] *= scale_row
    loss = math.log(total) - (x[label] - mx)
    if smoothing == 0:
        d[label] -= inv_n
        return loss
    one, k = x.dtype.type(1), x.shape[0]
    shifted_sum = mx - mx
    for j in range(k):
        shifted_sum += x[j] - mx
    off = smoothing * inv_n / x.dtype.type(k)
    for j in range(k):
        d[j] -= off
    d[label] -= (one - smoothing) * inv_n
    return (one - smoothing) * loss + smoothing * (math.log(total) - shifted_sum / k)


@njit(**REDUCE_INLINE)
def _softmax_xent_dense_row(x, t, d, mx, inv_n, smoothing):
    """Row loss of one-hot/soft targets ``t`` (need not sum to 1: the gradient is
    ``softmax * sum(t) - t``) from ``d = exp(x - mx)``, smoothed as ``(1 - e) t + e sum(t) / k``."""
    total = _row_sum(d)
    k, one = x.shape[0], x.dtype.type(1)
    t_sum = _row_sum(t)
    log_s = math.log(total)
    scale_row = inv_n * t_sum / total
    weighted = mx - mx  # sum(t (x - mx)), classes without target skipped (a -inf logit's)
    for j in range(k):
        tj = t[j]
        if smoothing != 0:
            tj = (one - smoothing) * tj + smoothing * t_sum / x.dtype.type(k)
        if tj != 0:
            weighted += tj * (x[j] - mx)
        d[j] = d[j] * scale_row - tj * inv_n
    return t_sum * log_s - weighted  # (exact under reassoc: no (x - mx) - log_s to regroup)


@njit(**INLINE)
def _weight_row(d, w):
    """Scale a finished gradient row by its sample weight."""
    for j in range(d.shape[0]):
        d[j] *= w


@njit(**REDUCE_INLINE)
def _xent_rows(logits, labels, targets, dlogits, inv_n, fast_exp, weights, smoothing, lo, hi):
    """Summed (weighted) row losses of rows ``[lo, hi)``: integer ``labels`` when ``targets``
    is empty, else one-hot/soft ``targets``. ``dlogits`` must be C-contiguous."""
    mx = np.empty(hi - lo, dtype=dlogits.dtype)
    _exp_rows(logits, dlogits, lo, hi, fast_exp, mx)
    weighted = weights.shape[0] == logits.shape[0]
    dense = targets.shape[0] == logits.shape[0]
    acc = 0.0
    for i in range(lo, hi):
        if dense:
            row = _softmax_xent_dense_row(
                logits[i], targets[i], dlogits[i], mx[i - lo], inv_n, smoothing
            )
        else:
            row = _softmax_xent_row(logits[i], labels[i], dlogits[i], mx[i - lo], inv_n, smoothing)
        if weighted:
            _weight_row(dlogits[i], weights[i])
            row *= weights[i]
        acc += row
    return acc


@njit(**REDUCE)
def softmax_xent(logits, labels, targets, dlogits, inv_n, fast_exp, weights, smoothing):
    """Summed softmax cross-entropy of the rows; writes the mean-reduced ``dlogits``.

    Integer ``labels`` (n,), or one-hot/soft ``targets`` (n, k) when ``targets`` has n rows
    (pass an empty array for the unused one). ``inv_n`` is ``1 / n`` in the logits' dtype;
    ``fast_exp`` selects the vectorized float32 exp (float32 only). ``weights`` (length n, or
    empty for none) weight each row's loss and gradient; ``smoothing`` is label smoothing.
    """
    n = logits.shape[0]
    return _xent_rows(logits, labels, targets, dlogits, inv_n, fast_exp, weights, smoothing, 0, n)


@njit(**REDUCE_PARALLEL)
def softmax_xent_parallel(logits, labels, targets, dlogits, inv_n, fast_exp, weights, smoothing):
    n = logits.shape[0]
    chunks = min(n, 64)
    losses = np.zeros(chunks)
    for c in prange(chunks):
        losses[c] = _xent_rows(
            logits,
            labels,
            targets,
            dlogits,
            inv_n,
            fast_exp,
            weights,
            smoothing,
            c * n // chunks,
            (c + 1) * n // chunks,
        )
    return losses.sum()


@njit(**SERIAL)
def sigmoid_bce(logits, targets, weights, dlogits, totals):
    """Sigmoid binary cross-entropy of logits ``z`` (n, k) and ``targets`` t (n, k) in their
    dtype, rows weighted by ``weights`` (n, or empty: none): ``dlogits = (sigmoid(z) - t) / (n
    k) * w``; adds the summed row means of ``w (max(z, 0) - z t + log1p(exp(-|z|)))`` into
    ``totals[0]`` and the outputs with ``z > 0`` as ``t > 0.5``, over k, into ``totals[1]``."""
    n, k = logits.shape
    if targets.shape[0] != n or targets.shape[1] != k:
        raise ValueError("sigmoid_bce: targets must have the logits' shape")
    zero, one, size = logits.dtype.type(0), logits.dtype.type(1), logits.dtype.type(n * k)
    loss, hits = 0.0, 0
    for i in range(n):
        w = weights[i] if weights.shape[0] == n else one
        for j in range(k):
            z, t = logits[i, j], targets[i, j]
            e = math.exp(-abs(z))
            p = one / (one + e) if z >= 0 else e / (one + e)  # the sigmoid of _bias_act_row
            u = one - t if z >= 0 else t  # max(z, 0) - z t = |z| u, 0 where u is (z = +-inf)
            loss += ((abs(z) * u if u != 0 else zero) + math.log1p(e)) * w
            dlogits[i, j] = (p - t) / size * w
            hits += (z > 0) == (t > 0.5)
    totals[0] += loss / k
    totals[1] += hits / k


@njit(**SERIAL)
def squared_error(outputs, targets, weights, dout, scale, totals):
    """``scale`` times the squared error of ``outputs`` y (n, k) and ``targets`` t (n, k) in
    their dtype, rows weighted by ``weights`` (n, or empty: none): ``dout = (y - t) * (2 scale
    / (n k)) * w``; adds the summed row means of ``scale w (y - t)**2`` into ``totals[0]``."""
    n, k = outputs.shape
    if targets.shape[0] != n or targets.shape[1] != k:
        raise ValueError("squared_error: targets must have the outputs' shape")
    one, c = outputs.dtype.type(1), outputs.dtype.type(2.0 * scale / (n * k))
    loss = 0.0
    for i in range(n):
        w = weights[i] if weights.shape[0] == n else one
        for j in range(k):
            d = outputs[i, j] - targets[i, j]
            loss += d * d * w
            dout[i, j] = d * c * w
    totals[0] += loss * (scale / k)


@njit(**SERIAL)
def labels_in_range(labels, m):
    """True if every label is in ``[0, m)`` (cheap guard before unchecked indexing)."""
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= m:
            return False
    return True


@njit(**INLINE)
def _argmax(row):
    """The index of the first largest element, or of the first NaN (as NumPy's argmax)."""
    best = 0
    for j in range(row.shape[0]):
        if row[j] != row[j]:
            return j
        if row[j] > row[best]:
            best = j
    return best


@njit(**SERIAL)
def count_correct(logits, labels, targets):
    """Rows whose argmax equals the integer label, or the argmax of the target row when
    ``targets`` has the logits' rows (``labels`` then unused)."""
    n = logits.shape[0]
    dense = targets.shape[0] == n
    hits = 0
    for i in range(n):
        label = _argmax(targets[i]) if dense else labels[i]
        hits += _argmax(logits[i]) == label
    return hits


# ---------------------------------------------------------------------------- optimizer updates
# Parameters, gradients and state are flat 1-D arena buffers of one length (the backend checks).
# ``s`` is the parameter group's float64 device-scalar array (fastnet.parameter: s[2] step size,
# s[3] eps, s[4] decoupled-decay shrink, s[5] global-norm clip scale), read once per call and
# cast to the parameters' dtype; the other scalars arrive in that dtype. Every rule shares the
# gradient preamble of ``_grad``: ``g * gscale``, then clipped to ``[-clip, clip]`` (NaN kept),
# then L2 decay ``wd * p``. Elements ``[0, n_decay)`` take the decay (L2 ``wd`` and the shrink);
# each driver runs two loops, decayed then undecayed, so both stay branch-free and vectorized.
# Each loop runs over a slice from index 0: indexing ``p[i]`` with ``i`` from
# ``range(n_decay, n)`` makes numba wrap negative indices, which stops LLVM vectorizing (5-10x
# slower, measured). Constants are typed with ``p.dtype.type``: a bare ``1 - beta`` is int64 -
# float32, which numba types as float64 and would run the whole update in double precision.
# What derives from a rule's constants (``1 - beta``: ``Optimizer.derived_constants``) comes
# last, computed in float64 by the backend and rounded once: computed here in float32 from the
# rounded ``beta`` it would be off by up to ``3e-8 / (1 - beta)`` relative (Adam, beta2 =
# 0.99999: 7e-4 in every step). A caller passing none (``bench/floor.py``) gets that value.
# State slots are read and stored through ``_flush``: values below the dtype's smallest normal
# number (``tiny``) become 0 (a compare and a select: no slow path). Adam's first moment of an
# always-zero gradient otherwise decays into the subnormal range, where every later update of
# it is many times slower on Intel cores (25x measured for 20% subnormal slots). With
# ``tiny=None`` (x86-64, serial flavour) the call runs in the CPU's flush-to-zero mode instead
# (``numba_fpmode``): the selects compile away and subnormal operands and results are zero.
@njit(**INLINE)
def _flush(x, tiny):
    """``x``, or 0 where ``|x|`` is subnormal (NaN and inf stay)."""
    if tiny is None:  # the hardware flushes
        return x
    return x if abs(x) >= tiny else x - x


@njit(**INLINE)
def _enter(tiny):
    """Flush-to-zero mode for this call where ``tiny`` is None; the mode to restore."""
    if tiny is None:
        return enter_flush_mode()
    return np.uint32(0)


@njit(**INLINE)
def _leave(tiny, mode):
    if tiny is None:
        leave_flush_mode(mode)


@njit(**INLINE)
def _grad(gi, pi, wd, gscale, clip):
    if gscale is None:  # the plain loop: nothing to scale, clip or decay (as the reference)
        return gi
    gi = gi * gscale
    gi = clip if gi > clip else gi  # two selects (not branches): vectorized, and NaN stays NaN
    gi = -clip if gi < -clip else gi
    return gi if wd == 0 else gi + wd * pi  # (a select: an infinite weight undecayed stays)


@njit(**INLINE)
def _shrunk(pi, shrink):
    return pi if shrink is None else pi * shrink


@njit(**INLINE)
def _plain(wd, gscale, clip, shrink):
    """No scaling, clipping or decay: the update runs one loop of the bare rule (measured for
    Adam over 235k floats right after a GEMM: 121 us against 182 us for the general loops)."""
    return wd == 0 and gscale == 1 and clip == np.inf and shrink == 1


@njit(**INLINE)
def _scalars(p, s):
    """(step, eps, shrink, gscale) of this update in the parameters' dtype."""
    t = p.dtype.type
    return t(s[2]), t(s[3]), t(s[4]), t(s[5])


# Each rule loads p[i] once, works in registers and stores once: an in-place ``p[i] *= shrink``
# before reading the state would force a store per element (numba cannot prove no aliasing).
@njit(**INLINE)
def _sgd(i, p, g, lr, wd, gscale, clip, shrink):
    pi = p[i]
    p[i] = _shrunk(pi, shrink) - lr * _grad(g[i], pi, wd, gscale, clip)


@njit(**INLINE)
def _momentum(i, p, g, v, lr, mu, nesterov, wd, gscale, clip, shrink, tiny):
    pi = p[i]
    gi = _grad(g[i], pi, wd, gscale, clip)
    vi = _flush(mu * _flush(v[i], tiny) - lr * gi, tiny)
    v[i] = vi
    p[i] = _shrunk(pi, shrink) + (mu * vi - lr * gi if nesterov else vi)


@njit(**INLINE)
def _adagrad(i, p, g, h, lr, eps, wd, gscale, clip, shrink, tiny):
    pi = p[i]
    gi = _grad(g[i], pi, wd, gscale, clip)
    hi = _flush(_flush(h[i], tiny) + gi * gi, tiny)
    h[i] = hi
    p[i] = _shrunk(pi, shrink) - lr * gi / (math.sqrt(hi) + eps)


@njit(**INLINE)
def _rmsprop(i, p, g, h, lr, rho, keep, eps, wd, gscale, clip, shrink, tiny):
    pi = p[i]
    gi = _grad(g[i], pi, wd, gscale, clip)
    hi = _flush(rho * _flush(h[i], tiny) + keep * gi * gi, tiny)  # keep: 1 - rho
    h[i] = hi
    p[i] = _shrunk(pi, shrink) - lr * gi / (math.sqrt(hi) + eps)


@njit(**INLINE)
def _adam(i, p, g, m, v, step, beta1, beta2, keep1, keep2, eps_hat, wd, gscale, clip, shrink, tiny):
    """``keep1``, ``keep2``: 1 - beta1, 1 - beta2."""
    pi = p[i]
    gi = _grad(g[i], pi, wd, gscale, clip)
    mi = _flush(beta1 * _flush(m[i], tiny) + keep1 * gi, tiny)
    vi = _flush(beta2 * _flush(v[i], tiny) + keep2 * (gi * gi), tiny)  # as the reference
    m[i] = mi
    v[i] = vi
    p[i] = _shrunk(pi, shrink) - step * mi / (math.sqrt(vi) + eps_hat)


def _flavours(body: Any) -> tuple[Any, Any]:
    """A serial and a ``parallel=True`` kernel from one driver written with ``prange`` (which
    runs as ``range`` when not parallel). The parallel one compiles a twin function object with
    its own name, so numba's on-disk cache keeps the two apart."""
    name = body.__name__.lstrip("_")
    twin = types.FunctionType(
        body.__code__, body.__globals__, f"{name}_parallel", body.__defaults__
    )
    twin.__qualname__ = twin.__name__
    serial = njit(**SERIAL)(body)
    return serial, njit(**PARALLEL)(twin)


def _sgd_update(p, g, s, wd, n_decay, clip, tiny):
    zero, one = wd - wd, p.dtype.type(1)
    lr, _, shrink, gscale = _scalars(p, s)
    if _plain(wd, gscale, clip, shrink):
        for i in prange(p.shape[0]):
            _sgd(i, p, g, lr, None, None, None, None)
        return
    pd, gd = p[:n_decay], g[:n_decay]
    for i in prange(pd.shape[0]):
        _sgd(i, pd, gd, lr, wd, gscale, clip, shrink)
    pu, gu = p[n_decay:], g[n_decay:]
    for i in prange(pu.shape[0]):
        _sgd(i, pu, gu, lr, zero, gscale, clip, one)


def _momentum_update(p, g, v, s, mu, nesterov, wd, n_decay, clip, tiny):
    zero, one = wd - wd, p.dtype.type(1)
    lr, _, shrink, gscale = _scalars(p, s)
    mode = _enter(tiny)
    if _plain(wd, gscale, clip, shrink):
        for i in prange(p.shape[0]):
            _momentum(i, p, g, v, lr, mu, nesterov, None, None, None, None, tiny)
    else:
        pd, gd, vd = p[:n_decay], g[:n_decay], v[:n_decay]
        for i in prange(pd.shape[0]):
            _momentum(i, pd, gd, vd, lr, mu, nesterov, wd, gscale, clip, shrink, tiny)
        pu, gu, vu = p[n_decay:], g[n_decay:], v[n_decay:]
        for i in prange(pu.shape[0]):
            _momentum(i, pu, gu, vu, lr, mu, nesterov, zero, gscale, clip, one, tiny)
    _leave(tiny, mode)


def _adagrad_update(p, g, h, s, wd, n_decay, clip, tiny):
    zero, one = wd - wd, p.dtype.type(1)
    lr, eps, shrink, gscale = _scalars(p, s)
    mode = _enter(tiny)
    if _plain(wd, gscale, clip, shrink):
        for i in prange(p.shape[0]):
            _adagrad(i, p, g, h, lr, eps, None, None, None, None, tiny)
    else:
        pd, gd, hd = p[:n_decay], g[:n_decay], h[:n_decay]
        for i in prange(pd.shape[0]):
            _adagrad(i, pd, gd, hd, lr, eps, wd, gscale, clip, shrink, tiny)
        pu, gu, hu = p[n_decay:], g[n_decay:], h[n_decay:]
        for i in prange(pu.shape[0]):
            _adagrad(i, pu, gu, hu, lr, eps, zero, gscale, clip, one, tiny)
    _leave(tiny, mode)


def _rmsprop_update(p, g, h, s, rho, wd, n_decay, clip, tiny, one_minus_rho=None):
    """RMSProp; ``one_minus_rho`` from the backend (float64, rounded once)."""
    zero, one = wd - wd, p.dtype.type(1)
    keep = one - rho if one_minus_rho is None else one_minus_rho
    lr, eps, shrink, gscale = _scalars(p, s)
    mode = _enter(tiny)
    if _plain(wd, gscale, clip, shrink):
        for i in prange(p.shape[0]):
            _rmsprop(i, p, g, h, lr, rho, keep, eps, None, None, None, None, tiny)
    else:
        pd, gd, hd = p[:n_decay], g[:n_decay], h[:n_decay]
        for i in prange(pd.shape[0]):
            _rmsprop(i, pd, gd, hd, lr, rho, keep, eps, wd, gscale, clip, shrink, tiny)
        pu, gu, hu = p[n_decay:], g[n_decay:], h[n_decay:]
        for i in prange(pu.shape[0]):
            _rmsprop(i, pu, gu, hu, lr, rho, keep, eps, zero, gscale, clip, one, tiny)
    _leave(tiny, mode)


def _adam_update(
    p, g, m, v, s, beta1, beta2, wd, n_decay, clip, tiny, one_minus_beta1=None, one_minus_beta2=None
):
    """Adam with the bias correction folded into the step size and eps (device scalars);
    ``one_minus_beta1``, ``one_minus_beta2`` from the backend (float64, rounded once)."""
    zero, one = wd - wd, p.dtype.type(1)
    b1, b2 = beta1, beta2
    k1 = one - b1 if one_minus_beta1 is None else one_minus_beta1
    k2 = one - b2 if one_minus_beta2 is None else one_minus_beta2
    step, eps_hat, shrink, gscale = _scalars(p, s)
    mode = _enter(tiny)
    if _plain(wd, gscale, clip, shrink):
        for i in prange(p.shape[0]):
            _adam(i, p, g, m, v, step, b1, b2, k1, k2, eps_hat, None, None, None, None, tiny)
    else:
        # pairs, not one 4-tuple: numba 0.68's parfors lowered ``pd, gd, md, vd = p[:k], ...``
        # so that the parallel flavour wrote nothing (test_numba_parallel_flavours_match_serial)
        pd, gd = p[:n_decay], g[:n_decay]
        md, vd = m[:n_decay], v[:n_decay]
        for i in prange(pd.shape[0]):
            _adam(i, pd, gd, md, vd, step, b1, b2, k1, k2, eps_hat, wd, gscale, clip, shrink, tiny)
        pu, gu = p[n_decay:], g[n_decay:]
        mu, vu = m[n_decay:], v[n_decay:]
        for i in prange(pu.shape[0]):
            _adam(i, pu, gu, mu, vu, step, b1, b2, k1, k2, eps_hat, zero, gscale, clip, one, tiny)
    _leave(tiny, mode)


@njit(**SERIAL)
def advance_scalars(s, checks, eps, beta1, beta2, bias_correction, decoupled_wd, clip_norm):
    """A parameter group's device scalars for its next update (as ``Backend.advance_scalars``):
    ``t += 1``, step size and eps (bias-corrected when asked), decay shrink, clip scale; none
    of it, and ``s[6]`` (skip) set, when ``checks[1]`` counts non-finite gradients."""
    s[6] = 1.0 if checks[1] > 0 else 0.0
    if s[6] != 0.0:
        return
    s[1] += 1.0
    t, lr = s[1], s[0]
    if bias_correction:
        correction = math.sqrt(1.0 - beta2**t)
        s[2] = lr * correction / (1.0 - beta1**t)
        s[3] = eps if bias_correction == 2.0 else eps * correction  # 2: eps hat
    else:
        s[2] = lr
        s[3] = eps
    s[4] = 1.0 - lr * decoupled_wd
    ratio = clip_norm / (math.sqrt(checks[0]) + 1e-6)
    s[5] = (1.0 if ratio >= 1.0 else ratio) if clip_norm else 1.0  # a NaN norm: NaN, as NumPy


bias_act, bias_act_parallel = _flavours(_bias_act)
sgd_update, sgd_update_parallel = _flavours(_sgd_update)
momentum_update, momentum_update_parallel = _flavours(_momentum_update)
adagrad_update, adagrad_update_parallel = _flavours(_adagrad_update)
rmsprop_update, rmsprop_update_parallel = _flavours(_rmsprop_update)
adam_update, adam_update_parallel = _flavours(_adam_update)

#: Rules whose serial kernel, given ``tiny=None``, runs in the CPU's flush-to-zero mode instead of
#: selecting subnormal state values away (x86-64 only). Their parallel flavour must get ``tiny``:
#: numba's worker threads do not inherit the calling thread's mode.
FLUSH_MODE_RULES = (
    frozenset({"momentum", "adagrad", "rmsprop", "adam"}) if _FLUSH_MODE_AVAILABLE else frozenset()
)


@njit(**REDUCE)
def sum_squares(g, out):
    """Add ``sum(g * g)``, accumulated in float64, into ``out[0]`` (the global gradient norm)."""
    total = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        total += x * x
    out[0] += total


@njit(**SERIAL)
def matmul(a, b, out):
    """``out = a @ b`` through NumPy's BLAS (``numba_blas.gemm``), as the fused step does: one
    BLAS thread pool for the whole process (two would spin against each other)."""
    gemm(a, b, out)


# ---------------------------------------------------------------------------- inference
@njit(**REDUCE)
def _row_finite(row):
    """True if no element of the 1-D ``row`` is NaN or infinite (``x * 0`` is 0 exactly for
    finite values, NaN otherwise; summed: vectorized, no temporary array)."""
    acc = row[0] - row[0]
    for j in range(row.shape[0]):
        acc += row[j] * 0
    return acc == 0


@njit(**REDUCE)
def all_finite(x):
    """True if no element of the 2-D ``x`` is NaN or infinite (``_row_finite`` row by row)."""
    for i in range(x.shape[0]):
        if not _row_finite(x[i]):
            return False
    return True


@njit(**SERIAL)
def standardize(x, offset, scale, out):
    """``out = (x - offset) / scale`` row by row: one pass, each element rounded as NumPy's
    subtract then divide round it."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (x[i, j] - offset[j]) / scale[j]
    return out


@njit(**SERIAL)
def dense_forward(x, weights, biases, codes, alphas, fast_exp, softmax):
    """Inference through a stack of dense layers in one call: ``(outputs, finite)``, a new
    array of the last layer's outputs (row-wise softmax of them with ``softmax``, through
    the vectorized float32 exp with ``fast_exp``, as training's, unless a row's logits span
    over 87: that call's exps are libm's) and whether the first
    layer's products ``x @ weights[0]`` are all finite, checked row by row as the bias and
    activation pass reads them (a NaN or infinite input makes each product of its row NaN
    or infinite: ``x`` is checked without a pass of its own)."""
    h = np.empty((x.shape[0], weights[0].shape[1]), dtype=x.dtype)
    gemm(x, weights[0], h)  # x may be read-only (a memory map): h never refers to it
    finite = True
    for r in range(h.shape[0]):
        finite = _row_finite(h[r]) and finite
        _bias_act_row(h[r], biases[0], codes[0], alphas[0])
    for i in range(1, len(weights)):
        out = np.empty((x.shape[0], weights[i].shape[1]), dtype=x.dtype)
        gemm(h, weights[i], out)
        bias_act(out, biases[i], codes[i], alphas[i])
        h = out
    if softmax:
        # (the fast exp stops at exp(-87): logits spanning farther take libm's, exact there)
        for r in range(h.shape[0] if fast_exp else 0):
            fast_exp = fast_exp and h[r].min() - h[r].max() >= _EXP_LO
        _exp_rows(h, h, 0, h.shape[0], fast_exp, np.empty(h.shape[0], h.dtype))
        for r in range(h.shape[0]):
            row = h[r]
            total = _row_sum(row)
            for j in range(row.shape[0]):
                row[j] /= total
    return h, finite


@njit(**PARALLEL)
def dense_forward_blocks(x, weights, biases, codes, alphas, fast_exp, softmax, block):
    """``dense_forward`` (its result) in blocks of ``block`` rows, the blocks in parallel,
    each through all the layers on one core: the caller runs BLAS single-threaded meanwhile
    (``blas_threads.single_threaded``), so no GEMM waits for another core's half."""
    n = x.shape[0]
    out = np.empty((n, weights[len(weights) - 1].shape[1]), dtype=x.dtype)
    blocks = (n + block - 1) // block
    finite = np.ones(blocks, dtype=np.bool_)
    for t in prange(blocks):
        lo = t * block
        hi = min(n, lo + block)
        h, ok = dense_forward(x[lo:hi], weights, biases, codes, alphas, fast_exp, softmax)
        out[lo:hi] = h
        finite[t] = ok
    return out, finite.all()


# ---------------------------------------------------------------------------- whole training step
@njit(**INLINE)
def _train_forward(x, weights, biases, codes, alphas, outs, drops):
    """The layers' outputs into ``outs`` (each layer's input through dropout where ``drops``
    has a mask for it); returns the logits."""
    n = x.shape[0]
    streams, thresholds, scales, masks, dropped = drops
    inp = x
    for i in range(len(weights)):
        if masks[i].shape[0] != 0:
            dropout_rows(inp, streams[i], thresholds[i], scales[i], dropped[i][:n], masks[i][:n])
            streams[i][1] += 1
            inp = dropped[i][:n]
        h = outs[i][:n]
        gemm(inp, weights[i], h)
        bias_act(h, biases[i], codes[i], alphas[i])
        inp = h
    return inp


@njit(**INLINE)
def _scale_rows(a, mask):
    """In place ``a *= mask`` (dropout's backward)."""
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            a[r, c] *= mask[r, c]


@njit(**INLINE)
def _train_loss(kind, logits, labels, targets, row_weights, smoothing, scale, dy, totals):
    """The fused step's loss of ``kind`` (as ``dense_train_step``'s): gradient into ``dy``,
    summed loss (and correct count) into ``totals``."""
    n = logits.shape[0]
    if kind == 1:
        sigmoid_bce(logits, targets, row_weights, dy, totals)
    elif kind == 2:
        squared_error(logits, targets, row_weights, dy, scale, totals)
    elif targets.shape[0] != n and (
        labels.shape[0] != n or not labels_in_range(labels, logits.shape[1])
    ):
        raise ValueError("dense_train_step: labels must be n class indices in [0, classes)")
    else:
        inv_n, smooth = logits.dtype.type(1.0 / n), logits.dtype.type(smoothing)
        loss = softmax_xent(
            logits, labels, targets, dy, inv_n, logits.itemsize == 4, row_weights, smooth
        )
        totals[0] += loss
        totals[1] += count_correct(logits, labels, targets)


@njit(**SERIAL)
def dense_train_step(
    x,
    labels,
    targets,
    row_weights,
    smoothing,
    weights,
    biases,
    codes,
    alphas,
    outs,
    dzs,
    dxs,
    dws,
    dbs,
    totals,
    drops,
    kind=0,
    scale=1.0,
):
    """Forward, the loss (``kind`` 0: softmax cross-entropy; 1: ``sigmoid_bce`` of
    ``targets``; 2: their ``squared_error`` times ``scale``) and backward of a stack of dense
    layers in one call.

    Per layer ``l`` (tuples): ``weights[l]`` (in, out), ``biases[l]`` (out,), activation
    ``codes[l]`` and ``alphas[l]``; scratch ``outs``/``dzs``/``dxs`` with at least ``n`` rows;
    gradients land in ``dws``/``dbs``. The loss takes integer ``labels`` or, when ``targets``
    has n rows, one-hot/soft targets; ``row_weights`` (n, or empty) and ``smoothing`` as in
    ``softmax_xent``. Adds the batch's summed loss and correct count to ``totals``. ``drops``
    = (streams, thresholds, scales, masks, dropped): layer ``l``'s input goes through dropout
    when ``masks[l]`` has rows (``numba_random.dropout_rows``; its stream's step advances).
    The same kernels, in the same order, as the eager step."""
    n = x.shape[0]
    last = len(weights) - 1
    masks, dropped = drops[3], drops[4]
    logits = _train_forward(x, weights, biases, codes, alphas, outs, drops)
    dy = dzs[last][:n]
    _train_loss(kind, logits, labels, targets, row_weights, smoothing, scale, dy, totals)
    for i in range(last, -1, -1):
        dz = dzs[i][:n]
        act_backward_bias(outs[i][:n], dy, codes[i], alphas[i], dz, dbs[i])
        dropped_in = masks[i].shape[0] != 0
        layer_in = dropped[i][:n] if dropped_in else (x if i == 0 else outs[i - 1][:n])
        gemm(layer_in.T, dz, dws[i])
        if i > 0:
            dy = dxs[i][:n]
            gemm(dz, weights[i].T, dy)
            if dropped_in:
                _scale_rows(dy, masks[i][:n])
