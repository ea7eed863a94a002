"""Dropout and BatchNorm1d in captured steps: their ops (counter-based dropout masks with the
step count on the device, batch statistics and running averages) are recorded in the graph,
so captured training equals eager training, one or several steps per replay, on CPU through
the capture-semantics backend; and dropout masks are the same on every backend for a seed."""

from __future__ import annotations

import numpy as np
import pytest
from capture_backend import CaptureSimBackend
from test_compiled_step import _data, _model, _weights
from test_multi_step_graph import _assert_same, _step

import fastnet as fn
from fastnet.backends import probe
from fastnet.backends.counter_rng import drop_threshold, stream_bits, stream_key

LAYERS = {
    "dropout": lambda: [fn.Dense(16, "relu"), fn.Dropout(0.3, seed=5), fn.Dense(4)],
    "batchnorm": lambda: [fn.Dense(16), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(4)],
    "both": lambda: [
        fn.Dense(16),
        fn.BatchNorm1d(momentum=0.8),
        fn.ReLU(),
        fn.Dropout(0.5),
        fn.Dense(8, "relu"),
        fn.Dropout(0.1),
        fn.Dense(4),
    ],
}


def _fit(backend, compiled, layers, rows=90, optimizer="adam", **fit_kw):
    X, y = _data(n=rows)
    model = _model(backend, optimizer, layers=LAYERS[layers])
    model.fit(X, y, epochs=3, batch_size=16, verbose=0, compiled=compiled, **fit_kw)
    return model


def _buffers(model):
    return [np.asarray(b) for layer in model.layers for b in layer.state_buffers().values()]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("layers", list(LAYERS))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dropout_and_batchnorm_are_captured_and_equal_eager(layers, steps, optimizer):
    eager = _fit(CaptureSimBackend(), False, layers, optimizer=optimizer)
    graphed = _fit(CaptureSimBackend(steps), True, layers, optimizer=optimizer)
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    _assert_same(eager, graphed)
    for a, b in zip(_buffers(eager), _buffers(graphed)):  # BatchNorm's running statistics
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert _step(graphed).replays == 14
    if layers != "batchnorm":
        dropout = [layer for layer in graphed.layers if isinstance(layer, fn.Dropout)]
        assert all(int(layer.stream[1]) == 18 for layer in dropout)  # one draw per step


def test_a_merged_last_row_trains_eagerly_beside_the_graph():
    """81 rows in batches of 16: BatchNorm needs 2 rows, so the last row joins the batch
    before it (17 rows, more than the graph's 16), which runs eagerly."""
    eager = _fit(CaptureSimBackend(), False, "both", rows=81)
    graphed = _fit(CaptureSimBackend(2), True, "both", rows=81)
    _assert_same(eager, graphed)
    assert _step(graphed).replays == 3 * 4 - 1  # 4 full batches an epoch; one warm-up


def test_a_dropout_step_count_on_the_host_is_caught(monkeypatch):
    """The check above can fail: a stream whose step does not advance in the graph repeats
    its masks on every replay, and training differs from eager."""
    eager = _fit(CaptureSimBackend(), False, "dropout")
    forward = fn.Dropout.forward

    def host_counted_forward(self, x, training=True):
        if not training or self.rate == 0:
            return forward(self, x, training)
        backend = self.backend
        out, self.mask = self._buffer("out", x.shape), self._buffer("mask", x.shape)
        backend.dropout(
            x, self.stream, drop_threshold(self.rate), 1 / (1 - self.rate), out, self.mask
        )
        self.stream[1] += 1  # a host write: not part of a captured graph
        return out

    monkeypatch.setattr(fn.Dropout, "forward", host_counted_forward)
    same = _fit(CaptureSimBackend(), False, "dropout")
    np.testing.assert_allclose(_weights(same), _weights(eager), rtol=1e-12)  # eager: no change
    frozen = _fit(CaptureSimBackend(), True, "dropout")
    assert not np.allclose(_weights(frozen), _weights(eager), rtol=1e-6)


def test_dropout_masks_follow_the_counter_based_stream():
    """The mask of step c is SplitMix64 at (c * 2**32 + j): checked against a scalar Python
    version; the keep rate matches; eval mode and rate 0 are the identity."""
    layer = fn.Dropout(0.25, seed=11)
    model = fn.Sequential([layer], loss="mse", backend="numpy", dtype="float64").build(300)
    x = np.ones((200, 300))
    out = layer.forward(x, training=True).copy()  # the layer reuses its buffers
    mask = layer.mask.copy()
    key, m = stream_key(11), 2**64 - 1

    def bits(c, j):
        z = (key + ((c << 32) + j) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return (z ^ (z >> 31)) >> 40

    for j in (0, 1, 299, 300, 59_999):
        kept = bits(0, j) >= drop_threshold(0.25)
        assert mask.flat[j] == (1 / 0.75 if kept else 0.0)
    assert abs((mask > 0).mean() - 0.75) < 0.01
    np.testing.assert_array_equal(out, x * mask)
    second = layer.forward(x, training=True)
    assert int(layer.stream[1]) == 2 and not np.array_equal(second, out)
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 2.0)), 2.0 * layer.mask)
    assert layer.forward(x, training=False) is x
    assert model.layers[0] is layer


