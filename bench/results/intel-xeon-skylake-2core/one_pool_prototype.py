"""Prototype, not shipped: one thread pool for the whole step (OpenBLAS on 1 thread; numba's
OpenMP threads run column-split sgemm calls, the elementwise kernels and Adam), timed against
JAX jit+lax.scan in one process:  python one_pool_prototype.py ROUNDS jax"""

import math
import sys
import time

import numpy as np
import threadpoolctl
from fastnet.kernels import numba_cpu as K
from numba import njit, prange, types
from numba.core.extending import intrinsic
from numba.np.linalg import _BLAS, ensure_blas

ensure_blas()
_gemm = _BLAS().numba_xxgemm(types.float32)
f32 = np.float32


@intrinsic
def _ptr(typingctx, arr, offset):
    sig = types.CPointer(arr.dtype)(arr, offset)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.gep(ary.data, [args[1]])

    return sig, codegen


@njit
def gemm(ta, tb, m, n, k, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, consts):
    """Row-major C[m x n] = op(A) op(B) (consts = [1, 0]) via column-major C^T = op(B)^T op(A)^T."""
    _gemm(
        np.int8(ord("s")),
        np.int8(tb),
        np.int8(ta),
        n,
        m,
        k,
        _ptr(consts, 0),
        _ptr(b, b_off),
        ldb,
        _ptr(a, a_off),
        lda,
        _ptr(consts, 1),
        _ptr(c, c_off),
        ldc,
    )


N, T_ = ord("n"), ord("t")


@njit(parallel=True)
def step(
    x,
    labels,
    W1,
    W2,
    W3,
    b1,
    b2,
    b3,
    h1,
    h2,
    h3,
    dz1,
    dz2,
    dz3,
    dx2,
    dx3,
    dW1,
    dW2,
    dW3,
    db1,
    db2,
    db3,
    p,
    g,
    m,
    v,
    s,
    consts,
    split,
):
    n = x.shape[0]
    # forward: h = relu(inp @ W + b), split by output columns
    for layer in range(3):
        inp = x if layer == 0 else (h1 if layer == 1 else h2)
        W = W1 if layer == 0 else (W2 if layer == 1 else W3)
        h = h1 if layer == 0 else (h2 if layer == 1 else h3)
        b = b1 if layer == 0 else (b2 if layer == 1 else b3)
        cols = W.shape[1]
        parts = split if cols >= 64 else 1
        for c in prange(parts):
            lo = c * cols // parts
            hi = (c + 1) * cols // parts
            gemm(
                N, N, n, hi - lo, W.shape[0], inp, 0, inp.shape[1], W, lo, cols, h, lo, cols, consts
            )
            for i in range(n):
                for j in range(lo, hi):
                    val = h[i, j] + b[j]
                    h[i, j] = val if (layer == 2 or val > 0) else val - val
    loss = K.softmax_xent(
        h3,
        labels,
        np.empty((0, 0), np.float32),
        dz3,
        np.float32(1.0 / n),
        True,
        np.empty(0, np.float32),
        np.float32(0),
    )
    # backward
    for layer in range(2, -1, -1):
        W = W1 if layer == 0 else (W2 if layer == 1 else W3)
        h = h1 if layer == 0 else (h2 if layer == 1 else h3)
        dz = dz1 if layer == 0 else (dz2 if layer == 1 else dz3)
        dy = dz3 if layer == 2 else (dx3 if layer == 1 else dx2)
        db = db1 if layer == 0 else (db2 if layer == 1 else db3)
        dW = dW1 if layer == 0 else (dW2 if layer == 1 else dW3)
        inp = x if layer == 0 else (h1 if layer == 1 else h2)
        cols = W.shape[1]
        parts = split if cols >= 64 else 1
        for c in prange(parts):
            lo = c * cols // parts
            hi = (c + 1) * cols // parts
            for j in range(lo, hi):
                db[j] = 0
            for i in range(n):
                for j in range(lo, hi):
                    d = dy[i, j] if (layer == 2 or h[i, j] > 0) else dy[i, j] - dy[i, j]
                    dz[i, j] = d
                    db[j] += d
            # dW[:, lo:hi] = inp^T @ dz[:, lo:hi]
            gemm(
                T_,
                N,
                inp.shape[1],
                hi - lo,
                n,
                inp,
                0,
                inp.shape[1],
                dz,
                lo,
                cols,
                dW,
                lo,
                cols,
                consts,
            )
        if layer > 0:
            out = dx3 if layer == 2 else dx2
            rows = W.shape[0]
            for c in prange(split):
                lo = c * rows // split
                hi = (c + 1) * rows // split
                # dX[:, lo:hi] = dz @ W[lo:hi, :]^T
                gemm(
                    N, T_, n, hi - lo, cols, dz, 0, cols, W, lo * cols, cols, out, lo, rows, consts
                )
    # Adam over the flat arena, both threads
    s[1] += 1.0
    t = s[1]
    corr = math.sqrt(1.0 - 0.999**t)
    step_size = np.float32(s[0] * corr / (1.0 - 0.9**t))
    eps = np.float32(1e-8 * corr)
    total = p.shape[0]
    tiny = np.float32(1.1754944e-38)
    for c in prange(split):
        lo = c * total // split
        hi = (c + 1) * total // split
        pp, gg, mm, vv = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(pp.shape[0]):
            gi = gg[i]
            mi = np.float32(0.9) * mm[i] + np.float32(0.1) * gi
            mi = mi if abs(mi) >= tiny else mi - mi
            vi = np.float32(0.999) * vv[i] + np.float32(0.001) * (gi * gi)
            vi = vi if abs(vi) >= tiny else vi - vi
            mm[i] = mi
            vv[i] = vi
            pp[i] = pp[i] - step_size * mi / (math.sqrt(vi) + eps)
    return loss


