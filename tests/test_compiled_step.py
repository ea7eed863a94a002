"""Compiled steps equal eager steps, proven on CPU: the captured step (``graph_step``) runs on
a NumPy backend with CUDA-graph capture semantics (``capture_backend``), and must give the
eager weights after 3 epochs for every optimizer, schedule and loss option."""

from __future__ import annotations

import numpy as np
import pytest
from capture_backend import CaptureError, CaptureSimBackend

import fastnet as fn
from fastnet.optimizers import OPTIMIZERS as REGISTRY
from fastnet.optimizers import get_optimizer

OPTIMIZERS = REGISTRY.builtin()  # every rule fastnet has: a new one is tested unasked
SCHEDULES = {
    "none": lambda: [],
    "cosine": lambda: [fn.CosineDecay(3, min_lr=1e-4)],
    "warmup_cosine": lambda: [fn.WarmupCosine(1, 3)],
    "plateau": lambda: [fn.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10)],
}
TARGETS = ["labels", "smoothing", "one_hot", "multilabel", "regression"]


def _data(n=90, d=12, k=4, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, k, n)
    X = r.normal(size=(n, d)) + y[:, None] * 0.3
    return X, y


def _model(backend, optimizer="adam", smoothing=0.0, layers=None, target="labels", **opt):
    """A float64 model; ``layers`` is a function making fresh layers (models own theirs);
    the loss ``target`` asks for: the sigmoid binary cross-entropy (multilabel), the mean
    squared error (regression, scaled), else the softmax one."""
    layers = layers() if layers else [fn.Dense(16, "relu"), fn.Dense(8, "leaky_relu"), fn.Dense(4)]
    loss = {
        "multilabel": fn.SigmoidBinaryCrossEntropy(),
        "regression": fn.MeanSquaredError(scale=2.0),
    }.get(target, fn.SoftmaxCrossEntropy(label_smoothing=smoothing))
    optimizer = get_optimizer(
        optimizer, lr=0.05 if optimizer in ("sgd", "momentum") else 0.01, **opt
    )
    return fn.Sequential(
        layers, loss=loss, optimizer=optimizer, backend=backend, dtype="float64", seed=3
    )


def _train(compiled, optimizer, schedule, target, fit_kw=None, **model_kw):
    backend = CaptureSimBackend()
    X, y = _data()
    smoothing = 0.1 if target == "smoothing" else 0.0
    targets = np.eye(4)[y] if target == "one_hot" else y
    if target == "multilabel":  # each row's class and the next one, for the sigmoid BCE
        targets = np.eye(4)[y] + np.eye(4)[(y + 1) % 4]
    if target == "regression":
        targets = X[:, :4] * X[:, 4:8]
    model = _model(backend, optimizer, smoothing, target=target, **model_kw)
    model.fit(
        X,
        targets,
        epochs=3,
        batch_size=16,
        verbose=0,
        compiled=compiled,
        callbacks=SCHEDULES[schedule](),
        **(fit_kw or {}),
    )
    return model, backend


def _weights(model):
    return np.concatenate([g.values for g in model.arena.groups])


def _assert_equal_training(kw_args, fit_kw=None, **model_kw):
    eager, _ = _train(False, *kw_args, fit_kw=fit_kw, **model_kw)
    graphed, backend = _train(True, *kw_args, fit_kw=fit_kw, **model_kw)
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    step = next(iter(graphed._compiled_steps.values()))[0]
    assert step.replays == 14  # 6 batches an epoch, the last partial; 1 eager warm-up
    np.testing.assert_allclose(_weights(graphed), _weights(eager), rtol=1e-12, atol=1e-14)
    assert graphed.history["loss"] == pytest.approx(eager.history["loss"], rel=1e-12)
    assert graphed.history.get("accuracy") == eager.history.get("accuracy")
    for a, b in zip(eager.arena.groups, graphed.arena.groups):
        assert a.step == b.step == 18
        for key in a.slots:
            np.testing.assert_allclose(b.slots[key], a.slots[key], rtol=1e-12, atol=1e-14)
    return backend


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_captured_step_equals_eager(optimizer, schedule, target):
    backend = _assert_equal_training((optimizer, schedule, target))
    gathers = {stream for op, stream in backend.issued if op in ("take_rows", "permutation")}
    assert gathers == {"step"}, "batch gathers must run on the step's stream"
    steps = {stream for op, stream in backend.issued if op in ("update", "advance_scalars")}
    assert steps == {"step"}


