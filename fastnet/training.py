"""The one training loop: ``fit`` = for each epoch, a *batch source* feeds a *step*.

Batch sources: ``ResidentBatches`` (data on the device, shuffled rows gathered per batch) and
``StreamedBatches`` (data on the host, gathered into a pinned buffer a chunk of batches at a
time). Steps: ``EagerStep`` (forward, fused loss, backward, one arena update) or the compiled step
a backend offers (``Backend.compile_step``; the cupy backend's CUDA graph). History, callbacks,
divergence and interrupt handling are written once, here. ``Sequential`` inherits ``Trainer``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from fastnet.backends import outside_fastnet
from fastnet.backends.graph_step import CaptureRequiredError, GraphedStep
from fastnet.backends.interop import host_array
from fastnet.backends.plan import OpsPlan
from fastnet.backends.report import record_kernels
from fastnet.callbacks import Callback, History, KerasStyle, _optimizers, as_callbacks
from fastnet.metrics import (
    call_metric,
    check_metric_names,
    check_metrics,
    confusion_matrix,
    macro_scores,
    metric_name,
    on_labels,
    regression_scores,
    regression_sums,
    top_k_correct,
)
from fastnet.revision import revision
from fastnet.validation import (
    as_input,
    check_finite,
    check_flag,
    check_number,
    check_positive_int,
    check_top_k,
    keras_x,
)

DIVERGENCE_POLICIES = ("restore", "raise", "ignore")
COMPILED_CHOICES = ("auto", True, False)


def _compiled_choice(compiled: bool | str, cuda_graph: bool | str | None) -> bool | str:
    """``fit``'s ``compiled`` argument, accepting the deprecated ``cuda_graph`` alias."""
    if cuda_graph is not None:
        warnings.warn(
            "fit(cuda_graph=...) is deprecated: use compiled=...",
            DeprecationWarning,
            stacklevel=outside_fastnet(),
        )
        compiled = cuda_graph
    if not any(compiled is c or compiled == c for c in COMPILED_CHOICES):
        raise ValueError(f"compiled must be 'auto', True or False, got {compiled!r}")
    return compiled


def _release_data(compiled: Any) -> None:
    for step, _ in compiled:
        if hasattr(step, "release_data"):
            step.release_data()


_BATCH_HOOKS = ("on_batch_begin", "on_batch_end")


