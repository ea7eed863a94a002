"""Learning-rate schedules as callbacks: ``LearningRateScheduler(fn)``, ``CosineDecay``,
``WarmupCosine`` (per step) and ``StepDecay``. Each sets the lr of the model's optimizer and of
every per-layer optimizer (scaled alike) at the start of an epoch, or of every step for
per-step schedules, from each optimizer's ``initial_lr``: its lr when a schedule first ran on
it, unless set by hand since (saved in checkpoints, so a fit resumed with ``initial_epoch``
follows the schedule uninterrupted training would)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

from fastnet.callbacks import Callback, _accepts, _keras_line, _optimizers
from fastnet.validation import check_count, check_number, is_real, keras_names


class _Schedule(Callback):
    """Maps progress in epochs (fractional for per-step schedules) to a multiple of the base
    learning rate; subclasses implement ``factor``."""

    per_step = False
    epoch = 0

    def on_train_begin(self, model: Any) -> None:
        self.optimizers = _optimizers(model)
        self.bases = [opt.schedule_base() for opt in self.optimizers]
        self.steps = max(1, int(getattr(model, "steps_per_epoch", 1)))

    def factor(self, progress: float, base: float) -> float:
        raise NotImplementedError

    def _set(self, progress: float) -> None:
        for opt, base in zip(self.optimizers, self.bases):
            opt.set_scheduled_lr(max(base * self.factor(progress, base), 1e-12))

    def on_epoch_begin(self, model: Any, epoch: int) -> None:
        self.epoch = epoch
        self._set(float(epoch))

    def on_batch_begin(self, model: Any, batch: int) -> None:
        if self.per_step:
            self._set(self.epoch + batch / self.steps)


class _EpochSchedule(_Schedule):
    on_batch_begin = Callback.on_batch_begin  # type: ignore[assignment]


class LearningRateScheduler(_EpochSchedule):
    """``fn(epoch, lr) -> new lr`` at the start of every epoch (Keras's signature; ``lr`` is
    the current learning rate, each per-layer optimizer's its own), or ``fn(epoch) -> lr``
    (Keras's older one: the model optimizer's lr; per-layer optimizers are scaled alike,
    keeping their ratio to it at the schedule's start)."""

    @keras_names(schedule="fn")
    def __init__(self, fn: Callable[..., float], verbose: int = 0) -> None:
        if not callable(fn):
            raise TypeError("LearningRateScheduler needs a function fn(epoch, lr) -> lr")
        self.fn, self.takes_lr = fn, _accepts(fn, 2)
        if not (self.takes_lr or _accepts(fn, 1)):
            raise TypeError("LearningRateScheduler's function takes fn(epoch, lr) or fn(epoch)")
        self.verbose = check_count(verbose, "verbose")

    def on_epoch_begin(self, model: Any, epoch: int) -> None:
        shared = None if self.takes_lr else self._number(self.fn(epoch), epoch)
        for opt, base in zip(self.optimizers, self.bases):
            if shared is None:
                lr = self._number(self.fn(epoch, opt.lr), epoch)
            elif opt is self.optimizers[0] or self.bases[0] <= 0:
                lr = shared
            else:  # the model optimizer's (first) lr, scaled to this one's
                lr = shared * base / self.bases[0]
            try:
                opt.set_scheduled_lr(lr)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"LearningRateScheduler's function, epoch {epoch}: {exc}"
                ) from None
        lr = self.optimizers[0].lr
        _keras_line(self.verbose, epoch, f"LearningRateScheduler setting learning rate to {lr}.")

    @staticmethod
    def _number(value: Any, epoch: int) -> float:
        """The function's result as a float (a 0-d array too; not a string or a bool)."""
        number = float(value) if is_real(value) else None
        kind = getattr(getattr(value, "dtype", None), "kind", "f")  # (Decimal: no dtype)
        plain = value is not None and not isinstance(value, (str, bytes, bool))
        if number is None and plain and kind in "iuf" and getattr(value, "ndim", 0) == 0:
            with contextlib.suppress(TypeError, ValueError):  # a 0-d array (NumPy's, CuPy's)
                number = float(value)
        if number is None:
            raise ValueError(
                f"LearningRateScheduler's function, epoch {epoch}: returned {value!r}, not a "
                "learning rate (a number)"
                + (": a path through it returns nothing" if value is None else "")
            )
        return number


class CosineDecay(_EpochSchedule):
    """Cosine decay from the initial lr to ``min_lr`` over ``epochs`` epochs (per epoch)."""

    def __init__(self, epochs: int, min_lr: float = 0.0) -> None:
        self.epochs = check_count(epochs, "epochs", 1)
        self.min_lr = check_number(min_lr, "min_lr", 0)

    def factor(self, progress: float, base: float) -> float:
        """(an lr below ``min_lr``, a per-layer optimizer's, stays: never raised)"""
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, self.epochs) / self.epochs))
        floor = min(self.min_lr, base)
        return (floor + (base - floor) * cosine) / base


class WarmupCosine(_Schedule):
    """Linear warmup from 0 over ``warmup_epochs``, then cosine decay to ``min_lr`` at
    ``epochs``; updated every step."""

    per_step = True

    def __init__(self, warmup_epochs: float, epochs: int, min_lr: float = 0.0) -> None:
        self.epochs = check_count(epochs, "epochs", 1)
        self.warmup = check_number(warmup_epochs, "warmup_epochs", 0, self.epochs, "high")
        self.min_lr = check_number(min_lr, "min_lr", 0)

    def factor(self, progress: float, base: float) -> float:
        if progress < self.warmup:
            return min((progress + 1 / self.steps) / self.warmup, 1.0)  # > 0 from step 1, <= 1
        span = max(self.epochs - self.warmup, 1e-12)
        done = min((progress - self.warmup) / span, 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * done))
        floor = min(self.min_lr, base)  # (an lr below min_lr is never raised)
        return (floor + (base - floor) * cosine) / base


class StepDecay(_EpochSchedule):
    """Multiply the lr by ``gamma`` every ``step`` epochs (PyTorch's ``StepLR``)."""

    def __init__(self, step: int, gamma: float = 0.1) -> None:
        self.step = check_count(step, "step", 1)
        self.gamma = check_number(gamma, "gamma", 0, 1, "low")

    def factor(self, progress: float, base: float) -> float:
        return self.gamma ** (int(progress) // self.step)
