"""Where a CPU training epoch goes beyond its matmuls: the framework against a stripped loop.

The stripped loop is the least code that can train the MLP with the numba kernels: no layers,
no wrappers, no checks, all parameters in one flat arena updated by a single optimizer call.
Parts can be switched off, so timing the variants side by side (``fastnet bench --suite floor``)
prices each part of the step: the row gather, the fused elementwise kernels, the optimizer. Its
matmuls, and the floor's, go through the numba backend's BLAS (scipy's OpenBLAS, the one numba
links), as the framework's do: a second BLAS thread pool would spin against the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastnet.bench.harness import Contestant

RELU, LINEAR = 1, 0


def stripped_epoch(
    X: np.ndarray,
    y: np.ndarray,
    sizes: Sequence[int],
    batch: int,
    *,
    gather: bool = True,
    elementwise: bool = True,
    optimizer: str | None = "adam",
    seed: int = 0,
) -> Callable[[], float]:
    """A closure running one epoch (full batches) of a ReLU MLP with the numba kernels; it
    returns the epoch's mean loss (nan with ``elementwise=False``).

    ``gather=False`` reuses one batch (no row gather); ``elementwise=False`` skips bias,
    activation, loss and their backward (the matmuls still run); ``optimizer`` is ``"adam"``,
    ``"sgd"`` or ``None`` (no update)."""
    from fastnet.backends import get_backend
    from fastnet.optimizers import Adam

    get_backend("numba")  # applies the backend's threading settings
    from fastnet.kernels import numba_cpu as k

    f32 = np.float32
    rng = np.random.default_rng(seed)
    shapes = list(zip(sizes[:-1], sizes[1:]))
    total = sum(a * b + b for a, b in shapes)
    params, grads = np.zeros(total, f32), np.zeros(total, f32)
    m1, m2 = np.zeros(total, f32), np.zeros(total, f32)
    Ws, bs, dWs, dbs = [], [], [], []
    offset = 0
    for a, b in shapes:
        W = params[offset : offset + a * b].reshape(a, b)
        W[:] = rng.standard_normal((a, b)) * np.sqrt(2.0 / a)
        Ws.append(W)
        dWs.append(grads[offset : offset + a * b].reshape(a, b))
        offset += a * b
        bs.append(params[offset : offset + b])
        dbs.append(grads[offset : offset + b])
        offset += b
    acts = [RELU] * (len(shapes) - 1) + [LINEAR]
    hs = [np.empty((batch, b), f32) for _, b in shapes]
    dzs = [np.zeros((batch, b), f32) for _, b in shapes]
    dxs = [np.zeros((batch, a), f32) for a, _ in shapes]
    xb = np.array(X[:batch], dtype=f32)  # copies: the gather writes into these
    yb = np.array(y[:batch], dtype=np.int64)
    alpha, inv_n = f32(0.01), f32(1.0 / batch)
    beta1, beta2 = f32(0.9), f32(0.999)
    inf, tiny = f32(np.inf), f32(np.finfo(f32).tiny)
    no_weights, no_targets = np.empty(0, np.float32), np.empty((0, 0), np.float32)
    n, last = len(X), len(shapes) - 1
    rule = Adam(1e-3)
    adam_scalars, sgd_scalars = np.zeros(8), np.zeros(8)  # device scalars, as fastnet's arena
    adam_scalars[0], sgd_scalars[0] = 1e-3, 0.01
    norm_sq = np.zeros(1)

    def step() -> float:
        loss = float("nan")
        inp = xb
        for W, b, h, act in zip(Ws, bs, hs, acts):
            k.matmul(inp, W, h)
            if elementwise:
                k.bias_act(h, b, act, alpha)
            inp = h
        if elementwise:
            loss = k.softmax_xent(hs[-1], yb, no_targets, dzs[-1], inv_n, True, no_weights,
                                  f32(0)) / batch
        dy = dzs[-1]
        for i in range(last, -1, -1):
            dz = dy
            if elementwise:
                if acts[i] == LINEAR:
                    dy.sum(axis=0, out=dbs[i])
                else:
                    k.act_backward_bias(hs[i], dy, acts[i], alpha, dzs[i], dbs[i])
                    dz = dzs[i]
            k.matmul((xb if i == 0 else hs[i - 1]).T, dz, dWs[i])
            if i:
                k.matmul(dz, Ws[i].T, dxs[i])
                dy = dxs[i]
        if optimizer == "adam":
            k.advance_scalars(adam_scalars, norm_sq, *rule.scalar_constants())
            k.adam_update(params, grads, m1, m2, adam_scalars, beta1, beta2, f32(0), 0, inf, tiny)
        elif optimizer == "sgd":
            k.advance_scalars(sgd_scalars, norm_sq, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            k.sgd_update(params, grads, sgd_scalars, f32(0), 0, inf, tiny)
        return loss

    def epoch() -> float:
        order = rng.permutation(n)
        losses = []
        for lo in range(0, n - batch + 1, batch):
            if gather:
                idx = order[lo : lo + batch]
                # a permutation: in range. mode="raise" would make np.take buffer `out` (4x slower)
                np.take(X, idx, axis=0, out=xb, mode="wrap")
                np.take(y, idx, out=yb, mode="wrap")
            losses.append(step())
        return float(np.mean(losses))

    return epoch


def _framework_epoch(
    model: Any, backend: Any, X: np.ndarray, y: np.ndarray, batch: int
) -> Callable[[], Any]:
    return model.epoch_runner(X, y, batch)  # the default step: fused on numba


def floor_groups(
    X: np.ndarray, y: np.ndarray, sizes: Sequence[int], batch: int, model_for: Callable[[str], Any]
) -> dict[str, list[Contestant]]:
    """The stripped-loop variants next to the floor and the framework (numba, Adam and SGD).
    ``model_for(optimizer_name)`` builds the framework's model on the numba backend."""
    from fastnet.bench.peers import matmul_only_epoch

    from fastnet.backends import get_backend

    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    be = get_backend("numba")
    variants: dict[str, dict[str, Any]] = {
        "stripped: matmuls + loop": dict(gather=False, elementwise=False, optimizer=None),
        "stripped: + row gather": dict(gather=True, elementwise=False, optimizer=None),
        "stripped: + fused elementwise": dict(optimizer=None),
        "stripped: + SGD update": dict(optimizer="sgd"),
        "stripped: + Adam update": dict(optimizer="adam"),
    }
    from fastnet.kernels.numba_cpu import matmul

    floor = matmul_only_epoch(np, sizes, len(X), batch, np.float32, matmul=matmul)
    contestants = [Contestant("matmul-only-numba-fp32", floor)]
    contestants += [
        Contestant(name, stripped_epoch(X, y, sizes, batch, **kw)) for name, kw in variants.items()
    ]
    for opt in ("adam", "sgd"):
        run = _framework_epoch(model_for(opt), be, X, y, batch)
        contestants.append(Contestant(f"fastnet-numba-fused-fp32 ({opt})", run))
    title = f"floor breakdown {'-'.join(map(str, sizes))} batch {batch} (numba, CPU)"
    return {title: contestants}
