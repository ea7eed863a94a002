"""CUDA-graph training for the cupy backend: one training step is captured once and replayed for
every full batch, removing per-kernel launch overhead (the cost that dominates small MLPs).

The replayed step reads its batch from fixed device buffers (filled by a gather before each
replay), accumulates loss and correct counts on the device, and takes Adam's step count from a
device counter, so replays compute exactly what eager steps would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastnet.layers import Activation, Dense
from fastnet.losses import SoftmaxCrossEntropy
from fastnet.optimizers import Adam, Optimizer


class GraphedTrainer:
    """Runs ``Sequential`` epochs on the cupy backend with a captured CUDA graph per step."""

    def __init__(self, model: Any, batch_size: int) -> None:
        backend = model.backend
        if not backend.name.startswith("cupy"):
            raise ValueError(f"cuda_graph=True needs the cupy backend, not {backend.name!r}")
        if not isinstance(model.loss, SoftmaxCrossEntropy):
            raise ValueError("cuda_graph=True supports the SoftmaxCrossEntropy loss only")
        unsupported = [
            type(layer).__name__
            for layer in model.layers
            if not isinstance(layer, (Dense, Activation))
        ]
        if unsupported:
            raise ValueError(
                f"cuda_graph=True supports Dense and activation layers only; "
                f"got {', '.join(unsupported)} (use cuda_graph=False)"
            )
        if any(layer.optimizer is not None for layer in model.layers):
            raise ValueError("cuda_graph=True needs one model-wide optimizer (no per-layer ones)")
        steps = {p.step for p in model.parameters()}
        if len(steps) != 1:
            raise ValueError("cuda_graph=True needs all parameters at the same step count")
        if backend._gemm is None:
            raise RuntimeError(f"cuda_graph=True needs direct cuBLAS calls: {backend._gemm_name}")
        self.model, self.backend, self.batch_size = model, backend, batch_size
        xp = self.xp = backend.xp
        dtype = model.dtype
        self.stream = xp.cuda.Stream(non_blocking=True)
        with backend.device, self.stream:
            self.xb = xp.empty((batch_size, model.input_dim), dtype=dtype)
            self.yb = xp.empty((batch_size,), dtype=np.int64)
            self.dlogits = xp.empty((batch_size, model.output_dim), dtype=dtype)
            self.loss_sum = xp.zeros((), dtype=dtype)
            self.correct = xp.zeros((), dtype=np.uint64)
            self.t = xp.full((1,), steps.pop(), dtype=np.int64)
            self.adam_scalars = {dtype.name: xp.zeros(2, dtype=dtype)}
        self.graph: Any = None
        self.captured_config: dict | None = None
        self.replays = 0

    def _step(self, n: int) -> None:
        model, backend = self.model, self.backend
        xb, yb, dlogits = self.xb[:n], self.yb[:n], self.dlogits[:n]
        logits = model.forward(xb, training=True)
        backend.softmax_xent(logits, yb, dlogits, loss_out=self.loss_sum, loss_scale=1.0)
        backend.count_correct(logits, yb, out=self.correct)
        model.backward(dlogits)
        opt: Optimizer = model.optimizer
        if isinstance(opt, Adam):
            backend.k.adam_scalars(
                self.t, self.adam_scalars[model.dtype.name], opt.lr, opt.beta1, opt.beta2, opt.eps
            )
        backend.graph_adam_scalars = self.adam_scalars
        try:
            model.apply_gradients()
        finally:
            backend.graph_adam_scalars = None

    def _capture(self) -> None:
        params = self.model.parameters()
        self.captured_config = self.model.optimizer.get_config()
        self.stream.begin_capture()
        try:
            self._step(self.batch_size)
        finally:
            self.graph = self.stream.end_capture()
        for p in params:  # capture recorded the step without running it
            p.step -= 1

    def run_epoch(
        self, Xd: Any, yd: Any, order_rng: Any, shuffle: bool = True, progress: Any = None
    ) -> tuple[Any, Any]:
        backend, xp, bs = self.backend, self.xp, self.batch_size
        params = self.model.parameters()
        n = Xd.shape[0]
        if self.captured_config != self.model.optimizer.get_config():
            self.graph = None  # hyperparameters are baked into the graph: capture again
        with backend.device, self.stream:
            self.loss_sum.fill(0)
            self.correct.fill(0)
            self.t.fill(params[0].step)
            order = backend.permutation(order_rng, n) if shuffle else xp.arange(n)
            for lo in range(0, n, bs):
                idx = order[lo : lo + bs]
                nb = len(idx)
                xp.take(Xd, idx, axis=0, out=self.xb[:nb])
                xp.take(yd, idx, axis=0, out=self.yb[:nb])
                if nb == bs and self.graph is None and params[0].step > 0:
                    self._capture()
                if nb == bs and self.graph is not None:
                    self.graph.launch(self.stream)
                    self.replays += 1
                    for p in params:
                        p.step += 1
                else:
                    self._step(nb)
                if progress is not None:
                    progress(nb)
        self.stream.synchronize()
        return self.loss_sum, self.correct
