"""Where a CPU training epoch goes beyond its matmuls: the framework against a stripped loop.

The stripped loop is the least code that can train the MLP with the numba kernels: no layers,
no wrappers, no checks, all parameters in one flat arena updated by a single optimizer call.
Parts can be switched off, so timing the variants side by side (``fastnet bench --suite floor``)
prices each part of the step: the row gather, the fused elementwise kernels, the optimizer. Its
matmuls, and the floor's, go through the numba kernels' GEMM (NumPy's OpenBLAS, see
``kernels/numba_blas.py``), as the framework's do: a second BLAS thread pool would spin against
the first.
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

    get_backend("numba")  # applies the backend's threading settings
    loop = _StrippedLoop(X, y, sizes, batch, elementwise, optimizer, seed)
    return lambda: loop.epoch(gather)


class _StrippedLoop:
    """The stripped training loop: a flat arena of a ReLU MLP and the numba kernels called
    directly, without fastnet's layers, model or step objects."""

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sizes: Sequence[int],
        batch: int,
        elementwise: bool,
        optimizer: str | None,
        seed: int,
    ) -> None:
        from fastnet.kernels import numba_cpu

        from fastnet.optimizers import Adam

        f32 = np.float32
        self.k, self.X, self.y, self.batch = numba_cpu, X, y, batch
        self.elementwise, self.optimizer = elementwise, optimizer
        self.rng = np.random.default_rng(seed)
        shapes = list(zip(sizes[:-1], sizes[1:]))
        total = sum(a * b + b for a, b in shapes)
        self.params, self.grads = np.zeros(total, f32), np.zeros(total, f32)
        self.m1, self.m2 = np.zeros(total, f32), np.zeros(total, f32)
        self._views(shapes)
        self.acts = [RELU] * (len(shapes) - 1) + [LINEAR]
        self.hs = [np.empty((batch, b), f32) for _, b in shapes]
        self.dzs = [np.zeros((batch, b), f32) for _, b in shapes]
        self.dxs = [np.zeros((batch, a), f32) for a, _ in shapes]
        self.xb = np.array(X[:batch], dtype=f32)  # copies: the gather writes into these
        self.yb = np.array(y[:batch], dtype=np.int64)
        self.alpha, self.inv_n = f32(0.01), f32(1.0 / batch)
        self.no_weights, self.no_targets = np.empty(0, f32), np.empty((0, 0), f32)
        self.rule = Adam(1e-3)
        self.scalars = np.zeros(8)  # device scalars, as fastnet's arena keeps them
        self.scalars[0] = 1e-3 if optimizer == "adam" else 0.01
        self.norm_sq = np.zeros(2)  # [squared norm, non-finite count]

    def _views(self, shapes: list[tuple[int, int]]) -> None:
        self.Ws, self.bs, self.dWs, self.dbs = [], [], [], []
        offset = 0
        for a, b in shapes:
            W = self.params[offset : offset + a * b].reshape(a, b)
            W[:] = self.rng.standard_normal((a, b)) * np.sqrt(2.0 / a)
            self.Ws.append(W)
            self.dWs.append(self.grads[offset : offset + a * b].reshape(a, b))
            offset += a * b
            self.bs.append(self.params[offset : offset + b])
            self.dbs.append(self.grads[offset : offset + b])
            offset += b

    def forward_backward(self) -> float:
        k, loss, inp = self.k, float("nan"), self.xb
        for W, b, h, act in zip(self.Ws, self.bs, self.hs, self.acts):
            k.matmul(inp, W, h)
            if self.elementwise:
                k.bias_act(h, b, act, self.alpha)
            inp = h
        if self.elementwise:
            total = k.softmax_xent(
                self.hs[-1],
                self.yb,
                self.no_targets,
                self.dzs[-1],
                self.inv_n,
                True,
                self.no_weights,
                np.float32(0),
            )
            loss = total / self.batch
        dy = self.dzs[-1]
        for i in range(len(self.Ws) - 1, -1, -1):
            dz = dy
            if self.elementwise:
                if self.acts[i] == LINEAR:
                    dy.sum(axis=0, out=self.dbs[i])
                else:
                    k.act_backward_bias(
                        self.hs[i], dy, self.acts[i], self.alpha, self.dzs[i], self.dbs[i]
                    )
                    dz = self.dzs[i]
            k.matmul((self.xb if i == 0 else self.hs[i - 1]).T, dz, self.dWs[i])
            if i:
                k.matmul(dz, self.Ws[i].T, self.dxs[i])
                dy = self.dxs[i]
        return loss

    def update(self) -> None:
        f32, k = np.float32, self.k
        inf, tiny = f32(np.inf), f32(np.finfo(f32).tiny)
        if self.optimizer == "adam":
            k.advance_scalars(self.scalars, self.norm_sq, *self.rule.scalar_constants())
            k.adam_update(
                self.params,
                self.grads,
                self.m1,
                self.m2,
                self.scalars,
                f32(0.9),
                f32(0.999),
                f32(0),
                0,
                inf,
                None if "adam" in k.FLUSH_MODE_RULES else tiny,  # as the backend calls it
                f32(1.0 - 0.9),  # 1 - beta1, 1 - beta2 from float64 (the backend's)
                f32(1.0 - 0.999),
            )
        elif self.optimizer == "sgd":
            k.advance_scalars(self.scalars, self.norm_sq, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            k.sgd_update(self.params, self.grads, self.scalars, f32(0), 0, inf, tiny)

    def epoch(self, gather: bool) -> float:
        n, batch = len(self.X), self.batch
        order = self.rng.permutation(n)
        losses = []
        for lo in range(0, n - batch + 1, batch):
            if gather:
                idx = order[lo : lo + batch]
                # a permutation: in range. mode="raise" would make np.take buffer `out` (4x slower)
                np.take(self.X, idx, axis=0, out=self.xb, mode="wrap")
                np.take(self.y, idx, out=self.yb, mode="wrap")
            losses.append(self.forward_backward())
            self.update()
        return float(np.mean(losses))


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
