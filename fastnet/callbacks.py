"""Training callbacks, the hooks ``fit`` calls: ``EarlyStopping``, ``ModelCheckpoint``,
``ReduceLROnPlateau``, ``CSVLogger``, ``TerminateOnNaN`` (learning-rate schedules live in
``fastnet.schedules``). Files are written by rank 0 only in data-parallel training."""

from __future__ import annotations

import contextlib
import csv
import difflib
import inspect
import math
import os
import warnings
from typing import IO, Any

from fastnet.backends import outside_fastnet
from fastnet.checkpoint import plain_json
from fastnet.metrics import ALIASES, higher_is_better, log_name
from fastnet.state import ORDER_KEY
from fastnet.validation import check_count, check_flag, check_number, is_real, keras_names


class History(dict):
    """Per-epoch log entries by name (``{"loss": [...], ...}``), as ``fit`` returns them and
    ``model.history`` keeps them; ``.history`` is the dict itself, ``.epoch`` the epochs'
    indices and ``.params`` fit's ``epochs``, ``steps`` and ``verbose``, as on Keras's."""

    first = 0  #: the first entry's epoch (a fit's ``initial_epoch``)
    params: dict[str, Any] = {}  # noqa: RUF012 (replaced, never changed)

    @property
    def epoch(self) -> list[int]:
        return list(range(self.first, self.first + len(self.get("loss", ()))))

    def copied(self) -> History:
        """A copy with lists of its own (and the same numbering)."""
        copy = History({key: list(values) for key, values in self.items()})
        copy.first, copy.params = self.first, dict(self.params)
        return copy

    @property
    def history(self) -> History:
        return self