def _overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` has its own ``hook`` (a method of its class, or one set on the
    instance, as ``KerasStyle`` does)."""
    own = getattr(callback, hook)
    return getattr(own, "__func__", own) is not getattr(Callback, hook)


class BatchSpec(NamedTuple):
    """What a step's batch buffers hold besides the features: the targets' trailing shape
    (``()`` for class indices, ``(k,)`` for one-hot/soft targets) and dtype, and whether rows
    carry weights."""

    target_shape: tuple[int, ...]
    target_dtype: str
    weighted: bool


@dataclass
class FitOptions:
    """``fit``'s keyword arguments, as given (checked by ``Trainer._prepare_fit``)."""

    epochs: int
    initial_epoch: int
    batch_size: int
    validation_data: Any
    validation_split: float
    shuffle: bool
    callbacks: Sequence[Any]
    metrics: Sequence[Any]
    verbose: int
    on_divergence: str
    compiled: bool | str
    cuda_graph: bool | str | None
    distributed: bool
    comm: str
    top_k: int | None
    sample_weight: Any
    class_weight: dict | None


@dataclass
class FitRun:
    """One ``fit`` call's checked inputs and settings, passed to the loop (not kept)."""

    X: Any
    y: Any
    weights: Any
    val: tuple[Any, ...] | None  # (X, y) or (X, y, row weights)
    streamed: bool
    compiled: bool | str
    group: Any
    epochs: int
    first: int  # the index of the first epoch (``initial_epoch``)
    callbacks: list[Callback]
    metrics: list[Callable[[np.ndarray, np.ndarray], float]]
    top_k: int | None
    verbose: int
    on_divergence: str
    log_names: list[str]
    #: batch logs' running loss all-reduced (every rank reads them; else none, data-parallel)
    global_batch_logs: bool = True
    history: History = field(default_factory=History)
    #: (model history, this call's) lengths per key before the last epoch's entries
    before_last: tuple[dict[str, int], dict[str, int]] = ({}, {})


@contextlib.contextmanager
def _abort_job_on_error(group: Any) -> Iterator[None]:
    """Data-parallel: a rank that fails, is interrupted (Ctrl-C) or exits aborts the whole job
    (naming itself) instead of leaving the other ranks waiting in a collective; an error every
    rank raises at the same point (``every_rank``: a refused compiled step, a divergence) is
    raised as it is."""
    try:
        yield
    except BaseException as exc:
        if group is not None and group.world_size > 1 and not getattr(exc, "every_rank", False):
            print(
                traceback.format_exc()
                + f"fastnet: rank {group.rank} of {group.world_size} failed in fit "
                f"({': '.join(filter(None, (type(exc).__name__, str(exc))))}); aborting the job",
                file=sys.stderr,
                flush=True,
            )
            group.abort(_exit_status(exc))
        raise


def _exit_status(exc: BaseException) -> int:
    """The job's status for a rank's ``exc``: Ctrl-C's 130, a ``sys.exit(n)``'s n (where its
    low byte, the status a process shows, is not 0), else 1."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    code = exc.code if isinstance(exc, SystemExit) else None
    return code if isinstance(code, int) and code % 256 else 1


def _top_k(top_k: int | None, classes: int) -> int:
    """The k of top-k accuracy for ``classes`` classes (0: not reported)."""
    return top_k if top_k is not None and 0 < top_k < classes else 0


_FIT_STARTS = threading.Lock()


@contextlib.contextmanager
def _one_fit_at_a_time(model: Any) -> Iterator[None]:
    """A fit's whole span: a second fit of the same model meanwhile (from one of its
    callbacks, or another thread) is refused before it changes anything."""
    mine = False
    try:
        with _FIT_STARTS:
            if model._in_fit:
                raise RuntimeError(
                    "this model is already in fit (called from one of its callbacks or another "
                    "thread): one fit at a time (a callback ends training by setting "
                    "model.stop_training = True; copy.deepcopy(model) trains a copy)"
                )
            mine = model._in_fit = True  # (mine first: Ctrl-C between them cannot lock it)
        yield
    finally:
        if mine:
            model._in_fit = False


@contextlib.contextmanager
def _joined(model: Any, group: Any) -> Iterator[None]:
    """A fit's span: the model's layers in the data-parallel ``group`` (None: one process; a
    synchronized BatchNorm1d then normalizes over the global batch), and its parameter groups
    kept (a layer's ``trainable`` set by a callback applies after the fit)."""
    for layer in model.layers:
        layer.join_group(group)
    model._fitting = True
    try:
        yield
    finally:
        model._fitting = False
        for layer in model.layers:
            layer.join_group(None)


def _rows(a: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a host or device array (CuPy takes NumPy indices too)."""
    return a[idx]


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""

    every_rank = True  # (the loss is the ranks' sum: all of them raise it)


class RanksDifferError(RuntimeError):
    """Data-parallel ranks' weights differ (found by all of them at once)."""

    every_rank = True


class RanksArgumentsDiffer(ValueError):
    """Data-parallel ranks were given other models or fit arguments (every rank alike)."""

    every_rank = True


class CompiledStepRefused(ValueError):
    """``compiled=True``, and no compiled step serves this model here (every rank alike)."""

    every_rank = True


def batch_bounds(n: int, batch_size: int, min_batch: int = 1) -> list[tuple[int, int]]:
    """``(lo, hi)`` row ranges of the mini-batches of one epoch. A last batch smaller than
    ``min_batch`` (BatchNorm needs 2 rows) is merged into the one before it."""
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_batch:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle (-1: the validation split) of a model whose data
    order has seed ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(epoch) + 1]).generate_state(1)[0])


class ResidentBatches:
    """Device-resident ``(X, y)``: each epoch a permutation on the device, one gather per batch
    (into the step's own input buffers when it has them)."""

    def __init__(self, X: Any, y: Any, backend: Any, shuffle: bool, w: Any = None) -> None:
        self.X, self.y, self.w, self.backend, self.shuffle = X, y, w, backend, shuffle
        self.rng: Any = None  # set by ``reseed`` before each epoch

    def reseed(self, seed: int) -> None:
        """Draw the next epoch's order from ``seed``."""
        if self.shuffle:
            self.rng = self.backend.reseeded(self.rng, seed)

    def order(self) -> Any:
        """The next epoch's row order on the device (a permutation when shuffling)."""
        n = self.X.shape[0]
        return self.backend.permutation(self.rng, n) if self.shuffle else self.backend.xp.arange(n)

    def epoch(
        self, bounds: Sequence[tuple[int, int]], step: Any, order: Any = None
    ) -> Iterator[tuple[Any, ...]]:
        """Batches of one epoch (rows ``order[lo:hi]``; ``order()`` if not given); runs on the
        caller's stream (``Backend.step_stream``), so the gathers are ordered with the steps
        that read them."""
        backend = self.backend
        if order is None:
            order = self.order()
        for lo, hi in bounds:
            idx = order[lo:hi]
            out = step.batch_buffers(hi - lo)
            if out is None:
                out = (None, None, None)
            xb = backend.take_rows(self.X, idx, out[0])
            yb = backend.take_rows(self.y, idx, out[1])
            wb = None if self.w is None else backend.take_rows(self.w, idx, out[2])
            yield xb, yb, wb


class StreamedBatches:
    """Host-resident ``(X, y)`` too large for the device: the epoch's shuffled rows are gathered
    into a pinned host buffer ``chunk_batches`` batches at a time and copied over in one
    transfer per chunk."""

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        backend: Any,
        shuffle: bool,
        w: np.ndarray | None = None,
        chunk_batches: int = 64,
        dtype: Any = None,
    ) -> None:
        self.X, self.y, self.w, self.backend, self.shuffle = X, y, w, backend, shuffle
        self.dtype = dtype  # the model's: rows are cast chunk by chunk
        self.rng: Any = None  # set by ``reseed`` before each epoch
        self.chunk_batches = chunk_batches

    def reseed(self, seed: int) -> None:
        """Draw the next epoch's order from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def epoch(
        self, bounds: Sequence[tuple[int, int]], step: Any, order: Any = None
    ) -> Iterator[tuple[Any, ...]]:
        """Batches of one epoch (``order``: a host permutation, drawn here if not given)."""
        backend, X, y = self.backend, self.X, self.y
        per = self.chunk_batches
        chunks = [bounds[i : i + per] for i in range(0, len(bounds), per)]
        rows = max(c[-1][1] - c[0][0] for c in chunks)
        dtype = self.dtype or X.dtype
        pinned_x = backend.pinned_empty((rows, X.shape[1]), dtype)
        pinned_y = backend.pinned_empty((rows,) + y.shape[1:], y.dtype)
        dev_x = backend.empty((rows, X.shape[1]), dtype)
        dev_y = backend.empty((rows,) + y.shape[1:], y.dtype)
        n = X.shape[0]
        if order is None:
            order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        copies: list[Any] = []  # the previous chunk's copies, perhaps still reading pinned_*
        for chunk in chunks:
            c0, c1 = chunk[0][0], chunk[-1][1]
            m = c1 - c0
            for copy in copies:
                if copy is not None:
                    copy.synchronize()
            if X.dtype == pinned_x.dtype and not isinstance(X, np.memmap):
                np.take(X, order[c0:c1], axis=0, out=pinned_x[:m], mode="clip")
            else:  # memory-mapped or another dtype: read only these rows, cast on the way
                pinned_x[:m] = X[order[c0:c1]]
            np.take(y, order[c0:c1], axis=0, out=pinned_y[:m], mode="clip")
            copies = [
                backend.copy_from_host(dev_x[:m], pinned_x[:m]),
                backend.copy_from_host(dev_y[:m], pinned_y[:m]),
            ]
            w = None if self.w is None else backend.asarray(self.w[order[c0:c1]])
            for lo, hi in chunk:
                wb = None if w is None else w[lo - c0 : hi - c0]
                yield dev_x[lo - c0 : hi - c0], dev_y[lo - c0 : hi - c0], wb


class EagerStep:
    """The model's step function run op by op: forward, fused loss, backward, one arena
    update. Loss and correct count accumulate on the device in ``totals``."""

    description = "eager"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.totals = model.backend.zeros((2,), np.float64)  # summed loss, correct count

    def batch_buffers(self, n: int) -> None:
        return None

    def begin_epoch(self) -> None:
        self.model.backend.fill(self.totals, 0.0)

    def refresh(self) -> None:
        """Batch callbacks ran: nothing to re-read (each step reads the model as it is)."""

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        self.model.arena.write_lr()  # host side: a schedule may have changed it
        self.model.train_step(xb, yb, wb, totals=self.totals)

    def end_epoch(self) -> tuple[Any, Any]:
        """The epoch's summed loss and correct count (None where the loss has no accuracy)."""
        totals = self.model.backend.to_numpy(self.totals)
        return totals[0], (totals[1] if self.model.loss.counts_correct else None)


def reduce_gradients(model: Any, comm: Any, share: float) -> None:
    """Each group's gradients scaled by this rank's ``share`` of the global batch (zeroed for
    none), then summed over the ranks: the full batch's mean gradient on every rank."""
    backend = model.backend
    for group in model.arena.trained:  # (frozen parameters' gradients go unused)
        if share:
            backend.scale(group.grads, share)
        else:
            backend.fill(group.grads, 0.0)
        backend.allreduce(comm, group.grads)


def distributed_step(
    model: Any, comm: Any, share: float, xb: Any, yb: Any, wb: Any, totals: Any
) -> None:
    """One data-parallel step on this rank's rows (none: only the all-reduce and update)."""
    reduce = functools.partial(reduce_gradients, model, comm, share)
    if xb.shape[0]:
        model.train_step(xb, yb, wb, totals, reduce)
    else:
        model.idle_step()
        reduce()
        model.arena.update()


class DistributedStep(EagerStep):
    """Data-parallel eager step: this rank's slice of each global batch, gradients scaled by
    its share of the batch and summed over ranks with one all-reduce per arena group, then the
    same update on every rank (so weights stay identical)."""

    description = "eager, data-parallel"

    def __init__(self, model: Any, comm: Any, global_sizes: Sequence[int]) -> None:
        super().__init__(model)
        self.comm, self.global_sizes = comm, list(global_sizes)
        self.description = f"eager, data-parallel over {comm.world_size} ranks ({comm.name})"

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self.batch_index = 0

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        model, n = self.model, xb.shape[0]
        share = n / self.global_sizes[self.batch_index]
        self.batch_index += 1
        model.arena.write_lr()
        distributed_step(model, self.comm, share, xb, yb, wb, self.totals)

    def end_epoch(self) -> tuple[Any, Any]:
        self.comm.allreduce(self.totals)  # a device array: NCCL reduces it where it lives
        return super().end_epoch()


class GraphedDistributedStep(GraphedStep):
    """Data-parallel captured step: this rank's rows of every full global batch replay one
    graph of the step function whose gradient all-reduce is inside it (NCCL on the GPU; its
    share of the batch baked in); other batches run ``distributed_step`` eagerly."""

    def __init__(self, model: Any, comm: Any, global_sizes: list, batch_size: int, spec: Any):
        from fastnet.distributed import rank_slice

        lo, hi = rank_slice(0, batch_size, comm.rank, comm.world_size)
        local_batch = hi - lo
        # one step per replay: a rank's rows of a batch are not a run of the epoch's order
        super().__init__(model, local_batch, spec, steps_per_graph=1)
        self.comm, self.global_sizes, self.global_batch = comm, global_sizes, batch_size
        self.full_share = local_batch / batch_size  # of a full global batch of batch_size rows
        self.reduce = functools.partial(reduce_gradients, model, comm, self.full_share)
        self.description = (
            f"captured graph, data-parallel over {comm.world_size} ranks ({comm.name}; the "
            "all-reduce inside the graph)"
        )
        self.eager_suffix = f", data-parallel over {comm.world_size} ranks ({comm.name})"

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self.batch_index = 0

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        n, global_n = xb.shape[0], self.global_sizes[self.batch_index]
        self.batch_index += 1
        if n == self.batch_size and global_n == self.global_batch:
            return super().__call__(xb, yb, wb)
        self.model.arena.write_lr()
        distributed_step(self.model, self.comm, n / global_n, xb, yb, wb, self.totals)

    def end_epoch(self) -> tuple[Any, Any]:
        self.backend.allreduce(self.comm, self.totals)
        return super().end_epoch()


_NOT_OPTIONS = ("self", "X", "y", "given_after_y")  # fit's arguments that are no FitOptions


def _refuse_positional(given_after_y: tuple) -> None:
    """The notebooks' ``fit(X, T, X_val, T_val)`` and Keras's ``fit(X, y, 32, 10)``, said."""
    if given_after_y:
        raise TypeError(
            f"fit takes X and y by position and the rest by name, got {len(given_after_y)} "
            "more: fit(X, y, epochs=..., batch_size=..., validation_data=(X_val, y_val))"
        )


def _quiet_floats() -> Any:
    """NumPy's floating-point warnings off where they are at their default ("warn"), so a
    diverging fit says so once, in fastnet's words; a user's ``np.seterr`` choice stays."""
    quiet: Any = {k: "ignore" for k, v in np.geterr().items() if v == "warn"}
    return np.errstate(**quiet)


def _check_in_order(cb: Callback, names: list[str], later: list[Callback]) -> None:
    """``cb``'s ``check_logs`` on the entries the logs hold when it runs (``names``); one
    that only a callback after it in the list adds is named as out of order."""
    try:
        cb.check_logs(names)
        return
    except ValueError:
        pass
    cb.check_logs(names + [name for x in later for name in x.provides])  # (missing: raises)
    after = ", ".join(type(getattr(x, "inner", x)).__name__ for x in later if x.provides)
    raise ValueError(
        f"{type(getattr(cb, 'inner', cb)).__name__} needs an entry that {after}, after it "
        "in callbacks, adds: list that one first (on_epoch_end runs them in order)"
    )


def _epochs_held(history: dict[str, list[float]]) -> int:
    return max(map(len, history.values()), default=0)


def _append_epoch(history: dict[str, list[float]], logs: dict[str, float]) -> None:
    """One epoch's ``logs`` appended; an entry an epoch lacks (no validation in that ``fit``,
    a callback's occasional score) is NaN there, so ``history[key][i]`` is always epoch i's."""
    held = _epochs_held(history)
    for key in logs:
        history.setdefault(key, [])
    for key, values in history.items():
        values.extend([math.nan] * (held - len(values)))
        values.append(logs.get(key, math.nan))


class Trainer:
    """``fit`` for a model that implements the methods at the end of this class (forward and
    backward, its step plan, state, data validation and build) and holds the attributes below;
    ``Sequential`` inherits it. Per-fit state is passed as arguments (``FitRun``), not kept."""

    backend: Any
    dtype: np.dtype
    loss: Any
    arena: Any
    layers: list
    history: History
    metadata: dict[str, Any]
    stop_reason: str | None
    streamed: bool
    step_description: str
    _compiled_steps: dict
    _plan_cache: tuple | None = None  # ``_inference_entry``'s
    _plan: Any = None
    optimizer: Any
    steps_per_epoch: int = 0
    rows_trained: int = 0  # rows the last epoch trained on (fewer if stopped in the epoch)
    stop_training: bool = False
    _order: np.ndarray
    _rng: np.random.Generator  # what ``build`` draws the initial weights from
    _inference_lock: Any  # layer-by-layer inference reuses the layers' buffers
    diverged: bool = False  # the last fit stopped on a NaN/inf loss
    _fitting = False  # inside fit: the parameter groups stay as they are
    _in_fit = False  # from fit's first check to its end

    # ------------------------------------------------------------------ one step
    def train_step(
        self,
        xb: Any,
        yb: Any,
        wb: Any = None,
        totals: Any = None,
        reduce: Callable[[], Any] | None = None,
    ) -> Any:
        """The training step, the one function eager and compiled steps run: forward, the
        loss (rows weighted by ``wb`` if given) with its gradient, backward, ``reduce()`` if
        given (data parallelism: the gradients' all-reduce), and one optimizer update, all on
        the device. Adds the batch's summed loss and correct count into the 2-element device
        array ``totals`` (a fresh one when None), which it returns."""
        if totals is None:
            totals = self.backend.zeros((2,), np.float64)
        with _quiet_floats():  # (divergence is fit's to report, once, clearly)
            logits = self.forward(xb, training=True)
            self.backward(self.loss.accumulate(logits, yb, wb, totals))
            if reduce is not None:
                reduce()
            self.arena.update()
        return totals

    # ------------------------------------------------------------------ the loop
    @keras_x
    def fit(
        self,
        X: Any,
        y: Any,
        *given_after_y: Any,
        epochs: int = 10,
        initial_epoch: int = 0,
        batch_size: int = 128,
        validation_data: tuple[Any, ...] | None = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        callbacks: Sequence[Any] = (),
        metrics: Sequence[Callable[[np.ndarray, np.ndarray], float]] = (),
        verbose: int = 1,
        on_divergence: str = "restore",
        compiled: bool | str = "auto",
        cuda_graph: bool | str | None = None,
        distributed: bool = False,
        comm: str = "mpi",
        top_k: int | None = 5,
        sample_weight: Any = None,
        class_weight: dict | None = None,
    ) -> dict[str, list[float]]:
        """Train for ``epochs`` passes over ``(X, y)`` in shuffled mini-batches; returns this
        call's history (``model.history`` keeps every epoch): ``loss``, ``accuracy``
        (classifiers), ``seconds``, ``lr`` and, on validation data (``validation_data``, ``(X,
        y)`` or ``(X, y, weights)``, or a seeded, stratified ``validation_split``, weights kept),
        ``val_loss`` with ``val_accuracy``, macro ``val_precision``/``_recall``/``_f1`` and
        ``val_top{k}_accuracy`` for softmax classifiers or ``val_mae``/``_rmse``/``_r2`` for
        regression, and each of ``metrics`` as ``val_<name>``: ``f(y_true, y_pred) -> float``
        on NumPy targets and, as Keras, ``predict_proba``'s outputs (``on_labels(f)``: labels).
        ``initial_epoch`` (Keras's) resumes: the first epoch's index, ``epochs`` the final one.
        Bad arguments raise before anything changes. A NaN/inf loss restores the last finite
        weights (lr too), stops (``on_divergence``: "raise" raises ``TrainingDivergedError``);
        Ctrl-C or an error (a callback's) restores the last finished epoch (lr too), re-raises.
        ``compiled``: "auto" runs the backend's compiled step (the step function captured in
        a CUDA graph on cupy, one fused JIT call on numba) when the model qualifies, True
        requires it, False forces eager steps; both compute the same (``step_description``:
        which ran, why; ``cuda_graph``: its old name). ``callbacks``: fastnet ``Callback``
        objects, Keras-style ones (no model) or ``f(epoch, logs)`` (true stops), checked.
        ``sample_weight``/``class_weight`` weight rows, normalised over the batch as in Keras.
        ``distributed=True`` (under ``mpirun``): data-parallel with one process's semantics
        (global ``batch_size``, all-reduced gradients over ``comm`` "mpi" or "nccl"), the same
        model, data and arguments on every rank (checked); Ctrl-C on a rank ends the job."""
        _refuse_positional(given_after_y)
        opts = FitOptions(**{k: v for k, v in locals().items() if k not in _NOT_OPTIONS})
        with _one_fit_at_a_time(self), self.backend.training():
            named = "features" in self.metadata
            with self._named_features(X):  # (kept only if the model then trains)
                run = self._prepare_fit(X, y, opts)  # nothing here changes the model
                drawn = self._rng.bit_generator.state  # (and whether this fit names features)
                unbuilt = None if self.built else (drawn, self.loss.width, not named)
                self.build(run.X.shape[1])  # (a built model: nothing; its width was checked)
            self._apply_trainable()
            if run.group is not None:
                self._broadcast_state(run.group)
            self.streamed, group = run.streamed, run.group
            with record_kernels(self.backend), _abort_job_on_error(group), _joined(self, group):
                return self._run_epochs(self._fit_runner(run, opts, unbuilt), run, unbuilt)

    def _run_epochs(self, run_epoch: Callable, run: FitRun, unbuilt: tuple | None) -> dict:
        """``_epochs``; on an error before any epoch finished (an ``on_train_begin``'s) a
        model this fit built (``unbuilt``) is unbuilt; compiled steps let go of the data."""
        try:
            return self._epochs(run_epoch, run)
        except TrainingDivergedError:
            raise  # (its own restore: the weights of the start, said in stop_reason)
        except BaseException as exc:
            if unbuilt is not None and not run.history.get("loss"):
                self._undo_build(unbuilt)
                what = "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
                self.stop_reason = f"{what} before an epoch finished; the model unbuilt"
            raise
        finally:  # cached compiled steps must not keep this fit's data on the device
            _release_data(self._compiled_steps.values())

    @contextlib.contextmanager
    def _named_features(self, X: Any) -> Iterator[None]:
        """A DataFrame's column names as ``metadata["features"]`` (where unset and unique):
        its validation frame, and later frames, are read by them; dropped on an error."""
        names = [str(c) for c in getattr(X, "columns", ())]
        named = "features" not in self.metadata and len(set(names)) == len(names) > 0
        if named:
            self.metadata["features"] = names
        try:
            yield
        except BaseException:
            if named:
                del self.metadata["features"]
            raise

    def _fit_runner(self, run: FitRun, opts: FitOptions, unbuilt: tuple | None) -> Callable:
        """The fit's epoch runner; where it is refused (``compiled=True`` and no compiled
        step) a model this fit built (``unbuilt``: what ``build`` drew from) is unbuilt."""
        data = (run.X, run.y, opts.batch_size, opts.shuffle, run.compiled, run.streamed)
        if self.arena.groups and not self.arena.trained:  # (as Keras warns)
            warnings.warn(
                "every layer is frozen (trainable=False): no parameter trains",
                stacklevel=outside_fastnet(),
            )
        try:
            return self._runner(*data, run.group, run.weights, run.global_batch_logs)
        except ValueError:
            if unbuilt is not None:
                self._undo_build(unbuilt)
            raise

    def _undo_build(self, unbuilt: tuple) -> None:
        """A model this fit built as it was: unbuilt, its draw undone, the DataFrame's feature
        names this fit took (``unbuilt``: the generator state, loss width, names taken) gone."""
        self._unbuild(*unbuilt[:2])
        if unbuilt[2]:
            self.metadata.pop("features", None)

    def _check_fit_arguments(self, opts: FitOptions) -> tuple[int, int]:
        """``fit``'s plain arguments, checked; returns ``(epochs, initial_epoch)``."""
        self._check_layers()
        epochs = check_positive_int(opts.epochs, "epochs")
        if opts.verbose not in (0, 1, 2):  # (False and True are 0 and 1)
            raise ValueError(f"verbose must be 0, 1 (a bar) or 2 (a line), got {opts.verbose!r}")
        check_flag(opts.shuffle, "shuffle")
        check_top_k(opts.top_k)
        first = opts.initial_epoch
        if not isinstance(first, (int, np.integer)) or isinstance(first, bool) or first < 0:
            raise ValueError(f"initial_epoch must be an integer >= 0, got {first!r}")
        if first >= epochs:
            raise ValueError(
                f"initial_epoch={first} leaves no epoch to run: epochs={epochs} is the final "
                f"epoch's index (Keras's meaning), e.g. epochs={first + epochs} for {epochs} more"
            )
        if check_positive_int(opts.batch_size, "batch_size") < self.min_batch_rows():
            raise ValueError(
                f"batch_size must be at least {self.min_batch_rows()} for this model "
                f"(BatchNorm1d normalizes over a batch's rows), got {opts.batch_size}"
            )
        if opts.on_divergence not in DIVERGENCE_POLICIES:
            raise ValueError(
                f"on_divergence must be one of {DIVERGENCE_POLICIES}, got {opts.on_divergence!r}"
            )
        return epochs, int(first)

    def _prepare_fit(self, X: Any, y: Any, opts: FitOptions) -> FitRun:
        """Every check of ``fit``'s arguments and data, changing nothing."""
        epochs, first = self._check_fit_arguments(opts)
        compiled = _compiled_choice(opts.compiled, opts.cuda_graph)
        hooks, metric_fns = as_callbacks(opts.callbacks), check_metrics(opts.metrics)
        X = as_input(self._named_columns(X, "X"), "X", self.backend)  # (lists converted once)
        n_bytes = int(np.prod(X.shape)) * self.dtype.itemsize
        streamed = isinstance(X, np.memmap) or not self.backend.fits_on_device(n_bytes)
        if streamed and compiled is True and not self.backend.compiled_takes_streamed:
            raise ValueError(
                "compiled=True needs the training set resident on the GPU; it is "
                f"too large ({n_bytes / 2**30:.2f} GiB) and would be streamed"
            )
        group, verbose = self._join_group(opts)
        world = 1 if group is None else group.world_size
        if opts.batch_size < self.min_batch_rows(world):
            raise ValueError(
                f"batch_size must be at least {self.min_batch_rows(world)} over {world} ranks: "
                f"BatchNorm1d normalizes over each rank's rows (synchronized=True: over all)"
            )
        seed = int(self._order[0])  # the data order's: rank 0's on every rank
        seed = seed if group is None else group.broadcast_object(seed)
        X, y, sample_weight, validation_data = self._split_validation(
            X, y, opts.sample_weight, opts.validation_data, opts.validation_split, seed
        )
        Xd, yd, val = self.validate_fit_data(X, y, validation_data, on_device=not streamed)
        labels = self.backend.to_numpy(yd) if opts.class_weight else None  # (as encoded:
        wd = self.validate_weights(  # class indices, not the names the model may take)
            sample_weight, opts.class_weight, labels, len(Xd), not streamed, Xd.shape[1]
        )
        if group is not None:
            self._check_same_run(group, opts)
            self._check_same_data(group, Xd, yd, *(() if wd is None else (wd,)), val)
        if metric_fns and val is None:
            raise ValueError(
                "metrics are computed on validation data: pass validation_data or validation_split"
            )
        width = self.output_width(Xd.shape[1])
        names = self._log_names(val is not None, opts.top_k, metric_fns, width)
        self._try_user_metrics(metric_fns, val, width)
        for i, cb in enumerate(hooks):  # (on_epoch_end runs them in order: entries as added)
            _check_in_order(cb, names + list(cb.provides), hooks[i + 1 :])
            names = names + list(cb.provides)
        data = (Xd, yd, wd, val, streamed, compiled, group, epochs, first)
        settings = (hooks, metric_fns, opts.top_k, verbose, opts.on_divergence, names)
        batch_logs = any(_overrides(cb, h) for cb in hooks for h in _BATCH_HOOKS)
        everywhere = group is None or not group.any(not batch_logs)  # (a collective a batch)
        return FitRun(*data, *settings, everywhere)

    def _check_same_run(self, group: Any, opts: FitOptions) -> None:
        """Data-parallel ranks run one training: the same model (architecture, loss,
        optimizer, dtype; the weights are rank 0's) and ``fit`` settings, compared with rank
        0's before any other collective (a mismatch corrupted the all-reduce or hung)."""
        try:
            config = self.get_config()
        except TypeError:  # (a class that would not load back: described by its repr)
            config = {
                "parts": [repr(x) for x in (*self.layers, self.loss)],
                "dtype": str(self.dtype),
            }
        config = {k: v for k, v in config.items() if k not in ("seed", "input_dim")}
        # (on_divergence: one rank's raise, another's restore hung the job)
        fit = (
            "epochs",
            "initial_epoch",
            "batch_size",
            "shuffle",
            "compiled",
            "top_k",
            "on_divergence",
        )
        mine = {"model": config, **{k: getattr(opts, k) for k in fit}}
        plain = lambda v: v.item() if hasattr(v, "item") else str(v)  # noqa: E731 (NumPy's)
        mine = json.loads(json.dumps(mine, default=plain))
        theirs = group.broadcast_object(mine)
        flags = np.array([mine[k] != theirs.get(k) for k in mine], np.float64)
        group.allreduce(flags)  # which differ on any rank: every rank names them
        differ = [k for k, flag in zip(mine, flags) if flag]
        if differ:
            raise RanksArgumentsDiffer(
                f"distributed=True: every rank runs the same training, but the ranks' {differ} "
                "differ (the model and fit's arguments must be the same on every rank)"
            )

    def _check_same_weights(self, group: Any, epoch: int) -> None:
        """After each data-parallel epoch the ranks' weights are equal, bit for bit (the same
        updates): a checksum compared with rank 0's catches a model changed on one rank."""
        xp = self.backend.xp
        mine = [float(xp.sum(g.values.astype(np.float64) ** 2)) for g in self.arena.groups]
        same = np.array_equal(mine, group.broadcast_object(mine), equal_nan=True)
        if group.any(not same):
            when = f"after epoch {epoch + 1}" if epoch >= 0 else "at the end of the fit"
            raise RanksDifferError(
                f"distributed=True: the ranks' weights differ {when} (this is rank "
                f"{group.rank}): something changed one rank's model or optimizer (a callback "
                "given to one rank only?)"
            )

    def _check_same_data(self, group: Any, *arrays: Any) -> None:
        """Data-parallel ranks each take their share of every batch of one training set: the
        same rows on every rank (row counts and a sample of rows, weighted by their place so
        that the order counts, compared with rank 0's)."""
        digest = []
        for a in arrays if arrays[-1] is not None else arrays[:-1]:
            for part in a if isinstance(a, tuple) else (a,):
                rows = np.linspace(0, len(part) - 1, min(len(part), 64)).astype(np.int64)
                sample = np.asarray(self.backend.to_numpy(part[rows]), np.float64)
                place = np.arange(1, len(rows) + 1).reshape(-1, *[1] * (sample.ndim - 1))
                digest.append((tuple(part.shape), float((sample * place).sum())))
        if group.any(digest != group.broadcast_object(digest)):
            raise ValueError(
                f"distributed=True: every rank passes the whole training (and validation) set "
                f"and trains on its share of each batch, but the ranks' data differ (rank "
                f"{group.rank} has shapes {[d[0] for d in digest]}): pass the same arrays"
            )

    def _join_group(self, opts: FitOptions) -> tuple[Any, int]:
        """The data-parallel communicator (None unless ``distributed``) and the verbosity
        (only rank 0 prints)."""
        if not opts.distributed:
            return None, opts.verbose
        from fastnet import distributed as dist

        comm = opts.comm
        on_gpu = self.backend.name.startswith("cupy")  # NCCL binds to the model's device
        placed = f"cupy:{self.backend.device_id}" if on_gpu else self.backend.name
        with self.backend.step_stream():
            group = dist.init(comm, backend=placed)
        return group, opts.verbose if dist.is_main() else 0

    def _split_validation(
        self, X: Any, y: Any, w: Any, validation_data: Any, fraction: float, seed: int
    ) -> tuple[Any, Any, Any, Any]:
        """Hold out ``fraction`` of the rows (stratified for classifiers): a shuffle by the
        data order's ``seed``, so every fit on the same data holds out the same rows."""
        if not fraction:
            return X, y, w, validation_data
        if validation_data is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        fraction = check_number(fraction, "validation_split", 0, 1, "low high")
        from fastnet.data import train_val_split

        y = as_input(y, "y", self.backend)
        labels = self.backend.to_numpy(y)
        if len(labels) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {len(labels)}")
        (train, _), (held, _) = train_val_split(
            np.arange(X.shape[0]),
            labels,
            fraction,
            epoch_seed(seed, -1),
            stratify=self.loss.classification,
        )
        if self.min_batch_rows() > max(len(train), 1):  # (BatchNorm1d: 2 rows a batch)
            raise ValueError(
                f"validation_split={fraction:g} leaves {len(train)} of X's {X.shape[0]} rows to "
                f"train; this model (BatchNorm1d) needs at least {self.min_batch_rows()}"
            )
        val: tuple[Any, ...] = (_rows(X, held), _rows(y, held))
        if w is not None:  # the held-out rows keep their weights, as Keras's split
            w = host_array(w, "sample_weight")
            if w.shape != (X.shape[0],):
                raise ValueError(
                    f"sample_weight must hold {X.shape[0]} numbers (one per row), got {w.shape}"
                )
            if w.dtype.kind in "biuf" and not w[held].any():
                raise ValueError(
                    f"the {len(held)} rows validation_split={fraction} holds out all have "
                    "sample_weight 0: pass validation_data, or other weights"
                )
            w, val = w[train], (*val, w[held])
        return _rows(X, train), _rows(y, train), w, val

    def _log_names(
        self, validated: bool, top_k: int | None, metrics: list, outputs: int
    ) -> list[str]:
        """The names an epoch's logs will hold (checked against callbacks' ``monitor``)."""
        names = ["loss", "seconds", "lr"] + (["accuracy"] if self.loss.counts_correct else [])
        if validated:
            builtin = self._metric_names(top_k, outputs)
            check_metric_names(metrics, builtin)
            names += [f"val_{key}" for key in [*builtin, *map(metric_name, metrics)]]
        return names

    def _epochs(self, run_epoch: Callable[..., tuple[Any, Any]], run: FitRun) -> dict:
        self.stop_reason, self.diverged = None, False
        self.stop_training = False  # Keras's: a callback sets it to stop (after its batch/epoch)
        if not self.history.get("loss"):  # (a loaded model's: numbered from initial_epoch)
            self.history.first = run.first
        for key in run.log_names:  # every entry listed, even if training stops at once
            run.history[key] = []
            self.history.setdefault(key, [math.nan] * _epochs_held(self.history))
        for cb in run.callbacks:
            if isinstance(cb, KerasStyle):  # (Keras's self.params: a ported callback reads it)
                cb.set_params(epochs=run.epochs, steps=self.steps_per_epoch, verbose=run.verbose)
            cb.on_train_begin(self)
        previous: dict[str, Any] | None = None
        previous_lrs: list = []
        for epoch in range(run.first, run.epochs):
            lrs = self._learning_rates()
            snapshot: dict | None = None
            try:  # Ctrl-C anywhere in the epoch (steps, checks, validation, callbacks) undoes it
                for cb in run.callbacks:
                    cb.on_epoch_begin(self, epoch)
                snapshot = self.get_state()
                logs = self._train_epoch(run_epoch, run, epoch, snapshot)
                if self._diverged(
                    run, epoch, logs["loss"], (snapshot, lrs), (previous, previous_lrs)
                ):
                    break
                previous, previous_lrs = snapshot, lrs
                stop = self._end_epoch(run, epoch, logs)
            except TrainingDivergedError:
                raise  # (on_divergence="raise": the last finite weights were restored)
            except BaseException as exc:  # Ctrl-C or an error (a callback's): the epoch undone
                self._set_learning_rates(lrs)  # (a schedule's or ReduceLROnPlateau's change)
                if snapshot is not None:
                    self._interrupted(run, epoch, snapshot, exc)
                raise
            if stop:
                self.stop_reason = (
                    self.stop_reason or f"stopped by callback after epoch {epoch + 1}"
                )
                break
        for cb in run.callbacks:
            cb.on_train_end(self)
        run.history.first = run.first
        run.history.params = dict(
            epochs=run.epochs, steps=self.steps_per_epoch, verbose=run.verbose
        )
        if run.group is not None:  # (an on_train_end restore on one rank: EarlyStopping's)
            self._check_same_weights(run.group, -1)
        return run.history

    def _diverged(self, run: FitRun, epoch: int, loss: float, now: tuple, before: tuple) -> bool:
        """A non-finite loss or state after epoch ``epoch``: the last good weights (and the
        learning rates then: ``now`` and ``before`` pair each epoch's snapshot with them)
        restored and ``stop_reason`` set (raised with ``on_divergence="raise"``); whether
        training stops."""
        broken = self._divergence(loss, run.group)
        if not broken or run.on_divergence == "ignore":
            return False
        half = getattr(self, "policy", None) == "mixed_float16"
        restored, undone = self._restore_last_good([now[0], before[0]], run.X, run.y, epoch)
        self._set_learning_rates(before[1] if undone else now[1])
        for history, lengths in zip((self.history, run.history), run.before_last):
            for key in list(history) if undone else ():  # (the epoch before: its entries go)
                del history[key][lengths.get(key, 0) :]
                if key not in lengths:
                    del history[key]
        self.stop_reason = (
            f"{broken} in epoch {epoch + 1}; {restored} (try a lower lr or smaller inputs"
            + (", or mixed_bfloat16: float16 holds values up to 65504)" if half else ")")
        )
        self.diverged = True
        if run.on_divergence == "raise":
            raise TrainingDivergedError(self.stop_reason)
        warnings.warn(self.stop_reason, RuntimeWarning, stacklevel=outside_fastnet())
        return True

    def _end_epoch(self, run: FitRun, epoch: int, logs: dict[str, float]) -> bool:
        """After an epoch's steps: validation, the epoch line, ``on_epoch_end``, the history;
        whether training stops (agreed over data-parallel ranks)."""
        if run.group is not None:
            self._average_buffers(run.group)
        if run.val is not None:
            Xv, yv, *wv = run.val  # (weights where validation_data has them)
            scores = self._evaluate_device(
                Xv, yv, run.top_k, run.group, run.metrics, weights=(wv or [None])[0]
            )
            logs.update({f"val_{key}": value for key, value in scores.items()})
        if run.verbose:
            print(self._epoch_line(epoch + 1, run.epochs, logs), flush=True)
        stop = False
        for cb in run.callbacks:  # callbacks may add entries (e.g. a validation score)
            stop = bool(cb.on_epoch_end(self, epoch, logs)) or stop
        stop = stop or bool(self.stop_training)
        if run.group is not None:  # a stop on one rank stops all (none waits forever)
            stop = run.group.any(stop)
            self._check_same_weights(run.group, epoch)
        ours, this_call = self.history, run.history  # (their lengths: a restore undoes it)
        run.before_last = (
            {k: len(v) for k, v in ours.items()},
            {k: len(v) for k, v in this_call.items()},
        )
        _append_epoch(self.history, logs)
        _append_epoch(run.history, logs)
        return stop

    def _learning_rates(self) -> list[tuple[Any, float, float | None]]:
        """Each optimizer with its ``lr`` and ``initial_lr`` (an undone epoch restores them)."""
        return [(opt, opt.lr, opt.initial_lr) for opt in _optimizers(self)]

    @staticmethod
    def _set_learning_rates(lrs: list[tuple[Any, float, float | None]]) -> None:
        for opt, lr, initial_lr in lrs:
            opt.set_scheduled_lr(lr)
            opt.initial_lr = initial_lr

    def _interrupted(self, run: FitRun, epoch: int, snapshot: dict, exc: BaseException) -> None:
        """Ctrl-C or an error in epoch ``epoch``: the state of the last finished epoch restored
        (where the device lets it: its own error may not), its learning rates already."""
        try:
            if run.group is None:  # (data-parallel jobs abort: a rank may wait on its peers)
                self.backend.synchronize()  # steps still queued must not land after it
            self.set_state(snapshot)
        except Exception:
            if isinstance(exc, KeyboardInterrupt):
                raise
            return
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
        self.stop_reason = (
            f"{what} in epoch {epoch + 1}; weights of the last finished epoch restored"
        )

    def _train_epoch(
        self, run_epoch: Callable[..., tuple[Any, Any]], run: FitRun, epoch: int, snapshot: dict
    ) -> dict[str, float]:
        """One epoch's steps with its progress bar (``snapshot``: restored where a capture
        turns out to be required)."""
        from tqdm.auto import tqdm

        n = self.rows_trained = run.X.shape[0]
        start = time.perf_counter()
        bar = tqdm(
            total=n,
            disable=run.verbose != 1,
            leave=False,
            unit="sample",
            desc=f"epoch {epoch + 1}/{run.epochs}",
            mininterval=0.5,
        )
        try:
            loss_sum, correct_sum = run_epoch(bar.update, run.callbacks)
        except CaptureRequiredError:
            self.backend.synchronize()  # (the step stream's queued updates land first)
            self.set_state(snapshot)  # this epoch's steps undone (in the first: nothing changed)
            raise
        finally:
            bar.close()
        self.backend.synchronize()
        rows = self.rows_trained  # fewer where a batch hook set stop_training
        logs = {
            "loss": float(loss_sum) / rows,
            "seconds": time.perf_counter() - start,
            "lr": self.optimizer.lr,
        }
        if correct_sum is not None:
            logs["accuracy"] = float(correct_sum) / rows
        if rows < n:
            self.stop_reason = f"stopped by callback in epoch {epoch + 1} after {rows} of {n} rows"
        return logs

    def epoch_runner(
        self,
        X: Any,
        y: Any,
        batch_size: int = 128,
        *,
        compiled: bool | str = "auto",
        cuda_graph: bool | str | None = None,
    ) -> Callable[..., tuple[Any, Any]]:
        """One shuffled training epoch of ``fit``'s loop as a callable returning the summed loss
        and correct count (data validated and placed once; benchmarks time it)."""
        batch_size = check_positive_int(batch_size, "batch_size")
        compiled = _compiled_choice(compiled, cuda_graph)
        Xd, yd, _ = self.validate_fit_data(X, y, None, on_device=True)
        if not self.built:
            self.build(Xd.shape[1])
        return self._runner(Xd, yd, batch_size, True, compiled, False)

    def _runner(
        self,
        Xd: Any,
        yd: Any,
        batch_size: int,
        shuffle: bool,
        compiled: bool | str,
        streamed: bool,
        group: Any = None,
        weights: Any = None,
        global_logs: bool = True,
    ) -> Callable[..., tuple[Any, Any]]:
        world = 1 if group is None else group.world_size
        batch_size = min(batch_size, max(Xd.shape[0], 1))  # (no step buffers past the data)
        source: ResidentBatches | StreamedBatches = (
            StreamedBatches(Xd, yd, self.backend, shuffle, weights, dtype=self.dtype)
            if streamed
            else ResidentBatches(Xd, yd, self.backend, shuffle, weights)
        )
        local = bounds = batch_bounds(Xd.shape[0], batch_size, self.min_batch_rows(world))
        spec = BatchSpec(tuple(yd.shape[1:]), str(yd.dtype), weights is not None)
        if group is None:
            step = self._choose_step(batch_size, compiled, streamed, spec)
        else:
            from fastnet.distributed import rank_slice

            local = [rank_slice(lo, hi, group.rank, world) for lo, hi in bounds]
            sizes = [hi - lo for lo, hi in bounds]
            step = self._distributed_step(group, sizes, batch_size, compiled, streamed, spec)
            self.step_description = step.description
        self.backend.record_kernel("train_step", self.step_description)
        self.steps_per_epoch = len(bounds)

        def run_epoch(
            progress: Callable[[int], Any] | None = None, hooks: Sequence[Callback] = ()
        ) -> tuple[Any, Any]:
            begin, end = ([cb for cb in hooks if _overrides(cb, h)] for h in _BATCH_HOOKS)
            source.reseed(epoch_seed(*self._order))  # a resumed fit shuffles as if uninterrupted
            with self.backend.step_stream():  # gathers, lr writes and steps in one order
                step.begin_epoch()
                order, start = None, 0
                if isinstance(source, ResidentBatches) and hasattr(step, "run_in_graphs"):
                    order = source.order()
                    if not begin and not end:  # no host work between steps: several per replay
                        data = (source.X, source.y, source.w)
                        start = step.run_in_graphs(data, order, local, progress)
                batches = zip(source.epoch(local[start:], step, order), bounds[start:])
                hooked = bool(begin or end)
                for i, ((xb, yb, wb), (lo, hi)) in enumerate(batches, start):
                    if hooked:
                        self._batch_begin(begin, step, i)
                    step(xb, yb, wb)
                    if progress is not None:
                        progress(hi - lo)
                    if hooked and self._batch_end(end, step, i, (lo, hi), group, global_logs):
                        break  # stop_training set: the epoch's logs average the rows trained
                self._order[1] += 1
                return step.end_epoch()

        return run_epoch

    def _batch_begin(self, hooks: Sequence[Callback], step: Any, i: int) -> None:
        """``on_batch_begin``; then the step re-reads what a callback may have changed since
        its last batch (a constant a compiled step baked in: eager == compiled)."""
        for cb in hooks:
            cb.on_batch_begin(self, i)
        step.refresh()

    def _batch_end(
        self, hooks: Sequence[Callback], step: Any, i: int, rows: tuple[int, int], group: Any,
        global_logs: bool,
    ) -> bool:  # fmt: skip
        """``on_batch_end`` with batch logs: index, size and, as Keras's, the epoch's running
        ``loss`` (and ``accuracy``), read from the device (a sync per batch, for callbacks
        that ask; over data-parallel ranks an all-reduce of the sums where every rank has
        such callbacks, else no loss). Returns whether a hook set Keras's ``stop_training``:
        the epoch ends after this batch (validation and ``on_epoch_end`` still run); data-
        parallel, the ranks agree on it where each has batch hooks, else at the epoch's end."""
        logs: dict[str, float] = {"batch": i, "size": rows[1] - rows[0]}
        if group is not None and not global_logs:
            for cb in hooks:
                cb.on_batch_end(self, i, logs)
            return False
        if hooks or group is not None:  # (every rank: the all-reduce; else only begin hooks)
            totals = np.array(self.backend.to_numpy(step.totals), np.float64)
            if group is not None:
                group.allreduce(totals)  # the ranks' sums so far
            logs["loss"] = float(totals[0]) / rows[1]
            if self.loss.counts_correct:
                logs["accuracy"] = float(totals[1]) / rows[1]
        for cb in hooks:
            cb.on_batch_end(self, i, logs)
        if group is not None:
            self.stop_training = group.any(bool(self.stop_training))
        if self.stop_training:
            self.rows_trained = rows[1]  # the epoch's logs average these rows
        return bool(self.stop_training)

    def _distributed_step(
        self,
        group: Any,
        sizes: Sequence[int],
        batch_size: int,
        compiled: bool | str,
        streamed: bool,
        spec: BatchSpec,
    ) -> Any:
        """The data-parallel step: captured with the all-reduce inside where the backend, the
        model and the communicator allow it (and ``compiled`` is not False), else eager."""
        reason = (  # the same on every rank: all capture (and skip collectives) or none
            "compiled=False"
            if compiled is False
            else "data streamed from the host"
            if streamed
            else self.backend.plan_capture_reason(self.step_plan())
            or group.capture_reason(self.backend)
            or ("" if batch_size >= group.world_size else "a batch has fewer rows than ranks")
        )
        if group.any(bool(reason)) and not reason:  # (a rank's own GPU probe: all eager)
            reason = "another rank cannot capture its step"
        if reason:
            if compiled is True:
                raise CompiledStepRefused(
                    f"a compiled step was required (compiled=True), but {reason}"
                )
            return DistributedStep(self, group, sizes)
        step = GraphedDistributedStep(self, group, list(sizes), batch_size, spec)
        step.required = compiled is True  # a warm-up that meets a capture obstacle raises
        return step

    def _average_buffers(self, group: Any) -> None:
        """After a data-parallel epoch: the running statistics each rank kept of its own rows
        (BatchNorm1d, not synchronized) averaged over the ranks, so every rank holds one
        model (the one validation scores and rank 0 saves)."""
        with self.backend.step_stream():
            for layer in self.layers:
                averaged = layer.averaged_buffers and not layer.synchronized
                for buf in layer.state_buffers().values() if averaged else ():
                    group.allreduce(buf)
                    buf /= group.world_size
        self.backend.synchronize()  # validation and checkpoints read them next

    def _broadcast_state(self, group: Any) -> None:
        """Rank 0's parameters (and their half copies: mixed precision), optimizer state, step
        scalars, loss scale, layer buffers and data order to every rank (on the steps' stream:
        GPUs)."""
        self._order[:] = group.broadcast_object(self._order.tolist())  # the same shuffles
        with self.backend.step_stream():
            for g in self.arena.groups:
                group.broadcast(g.values)
                g.refresh_compute()
                for slot in g.slots.values():
                    group.broadcast(slot)
                group.broadcast(g.scalars)
            if self.arena.scaler is not None:
                group.broadcast(self.arena.scaler.state)
            for layer in self.layers:
                for buf in layer.state_buffers().values():
                    group.broadcast(buf)
                layer.fork_random_stream(group.rank)  # e.g. distinct dropout masks per rank
        self.backend.synchronize()  # what reads the state next (snapshots, callbacks) may not wait

    def _choose_step(
        self, batch_size: int, compiled: bool | str, streamed: bool, spec: BatchSpec
    ) -> Any:
        """The step ``fit`` runs, with ``step_description`` saying which and why."""
        if compiled is False:
            self.step_description = "eager (compiled=False)"
            return EagerStep(self)
        if streamed and not self.backend.compiled_takes_streamed:
            self.step_description = "eager (data streamed from the host)"
            return EagerStep(self)
        # Compiled steps are kept for later fits (a CUDA graph is not captured again) while the
        # arena, layers, loss and optimizer constants they were built for stay the model's.
        key = (
            batch_size,
            spec,
            id(self.arena),
            id(self.loss),
            repr(self.loss),
            tuple(map(id, self.layers)),
            self._frozen_constants(),
        )
        cache = self._compiled_steps
        if key not in cache:
            if len(cache) >= 4:  # e.g. a search over batch sizes: do not hoard graphs
                cache.clear()
            cache[key] = self.backend.compile_step(self, batch_size, spec)
        step, reason = cache[key]
        reason = reason if step is None else getattr(step, "eager_reason", "")
        if reason and compiled is True:  # (a cached step whose warm-up stayed eager, too)
            raise ValueError(f"a compiled step was required (compiled=True), but {reason}")
        if step is None:
            self.step_description = f"eager ({reason})"
            return EagerStep(self)
        step.required = compiled is True
        self.step_description = step.description
        return step

    def _frozen_constants(self) -> tuple:
        """The constants a compiled step bakes in: the optimizers' (everything but the learning
        rate and the step count, which live in device scalars), the loss's (label smoothing)
        and the layers' (a dropout rate, BatchNorm's momentum and eps, a leaky ReLU's slope)."""
        optimizers = tuple(
            (
                g.optimizer.constants(),
                g.optimizer.scalar_constants(),
                g.optimizer.clip_value,
                g.optimizer.weight_decay,
                type(g.optimizer),
            )
            for g in self.arena.groups
        )
        scaler = self.arena.scaler.constants() if self.arena.scaler is not None else ()
        layers = tuple(layer.frozen_constants() for layer in self.layers)
        return optimizers + layers + scaler + (self.loss.plan(),)

    def min_batch_rows(self, world: int = 1) -> int:
        """Smallest training batch every layer accepts (2 with BatchNorm, else 1). Over
        ``world`` data-parallel ranks a layer with statistics of its own rows (BatchNorm1d)
        needs that many on every rank; a synchronized one, and row-wise layers, in the global
        batch (a rank without rows takes part in the collectives: ``idle_step``)."""
        rows = 1
        for layer in self.layers:
            need = layer.min_batch_rows
            per_rank = need > 1 and not layer.synchronized
            rows = max(rows, need * world if per_rank else need)
        return rows

    # ------------------------------------------------------------------ divergence
    def _divergence(self, loss: float, group: Any) -> str:
        """What diverged in the epoch ("" if nothing): the loss (the same on every rank), else
        the state; data-parallel, every rank stops where one does (its own BatchNorm
        statistics may overflow alone)."""
        bad = "" if not np.isfinite(loss) else self._nonfinite_state()
        broken = f"{bad} became NaN or infinite" if bad else f"loss became {loss}"
        broken = "" if np.isfinite(loss) and not bad else broken
        if group is not None and group.any(bool(broken)) and not broken:
            broken = "another rank's state became NaN or infinite"
        return broken

    def _nonfinite_state(self) -> str:
        """What of the model's state holds NaN or inf ("" if nothing): a finite loss can hide
        overflowed weights (after the epoch's last step) or optimizer slots (an Adam ``v`` of
        squared gradients beyond float32's range)."""
        for g in self.arena.groups:
            for what, a in (("the weights", g.values), *g.slots.items()):
                if not self.backend.all_finite(a):
                    return what if what == "the weights" else f"the optimizer's {what} slot"
        for i, layer in enumerate(self.layers):
            for key, buf in layer.state_buffers().items():
                if np.dtype(buf.dtype).kind == "f" and not self.backend.all_finite(buf):
                    return f"layer {i}'s {key}"
        return ""

    def _restore_last_good(
        self, candidates: Sequence[dict[str, Any] | None], X: Any, y: Any, epoch: int
    ) -> tuple[str, bool]:
        """Restore the newest snapshot that is finite with a finite training loss (start of
        this epoch, else of the one before); says which, and whether the epoch before was
        undone too."""
        names = [f"start of epoch {epoch + 1}", f"start of epoch {epoch}"]
        kept = [(s, n, i) for i, (s, n) in enumerate(zip(candidates, names)) if s is not None]
        for state, name, undone in kept:
            self.set_state(state, validate=False)  # (the fit's own copies, maybe not finite)
            if not self._nonfinite_state() and np.isfinite(self._loss_on(X, y)):
                return f"weights from the {name} restored (last with a finite loss)", undone > 0
        return (
            f"weights from the {kept[-1][1]} restored, but even they give a non-finite loss "
            "on the training data"
        ), kept[-1][2] > 0

    def _loss_on(self, X: Any, y: Any, batch_size: int = 8192) -> float:
        total = 0.0
        for lo in range(0, X.shape[0], batch_size):
            xb = self.backend.asarray(X[lo : lo + batch_size])
            yb = self.backend.asarray(y[lo : lo + batch_size])
            with _quiet_floats():
                loss, _ = self.loss.compute(self.forward(xb, training=False), yb)
            total += float(loss) * xb.shape[0]
        return total / X.shape[0]

    # ------------------------------------------------------------------ evaluation
    def _metric_names(self, top_k: int | None, outputs: int) -> list[str]:
        """What ``_evaluate_device`` reports for this model's loss and output width."""
        names = ["loss"]
        if self.loss.counts_correct:
            names.append("accuracy")
        else:
            names += ["mae", "rmse", "r2"]
        if self.loss.multiclass:
            names += ["precision", "recall", "f1"]
            k = _top_k(top_k, outputs)
            names += [f"top{k}_accuracy"] if k else []
        return names

    def _evaluate_device(
        self,
        Xd: Any,
        yd: Any,
        top_k: int | None = None,
        group: Any = None,
        metrics: Sequence[Callable[..., float]] = (),
        batch_size: int = 0,
        weights: Any = None,
    ) -> dict[str, float]:
        """The loss and ``_metric_names``: accuracy, macro precision / recall / F1 and top-k
        accuracy for softmax classifiers, MAE / RMSE / R2 for regression, then ``metrics``.
        With row ``weights`` the loss is normalised over the rows, as ``fit``'s, the metrics
        over the weights (scikit-learn's ``sample_weight``). Data-parallel (``group``): each
        rank takes its slice and the sums are reduced."""
        n, lo, hi = Xd.shape[0], 0, Xd.shape[0]
        if group is not None and group.world_size > 1:
            from fastnet.distributed import rank_slice

            lo, hi = rank_slice(0, n, group.rank, group.world_size)
        classes = self.output_dim if self.loss.multiclass else 0
        width = 0 if self.loss.counts_correct else self.output_dim
        tables = 4 + classes * (classes + 1)  # loss, weight, correct, top-k; cm, classes seen
        sums = np.zeros(tables + 4 * width)
        if hi > lo:
            outputs, targets = self._batched_outputs(Xd[lo:hi], False, batch_size), yd[lo:hi]
            w = None if weights is None else weights[lo:hi]
            sums[:3] = self._weighted_sums(outputs, targets, w)
            if classes:
                k = _top_k(top_k, classes)
                sums[3:tables] = self._class_sums(outputs, targets, classes, k, w)
            if width:
                host = self.backend.to_numpy
                predicted = host(self.loss.predict_output(outputs))  # as predict_proba's
                rows = None if w is None else host(w)
                sums[tables:] = regression_sums(predicted, host(targets), host(yd[:1]), rows)
        if group is not None and group.world_size > 1:
            group.allreduce(sums)
        logs, total = {"loss": sums[0] / n}, sums[1]
        if self.loss.counts_correct:
            logs["accuracy"] = sums[2] / total
        if classes:
            cm = sums[4 : tables - classes].reshape(classes, classes)
            logs.update(macro_scores(cm, sums[tables - classes : tables] > 0))
            if _top_k(top_k, classes):
                logs[f"top{_top_k(top_k, classes)}_accuracy"] = sums[3] / total
        if width:
            logs.update(regression_scores(sums[tables:], total))
        if metrics:  # on the whole set (not reducible over ranks)
            check_metric_names(metrics, list(logs))
            outputs = functools.partial(self._batched_outputs, Xd, batch_size=batch_size)
            logs.update(self._user_metrics(metrics, yd, outputs, weights))
        return {key: float(v) for key, v in logs.items()}

    def _weighted_sums(self, outputs: Any, targets: Any, w: Any) -> list[float]:
        """The summed loss (the mean over rows times the rows), the summed weights (the rows
        when unweighted) and the (weighted) correct predictions of one slice."""
        rows = outputs.shape[0]
        loss = float(self.loss.compute(outputs, targets, w)[0]) * rows
        if w is None:
            correct = (
                self.loss.count_correct(outputs, targets) if self.loss.counts_correct else None
            )
            return [loss, rows, 0.0 if correct is None else float(correct)]
        hits = self.loss.row_correct(outputs, targets) if self.loss.counts_correct else None
        return [loss, float(w.sum()), 0.0 if hits is None else float((hits * w).sum())]

    def _try_user_metrics(self, metrics: list, val: Any, width: int) -> None:
        """Call each user metric once before training, on the validation targets and constant
        outputs (the model may not be built yet): uniform probabilities, or the targets' means
        (a deviance needs positive predictions). One that cannot take them fails here."""
        if not metrics:
            return
        y = np.asarray(self.backend.to_numpy(val[1]), np.float64)
        fill = {"softmax": 1 / width, "sigmoid": 0.5}.get(self.loss.predictions)
        regression = fill is None
        if regression:
            fill = y.reshape(len(y), -1).mean(axis=0) if y.size else 0.0
        with warnings.catch_warnings():  # e.g. scikit-learn's on constant predictions
            warnings.simplefilter("ignore")
            full = functools.partial(np.full, (len(y), width), dtype=self.dtype)
            constant = lambda probabilities: full(fill if probabilities or regression else 0.0)  # noqa: E731
            self._user_metrics(metrics, val[1], constant, val[2] if len(val) > 2 else None)

    def _user_metrics(
        self, metrics: Sequence, yd: Any, outputs: Callable, weights: Any = None
    ) -> dict[str, float]:
        """Each user metric: ``f(y_true, y_pred)`` with the targets and the predictions
        (``outputs(probabilities=True)``), or labels for ``on_labels`` metrics (of the raw
        outputs, as ``predict`` gives them); with row ``weights``, ``sample_weight=`` too to
        those that take it."""
        host, kinds = self.backend.to_numpy, {isinstance(f, on_labels) for f in metrics}
        inputs = {False: (host(yd), host(outputs(probabilities=True)))} if False in kinds else {}
        if True in kinds:
            true = host(yd).argmax(1) if self.loss.multiclass and yd.ndim == 2 else host(yd)
            pred = self.loss.predict_labels(host(outputs(probabilities=False)))
            inputs[True] = tuple(a.ravel() if a.shape[1:] == (1,) else a for a in (true, pred))
        w = None if weights is None else host(weights)
        return {
            metric_name(f): call_metric(f, *inputs[isinstance(f, on_labels)], sample_weight=w)
            for f in metrics
        }

    def _class_sums(
        self, outputs: Any, targets: Any, classes: int, k: int, w: Any = None
    ) -> np.ndarray:
        """Top-k hits, the confusion matrix (of summed row weights ``w``) and the rows each
        class has as label or prediction whatever their weight (the classes macro scores
        average over, as scikit-learn's), as one vector of sums."""
        labels = targets if targets.ndim == 1 else targets.argmax(axis=1)
        hits = float(top_k_correct(outputs, labels, k, self.backend.xp, w)) if k else 0.0
        host = self.backend.to_numpy
        true, pred = host(labels), host(outputs.argmax(axis=1))
        cm = confusion_matrix(true, pred, classes, None if w is None else host(w))
        seen = np.bincount(np.concatenate([true, pred]).astype(np.int64), minlength=classes)
        return np.concatenate([[hits], cm.ravel(), seen])

    def _batched_outputs(
        self, Xd: Any, probabilities: bool = False, batch_size: int = 0, finite: str = ""
    ) -> Any:
        """The model's outputs on ``Xd`` in eval mode (the loss's predictions, e.g. softmax
        probabilities, with ``probabilities``), in chunks of ``batch_size`` rows: one fused
        call per chunk where the backend has fused inference for the plan, else layer by
        layer. ``finite``: the name of ``Xd``, whose chunks are checked for NaN and inf (by
        the fused call where it checks its first layer's products, else first).
        ``batch_size`` 0: the backend's ``infer_rows`` for a fused call (at most 64 MiB of
        inputs), else (and layer by layer within such a chunk) 2,048 rows on a CPU (measured
        on the AMD EPYC: as fast as 8,192, and a chunk stays in cache), 8,192 else."""
        backend = self.backend
        layer_rows = batch_size or (2048 if backend.xp is np else 8192)
        plan, count = self._inference_entry()
        fused = plan is not None and backend.fuses_inference
        rows = layer_rows
        if not batch_size and fused and Xd.shape[0] > rows:  # (one row: its microseconds)
            rows = backend.infer_rows or rows  # at most 64 MiB (a Standardize copies it)
            rows = max(layer_rows, min(rows, (64 << 20) // (Xd.shape[1] * Xd.itemsize or 1)))
        chunks = []
        for lo in range(0, Xd.shape[0], rows):
            chunk = Xd if Xd.shape[0] <= rows else Xd[lo : lo + rows]
            out = None
            if fused:
                x = chunk
                for layer in self.layers[:count]:  # (computed first: Standardize)
                    x = layer.standardized(x)
                check = finite and functools.partial(check_finite, chunk, finite, backend, lo)
                out = backend.infer(plan, x, probabilities, check or None)
            if out is None:
                out = self._layer_outputs(chunk, probabilities, finite, lo, layer_rows)
            chunks.append(out)
        return chunks[0] if len(chunks) == 1 else backend.xp.concatenate(chunks)

    def _layer_outputs(
        self, Xd: Any, probabilities: bool, finite: str, first_row: int, rows: int
    ) -> Any:
        """``_batched_outputs`` of rows ``Xd`` (from ``first_row``) layer by layer, ``rows``
        at a time: the layers' buffers are reused (one thread at a time)."""
        chunks = []
        for lo in range(0, Xd.shape[0], rows):
            chunk = Xd[lo : lo + rows]
            if finite:
                check_finite(chunk, finite, self.backend, first_row + lo)
            with self._inference_lock:
                out = self.backend.xp.array(self.forward(chunk, training=False), copy=True)
                chunks.append(self.loss.predict_output(out) if probabilities else out)
        return chunks[0] if len(chunks) == 1 else self.backend.xp.concatenate(chunks)

    def _inference_plan(self) -> Any:
        """The model's step plan for fused inference, of the layers after any leading
        ``Standardize`` (``_inference_entry``)."""
        return self._inference_entry()[0]

    def _inference_entry(self) -> tuple[Any, int]:
        """``(plan, lead)``: the step plan for fused inference of the layers after the
        ``lead`` leading ``Standardize`` layers (computed first), kept while the arena is the
        same (its arrays are updated in place) and nothing it holds changed (a hyperparameter
        or the loss: ``revision``); each backend's ``infer`` decides which plans and
        predictions it computes. Cached as one tuple: a thread reads all of it or none."""
        cache = self._plan_cache  # (key, constants the plan holds: a leaky slope, plan, lead)
        key = (id(self.arena), revision())
        if (
            cache is None
            or cache[0] != key
            or (cache[1] and any(getattr(x, a) != v for x, a, v in cache[1]))
        ):
            plan = self.step_plan()
            mixed = plan.compute_dtype != plan.dtype  # layer by layer, in the compute dtype
            lead = 0
            while lead < len(plan.layers) and plan.layers[lead] == OpsPlan("Standardize"):
                lead += 1
            watched = [
                (layer, name, getattr(layer, name))
                for layer in self.layers
                for name in layer.inference_constants()
            ]
            plan = None if mixed else replace(plan, layers=plan.layers[lead:])
            self._plan_cache = cache = (key, watched, plan, lead)
        return cache[2], cache[3]

    def _epoch_line(self, epoch: int, epochs: int, logs: dict[str, float]) -> str:
        """One line per epoch: the loss, accuracy or regression errors, time and backend."""
        shown = ("loss", "accuracy", "val_loss", "val_accuracy", "val_mae", "val_r2")
        labels = {"accuracy": "acc", "val_accuracy": "val_acc"}
        parts = [f"epoch {epoch:>3}/{epochs}"]
        parts += [f"{labels.get(k, k)} {logs[k]:.4f}" for k in shown if k in logs]
        parts += [f"{logs['seconds']:.2f}s", f"backend {self.backend.name}"]
        return "  ".join(parts)

    # ------------------------------------------------------------------ supplied by the model
    # The model interface fit relies on (``Sequential`` implements it).
    @property
    def built(self) -> bool:
        raise NotImplementedError

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def output_width(self, input_dim: int) -> int:
        raise NotImplementedError

    def build(self, input_dim: int) -> Any:
        raise NotImplementedError

    def forward(self, x: Any, training: bool = False) -> Any:
        raise NotImplementedError

    def backward(self, dout: Any) -> None:
        raise NotImplementedError

    def step_plan(self) -> Any:
        raise NotImplementedError

    def scratch_buffers(self) -> list:
        raise NotImplementedError

    def idle_step(self) -> None:
        raise NotImplementedError

    def validate_fit_data(
        self, X: Any, y: Any, validation_data: Any, on_device: bool = True
    ) -> tuple[Any, Any, tuple[Any, ...] | None]:
        raise NotImplementedError

    def validate_weights(self, *args: Any, **kwargs: Any) -> Any:  # (Sequential's)
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _apply_trainable(self) -> None:  # (Sequential's)
        raise NotImplementedError

    def _unbuild(self, rng_state: dict, loss_width: int | None) -> None:  # (Sequential's)
        raise NotImplementedError

    def _check_layers(self) -> None:  # (Sequential's)
        raise NotImplementedError

    def _named_columns(self, X: Any, name: str) -> Any:  # (Sequential's)
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, state: dict[str, Any], validate: bool = True) -> None:
        raise NotImplementedError


__all__ = ["Trainer", "TrainingDivergedError", "batch_bounds"]