@pytest.mark.parametrize("target", ["labels", "multilabel", "regression"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_captured_step_with_weights_and_clipping(optimizer, target):
    weights = np.random.default_rng(1).uniform(0.1, 2.0, 90)
    _assert_equal_training(
        (optimizer, "warmup_cosine", target),
        {"sample_weight": weights},
        clip_norm=0.05,
        clip_value=0.02,
    )


def test_captured_step_with_activation_layers_and_per_layer_optimizers():
    def layers():
        return [
            fn.Dense(16, optimizer=fn.Momentum(0.02)),
            fn.ReLU(),
            fn.Dense(8),
            fn.Sigmoid(),
            fn.Dense(4),
        ]

    _assert_equal_training(("adam", "cosine", "smoothing"), layers=layers)


def test_layers_outside_the_plan_train_eagerly_with_the_reason():
    model = _model(
        CaptureSimBackend(), layers=lambda: [fn.Dense(8, "relu"), fn.Softmax(), fn.Dense(4)]
    )
    X, y = _data()
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    assert model.step_description.startswith("eager (captured steps cover Dense, activation")
    assert "Softmax" in model.step_description
    with pytest.raises(ValueError, match="compiled=True"):
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, compiled=True)


class AbsoluteError(fn.losses.Loss):
    """A loss of array expressions (no backend op): captured steps cannot replay it."""

    name = "test_absolute_error"

    def compute(self, outputs, targets, weights=None):
        diff = outputs - targets.reshape(outputs.shape)
        return abs(diff).mean(), np.sign(diff) / diff.size


def test_other_losses_train_eagerly_with_the_reason():
    model = fn.Sequential([fn.Dense(1)], loss=AbsoluteError(), backend=CaptureSimBackend())
    X, y = _data()
    model.fit(X, y.astype(float), epochs=1, verbose=0)
    assert "not test_absolute_error (array expressions)" in model.step_description


def test_a_host_frozen_scalar_is_caught(monkeypatch):
    """The sim's point: a step-dependent value handed to a captured op from the host is
    replayed frozen. An optimizer that hands the update a host copy of its scalars (what
    computing the step size on the host amounts to) must make a per-step schedule diverge."""
    from fastnet.optimizers import Optimizer

    def host_scalars_update(self, group, backend):
        backend.update(
            self,
            group.values,
            group.grads,
            tuple(group.slots.values()),
            group.scalars.copy(),
            self.constants(),
            group.n_decay,
            self.weight_decay,
            self.clip_value,
        )

    eager, _ = _train(False, "sgd", "warmup_cosine", "labels")
    monkeypatch.setattr(Optimizer, "update", host_scalars_update)
    host_eager, _ = _train(False, "sgd", "warmup_cosine", "labels")
    frozen, _ = _train(True, "sgd", "warmup_cosine", "labels")
    np.testing.assert_allclose(_weights(host_eager), _weights(eager), rtol=1e-12)
    assert not np.allclose(_weights(frozen), _weights(eager), rtol=1e-6)


def test_allocation_inside_capture_is_refused():
    backend = CaptureSimBackend()
    with backend.step_stream(), pytest.raises(CaptureError, match="allocation"):
        backend.capture(lambda: backend.zeros((3,), np.float64))
    with pytest.raises(CaptureError, match="default stream"):
        backend.capture(lambda: None)


def test_schedule_changes_need_no_recapture():
    model, _ = _train(True, "adam", "warmup_cosine", "labels")
    step = next(iter(model._compiled_steps.values()))[0]
    graph = step.graph
    model.fit(
        *_data(), epochs=1, batch_size=16, verbose=0, compiled=True, callbacks=[fn.CosineDecay(1)]
    )
    assert step.graph is graph  # the same capture serves the new learning rates


def test_changed_constants_recapture():
    model, _ = _train(True, "adam", "none", "labels")
    step = next(iter(model._compiled_steps.values()))[0]
    model.optimizer.beta1 = 0.5
    model.fit(*_data(), epochs=1, batch_size=16, verbose=0, compiled=True)
    fresh = [s for s, _ in model._compiled_steps.values() if s is not step]
    assert len(fresh) == 1 and fresh[0].graph is not None  # captured anew with beta1 = 0.5


def test_building_a_built_model_keeps_its_weights_and_compiled_step():
    model, _ = _train(True, "adam", "none", "labels")
    old = next(iter(model._compiled_steps.values()))[0]
    weights = [p.value.copy() for p in model.parameters()]
    arena = model.arena
    assert model.build(model.input_dim) is model  # as the notebooks' loop calls it
    assert model.arena is arena
    for p, w in zip(model.parameters(), weights):
        np.testing.assert_array_equal(p.value, w)
    with pytest.raises(ValueError, match="input_dim=3: the model is built for inputs of width"):
        model.build(3)
    model.fit(*_data(), epochs=1, batch_size=16, verbose=0, compiled=True)
    assert [s for s, _ in model._compiled_steps.values()] == [old]


class _DeviceArray:
    """A stand-in for a torch/JAX array on the GPU (DLPack device type 2)."""

    def __init__(self, a):
        self.a = a

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kw):
        return self.a.__dlpack__()


