"""The captured step: the model's own step function (``Trainer.train_step``) captured once in a
graph (``Backend.capture``: a CUDA graph on cupy) and replayed for every full batch, removing
per-kernel launch overhead, the cost that dominates small MLPs.

Nothing here is a second copy of the step: the graph is the step function's device work, with
its batch read from fixed buffers the batch source gathers into (on the same stream), loss and
correct counts accumulated on the device, and every step-dependent value (learning rate, step
count, bias corrections, decay shrink, clip scale) read from device scalars that the step
itself advances. Partial batches run the same function eagerly on views of those buffers.

With ``steps_per_graph = K > 1`` (the backend's setting) one replay runs K steps, each with its
batch gathers inside the graph: the epoch's permutation is copied into a fixed device buffer and
the gathers read their rows at a position in device memory that the graph advances, so the host
issues one launch per K steps. The epoch's last full batches form a shorter graph (captured
once per length); a partial last batch runs eagerly.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastnet.revision import revision


class CaptureRequiredError(ValueError):
    """``compiled=True``, but the eager warm-up met something a captured step cannot do."""


class CaptureObstacleError(RuntimeError):
    """What a graph capture met that a graph cannot hold (``Backend.capture``), such as an
    allocation; the captured step then runs eagerly, saying why."""


class GraphedStep:
    """A ``Trainer`` step that replays the captured step function for full batches."""

    eager_suffix = ""  # what an eager description adds (data parallelism)

    def __init__(self, model: Any, batch_size: int, spec: Any, steps_per_graph: int = 1) -> None:
        backend = self.backend = model.backend
        self.model, self.batch_size = model, batch_size
        self.steps_per_graph = max(1, int(steps_per_graph))
        self.description = (
            "captured graph (the step function, replayed per full batch)"
            if self.steps_per_graph == 1
            else f"captured graph (the step function, {self.steps_per_graph} steps per replay "
            "with their batch gathers)"
        )
        self.position = backend.zeros((1,), np.int64)  # rows of the epoch gathered so far
        self.order: Any = None  # the epoch's permutation, where the in-graph gathers read it
        self.data: tuple = ()  # the (X, y, w) the multi-step graphs gather from
        self.multi: dict[int, Any] = {}  # graphs of k steps with their gathers, by k
        self.captures: list[int] = []  # steps in each graph captured, in order
        self.xb = backend.empty((batch_size, model.input_dim), model.dtype)
        self.yb = backend.empty((batch_size, *spec.target_shape), np.dtype(spec.target_dtype))
        self.wb = backend.empty((batch_size,), model.dtype) if spec.weighted else None
        self.totals = backend.zeros((2,), np.float64)
        self.views = {batch_size: (self.xb, self.yb, self.wb)}
        self.graph: Any = None
        self.warm = False  # one eager full batch first: buffers exist before capture
        self.frozen: tuple = ()
        self.revision = -1  # ``fastnet.revision`` when ``frozen`` was compared last
        self.kept: list = []  # the single-step graph's buffers (alive while it is)
        self.kept_multi: list = []  # the multi-step graphs' (dropped with them)
        self.warmed: list = []  # the buffers the last warm-up found or made in the caches
        self.replays = 0  # steps run by graph replays
        self.eager_reason = ""  # set when the warm-up met something a capture cannot do
        self.plan_reason = ""  # why the model's plan now is not capturable (a callback's change)
        self.required = False  # compiled=True: such a warm-up raises instead
        self.reduce: Callable[[], Any] | None = None  # data parallelism: the all-reduce

    def batch_buffers(self, n: int) -> tuple[Any, Any, Any] | None:
        """Where a batch of ``n`` rows is gathered (the same objects each time, so ``__call__``
        sees it there and copies nothing); None above the captured batch size."""
        if n > self.batch_size:
            return None
        if n not in self.views:
            self.views[n] = (self.xb[:n], self.yb[:n], None if self.wb is None else self.wb[:n])
        return self.views[n]

    def begin_epoch(self) -> None:
        self._recheck()
        self.backend.fill(self.totals, 0.0)

    def refresh(self) -> None:
        """Before each step where batch callbacks ran (one step per replay, then): the
        constants re-checked where a hyperparameter was set since (``fastnet.revision``)."""
        if self.steps_per_graph > 1 and self.model.step_description == self.description:
            self.model.step_description = "captured graph (the step function, replayed per batch)"
        if revision() != self.revision:
            self._recheck()

    def _recheck(self) -> None:
        """A constant the graphs baked in that changed (a callback's) means capturing again,
        after an eager step (buffers, kernels and probes of the new ones), or running eagerly
        while the model's plan is not capturable (a loss swapped for one no capture covers)."""
        self.revision = revision()
        frozen = self.model._frozen_constants()
        if frozen == self.frozen:
            return
        self.frozen, self.graph, self.multi, self.warm = frozen, None, {}, False
        self.kept, self.kept_multi = [], []
        self.plan_reason = self.backend.plan_capture_reason(self.model.step_plan())
        if self.plan_reason and self.required:
            raise CaptureRequiredError(
                f"a compiled step was required (compiled=True), but {self.plan_reason}"
            )
        reason = self.eager_reason or self.plan_reason
        self.model.step_description = f"eager ({reason})" if reason else self.description
        self.backend.record_kernel("train_step", self.model.step_description)

    def __call__(self, xb: Any, yb: Any, wb: Any = None) -> None:
        n = xb.shape[0]
        if (wb is None) != (self.wb is None):
            raise ValueError(
                "the step was compiled for "
                + ("" if self.wb is None else "un")
                + "weighted batches"
            )
        self.model.arena.write_lr()  # host side, on the step's stream, before the replay
        if n > self.batch_size:  # a last row merged into the batch before (BatchNorm): eager
            self.model.train_step(xb, yb, wb, totals=self.totals)
            return
        x, y, w = self.batch_buffers(n)  # type: ignore[misc]
        for src, dst in ((xb, x), (yb, y), (wb, w)):
            if src is not None and src is not dst:
                dst[...] = src  # a caller that did not gather into the step's buffers
        if self.plan_reason:
            self.model.train_step(x, y, w, self.totals, self.reduce)
            return
        if n == self.batch_size and self.graph is not None:
            self.graph.replay()
            self.replays += 1
        elif n == self.batch_size and self.warm:  # eager_reason: no capture
            self.model.train_step(x, y, w, self.totals, self.reduce)
        elif n == self.batch_size:
            self._warm_up(x, y, w)
            if not self.eager_reason:  # (at once: nothing can empty a cache in between)
                self._capture()
        else:
            self.model.train_step(x, y, w, totals=self.totals)

    def _warm_up(self, x: Any, y: Any, w: Any) -> None:
        """The eager full batch before a capture: the buffers it reads exist (the caches
        emptied first: one that fills up empties itself, which must not happen between this
        step and the capture)."""
        seen = self.backend.obstacles_seen
        self.model.drop_buffers()
        self.model.train_step(x, y, w, self.totals, self.reduce)
        self.warm, self.warmed = True, list(self.model.scratch_buffers())
        if self.backend.obstacles_seen != seen:
            self._stay_eager(self.backend.last_obstacle)

    def _stay_eager(self, obstacle: str) -> None:
        """Run every later step eagerly (saying why), or raise where a capture was required
        (``fit`` then restores the weights of before the warm-up)."""
        self.eager_reason = obstacle
        self.description = f"eager{self.eager_suffix} ({obstacle})"
        self.model.step_description = self.description
        self.backend.record_kernel("train_step", self.description)
        if self.required:
            raise CaptureRequiredError(
                f"a compiled step was required (compiled=True), but {obstacle}"
            )

    def _caches_intact(self) -> bool:
        """Whether the buffers the warm-up left in the caches are all still there (predict,
        say, may have filled a cache, which then emptied itself): a capture allocates none."""
        now = {id(b) for b in self.model.scratch_buffers()}
        return all(id(b) in now for b in self.warmed)

    def _capture(self) -> None:
        model = self.model
        self.graph = self._captured(
            lambda: model.train_step(self.xb, self.yb, self.wb, self.totals, self.reduce)
        )
        if self.graph is not None:
            self.captures.append(1)
            self.kept = list(self.model.scratch_buffers())

    def _captured(self, fn: Callable[[], Any]) -> Any:
        """``backend.capture(fn)``, or None where the capture met an obstacle (nothing ran:
        the steps run eagerly from here, with a warning, as it is a defect of fastnet's)."""
        try:
            return self.backend.capture(fn)
        except CaptureObstacleError as exc:
            warnings.warn(f"fastnet: steps run eagerly: {exc}; please report it", stacklevel=2)
            self.graph = None  # (a multi-step capture's: the single step's graph goes too)
            self._stay_eager(str(exc))
            return None

    def _keep(self) -> None:
        """After a multi-step capture: the buffers it writes into on every replay, kept (with
        the other live graphs') beyond the layers' buffer caches."""
        known = {id(b) for b in self.kept + self.kept_multi}
        self.kept_multi += [b for b in self.model.scratch_buffers() if id(b) not in known]

    def release_data(self) -> None:
        """Drop the multi-step graphs and the training arrays they gather from (end of fit:
        the cached step must not hold a dataset on the device); the next fit warms up before
        it captures (predict or evaluate may replace the buffers a capture reads meanwhile)."""
        self.data, self.order, self.multi, self.warm, self.kept_multi = (), None, {}, False, []

    def run_in_graphs(
        self,
        data: tuple[Any, Any, Any],
        order: Any,
        bounds: Sequence[tuple[int, int]],
        progress: Callable[[int], Any] | None = None,
    ) -> int:
        """Run the epoch's leading full batches (rows ``order[lo:hi]`` of ``data = (X, y, w)``
        for ``bounds``), ``steps_per_graph`` steps per replay with their gathers in the graph;
        returns how many batches ran (0 with ``steps_per_graph == 1``). The first full batch of a
        fresh step runs eagerly (buffers exist before a capture); where that warm-up met an
        obstacle to capture (``eager_reason``) it is the only one run here (0 in later epochs)."""
        size = self.batch_size
        full = 0
        while full < len(bounds) and tuple(bounds[full]) == (full * size, (full + 1) * size):
            full += 1
        if self.steps_per_graph == 1 or full == 0 or self.eager_reason or self.plan_reason:
            return 0
        backend = self.backend
        if len(data) != len(self.data) or any(a is not b for a, b in zip(data, self.data)):
            self.data, self.multi = tuple(data), {}  # graphs read the arrays by address
            self.order = backend.empty((data[0].shape[0],), np.int64)
        self.order[...] = order  # a device copy on the step's stream
        done = 0
        capturing = not set(_lengths(full, self.steps_per_graph)) <= set(self.multi)
        if not self.warm or (capturing and not self._caches_intact()):
            x, y, w = data
            backend.take_rows(x, order[:size], self.xb)
            backend.take_rows(y, order[:size], self.yb)
            if w is not None:
                backend.take_rows(w, order[:size], self.wb)
            self.model.arena.write_lr()
            self._warm_up(self.xb, self.yb, self.wb)  # (eager, a graph captured or not)
            done = 1
            if progress is not None:
                progress(size)
        if done == full or self.eager_reason:  # nothing left to replay here
            return done
        backend.fill(self.position, done * size)
        if not self.multi:  # compile the gathers' kernels (one per dtype) outside a capture
            self._gather_at(0)
            backend.advance_counter(self.position, 0)
        while done < full:
            k = min(self.steps_per_graph, full - done)
            if k not in self.multi:
                graph = self._captured(functools.partial(self._steps, k))
                if graph is None:
                    return done
                self.multi[k] = graph
                self.captures.append(k)
                self._keep()
            self.model.arena.write_lr()  # host side, on the step's stream, before the replay
            self.multi[k].replay()
            self.replays += k
            done += k
            if progress is not None:
                progress(k * size)
        return full

    def _steps(self, k: int) -> None:
        """``k`` steps, each gathering its batch at the device position; then the position
        moves on by ``k`` batches."""
        for i in range(k):
            self._gather_at(i * self.batch_size)
            self.model.train_step(self.xb, self.yb, self.wb, self.totals, self.reduce)
        self.backend.advance_counter(self.position, k * self.batch_size)

    def _gather_at(self, offset: int) -> None:
        """The batch at ``offset`` rows past the device position into the step's buffers."""
        for array, buffer in zip(self.data, (self.xb, self.yb, self.wb)):
            if array is not None:
                self.backend.take_rows_at(array, self.order, self.position, offset, buffer)

    def end_epoch(self) -> tuple[Any, Any]:
        totals = self.backend.to_numpy(self.totals)
        return totals[0], (totals[1] if self.model.loss.counts_correct else None)


def _lengths(full: int, k: int) -> list[int]:
    """The graph lengths ``full`` batches replay in, ``k`` steps a graph, from the first."""
    return [min(k, full - done) for done in range(0, full, k)]