def test_dropout_streams_differ_per_rank_and_seed():
    s = [np.array([stream_key(seed, rank), 0], np.int64) for seed, rank in ((1, 0), (1, 1), (2, 0))]
    draws = [stream_bits(np, a, 1000) for a in s]
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    layer = fn.Dropout(0.5, seed=1)
    fn.Sequential([layer], loss="mse", backend="numpy").build(4)
    layer.fork_random_stream(1)
    np.testing.assert_array_equal(layer.stream, s[1])


@pytest.mark.skipif(not probe("numba").available, reason="numba unavailable")
def test_dropout_masks_are_the_same_on_every_cpu_backend():
    X, y = _data()
    runs = []
    for backend in ("numpy", "numba"):
        model = fn.Sequential(
            [fn.Dense(16, "relu"), fn.Dropout(0.4, seed=3), fn.Dense(4)],
            backend=backend,
            dtype="float64",
            seed=1,
        )
        model.fit(X, y, epochs=2, batch_size=16, verbose=0)
        runs.append(model)
    np.testing.assert_allclose(_weights(runs[1]), _weights(runs[0]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("stream", [[0, 0], [123, 7], [2**63 - 1, 2**40 + 3]])
def test_every_implementation_draws_the_same_stream(stream):
    """NumPy's in-place draw and the numba loop give the generic reference's bits and masks,
    for extreme keys and step counts, both dtypes and a view that is not contiguous."""
    from fastnet.backends.counter_rng import numpy_stream_bits

    s = np.array(stream, np.int64)
    for size in (1, 5, 4099):
        np.testing.assert_array_equal(numpy_stream_bits(s, size), stream_bits(np, s, size))
    names = ["numpy"] + (["numba"] if probe("numba").available else [])
    for dtype in (np.float32, np.float64):
        x = np.random.default_rng(2).standard_normal((33, 40)).astype(dtype)
        for view in (x, x[:, ::2]):
            results = []
            for name in names:
                b = fn.get_backend(name)
                out, mask = np.empty(view.shape, dtype), np.empty(view.shape, dtype)
                b.dropout(view, s, drop_threshold(0.3), 1 / 0.7, out, mask)
                results.append((out, mask))
            keep = stream_bits(np, s, view.size).reshape(view.shape) >= drop_threshold(0.3)
            for out, mask in results:
                np.testing.assert_array_equal(mask, np.where(keep, dtype(1 / 0.7), dtype(0)))
                np.testing.assert_array_equal(out, view * mask)


class _Retune(fn.Callback):
    """Changes constants a graph bakes in, between epochs: layers' (a dropout rate, from 0
    too, BatchNorm's) or, with ``slopes``, only leaky ReLU slopes and the label smoothing."""

    def __init__(self, slopes=False):
        self.slopes = slopes

    def on_epoch_begin(self, model, epoch):
        if epoch == 1:
            for layer in model.layers:
                if isinstance(layer, fn.Dropout) and not self.slopes:
                    layer.rate = 0.1 if layer.rate else 0.2
                if isinstance(layer, fn.BatchNorm1d):
                    layer.eps, layer.momentum = 1e-2, 0.5
                if isinstance(layer, (fn.Dense, fn.LeakyReLU)) and self.slopes:
                    layer.alpha = 0.3
            if self.slopes:
                model.loss.label_smoothing = 0.2


RETUNED = lambda: [  # noqa: E731
    fn.Dense(16, "leaky_relu"),
    fn.Dropout(0.0),  # no buffers until the callback sets a rate
    fn.Dense(8),
    fn.LeakyReLU(),
    fn.Dense(4),
]


@pytest.mark.parametrize("slopes", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_a_slope_and_label_smoothing_changed_by_a_callback_capture_again(steps, slopes):
    """The graph bakes in leaky ReLU slopes and the label smoothing: a change captures again,
    after an eager warm-up step (a dropout rate set from 0 allocates its buffers there, not
    inside the capture); the numba fused step re-reads them. All equal eager NumPy."""
    dense_only = lambda: [fn.Dense(16, "leaky_relu"), fn.Dropout(0.0), fn.Dense(4)]  # noqa: E731
    runs = []
    for backend, compiled, layers in (
        (CaptureSimBackend(), False, RETUNED),
        (CaptureSimBackend(steps), True, RETUNED),
        (fn.get_backend("numpy"), False, dense_only),
        (fn.get_backend("numba"), True, dense_only),  # (the fused step takes Dense layers)
    ):
        model = _model(backend, layers=layers)
        model.fit(*_data(), epochs=3, batch_size=16, verbose=0, compiled=compiled,
                  callbacks=[_Retune(slopes)])  # fmt: skip
        runs.append(model)
    assert runs[1].step_description.startswith("captured graph")
    assert runs[3].step_description.startswith("numba fused")
    _assert_same(runs[0], runs[1])
    for a, b in zip(_weights(runs[2]), _weights(runs[3])):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_layer_constants_changed_by_a_callback_capture_again(steps):
    runs = []
    for backend, compiled in ((CaptureSimBackend(), False), (CaptureSimBackend(steps), True)):
        model = _model(backend, layers=LAYERS["both"])
        model.fit(*_data(), epochs=3, batch_size=16, verbose=0, compiled=compiled,
                  callbacks=[_Retune()])  # fmt: skip
        runs.append(model)
    _assert_same(*runs)
    for a, b in zip(_buffers(runs[0]), _buffers(runs[1])):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_the_dropout_stream_is_part_of_the_state():
    """A resumed fit draws the masks an uninterrupted one draws: the stream's key and step
    travel with the state (checkpoints, pickles); a state without them keeps the stream."""
    X, y = _data()
    whole = _model(fn.get_backend("numpy"), layers=LAYERS["dropout"])
    kw = dict(batch_size=16, verbose=0, shuffle=False)  # (the data order: test_checkpoint)
    whole.fit(X, y, epochs=2, **kw)
    first = _model(fn.get_backend("numpy"), layers=LAYERS["dropout"])
    first.fit(X, y, epochs=1, **kw)
    state = first.get_state()
    assert state["stream/1/dropout"].tolist() == [stream_key(5), 6]
    resumed = _model(fn.get_backend("numpy"), layers=LAYERS["dropout"]).build(12)
    resumed.set_state(state)
    resumed.fit(X, y, epochs=1, **kw)
    np.testing.assert_allclose(_weights(resumed), _weights(whole), rtol=1e-12)
    del state["stream/1/dropout"]
    resumed.set_state(state)  # an older checkpoint: the stream stays as it was
    assert resumed.layers[1].stream.tolist() == [stream_key(5), 12]


def test_a_fit_releases_the_data_its_graphs_gathered_from():
    model = _fit(CaptureSimBackend(3), True, "dropout")
    step = _step(model)
    assert step.data == () and step.order is None and step.multi == {}


def test_numba_and_cuda_dropout_use_the_references_bits():
    from fastnet.kernels import numba_random

    from fastnet.backends import counter_rng

    assert numba_random.BITS == counter_rng.BITS
    if probe("cupy").reason.startswith("cupy is not installed"):
        pytest.skip("cupy is not installed")
    from fastnet.kernels import cupy_gpu

    assert cupy_gpu.RANDOM_BITS == counter_rng.BITS
    assert f">> {64 - counter_rng.BITS};" in cupy_gpu._SPLITMIX


def test_synchronized_batchnorm_config_and_checks():
    layer = fn.BatchNorm1d(momentum=0.8, synchronized=True)
    assert layer.get_config() == {
        "name": "batchnorm1d",
        "momentum": 0.8,
        "eps": 1e-5,
        "synchronized": True,
    }
    assert fn.BatchNorm1d.from_config(layer.get_config()).synchronized
    assert "synchronized" not in fn.BatchNorm1d().get_config()  # older files stay as they were
    with pytest.raises(ValueError, match="synchronized"):
        fn.BatchNorm1d(synchronized="yes")
    X, y = _data()  # one process: a synchronized layer is an ordinary one
    models = [
        _model(
            CaptureSimBackend(),
            layers=lambda s=s: [fn.Dense(8), fn.BatchNorm1d(synchronized=s), fn.Dense(4)],
        )
        for s in (False, True)
    ]
    for model in models:
        model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    _assert_same(*models)


def test_a_batch_norm_model_refuses_batches_of_one_row_before_training():
    X, y = _data()
    model = _model(CaptureSimBackend(), layers=lambda: [fn.Dense(8), fn.BatchNorm1d(), fn.Dense(4)])
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        model.fit(X, y, epochs=1, batch_size=1, verbose=0)
    assert not model.built  # nothing changed
