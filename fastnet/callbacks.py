"""Training callbacks: hooks called by ``Sequential.fit``; ``EarlyStopping``."""

from __future__ import annotations

import math
from typing import Any


class Callback:
    """Override any hook; ``on_epoch_end`` returns True to stop training."""

    def on_train_begin(self, model: Any) -> None:
        pass

    def on_epoch_begin(self, model: Any, epoch: int) -> None:
        pass

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        return False

    def on_train_end(self, model: Any) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs;
    optionally restore the best weights seen."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(float(min_delta))
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.restore_best_weights = restore_best_weights

    def on_train_begin(self, model: Any) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_state: dict | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        if self.monitor not in logs:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r} but the epoch logs only "
                f"have {sorted(logs)}; pass validation_data or monitor='loss'"
            )
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_state = model.get_state()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            model.stop_reason = (
                f"early stopping: {self.monitor} did not improve for "
                f"{self.patience} epochs (best {self.best:.4f})"
            )
            return True
        return False

    def on_train_end(self, model: Any) -> None:
        if (
            self.restore_best_weights
            and self.best_state is not None
            and self.stopped_epoch is not None
        ):
            model.set_state(self.best_state)


class CosineDecay(Callback):
    """Cosine learning-rate decay of the model's optimizer over ``epochs`` epochs, from its
    initial lr down to ``min_lr`` (set at the start of every epoch)."""

    def __init__(self, epochs: int, min_lr: float = 0.0) -> None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr!r}")
        self.epochs, self.min_lr = epochs, float(min_lr)
        self.base_lr: float | None = None

    def on_train_begin(self, model: Any) -> None:
        if self.base_lr is None:
            self.base_lr = model.optimizer.lr

    def on_epoch_begin(self, model: Any, epoch: int) -> None:
        base = model.optimizer.lr if self.base_lr is None else self.base_lr
        progress = min(epoch, self.epochs) / self.epochs
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        model.optimizer.lr = max(self.min_lr + (base - self.min_lr) * cosine, 1e-12)