class _GpuLikeBackend(CaptureSimBackend):
    """A backend that says its arrays live on CUDA device 0 (host memory underneath)."""

    def dlpack_device(self):
        return (2, 0)

    def from_dlpack(self, x):
        return np.from_dlpack(x.a)


def test_device_labels_are_adopted_through_dlpack_like_features():
    """Labels from another framework on the model's device are adopted as X is (they were
    refused with 'copy it to the host first')."""
    X, y = _data()
    model = _model(_GpuLikeBackend())
    model.fit(_DeviceArray(X), _DeviceArray(y), epochs=1, batch_size=16, verbose=0)
    assert model.history["loss"] and model.step_description.startswith("captured graph")


@pytest.mark.parametrize("rows", [16, 20, 31])
def test_one_full_batch_with_several_steps_per_replay(rows):
    """A fresh step with K > 1 steps per replay and a single full batch: the warm-up is that
    batch, and no gather may read past the permutation (on a GPU: an illegal address)."""
    X, y = _data()
    models = []
    for compiled in (False, True):
        model = _model(CaptureSimBackend(steps_per_graph=32))
        model.fit(X[:rows], y[:rows], epochs=3, batch_size=16, verbose=0, compiled=compiled)
        models.append(model)
    np.testing.assert_allclose(_weights(models[1]), _weights(models[0]), rtol=1e-12, atol=1e-14)


class _ObstacleBackend(CaptureSimBackend):
    """Its eager Dense forward meets an obstacle to capture (as cupy's half GEMM without a
    cuBLASLt algorithm) on the first call outside a capture."""

    synced = True  # no device work issued since the last synchronize

    def linear(self, *args, **kwargs):
        if not self.capturing and not self.obstacles_seen:
            self.obstacles_seen += 1
            self.last_obstacle = "no algorithm for this GEMM"
        self.synced = False
        return super().linear(*args, **kwargs)

    def synchronize(self):
        self.synced = True
        return super().synchronize()