class Callback:
    """Override any hook; ``on_epoch_end`` returns True to stop training.

    ``on_batch_begin``/``on_batch_end`` run around every step of the eager loop; when steps are
    captured (CUDA graphs) they run between replays, and a callback that overrides them makes
    each replay run one step (``steps_per_graph`` otherwise). ``fit`` calls them only
    for callbacks that override them, and sets ``model.steps_per_epoch`` before
    ``on_train_begin``. Batch logs hold ``batch`` (index) and ``size`` (rows)."""

    #: log entries this callback adds in ``on_epoch_end`` (others may monitor them)
    provides: tuple[str, ...] = ()

    @property
    def monitored(self) -> str | None:
        """The log entry this callback needs every epoch (checked before training)."""
        return None

    def check_logs(self, names: list[str]) -> None:
        """Before training (``fit`` calls it): raise ``ValueError`` if an entry this callback
        needs (``monitored``) is not among ``names``, those the epoch logs will hold, nor an
        alias of one (``val_acc``)."""
        if self.monitored is not None:
            _require(self, self.monitored, names, "monitors")

    def on_train_begin(self, model: Any) -> None:
        pass

    def on_epoch_begin(self, model: Any, epoch: int) -> None:
        pass

    def on_batch_begin(self, model: Any, batch: int) -> None:
        pass

    def on_batch_end(self, model: Any, batch: int, logs: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        return False

    def on_train_end(self, model: Any) -> None:
        pass


HOOKS = {
    "on_train_begin": ("model",),
    "on_epoch_begin": ("model", "epoch"),
    "on_batch_begin": ("model", "batch"),
    "on_batch_end": ("model", "batch", "logs"),
    "on_epoch_end": ("model", "epoch", "logs"),
    "on_train_end": ("model",),
}


#: Keras's newer names of the batch hooks
KERAS_NAMES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


class KerasStyle(Callback):
    """Adapts a callback with hooks that omit the model, as Keras's do (``on_epoch_end(epoch,
    logs=None)``): ``hooks`` maps each fastnet hook to the callback's method and whether it
    is Keras-style; the model is set as its ``model`` attribute first, as Keras does, and
    a Keras-style ``on_train_end(logs)`` gets the last epoch's logs, as Keras gives them."""

    def __init__(self, inner: Any, hooks: dict[str, tuple[str, bool]]) -> None:
        self.inner, self.hooks = inner, hooks
        self.last_logs: dict[str, float] = {}
        self.provides = tuple(getattr(inner, "provides", ()))  # log entries it adds
        for hook, (method, keras) in hooks.items():
            # Keras passes logs where fastnet's hook has none (on_epoch_begin): an empty dict
            logs = (
                keras
                and "logs" not in HOOKS[hook]
                and _accepts(getattr(inner, method), len(HOOKS[hook]))
            )
            setattr(self, hook, self._adapter(hook, method, keras, logs))

    def _adapter(self, hook: str, method: str, keras: bool, logs: bool) -> Any:
        def call(model: Any, *args: Any) -> Any:
            if hook == "on_epoch_end":
                self.last_logs = args[-1]
            try:
                self.inner.model = model
            except AttributeError:  # a function or a slotted object
                pass
            if not keras:
                return getattr(self.inner, method)(model, *args)
            last = self.last_logs if hook == "on_train_end" else {}
            getattr(self.inner, method)(*args, *((dict(last),) if logs else ()))
            return None  # (Keras ignores what a hook returns: model.stop_training stops)

        return call

    def set_params(self, **params: Any) -> None:
        """Keras's ``params`` (``epochs``, ``steps``, ``verbose``) on the callback."""
        with contextlib.suppress(AttributeError):  # (a function or a slotted object)
            self.inner.params = params

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        """Keeps the epoch's logs (for ``on_train_end``); replaced by the callback's own."""
        self.last_logs = logs
        return False


class EpochFunction(Callback):
    """A plain function ``f(epoch, logs)`` called after every epoch; a true result stops."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        return bool(self.fn(epoch, logs))


def _accepts(fn: Any, n_args: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(n_args))
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): trust it
        return True
    return True


def _keras_style(method: Any, hook: str) -> bool:
    """Whether ``method`` is a Keras hook (without the model): a first parameter named
    ``model`` says fastnet's, a ``logs`` where Keras has it Keras's (with a default, as
    ``on_epoch_end(epoch, logs=None)``, or where fastnet's hook has no logs, as
    ``on_epoch_begin(epoch, logs)``), else the number of arguments it takes. Raises
    ``TypeError`` for neither."""
    try:
        params = list(inspect.signature(method).parameters.values())
    except ValueError:  # no signature (a builtin)
        params = []
    if params and params[0].name == "model" and _accepts(method, len(HOOKS[hook])):
        return False
    keras_args = len(HOOKS[hook]) - 1
    ours = "logs" in HOOKS[hook]  # whether fastnet's hook passes logs too
    at = keras_args - 1 if ours else keras_args  # Keras's logs position
    logs = params[at] if len(params) > at and params[at].name == "logs" else None
    keras = _accepts(method, keras_args) or (not ours and _accepts(method, keras_args + 1))
    if logs is not None and (logs.default is not logs.empty or not ours) and keras:
        return True
    if _accepts(method, len(HOOKS[hook])):
        return False
    if _accepts(method, keras_args):
        return True
    wanted = ", ".join(HOOKS[hook])
    raise TypeError(
        f"callback hook {getattr(method, '__qualname__', hook)} must take ({wanted}) or, "
        f"Keras-style, ({', '.join([*(a for a in HOOKS[hook][1:] if a != 'logs'), 'logs=None'])})"
    )


def as_callbacks(items: Any) -> list[Callback]:
    """``fit``'s callbacks (a list, one callback or None) as fastnet ``Callback`` objects,
    every hook's signature checked before training: fastnet hooks (with the model),
    Keras-style hooks (without it, ``logs=None``; ``on_train_batch_end`` for ``on_batch_end``)
    and plain functions ``f(epoch, logs)``. Raises ``TypeError`` naming the callback and hook."""
    found: list[Callback] = []
    names = [*HOOKS, *KERAS_NAMES]
    one = callable(items) or any(callable(getattr(items, h, None)) for h in names)
    if not one and (isinstance(items, str | bytes) or not hasattr(items or (), "__iter__")):
        raise TypeError(f"callbacks must be a list of callbacks (or one), got {items!r}")
    for cb in [items] if one else list(items or ()):
        if isinstance(cb, type):
            raise TypeError(f"callbacks are instances: pass {cb.__name__}(...), not the class")
        methods = {KERAS_NAMES.get(h, h): h for h in names if callable(getattr(cb, h, None))}
        _warn_of_unknown_hooks(cb, names)
        if not methods:
            if not callable(cb) or not _accepts(cb, 2):
                raise TypeError(
                    f"callbacks must be Callback objects or functions f(epoch, logs), got {cb!r}"
                )
            found.append(EpochFunction(cb))
            continue
        hooks = {
            hook: (method, _keras_style(getattr(cb, method), hook))
            for hook, method in methods.items()
            if getattr(type(cb), method, None) is not getattr(Callback, method, None)
        }  # (hooks not overridden stay Callback's)
        adapted = any(keras or method != hook for hook, (method, keras) in hooks.items())
        found.append(KerasStyle(cb, hooks) if adapted or not isinstance(cb, Callback) else cb)
    return found


def _warn_of_unknown_hooks(cb: Any, names: list[str]) -> None:
    """A warning for each ``on_...`` method of a user's class that fit never calls: a typo
    (``on_epoch_ends``) or Keras's evaluate and predict hooks (``on_test_end``)."""
    for klass in type(cb).__mro__:
        if klass.__module__.split(".")[0] in ("fastnet", "keras", "tf_keras", "tensorflow"):
            continue
        for name, value in vars(klass).items():
            if not (name.startswith("on_") and name not in names and callable(value)):
                continue
            close = difflib.get_close_matches(name, names, 1, cutoff=0.85)  # (a typo's)
            hint = f": did you mean {close[0]}?" if close else ""
            if name.startswith(("on_test_", "on_predict_")):
                hint = ": Keras's evaluate and predict hooks have no fastnet counterpart"
            if not hint:  # (a helper method of its own, as on_improvement)
                continue
            warnings.warn(
                f"callback {type(cb).__name__}.{name} is no hook fit calls{hint}",
                UserWarning,
                stacklevel=outside_fastnet(),
            )


def _require(callback: Callback, name: str, names: list[str], needs: str) -> str:
    """``name`` as the logs hold it among ``names`` (``fastnet.metrics.log_name``); else a
    ``ValueError`` naming the callback, the entry and the valid names."""
    found = log_name(name, names)
    if found is None:
        validated = any(n.startswith("val_") for n in names)
        hint = "" if validated else "; val_* needs validation_data or validation_split"
        raise ValueError(
            f"{type(callback).__name__} {needs} {name!r}, which the epoch logs will not hold; "
            f"valid names: {', '.join(names)}{hint} (a callback that adds an entry names it in "
            "its provides)"
        )
    return found


class Monitor(Callback):
    """A callback that follows ``monitor`` epoch to epoch: ``mode`` "min", "max" or "auto"
    (max where ``fastnet.metrics.higher_is_better``: accuracy, R2, F1, AUC, ...; a name of
    no known direction is refused before training); a change by more than ``min_delta`` is an
    improvement."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a log entry's name (a str), got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.min_delta = monitor, abs(check_number(min_delta, "min_delta"))
        higher = higher_is_better(monitor) if mode == "auto" else None
        self.mode = mode if higher is None else "max" if higher else "min"

    @property
    def monitored(self) -> str | None:
        return self.monitor

    def check_logs(self, names: list[str]) -> None:
        super().check_logs(names)
        self._check_mode()

    def _check_mode(self) -> None:
        """ "auto" left for a name of no known direction (after its check: a typo) is refused,
        as Keras 3 does: it was minimised, and a score's worst epoch kept."""
        if self.mode == "auto" and self.monitored is not None:
            raise ValueError(
                f"{type(self).__name__}: mode='auto' cannot tell whether a higher or a lower "
                f"{self.monitor!r} is better: pass mode='max' or mode='min'"
            )

    def on_train_begin(self, model: Any) -> None:
        self._check_mode()
        self.best = math.inf if self.mode == "min" else -math.inf

    def _improved(self, logs: dict[str, float]) -> bool:
        """Whether ``monitor`` improved in ``logs`` (then it is the new ``best``)."""
        value = float(logs[_require(self, self.monitor, list(logs), "monitors")])
        gain = self.best - value if self.mode == "min" else value - self.best
        if gain > self.min_delta:
            self.best = value
        return gain > self.min_delta


class EarlyStopping(Monitor):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.
    ``restore_best_weights``: at the end of training (stopped or not, as Keras 3 and
    scikit-learn's early stopping do; not after a divergence, which restores its own), the
    state of the best epoch comes back (weights, optimizer state, buffers; the epoch count,
    data order and dropout streams go on). Defaults differ from Keras's (``patience=0``,
    ``restore_best_weights=False``): fastnet waits 3 epochs and keeps the best weights.
    As Keras's: with ``baseline`` the patience runs until an epoch beats it too; epochs
    before ``start_from_epoch`` (0-based) are not watched; ``verbose=1`` prints the stop."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        *keras_order: Any,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        verbose: int = 0,
    ) -> None:
        named = dict(
            min_delta=min_delta,
            mode=mode,
            restore_best_weights=restore_best_weights,
            baseline=baseline,
            start_from_epoch=start_from_epoch,
            verbose=verbose,
        )
        if keras_order:  # (fastnet's older order; Keras's differs: said, read as before)
            min_delta, mode, restore_best_weights, baseline, start_from_epoch, verbose = (
                _older_order(keras_order, named)
            )
        self.patience = check_count(patience, "patience")
        super().__init__(monitor, mode, min_delta)
        self.restore_best_weights = check_flag(restore_best_weights, "restore_best_weights")
        self.baseline = None if baseline is None else check_number(baseline, "baseline")
        self.start_from_epoch = check_count(start_from_epoch, "start_from_epoch")
        self.verbose = check_count(verbose, "verbose")

    def on_train_begin(self, model: Any) -> None:
        super().on_train_begin(model)
        self.best_state: dict | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.at_best = False  # (whether the model holds the best epoch's state: restored)
        carried = self.__dict__.pop("_carried", None)
        if carried is not None:  # (a previous run's counters: ``continue_from``)
            self.best, self.wait, self.at_best, state = carried
            if self.restore_best_weights:
                self.best_state = model.get_state() if self.at_best else state

    def progress(self) -> dict:
        """Where the last ``fit`` left the counters (the CLI saves them with its checkpoint):
        the ``monitor``, its ``best`` value, the epochs ``wait``-ed since, ``at_best``, whether
        the model's state is that best epoch's (restored at the end, or the last), and where
        it is not, the best epoch's ``state`` (``restore_best_weights``; else None)."""
        if not hasattr(self, "wait"):
            raise RuntimeError("EarlyStopping.progress: no fit has run with this callback")
        state = None if self.at_best else self.best_state
        return {
            "monitor": self.monitor,
            "best": self.best,
            "wait": self.wait,
            "at_best": self.at_best,
            "state": state,
        }

    def continue_from(self, progress: dict) -> None:
        """Start the next ``fit`` where ``progress`` (``progress()``'s dict, of this monitor)
        left off, as the CLI's ``--resume`` does: the best value to beat and the epochs waited
        since it go on, and the best epoch's state is the one restored (the model's own where
        ``at_best``, else ``progress["state"]``, if any)."""
        if progress.get("monitor") != self.monitor:
            raise ValueError(
                f"EarlyStopping.continue_from: progress of {progress.get('monitor')!r}, "
                f"this callback monitors {self.monitor!r}"
            )
        best = progress["best"]  # (inf where no epoch was watched: progress() gives it)
        if not is_real(best) or math.isnan(best):
            raise ValueError(f"progress['best'] must be a number, got {best!r}")
        state = progress.get("state")
        if state is not None and not isinstance(state, dict):
            raise TypeError(f"progress['state'] must be a model state (a dict), got {state!r}")
        self._carried = (
            best,
            check_count(progress["wait"], "progress['wait']"),
            check_flag(progress["at_best"], "progress['at_best']"),
            state,
        )

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        if epoch < self.start_from_epoch:
            self.at_best = False
            return False
        improved = self._improved(logs)
        self.at_best = self._is_best(logs, improved)
        if self.restore_best_weights and self.at_best:
            self.best_state = model.get_state()
        if improved:  # (short of a baseline: the patience runs, but no stop, as Keras)
            self.wait = 0 if self._beats_baseline() else self.wait + 1
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            against = "" if self.baseline is None else f" (baseline {self.baseline:g})"
            model.stop_reason = (
                f"early stopping: {self.monitor} did not improve for "
                f"{self.patience} epochs (best {self.best:.4f}){against}"
            )
            _keras_line(self.verbose, epoch, "early stopping", blank=False)
            return True
        return False

    def _beats_baseline(self) -> bool:
        """Whether the best value beats ``baseline`` by ``min_delta`` (no baseline: yes)."""
        if self.baseline is None:
            return True
        gain = self.baseline - self.best if self.mode == "min" else self.best - self.baseline
        return gain > self.min_delta

    def _is_best(self, logs: dict[str, float], improved: bool) -> bool:
        """Whether this epoch's state is the one to restore (an improvement by min_delta)."""
        return improved

    def on_train_end(self, model: Any) -> None:
        if self.best_state is not None and not model.diverged:  # with restore_best_weights
            going_on = (ORDER_KEY, "stream/")
            model.set_state(
                {k: v for k, v in self.best_state.items() if not k.startswith(going_on)}
            )
            self.at_best = True


