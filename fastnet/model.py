"""``Sequential``: a stack of layers with a loss and an optimizer, trained by mini-batches."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastnet.backends import Backend, get_backend
from fastnet.callbacks import Callback
from fastnet.layers import Layer
from fastnet.losses import Loss, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy, get_loss
from fastnet.optimizers import Optimizer, get_optimizer
from fastnet.parameter import Parameter
from fastnet.validation import (
    check_dtype,
    check_features,
    check_positive_int,
    check_targets,
)

DIVERGENCE_POLICIES = ("restore", "raise", "ignore")


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Sequential:
    """Layers applied in order; ``fit`` trains them on ``(X, y)``.

    >>> model = Sequential([Dense(256, "relu"), Dense(10)], optimizer=Adam(1e-3), backend="numba")
    >>> model.fit(X, y, epochs=10, batch_size=128, validation_data=(Xv, yv))
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        loss: str | Loss = "softmax_cross_entropy",
        optimizer: str | Optimizer = "adam",
        *,
        backend: str | Backend | None = None,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError("layers must be a non-empty sequence of fastnet Layer objects")
        self.layers = layers
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer)
        self.backend = get_backend(backend)
        self.dtype = check_dtype(dtype)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.input_dim: int | None = None
        self.history: dict[str, list[float]] = {}
        self.stop_reason: str | None = None
        self.streamed = False  # whether the last fit streamed its data from host memory
        self.loss.build(self.backend)

    # ------------------------------------------------------------------ structure
    @property
    def built(self) -> bool:
        return self.input_dim is not None

    @property
    def output_dim(self) -> int:
        return self.layers[-1].output_dim

    def build(self, input_dim: int) -> Sequential:
        """Create the parameters for inputs of width ``input_dim`` (``fit`` does it if needed)."""
        width = check_positive_int(input_dim, "input_dim")
        for layer in self.layers:
            width = layer.build(width, self.backend, self.dtype, self._rng)
        self.input_dim = input_dim
        return self

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def summary(self) -> str:
        lines = [f"Sequential on {self.backend.name} ({self.dtype})"]
        for i, layer in enumerate(self.layers):
            n = sum(int(np.prod(p.value.shape)) for p in layer.parameters())
            lines.append(f"  {i}: {layer!r} -> {layer.output_dim}  params={n}")
        lines.append(f"  loss={self.loss!r} optimizer={self.optimizer!r}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ one step
    def forward(self, x: Any, training: bool = False) -> Any:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dout: Any) -> None:
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            dout = self.layers[i].backward(dout, need_dx=i > 0)

    def apply_gradients(self) -> None:
        backend = self.backend
        for layer in self.layers:
            optimizer = layer.optimizer or self.optimizer
            for param in layer.parameters():
                optimizer.update(param, backend)

    def train_step(self, xb: Any, yb: Any) -> tuple[Any, Any]:
        """Forward, backward and update on one batch; returns (loss, correct count) on device."""
        logits = self.forward(xb, training=True)
        loss, dlogits = self.loss(logits, yb)
        correct = self.loss.count_correct(logits, yb)
        self.backward(dlogits)
        self.apply_gradients()
        return loss, correct

    # ------------------------------------------------------------------ training
    def _prepare(self, X: Any, y: Any, name: str = "X", on_device: bool = True) -> tuple[Any, Any]:
        Xd = check_features(X, name, self.backend, self.dtype, self.input_dim, on_device)
        if not self.built:
            self.build(Xd.shape[1])
        integer = isinstance(self.loss, SoftmaxCrossEntropy)
        yname = name.replace("X", "y")
        yd = check_targets(
            y, yname, Xd.shape[0], self.output_dim, self.backend, self.dtype, integer, on_device
        )
        return Xd, yd

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        callbacks: Sequence[Callback] = (),
        verbose: int = 1,
        on_divergence: str = "restore",
        cuda_graph: bool = False,
    ) -> dict[str, list[float]]:
        """Train for ``epochs`` passes over ``(X, y)`` in shuffled mini-batches.

        Returns the history: per-epoch ``loss``, ``accuracy`` (running, training mode),
        ``val_loss``/``val_accuracy`` when ``validation_data`` is given, and ``seconds``.
        A NaN/inf loss restores the weights from the start of that epoch and stops
        (``on_divergence="restore"``), or also raises ``TrainingDivergedError`` ("raise").
        On ``KeyboardInterrupt`` the weights of the last finished epoch are restored and the
        interrupt is re-raised; ``model.history`` keeps the finished epochs.
        ``cuda_graph=True`` (cupy backend) replays one captured CUDA graph per batch.
        """
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        if on_divergence not in DIVERGENCE_POLICIES:
            raise ValueError(
                f"on_divergence must be one of {DIVERGENCE_POLICIES}, got {on_divergence!r}"
            )
        n_bytes = int(np.prod(np.shape(X))) * self.dtype.itemsize
        self.streamed = not self.backend.fits_on_device(n_bytes)
        if self.streamed and cuda_graph:
            raise ValueError(
                "cuda_graph=True needs the training set resident on the GPU; it is "
                f"too large ({n_bytes / 2**30:.2f} GiB) and would be streamed"
            )
        Xd, yd = self._prepare(X, y, on_device=not self.streamed)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            val = self._prepare(*validation_data, name="X_val")
        n = Xd.shape[0]
        backend = self.backend
        order_rng = backend.rng(int(self._rng.integers(2**31)))
        self.stop_reason = None
        for key in ("loss", "accuracy", "seconds") + (("val_loss", "val_accuracy") if val else ()):
            self.history.setdefault(key, [])
        for cb in callbacks:
            cb.on_train_begin(self)

        from tqdm.auto import tqdm

        run_epoch = self.run_epoch
        if self.streamed:
            from fastnet.streaming import run_epoch_streamed

            host_rng = np.random.default_rng(int(self._rng.integers(2**31)))

            def run_epoch(Xd, yd, bs, rng, shuffle, progress):  # noqa: ANN001
                return run_epoch_streamed(self, Xd, yd, bs, host_rng, shuffle, progress)

        if cuda_graph:
            from fastnet.cuda_graph import GraphedTrainer

            trainer = GraphedTrainer(self, batch_size)

            def run_epoch(Xd, yd, bs, rng, shuffle, progress):  # noqa: ANN001
                return trainer.run_epoch(Xd, yd, rng, shuffle, progress)

        for epoch in range(epochs):
            for cb in callbacks:
                cb.on_epoch_begin(self, epoch)
            snapshot = self.get_state()
            start = time.perf_counter()
            bar = tqdm(
                total=n,
                disable=verbose != 1,
                leave=False,
                unit="sample",
                desc=f"epoch {epoch + 1}/{epochs}",
                mininterval=0.5,
            )
            try:
                loss_sum, correct_sum = run_epoch(
                    Xd, yd, batch_size, order_rng, shuffle, bar.update
                )
            except KeyboardInterrupt:
                bar.close()
                self.set_state(snapshot)
                self.stop_reason = (
                    f"interrupted in epoch {epoch + 1}; weights of the last finished epoch restored"
                )
                raise
            bar.close()
            backend.synchronize()
            seconds = time.perf_counter() - start
            logs = {"loss": float(loss_sum) / n, "seconds": seconds}
            logs["accuracy"] = float(correct_sum) / n if correct_sum is not None else float("nan")
            if not np.isfinite(logs["loss"]) and on_divergence != "ignore":
                self.set_state(snapshot)
                self.stop_reason = (
                    f"loss became {logs['loss']} in epoch {epoch + 1}; weights "
                    f"from the start of that epoch restored (try a lower lr)"
                )
                if on_divergence == "raise":
                    raise TrainingDivergedError(self.stop_reason)
                warnings.warn(self.stop_reason, RuntimeWarning, stacklevel=2)
                break
            if val is not None:
                logs["val_loss"], logs["val_accuracy"] = self._evaluate_device(*val)
            for key, value in logs.items():
                self.history.setdefault(key, []).append(value)
            if verbose:
                print(self._epoch_line(epoch + 1, epochs, logs), flush=True)
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(self, epoch, logs)) or stop
            if stop:
                self.stop_reason = (
                    self.stop_reason or f"stopped by callback after epoch {epoch + 1}"
                )
                break
        for cb in callbacks:
            cb.on_train_end(self)
        return self.history

    def run_epoch(
        self,
        Xd: Any,
        yd: Any,
        batch_size: int,
        order_rng: Any,
        shuffle: bool = True,
        progress: Any = None,
    ) -> tuple[Any, Any]:
        """One pass over device-resident, validated data; returns the summed loss and correct
        count (on the device). ``fit`` wraps this with validation, history and callbacks."""
        backend = self.backend
        n = Xd.shape[0]
        order = backend.permutation(order_rng, n) if shuffle else backend.xp.arange(n)
        loss_sum: Any = 0.0
        correct_sum: Any = None
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            loss, correct = self.train_step(backend.take_rows(Xd, idx), backend.take_rows(yd, idx))
            loss_sum = loss_sum + loss * len(idx)
            if correct is not None:
                correct_sum = correct if correct_sum is None else correct_sum + correct
            if progress is not None:
                progress(len(idx))
        return loss_sum, correct_sum

    def _epoch_line(self, epoch: int, epochs: int, logs: dict[str, float]) -> str:
        parts = [
            f"epoch {epoch:>3}/{epochs}",
            f"loss {logs['loss']:.4f}",
            f"acc {logs['accuracy']:.4f}",
        ]
        if "val_loss" in logs:
            parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_accuracy']:.4f}"]
        parts += [f"{logs['seconds']:.2f}s", f"backend {self.backend.name}"]
        return "  ".join(parts)

    # ------------------------------------------------------------------ inference
    def _batched_outputs(self, Xd: Any, batch_size: int = 8192) -> Any:
        xp = self.backend.xp
        outs = [
            xp.array(self.forward(Xd[lo : lo + batch_size], training=False), copy=True)
            for lo in range(0, Xd.shape[0], batch_size)
        ]
        return outs[0] if len(outs) == 1 else xp.concatenate(outs)

    def _evaluate_device(self, Xd: Any, yd: Any) -> tuple[float, float]:
        outputs = self._batched_outputs(Xd)
        loss, _ = self.loss(outputs, yd)
        correct = self.loss.count_correct(outputs, yd)
        acc = float(correct) / Xd.shape[0] if correct is not None else float("nan")
        return float(loss), acc

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError("the model is not built yet: call fit() or build(input_dim) first")

    def predict_raw(self, X: Any) -> np.ndarray:
        """Raw outputs (logits) as a NumPy array."""
        self._require_built()
        Xd = check_features(X, "X", self.backend, self.dtype, self.input_dim)
        return self.backend.to_numpy(self._batched_outputs(Xd))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (NumPy) for classification losses."""
        self._require_built()
        Xd = check_features(X, "X", self.backend, self.dtype, self.input_dim)
        return self.backend.to_numpy(self.loss.predict_output(self._batched_outputs(Xd)))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class indices for classifiers, raw outputs otherwise (NumPy)."""
        if isinstance(self.loss, SoftmaxCrossEntropy):
            return self.predict_raw(X).argmax(axis=1)
        if isinstance(self.loss, SigmoidBinaryCrossEntropy):
            return (self.predict_raw(X) > 0).astype(np.int64)
        return self.predict_raw(X)

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """Mean loss and accuracy (NaN where undefined) on ``(X, y)``."""
        self._require_built()
        Xd, yd = self._prepare(X, y)
        loss, acc = self._evaluate_device(Xd, yd)
        return {"loss": loss, "accuracy": acc}

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Copies of every parameter, optimizer slot, step count and layer buffer (on device)."""
        xp = self.backend.xp
        state: dict[str, Any] = {}
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                state[f"param/{i}/{p.name}"] = xp.array(p.value, copy=True)
                state[f"step/{i}/{p.name}"] = p.step
                for key, slot in p.state.items():
                    state[f"slot/{i}/{p.name}/{key}"] = xp.array(slot, copy=True)
            for key, buf in layer.state_buffers().items():
                state[f"buffer/{i}/{key}"] = xp.array(buf, copy=True)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Write values from ``get_state`` (or a checkpoint) into the live arrays, in place."""
        backend = self.backend
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                p.value[...] = backend.asarray(state[f"param/{i}/{p.name}"])
                p.step = int(state.get(f"step/{i}/{p.name}", 0))
                prefix = f"slot/{i}/{p.name}/"
                p.state = {
                    k[len(prefix) :]: backend.asarray(v, p.value.dtype).copy()
                    for k, v in state.items()
                    if k.startswith(prefix)
                }
            for key, buf in layer.state_buffers().items():
                buf[...] = backend.asarray(state[f"buffer/{i}/{key}"])

    def to(self, backend: str | Backend) -> Sequential:
        """Return a copy of this model (weights and optimizer state) on another backend."""
        from fastnet.checkpoint import model_from_config

        clone = model_from_config(self.get_config(), backend=backend)
        if self.built:
            clone.build(self.input_dim)
            clone.set_state(
                {
                    k: self.backend.to_numpy(v) if not isinstance(v, int) else v
                    for k, v in self.get_state().items()
                }
            )
        clone.history = {k: list(v) for k, v in self.history.items()}
        return clone

    def get_config(self) -> dict[str, Any]:
        return {
            "layers": [layer.get_config() for layer in self.layers],
            "loss": self.loss.name,
            "optimizer": self.optimizer.get_config(),
            "dtype": self.dtype.name,
            "seed": self.seed,
            "input_dim": self.input_dim,
        }

    def save(self, path: str) -> None:
        """Save architecture, weights and optimizer state to a ``.npz`` (atomic write)."""
        from fastnet.checkpoint import save_model

        save_model(self, path)

    def __repr__(self) -> str:
        return self.summary()


__all__ = ["Sequential", "TrainingDivergedError"]
