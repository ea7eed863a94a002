"""Several steps per graph replay, their batch gathers inside the graph (``steps_per_graph``),
proven equal to eager training on CPU with the capture-semantics backend: the gathers read
their rows at a position in device memory, which only a replay advances, so a graph whose
position were a host value would gather the same rows on every replay and fail here."""

from __future__ import annotations

import numpy as np
import pytest
from capture_backend import CaptureSimBackend
from test_compiled_step import SCHEDULES, _data, _model, _weights

import fastnet as fn
from fastnet.backends.graph_step import GraphedStep


def _fit(backend, compiled, optimizer="adam", schedule="none", target="labels", fits=1, **kw):
    X, y = _data()
    targets = np.eye(4)[y] if target == "one_hot" else y
    weights = kw.pop("sample_weight", None)
    model = _model(backend, optimizer, 0.1 if target == "smoothing" else 0.0, **kw)
    for i in range(fits):  # a later fit gets other rows: its graphs must gather from them
        rows = slice(None) if i == 0 else slice(7, None)
        model.fit(
            X[rows],
            targets[rows],
            epochs=3,
            batch_size=16,
            verbose=0,
            compiled=compiled,
            callbacks=SCHEDULES[schedule](),
            sample_weight=None if weights is None else weights[rows],
        )
    return model


def _step(model) -> GraphedStep:
    return next(iter(model._compiled_steps.values()))[0]