_EARLY_STOPPING_DEFAULTS = (0.0, "auto", True, None, 0, 0)


def _older_order(given: tuple, named: dict[str, Any]) -> tuple:
    """EarlyStopping's arguments after ``patience`` given by position, in fastnet's older
    order (``named``'s), with a FutureWarning: Keras's order is another."""
    if len(given) > len(named):
        raise TypeError(f"EarlyStopping takes at most {len(named) + 2} positional arguments")
    values = list(named.values())
    for i, (name, value) in enumerate(zip(named, given)):
        if values[i] != _EARLY_STOPPING_DEFAULTS[i]:
            raise TypeError(f"EarlyStopping got {name} twice (by position and by name)")
        values[i] = value
    warnings.warn(
        f"EarlyStopping's arguments after patience by position are read in fastnet's older "
        f"order ({', '.join(list(named)[: len(given)])}), and will be refused: Keras's order "
        "is (monitor, min_delta, patience, ...), so name them, e.g. "
        "EarlyStopping('val_loss', patience=5, min_delta=0.001)",
        FutureWarning,
        stacklevel=outside_fastnet(),
    )
    return tuple(values)


def _main_rank() -> bool:
    from fastnet.distributed import is_main

    return is_main()


def _keras_line(verbose: int, epoch: int, text: str, *, blank: bool = True) -> None:
    """Print Keras's verbose line of a callback (``Epoch 3: ...``), on the main rank only."""
    if verbose and _main_rank():
        start = "\n" if blank else ""
        print(f"{start}Epoch {epoch + 1}: {text}")