@pytest.mark.parametrize("steps_per_graph", [1, 32])
def test_an_obstacle_met_in_the_warm_up_keeps_the_step_eager(steps_per_graph):
    """What the eager warm-up met is named in step_description, nothing is captured, and the
    training is the eager one; compiled=True says it cannot be had, also from the cached step
    of a later fit (before changing anything then)."""
    X, y = _data()
    eager = _model(CaptureSimBackend())
    eager.fit(X, y, epochs=2, batch_size=16, verbose=0, compiled=False)
    model = _model(_ObstacleBackend(steps_per_graph))
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert model.step_description == "eager (no algorithm for this GEMM)"
    step = next(iter(model._compiled_steps.values()))[0]
    assert step.replays == 0 and step.captures == []
    np.testing.assert_allclose(_weights(model), _weights(eager), rtol=1e-12, atol=1e-14)
    before = _weights(model).copy()
    with pytest.raises(ValueError, match="compiled=True.*no algorithm for this GEMM"):
        model.fit(X, y, epochs=1, batch_size=16, verbose=0, compiled=True)
    np.testing.assert_array_equal(_weights(model), before)
    fresh = _model(_ObstacleBackend(steps_per_graph)).build(X.shape[1])
    built = _weights(fresh).copy()
    restore = fresh.set_state

    def after_the_queued_steps(*args, **kwargs):  # (a GPU's stream: the warm-up's updates)
        assert fresh.backend.synced, "the state restored before the queued steps finished"
        return restore(*args, **kwargs)

    fresh.set_state = after_the_queued_steps
    with pytest.raises(ValueError, match="compiled=True.*no algorithm for this GEMM"):
        fresh.fit(X, y, epochs=1, batch_size=16, verbose=0, compiled=True)
    np.testing.assert_array_equal(_weights(fresh), built)  # the warm-up step undone
    assert all(g.step == 0 for g in fresh.arena.groups)
    fresh.fit(X, y, epochs=1, batch_size=16, verbose=0)  # the cached step, now said eager
    assert fresh.step_description == "eager (no algorithm for this GEMM)"


def test_streamed_chunks_wait_for_the_previous_copy_before_refilling():
    """Streamed data is gathered into one pinned buffer per epoch and copied asynchronously:
    a chunk may be gathered there only after the previous chunk's copy has read it."""
    from fastnet.training import StreamedBatches

    class Copy:  # pending until synchronized: its pinned source must not change until then
        def __init__(self, src):
            self.src, self.seen, self.done = src, src.copy(), False

        def check(self):
            assert np.array_equal(self.src, self.seen), "refilled while a copy was pending"

        def synchronize(self):
            self.check()
            self.done = True

    class AsyncCopies(CaptureSimBackend):
        def __init__(self):
            super().__init__()
            self.copies = []

        def copy_from_host(self, dst, src):
            for copy in self.copies:
                if not copy.done:
                    copy.check()
            dst[...] = src
            self.copies.append(Copy(src))
            return self.copies[-1]

    backend = AsyncCopies()
    X, y = _data()
    source = StreamedBatches(X, y, backend, shuffle=False, chunk_batches=2)
    bounds = [(lo, min(lo + 16, len(X))) for lo in range(0, len(X), 16)]
    got = [xb.copy() for xb, _, _ in source.epoch(bounds, None, np.arange(len(X)))]
    np.testing.assert_array_equal(np.concatenate(got), X)
    assert len(backend.copies) == 6 and all(c.done for c in backend.copies[:-2])


def _compiled_backend(name):
    if name == "sim":
        return CaptureSimBackend()
    if name == "emulated":
        import emulated_cupy

        return emulated_cupy.emulated_cupy_backend(4)  # four steps per replay where it can
    return name


MID_FIT_CHANGES = {
    "clip_norm": lambda m: setattr(m.optimizer, "clip_norm", 0.05),
    "weight_decay": lambda m: setattr(m.optimizer, "weight_decay", 0.5),
    "beta1": lambda m: setattr(m.optimizer, "beta1", 0.5),
    "label_smoothing": lambda m: setattr(m.loss, "label_smoothing", 0.3),
    "leaky_slope": lambda m: setattr(m.layers[0], "alpha", 0.3),
    "negative_slope": lambda m: setattr(m.layers[0], "alpha", -0.2),  # not fused: eager
    "dropout_rate": lambda m: setattr(m.layers[1], "rate", 0.6),
    "loss": lambda m: setattr(m, "loss", fn.losses.get_loss("mse")),  # (one op: compiled)
    "custom_loss": lambda m: setattr(m, "loss", AbsoluteError()),  # not captured: eager
}


class _ChangeAt(fn.Callback):
    def __init__(self, change, epoch, batch):
        self.change, self.at = change, (epoch, batch)

    def on_epoch_begin(self, model, epoch):
        self.epoch = epoch

    def on_batch_begin(self, model, batch):
        if (self.epoch, batch) == self.at:
            self.change(model)
            model.loss.build(model.backend)