def _assert_same(a, b):
    np.testing.assert_allclose(_weights(b), _weights(a), rtol=1e-12, atol=1e-14)
    assert b.history["loss"] == pytest.approx(a.history["loss"], rel=1e-12)
    for ga, gb in zip(a.arena.groups, b.arena.groups):
        assert ga.step == gb.step
        for key in ga.slots:
            np.testing.assert_allclose(gb.slots[key], ga.slots[key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("target", ["labels", "smoothing", "one_hot"])
@pytest.mark.parametrize("schedule", ["none", "cosine", "plateau"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize("steps", [2, 3, 8])
def test_several_steps_per_replay_equal_eager(steps, optimizer, schedule, target):
    eager = _fit(CaptureSimBackend(), False, optimizer, schedule, target)
    backend = CaptureSimBackend(steps_per_graph=steps)
    graphed = _fit(backend, True, optimizer, schedule, target)
    _assert_same(eager, graphed)
    step = _step(graphed)
    assert f"{steps} steps per replay" in graphed.step_description
    # 90 rows in batches of 16: 5 full and 1 partial a batch; the first full batch is eager
    assert step.replays == 14 and step.graph is None
    lengths = {2: [2, 1], 3: [3, 1, 2], 8: [4, 5]}[steps]  # epoch 1: 4 steps left, then 5
    assert step.captures == lengths
    assert step.multi == {} and step.data == ()  # released at the end of the fit
    gathers = {stream for op, stream in backend.issued if op in ("take_rows_at", "take_rows")}
    assert gathers == {"step"}, "batch gathers must run on the step's stream"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_several_steps_per_replay_with_weights_clipping_and_layer_optimizers(optimizer):
    def layers():
        return [fn.Dense(16, "relu", optimizer=fn.Momentum(0.02)), fn.Dense(8), fn.Dense(4)]

    kw = dict(
        sample_weight=np.random.default_rng(1).uniform(0.1, 2.0, 90),
        clip_norm=0.05,
        clip_value=0.02,
        layers=layers,
    )
    eager = _fit(CaptureSimBackend(), False, optimizer, "cosine", **kw)
    graphed = _fit(CaptureSimBackend(steps_per_graph=4), True, optimizer, "cosine", **kw)
    _assert_same(eager, graphed)
    assert _step(graphed).captures == [4, 1]  # epoch 1: 4 steps after the warm-up; then 4 + 1


def test_a_new_fit_gathers_from_its_own_data():
    """Graphs read X and y by address: a fit on other arrays captures again."""
    eager = _fit(CaptureSimBackend(), False, fits=2)
    graphed = _fit(CaptureSimBackend(steps_per_graph=3), True, fits=2)
    _assert_same(eager, graphed)
    # the second fit's arrays: captured anew, after an eager warm-up as the first fit's
    assert _step(graphed).captures == [3, 1, 2, 3, 1, 2]


def test_per_step_callbacks_keep_one_step_per_replay():
    """A per-step schedule runs host code between steps: steps replay one at a time."""
    eager = _fit(CaptureSimBackend(), False, schedule="warmup_cosine")
    graphed = _fit(CaptureSimBackend(steps_per_graph=4), True, schedule="warmup_cosine")
    _assert_same(eager, graphed)
    step = _step(graphed)
    assert step.multi == {} and step.graph is not None and step.replays == 14


class _HalveBeta1(fn.Callback):
    """Changes a constant the graphs bake in, between epochs."""

    def on_epoch_begin(self, model, epoch):
        if epoch == 1:
            model.optimizer.beta1 = 0.5


def test_a_constant_changed_by_a_callback_captures_again():
    runs = []
    for backend, compiled in ((CaptureSimBackend(), False), (CaptureSimBackend(3), True)):
        model = _model(backend)
        model.fit(
            *_data(),
            epochs=3,
            batch_size=16,
            verbose=0,
            compiled=compiled,
            callbacks=[_HalveBeta1()],
        )
        runs.append(model)
    _assert_same(*runs)
    assert _step(runs[1]).frozen[0][0][0] == 0.5


def test_the_device_position_is_read_at_replay():
    """``take_rows_at`` reads the position when it runs; ``advance_counter`` moves it."""
    backend = CaptureSimBackend()
    x = np.arange(20.0).reshape(10, 2)
    order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    position, out = np.zeros(1, np.int64), np.empty((3, 2))
    with backend.step_stream():
        graph = backend.capture(
            lambda: (
                backend.take_rows_at(x, order, position, 1, out),
                backend.advance_counter(position, 3),
            )
        )
        assert position[0] == 0  # a capture runs nothing
        graph.replay()
        np.testing.assert_array_equal(out, x[[8, 7, 6]])
        graph.replay()
        np.testing.assert_array_equal(out, x[[5, 4, 3]])
    assert position[0] == 6


def test_a_position_that_does_not_advance_is_caught(monkeypatch):
    """The check above can fail: graphs that gather the same rows on every replay (a position
    frozen at capture) train differently from eager."""
    eager = _fit(CaptureSimBackend(), False)
    monkeypatch.setattr(CaptureSimBackend, "advance_counter", lambda self, p, rows: None)
    frozen = _fit(CaptureSimBackend(steps_per_graph=2), True)
    assert not np.allclose(_weights(frozen), _weights(eager), rtol=1e-6)


def test_keras_style_batch_hooks_run_and_keep_one_step_per_replay():
    """A Keras-style callback (hooks without the model, adapted by fastnet) with
    ``on_batch_end`` is called after every batch, so steps replay one at a time."""

    class Counter:
        def __init__(self):
            self.batches = 0

        def on_batch_end(self, batch, logs=None):
            self.batches += 1

    counter = Counter()
    model = _model(CaptureSimBackend(steps_per_graph=4))
    model.fit(*_data(), epochs=2, batch_size=16, verbose=0, compiled=True, callbacks=[counter])
    assert counter.batches == 12
    step = _step(model)
    assert step.captures == [1] and step.graph is not None


@pytest.mark.parametrize("steps", [1, 4])
def test_captures_survive_buffer_caches_refilled_between_and_within_fits(steps):
    """A layer's buffer cache empties itself when full: predictions on other row counts
    between fits (a later fit captured without a warm-up), or a warm-up for a new batch size
    that filled it, left the capture to allocate: it failed, or ran eagerly for good."""
    r = np.random.default_rng(0)
    y = r.integers(0, 4, 120)
    X = r.normal(size=(120, 12)) + y[:, None] * 0.3
    layers = [fn.Dense(16, use_bias=False), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(4)]
    model = fn.Sequential(layers, backend=CaptureSimBackend(steps_per_graph=steps),
                          dtype="float64", seed=3)  # fmt: skip
    val = (X[90:], y[90:])
    for batch in (16, 5, 6, 7, 8, 9, 16):  # (more batch sizes than the step cache holds)
        model.fit(X[:90], y[:90], epochs=1, batch_size=batch, verbose=0, validation_data=val,
                  compiled=True)  # fmt: skip
        for n in (1, 7, 50, 3, 11):
            model.predict(X[:n])
        assert model.step_description.startswith("captured graph"), (batch, model.step_description)


def test_captures_within_a_fit_after_predictions_emptied_a_cache_and_no_buffers_hoarded():
    """Epoch 2 captured a graph of another length without a warm-up, after a callback's
    predictions emptied a layer's cache (the capture allocated); and each fit's warm-up
    kept one more set of buffers alive for ever."""
    r = np.random.default_rng(0)
    y = r.integers(0, 4, 120)
    X = r.normal(size=(120, 12)) + y[:, None] * 0.3

    class PredictMany(fn.Callback):
        def on_epoch_end(self, model, epoch, logs):
            for n in range(1, 30):
                model.predict(X[:n])

    layers = [fn.Dense(16, use_bias=False), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(4)]
    model = fn.Sequential(layers, backend=CaptureSimBackend(steps_per_graph=3),
                          dtype="float64", seed=3)  # fmt: skip
    kept = []
    for _ in range(4):
        model.fit(X[:90], y[:90], epochs=3, batch_size=16, verbose=0, compiled=True,
                  callbacks=[PredictMany()])  # fmt: skip
        assert model.step_description.startswith("captured graph"), model.step_description
        kept.append(len(_step(model).kept + _step(model).kept_multi))
    assert kept[-1] == kept[1]  # (grew by a set per fit before)