class ModelCheckpoint(Monitor):
    """Save the model after each epoch (or only when ``monitor`` improved, with
    ``save_best_only``). ``path`` may hold ``{epoch}`` and log keys, e.g.
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"`` (keys and formats are checked before training);
    ``.safetensors`` paths save that format, with ``model.metadata``, the epoch and its logs.
    The best value is kept across fits, as Keras's (a fine-tune does not overwrite a better
    file); ``initial_value_threshold`` (Keras's) is the best to beat at the first fit, e.g. a
    resumed run's best ``val_loss``. Writes are atomic and the folder is checked when training
    starts; weights holding NaN or inf (``on_divergence="ignore"``) are not saved: a warning
    says so."""

    @keras_names(filepath="path")
    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        *,
        mode: str = "auto",
        initial_value_threshold: float | None = None,
    ) -> None:
        check_flag(save_weights_only, "save_weights_only")  # (Keras's: the files hold it all)
        super().__init__(monitor, mode, 0.0)
        self.path = os.fspath(path)
        self.save_best_only = check_flag(save_best_only, "save_best_only")
        if isinstance(verbose, bool):  # (fastnet's order before 2026-12-03 had it third)
            raise TypeError(
                f"verbose must be 0 or 1, got {verbose} (ModelCheckpoint(path, monitor, verbose, "
                f"save_best_only), Keras's order: save_best_only={verbose} goes by name)"
            )
        self.verbose = check_count(verbose, "verbose")
        self.saved: list[str] = []
        threshold = initial_value_threshold
        self.initial_value_threshold = (
            None if threshold is None else check_number(threshold, "initial_value_threshold")
        )

    @property
    def monitored(self) -> str | None:
        return self.monitor if self.save_best_only else None

    def check_logs(self, names: list[str]) -> None:
        """Also the keys of ``path`` and their formats (on 0.0 for every log entry)."""
        super().check_logs(names)
        try:
            self.path.format(epoch=1, **_aliased(dict.fromkeys(names, 0.0)))
        except KeyError as exc:
            _require(self, str(exc.args[0]), names, f"path {self.path!r} uses")
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            msg = f"ModelCheckpoint path {self.path!r} is not a valid template: {exc}"
            raise ValueError(msg) from None
        from fastnet.checkpoint import CHECKPOINT_SUFFIXES

        sample = self.path.format(epoch=1, **_aliased(dict.fromkeys(names, 0.0)))
        suffix = os.path.splitext(sample)[1]  # (before training changes anything)
        if suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ValueError(
                f"ModelCheckpoint path {self.path!r}: unknown checkpoint extension "
                f"{suffix!r}; use .npz or .safetensors"
            )

    def on_train_begin(self, model: Any) -> None:
        from fastnet.checkpoint import check_checkpoint_path

        static = self.path.replace("{", "").replace("}", "")
        folder = os.path.dirname(self.path)
        if folder and "{" not in folder and _main_rank():
            try:
                os.makedirs(folder, exist_ok=True)  # missing folders are created
            except FileExistsError:
                pass  # a file where a folder should be: check_checkpoint_path says so
            except OSError as exc:
                raise type(exc)(
                    f"ModelCheckpoint path {self.path!r}: cannot create its folder "
                    f"{folder!r} ({exc.strerror or exc})"
                ) from None
        if "{" not in folder and _main_rank():  # (the rank that creates it and writes)
            check_checkpoint_path(static, "ModelCheckpoint")
        model.get_config()  # a model that cannot be saved says so now, not after an epoch
        plain_json(model.metadata, "model.metadata")  # (saved with every checkpoint)
        if not hasattr(self, "best"):  # Keras's: the best so far, across fits (a fine-tune's)
            super().on_train_begin(model)
            if self.initial_value_threshold is not None:
                self.best = self.initial_value_threshold

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        best = getattr(self, "best", None)
        if self.save_best_only and not self._improved(logs):
            _keras_line(self.verbose, epoch, f"{self.monitor} did not improve from {best:.5f}")
            return False
        path = self.path.format(epoch=epoch + 1, **_aliased(logs))
        weights = [p.value for layer in model.layers for p in layer.parameters()]
        if not all(model.backend.all_finite(w) for w in weights):  # (the same on every rank)
            warnings.warn(
                f"ModelCheckpoint: epoch {epoch + 1}'s weights hold NaN or inf values: "
                f"{path!r} not saved",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        if _main_rank():
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            kept = {k: v for k, v in model.metadata.items() if not _log_like(k)}
            logs = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
            model.save(path, extra={**kept, **logs})  # (classes, features kept; no old logs)
        gain = (
            self.save_best_only and f"{self.monitor} improved from {best:.5f} to {self.best:.5f}, "
        )
        _keras_line(self.verbose, epoch, f"{gain or ''}saving model to {path}")
        self.saved.append(path)
        return False


def _aliased(logs: dict[str, Any]) -> dict[str, Any]:
    """``logs`` with their aliases (``val_acc``) as keys too."""
    return {**{a: logs[n] for a, n in ALIASES.items() if n in logs}, **logs}


class ReduceLROnPlateau(Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by
    ``min_delta`` for ``patience`` epochs, down to ``min_lr``; wait ``cooldown`` epochs after.
    Per-layer optimizers are reduced alike, each down to ``min_lr`` (one below it is kept)."""

    def __init__(  # (Keras's order of arguments)
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        self.factor = check_number(factor, "factor", 0, 1, "low high")
        self.min_lr = check_number(min_lr, "min_lr", 0)
        self.patience = check_count(patience, "patience")
        self.cooldown = check_count(cooldown, "cooldown")
        self.verbose = check_count(verbose, "verbose")
        super().__init__(monitor, mode, min_delta)

    def on_train_begin(self, model: Any) -> None:
        super().on_train_begin(model)
        self.wait = self.cooling = 0

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        improved = self._improved(logs)
        if self.cooling:
            self.cooling -= 1
        if improved:
            self.wait = 0
        elif not self.cooling:
            self.wait += 1
            if self.wait >= self.patience:  # each optimizer above min_lr (Keras's rule; a
                for opt in _optimizers(model):  # per-layer lr below it is never raised)
                    if opt.lr > self.min_lr:
                        opt.set_scheduled_lr(max(opt.lr * self.factor, self.min_lr, 1e-12))
                self.wait, self.cooling = 0, self.cooldown
                lr = model.optimizer.lr
                _keras_line(
                    self.verbose, epoch, f"ReduceLROnPlateau reducing learning rate to {lr}."
                )
        return False


def _log_like(key: str) -> bool:
    """Whether a metadata key is an epoch's log a checkpoint saved (a loaded model's)."""
    return key in ("epoch", "loss", "seconds", "lr", "accuracy") or key.startswith("val_")


def _optimizers(model: Any) -> list[Any]:
    """The model's optimizer and every per-layer one, once each."""
    found = [model.optimizer] + [layer.optimizer for layer in model.layers if layer.optimizer]
    return list({id(o): o for o in found}.values())


class CSVLogger(Callback):
    """Append each epoch's logs (and the learning rate) as a CSV row to ``path``, its
    ``epoch`` column the 0-based epoch index (Keras's; 1-based in fastnet before 2026-12-02, so
    a resumed run appending to such a file repeats one number); ``append`` keeps an existing
    file (the header is written once)."""

    @keras_names(filename="path")
    def __init__(self, path: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        if not isinstance(separator, str) or len(separator) != 1 or separator in '\r\n"':
            raise ValueError(f"separator must be one character (not a quote), got {separator!r}")
        self.path, self.separator = os.fspath(path), separator  # (Keras's order)
        self.append = check_flag(append, "append")
        self.file: IO[str] | None = None
        self.names: list[str] = []

    def check_logs(self, names: list[str]) -> None:
        """Also that ``path`` is no folder and its folder no file (before training changes
        anything; a missing folder another callback may create is left to training)."""
        self.names = list(names)  # (every entry an epoch may hold: a column each)
        folder = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path) or (os.path.exists(folder) and not os.path.isdir(folder)):
            from fastnet.checkpoint import check_writable

            check_writable(self.path, "CSVLogger")

    def on_train_begin(self, model: Any) -> None:
        from fastnet.checkpoint import check_writable

        check_writable(self.path, "CSVLogger")
        self.keys: list[str] | None = None
        if not _main_rank():
            return
        exists = self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if exists:
            with open(self.path, newline="") as f:
                self.keys = next(csv.reader(f, delimiter=self.separator), None)
        self.file = open(self.path, "a" if self.append else "w", newline="")  # noqa: SIM115

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        if self.file is None:
            return False
        row = {"epoch": epoch, **logs}
        writer = csv.writer(self.file, delimiter=self.separator)
        if self.keys is None:
            self.keys = [*row, *(k for k in self.names if k not in row)]
            writer.writerow(self.keys)
        lost = [k for k in row if k not in self.keys]
        if lost and not getattr(self, "warned", False):  # (an appended file's header)
            self.warned = True
            warnings.warn(
                f"CSVLogger: {self.path}'s header lacks {lost}: not written", stacklevel=2
            )
        writer.writerow([row.get(k, "") for k in self.keys])
        self.file.flush()
        return False

    def on_train_end(self, model: Any) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class TerminateOnNaN(Callback):
    """Stop training as soon as the epoch loss is NaN or infinite (with
    ``on_divergence="ignore"``; the default policy already restores and stops)."""

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> bool:
        if math.isfinite(logs.get("loss", 0.0)):
            return False
        model.stop_reason = f"TerminateOnNaN: loss became {logs['loss']} in epoch {epoch + 1}"
        return True