@pytest.mark.parametrize("where", [(0, 3), (1, 0)], ids=["mid_epoch", "epoch_start"])
@pytest.mark.parametrize("backend", ["sim", "emulated", "numba"])
@pytest.mark.parametrize("change", sorted(MID_FIT_CHANGES))
def test_a_callbacks_change_mid_fit_reaches_compiled_steps_at_once(change, backend, where):
    """A batch callback's change of a constant a compiled step baked in (clipping, decay,
    betas, smoothing, a slope, a dropout rate) reached the graphs' full batches only at the
    next epoch, while the partial last batch ran eagerly with it; a negative slope crashed
    the numba step; a loss swapped for MSE was replayed stale. Now eager == compiled."""
    r = np.random.default_rng(0)
    y = r.integers(0, 4, 200)
    X, targets = r.normal(size=(200, 20)) + y[:, None] * 0.3, np.eye(4)[y]

    def train(compiled):
        layers = [fn.Dense(16, "leaky_relu"), fn.Dropout(0.2, seed=1), fn.Dense(4)]
        kw = {"optimizer": fn.Adam(0.01), "dtype": "float64", "seed": 3}
        model = fn.Sequential(layers, backend=_compiled_backend(backend), **kw)
        hook = _ChangeAt(MID_FIT_CHANGES[change], *where)
        model.fit(X, targets, epochs=2, batch_size=32, verbose=0, compiled=compiled,
                  callbacks=[hook])  # fmt: skip
        return model

    eager, compiled = train(False), train("auto")
    for a, b in zip(eager.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(compiled.history["loss"], eager.history["loss"], rtol=1e-12)
    eager_now = change in ("custom_loss", "negative_slope")
    assert compiled.step_description.startswith("eager") == eager_now, compiled.step_description


@pytest.mark.parametrize("backend", ["sim", "emulated"])
def test_standardize_runs_through_backend_ops_in_captured_steps(backend):
    """``Standardize`` computed with array expressions outside backend ops: the CPU proofs of
    capture replayed a stale standardized batch (1e-2 relative after 2 epochs)."""
    r = np.random.default_rng(0)
    y = r.integers(0, 4, 200)
    X = r.normal(size=(200, 20)) + y[:, None] * 0.3

    def train(compiled):
        layers = [fn.Standardize(np.full(20, 0.5), np.full(20, 2.0)), fn.Dense(16, "relu"),
                  fn.Dense(4)]  # fmt: skip
        model = fn.Sequential(layers, backend=_compiled_backend(backend), dtype="float64", seed=3)
        model.fit(X, y, epochs=2, batch_size=32, verbose=0, compiled=compiled)
        return model

    eager, compiled = train(False), train(True)
    assert compiled.step_description.startswith("captured graph")
    for a, b in zip(eager.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_a_loss_scalers_change_mid_fit_reaches_the_captured_step():
    """The change counter missed the loss scaler's constants (plain attributes): a batch
    callback's growth_interval reached eager steps at once, captured ones an epoch later."""
    import warnings

    r = np.random.default_rng(0)
    y = r.integers(0, 4, 240)
    X = r.normal(size=(240, 12)) + y[:, None] * 0.3

    class Change(fn.Callback):
        def on_batch_begin(self, model, batch):
            if batch == 2 and model.epochs_trained == 0:
                model.loss_scaler.growth_interval = 1

    def train(compiled):
        scale = {"initial_scale": 1024.0, "growth_interval": 1000}
        model = fn.Sequential([fn.Dense(16, "relu"), fn.Dense(4)], backend=CaptureSimBackend(),
                              dtype="mixed_float16", seed=3, loss_scale=scale)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y, epochs=2, batch_size=30, verbose=0, compiled=compiled,
                      callbacks=[Change()], shuffle=False)  # fmt: skip
        return model

    eager, compiled = train(False), train(True)
    assert compiled.loss_scaler.scale == eager.loss_scaler.scale
    for a, b in zip(eager.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