class Net:
    def __init__(self, X, y, sizes=(784, 256, 128, 10), batch=128, split=2):
        self.X, self.y, self.batch, self.split = X, y, batch, split
        rng = np.random.default_rng(0)
        shapes = list(zip(sizes[:-1], sizes[1:]))
        total = sum(a * b for a, b in shapes) + sum(b for _, b in shapes)
        self.p, self.g = np.zeros(total, f32), np.zeros(total, f32)
        self.m, self.v = np.zeros(total, f32), np.zeros(total, f32)
        off = 0
        Ws, dWs = [], []
        for a, b in shapes:
            W = self.p[off : off + a * b].reshape(a, b)
            W[:] = rng.standard_normal((a, b)) * np.sqrt(2 / a)
            Ws.append(W)
            dWs.append(self.g[off : off + a * b].reshape(a, b))
            off += a * b
        bs, dbs = [], []
        for _, b in shapes:
            bs.append(self.p[off : off + b])
            dbs.append(self.g[off : off + b])
            off += b
        self.Ws, self.dWs, self.bs, self.dbs = Ws, dWs, bs, dbs
        self.hs = [np.zeros((batch, b), f32) for _, b in shapes]
        self.dzs = [np.zeros((batch, b), f32) for _, b in shapes]
        self.dx2, self.dx3 = np.zeros((batch, sizes[1]), f32), np.zeros((batch, sizes[2]), f32)
        self.s = np.zeros(8)
        self.s[0] = 1e-3
        self.consts = np.array([1, 0], f32)
        self.xb, self.yb = np.empty((batch, sizes[0]), f32), np.empty(batch, np.int64)
        self.rng = np.random.default_rng(1)

    def epoch(self):
        n, B = len(self.X), self.batch
        order = self.rng.permutation(n)
        tot = 0.0
        for lo in range(0, n - B + 1, B):
            idx = order[lo : lo + B]
            np.take(self.X, idx, axis=0, out=self.xb, mode="wrap")
            np.take(self.y, idx, out=self.yb, mode="wrap")
            tot += step(
                self.xb,
                self.yb,
                *self.Ws,
                *self.bs,
                *self.hs,
                *self.dzs,
                self.dx2,
                self.dx3,
                *self.dWs,
                *self.dbs,
                self.p,
                self.g,
                self.m,
                self.v,
                self.s,
                self.consts,
                self.split,
            )
        return tot / (n // B) / B


if __name__ == "__main__":
    from fastnet.bench.suites import DEFAULT_SIZES, load_training_data

    X, y, _ = load_training_data(False)
    B = 128
    n = len(X) // B * B
    X, y = np.ascontiguousarray(X[:n], f32), np.ascontiguousarray(y[:n], np.int64)
    threadpoolctl.threadpool_limits(1, user_api="blas")
    net = Net(X, y)
    for _e in range(3):
        print("loss", round(net.epoch(), 4))
    c = {"onepool": net.epoch}
    if "jax" in sys.argv:
        from fastnet.bench.jax_peer import jax_scan_epoch

        c["jax"] = jax_scan_epoch(DEFAULT_SIZES, X, y, B)
        c["jax"]()
        c["jax"]()
    t = {k: [] for k in c}
    for r in range(int(sys.argv[1])):
        for k, f in list(c.items()) if r % 2 == 0 else list(c.items())[::-1]:
            s0 = time.perf_counter()
            f()
            t[k].append(time.perf_counter() - s0)
    out = {k: round(float(np.median(v)), 3) for k, v in t.items()}
    if "jax" in c:
        out["ratio"] = round(float(np.median([a / b for a, b in zip(t["onepool"], t["jax"])])), 3)
    print(out)
