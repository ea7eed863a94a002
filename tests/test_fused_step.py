"""The numba backend's fused step (``fastnet.backends.numba_step``): the same training as the
eager step, chosen by ``fit`` when the model qualifies, with the reason when it does not."""

import numpy as np
import pytest

import fastnet as fn
from fastnet.backends import probe

pytestmark = pytest.mark.skipif(not probe("numba").available, reason="numba unavailable")


def _data(n=250, d=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :classes].argmax(axis=1) + (X[:, -1] > 1)) % classes
    return X, y


def _model(dtype="float32", layers=None, **kwargs):
    layers = layers or [
        fn.Dense(16, "relu"),
        fn.Dense(8, "leaky_relu", alpha=0.1),
        fn.Dense(8, "sigmoid", use_bias=False),
        fn.Dense(4),
    ]
    return fn.Sequential(layers, backend="numba", dtype=dtype, seed=3, **kwargs)


LOSS_OPTIONS = {
    "labels": (0.0, {}),
    "one_hot": (0.0, {"one_hot": True}),
    "smoothing": (0.1, {}),
    "weights": (0.0, {"sample_weight": np.linspace(0.5, 1.5, 250)}),
    "soft_smoothed": (0.2, {"soft": True}),
}


def _targets(y, one_hot=False, soft=False):
    if not (one_hot or soft):
        return y
    t = np.eye(4)[y]
    return 0.7 * t + 0.3 * np.random.default_rng(1).dirichlet(np.ones(4), len(y)) if soft else t


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
@pytest.mark.parametrize("option", list(LOSS_OPTIONS))
def test_fused_step_trains_like_the_eager_step(dtype, rtol, optimizer, option):
    """Every loss option runs fused (one-hot labels crashed the fused step before)."""
    smoothing, data_kw = LOSS_OPTIONS[option]
    X, y = _data()  # 250 rows, batch 64: three full batches and a partial one
    weights = data_kw.get("sample_weight")
    y = _targets(y, data_kw.get("one_hot", False), data_kw.get("soft", False))
    eager, fused = (
        _model(dtype, optimizer=optimizer, loss=fn.SoftmaxCrossEntropy(smoothing)) for _ in range(2)
    )
    kw = {"epochs": 2, "batch_size": 64, "verbose": 0, "sample_weight": weights}
    h_eager = eager.fit(X, y, compiled=False, **kw)
    h_fused = fused.fit(X, y, **kw)
    assert fused.step_description.startswith("numba fused step")
    assert fused.backend.kernel_report["train_step"] == fused.step_description
    assert eager.step_description == "eager (compiled=False)"
    np.testing.assert_allclose(h_fused["loss"], h_eager["loss"], rtol=rtol)
    assert h_fused["accuracy"] == h_eager["accuracy"]
    for a, b in zip(eager.arena.groups, fused.arena.groups):
        np.testing.assert_allclose(b.values, a.values, rtol=rtol, atol=rtol)
        for key in a.slots:
            np.testing.assert_allclose(b.slots[key], a.slots[key], rtol=rtol, atol=rtol)
        assert a.step == b.step == 8


def test_fused_step_follows_state_replaced_between_fits():
    X, y = _data()
    model = _model("float64")
    model.fit(X, y, epochs=1, batch_size=50, verbose=0, shuffle=False)
    state = model.get_state()
    model.fit(X, y, epochs=1, batch_size=50, verbose=0, shuffle=False)
    trained_twice = model.get_state()
    model.set_state(state)
    model.fit(X, y, epochs=1, batch_size=50, verbose=0, shuffle=False)
    for key, value in model.get_state().items():
        np.testing.assert_allclose(value, trained_twice[key], rtol=1e-12)


@pytest.mark.parametrize(
    "build, fit_kwargs, reason",
    [
        (
            lambda: _model(layers=[fn.Dense(8, "relu"), fn.BatchNorm1d(), fn.Dense(4)]),
            {},
            "Dense layers, each with at most one Dropout",
        ),
        (
            lambda: _model(layers=[fn.Dense(8, "relu"), fn.ReLU(), fn.Dense(4)]),
            {},
            "Dense layers, each",
        ),
        (lambda: _model(layers=[fn.Dense(8, "tanh"), fn.Dense(4)]), {}, "tanh"),
    ],
)
def test_models_the_fused_step_does_not_cover_train_eager_and_say_why(build, fit_kwargs, reason):
    X, y = _data()
    model = build()
    model.fit(X, y, epochs=1, batch_size=64, verbose=0, **fit_kwargs)
    assert model.step_description.startswith("eager (")
    assert reason in model.step_description


def test_fused_kernel_refuses_out_of_range_labels():
    """Labels index the logits unchecked inside the kernel: it checks them first."""
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    step, _ = model.backend.compile_step(model, 64, None)
    step.begin_epoch()
    before = model.get_state()
    with pytest.raises(ValueError, match="labels"):
        step(X[:64], np.full(64, 4))
    with pytest.raises(ValueError, match="labels"):
        step(X[:64], np.full(64, -1))
    for key, value in model.get_state().items():
        np.testing.assert_array_equal(value, before[key])


def test_fused_step_divergence_restores_the_last_finite_weights():
    X, y = _data()
    model = _model(optimizer=fn.SGD(lr=1e30))
    with pytest.warns(RuntimeWarning, match="loss became"):
        model.fit(X * 1e3, y, epochs=3, batch_size=64, verbose=0)
    assert model.step_description.startswith("numba fused step")
    assert all(np.isfinite(g.values).all() for g in model.arena.groups)


def test_training_and_validation_share_numba_blas():
    """Eager, fused and evaluation matmuls all go through the numba kernels' GEMM (NumPy's
    BLAS: one thread pool)."""
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=1, batch_size=64, verbose=0, validation_data=(X[:50], y[:50]))
    assert model.backend.kernel_report["matmul"].startswith("blas (numba")


DROPOUT_STACKS = {
    "hidden": lambda: [fn.Dense(16, "relu"), fn.Dropout(0.3), fn.Dense(8, "sigmoid"),
                       fn.Dropout(0.1, seed=9), fn.Dense(4)],
    "input": lambda: [fn.Dropout(0.2), fn.Dense(16, "leaky_relu", alpha=0.1), fn.Dense(4)],
    "rate0": lambda: [fn.Dense(16, "relu"), fn.Dropout(0.0), fn.Dense(4)],
}  # fmt: skip


class _Rates(fn.Callback):
    """Changes dropout rates between epochs (0.3 -> 0 -> 0.5): the step follows them."""

    def on_epoch_begin(self, model, epoch):
        for layer in model.layers:
            if isinstance(layer, fn.Dropout) and epoch:
                layer.rate = (0.0, 0.5)[epoch - 1]


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
@pytest.mark.parametrize("stack", list(DROPOUT_STACKS))
def test_dropout_runs_in_the_fused_step_as_eager(dtype, rtol, stack):
    """Dropout before a Dense layer (hidden or on the input) runs inside the fused call, with
    the eager step's masks (the same counter-based stream, advanced once per step)."""
    X, y = _data()
    eager, fused = (_model(dtype, layers=DROPOUT_STACKS[stack]()) for _ in range(2))
    kw = {"epochs": 3, "batch_size": 64, "verbose": 0}
    h_eager = eager.fit(X, y, compiled=False, **kw)
    h_fused = fused.fit(X, y, **kw)
    assert fused.step_description.startswith("numba fused step"), fused.step_description
    np.testing.assert_allclose(h_fused["loss"], h_eager["loss"], rtol=rtol)
    for a, b in zip(eager.arena.groups, fused.arena.groups):
        np.testing.assert_allclose(b.values, a.values, rtol=rtol, atol=rtol)
    for a, b in zip(eager.layers, fused.layers):
        if isinstance(a, fn.Dropout):
            steps = 0 if a.rate == 0 else 12  # 4 batches an epoch
            assert int(a.stream[1]) == int(b.stream[1]) == steps


def test_dropout_rates_changed_between_epochs_are_followed():
    X, y = _data()
    runs = []
    for compiled in (False, "auto"):
        model = _model("float64", layers=DROPOUT_STACKS["hidden"]())
        model.fit(X, y, epochs=3, batch_size=64, verbose=0, compiled=compiled,
                  callbacks=[_Rates()])  # fmt: skip
        runs.append(model)
    assert runs[1].step_description.startswith("numba fused step")
    for a, b in zip(runs[0].arena.groups, runs[1].arena.groups):
        np.testing.assert_allclose(b.values, a.values, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "layers, reason",
    [
        (lambda: [fn.Dense(8), fn.Dropout(0.2), fn.Dropout(0.2), fn.Dense(4)], "at most one"),
        # rate 0 draws nothing, but a callback may raise it: the structure is what counts
        (lambda: [fn.Dropout(0.0), fn.Dropout(0.5), fn.Dense(8), fn.Dense(4)], "at most one"),
        (lambda: [fn.Dense(8), fn.Dense(4), fn.Dropout(0.0)], "at most one Dropout before"),
        (lambda: [fn.Dense(8), fn.Dense(4), fn.Dropout(0.2)], "at most one Dropout before"),
        (lambda: [fn.Dense(8), fn.BatchNorm1d(), fn.Dense(4)], "Dense layers, each"),
    ],
)
def test_stacks_outside_the_fused_step_say_why(layers, reason):
    model = _model(layers=layers())
    model.fit(*_data(), epochs=1, batch_size=64, verbose=0)
    assert model.step_description.startswith("eager (") and reason in model.step_description


BCE_TARGETS = {  # (outputs, targets from the labels y and a generator)
    "labels": (1, lambda y, r: (y > 1).astype(np.int64)),
    "probabilities": (1, lambda y, r: r.random((len(y), 1))),
    "flat_probabilities": (1, lambda y, r: r.random(len(y))),
    "multi_label": (3, lambda y, r: np.eye(4)[y][:, :3] + (r.random((len(y), 3)) < 0.2) % 2),
}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weights"])
@pytest.mark.parametrize("option", list(BCE_TARGETS))
def test_sigmoid_binary_cross_entropy_runs_fused_as_eager(dtype, rtol, weighted, option):
    """A sigmoid output with binary cross-entropy (MLPClassifier's two classes) ran eagerly on
    numba; now in the fused call, computing what the eager step computes."""
    outputs, make = BCE_TARGETS[option]
    X, y = _data()
    targets = np.clip(make(y, np.random.default_rng(2)), 0, 1)
    layers = lambda: [fn.Dense(16, "relu"), fn.Dense(8, "sigmoid"), fn.Dense(outputs)]  # noqa: E731
    eager, fused = (_model(dtype, layers(), loss="bce") for _ in range(2))
    kw = {"epochs": 2, "batch_size": 64, "verbose": 0}
    kw["sample_weight"] = np.linspace(0.5, 1.5, 250) if weighted else None
    h_eager = eager.fit(X, targets, compiled=False, **kw)
    assert eager.backend.kernel_report["sigmoid_bce"] == "numba-fused"  # (one shared backend)
    h_fused = fused.fit(X, targets, **kw)
    assert fused.step_description.startswith("numba fused step"), fused.step_description
    np.testing.assert_allclose(h_fused["loss"], h_eager["loss"], rtol=rtol)
    assert h_fused["accuracy"] == h_eager["accuracy"]
    for a, b in zip(eager.arena.groups, fused.arena.groups):
        np.testing.assert_allclose(b.values, a.values, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weights"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_mean_squared_error_runs_fused_as_eager(dtype, rtol, weighted, outputs):
    """Regression (MLPRegressor's scaled mean squared error) ran eagerly on numba; now in the
    fused call, computing what the eager step computes, flat targets of one output too."""
    X, y = _data()
    targets = X[:, :outputs] * 2 + y[:, None]
    targets = targets[:, 0] if outputs == 1 else targets
    layers = lambda: [fn.Dense(16, "relu"), fn.Dense(8, "sigmoid"), fn.Dense(outputs)]  # noqa: E731
    loss = lambda: fn.MeanSquaredError(scale=outputs / 2)  # noqa: E731
    eager, fused = (_model(dtype, layers(), loss=loss()) for _ in range(2))
    kw = {"epochs": 2, "batch_size": 64, "verbose": 0}
    kw["sample_weight"] = np.linspace(0.5, 1.5, 250) if weighted else None
    h_eager = eager.fit(X, targets, compiled=False, **kw)
    assert eager.backend.kernel_report["squared_error"] == "numba-fused"  # (one shared backend)
    h_fused = fused.fit(X, targets, **kw)
    assert fused.step_description.startswith("numba fused step"), fused.step_description
    np.testing.assert_allclose(h_fused["loss"], h_eager["loss"], rtol=rtol)
    for a, b in zip(eager.arena.groups, fused.arena.groups):
        np.testing.assert_allclose(b.values, a.values, rtol=rtol, atol=rtol)
    reference = fn.Sequential(layers(), loss=loss(), backend="numpy", dtype=dtype, seed=3)
    h_ref = reference.fit(X, targets, shuffle=False, **kw)
    h_fused = _model(dtype, layers(), loss=loss()).fit(X, targets, shuffle=False, **kw)
    np.testing.assert_allclose(h_fused["loss"], h_ref["loss"], rtol=rtol * 10)


def test_fused_sigmoid_step_takes_flat_labels_as_the_eager_step():
    """Called directly with integer 0/1 labels of shape (n,): as ``train_step`` takes them."""
    X, y = _data()
    layers = lambda: [fn.Dense(16, "relu"), fn.Dense(1)]  # noqa: E731
    eager, fused = (_model("float64", layers(), loss="bce") for _ in range(2))
    for model in (eager, fused):
        model.fit(X, y > 1, epochs=1, batch_size=64, verbose=0)
    step, _ = fused.backend.compile_step(fused, 64, None)
    step.begin_epoch()
    labels = (y[:64] > 1).astype(np.int64)
    step(X[:64].astype(np.float64), labels)
    totals = eager.train_step(X[:64].astype(np.float64), labels)
    np.testing.assert_array_equal(step.totals, totals)
    for a, b in zip(eager.arena.groups, fused.arena.groups):
        np.testing.assert_array_equal(b.values, a.values)


class AbsoluteError(fn.losses.Loss):
    """A loss of array expressions: no fused op."""

    name = "test_absolute_error_fused"

    def compute(self, outputs, targets, weights=None):
        diff = outputs - targets.reshape(outputs.shape)
        return abs(diff).mean(), np.sign(diff) / diff.size


@pytest.mark.parametrize(
    "swap", [("softmax_cross_entropy", "bce"), ("bce", "mse"), ("mse", "test_absolute_error_fused")]
)
def test_a_loss_swapped_mid_fit_reaches_the_fused_step(swap):
    """A batch callback's new loss: softmax to sigmoid cross-entropy, or that to mean squared
    error, stays fused (re-read); to a loss of array expressions runs eagerly; each as eager
    steps."""
    first, then = swap

    class Swap(fn.Callback):
        def on_batch_begin(self, model, batch):
            if batch == 2:
                model.loss = fn.losses.get_loss(then)
                model.loss.build(model.backend)

    X, y = _data()
    runs = []
    for compiled in (False, "auto"):
        model = _model("float64", loss=first)
        model.fit(X, np.eye(4)[y], epochs=2, batch_size=64, verbose=0, compiled=compiled,
                  callbacks=[Swap()])  # fmt: skip
        runs.append(model)
    eager = then == "test_absolute_error_fused"
    assert runs[1].step_description.startswith("eager" if eager else "numba fused")
    np.testing.assert_allclose(runs[1].history["loss"], runs[0].history["loss"], rtol=1e-12)
    for a, b in zip(runs[0].arena.groups, runs[1].arena.groups):
        np.testing.assert_allclose(b.values, a.values, rtol=1e-12, atol=1e-14)


def test_the_kernel_report_says_when_a_callback_made_the_step_eager():
    """A slope made negative in epoch 2: the description said eager, the report still
    'numba fused step' alone."""

    class NegativeSlope(fn.Callback):
        def on_epoch_begin(self, model, epoch):
            if epoch == 1:
                model.layers[1].alpha = -0.1

    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=2, batch_size=32, verbose=0, callbacks=[NegativeSlope()])
    report = model.backend.kernel_report["train_step"]
    assert model.step_description.startswith("eager (") and "numba fused step" in report
    assert model.step_description in report  # (both ran: fused, then eager)


@pytest.mark.parametrize(
    "separate, fused",
    [
        ([fn.ReLU()], "relu"),
        ([fn.LeakyReLU(0.2)], "leaky_relu"),
        ([fn.Sigmoid()], "sigmoid"),
        ([fn.ReLU(), fn.Dropout(0.3)], "relu"),
    ],
    ids=["relu", "leaky", "sigmoid", "relu-dropout"],
)
def test_the_notebooks_separate_activation_layers_fuse_bit_for_bit(separate, fused):
    """Affine, Relu, Affine (a linear Dense, then an activation layer) trained eagerly on numba;
    it is the fused step now, with the same weights bit for bit as Dense(units, activation),
    and predictions through the fused inference kernel."""
    X, y = _data()
    alpha = {"alpha": 0.2} if fused == "leaky_relu" else {}
    dropout = [fn.Dropout(0.3)] if len(separate) > 1 else []
    models = [
        _model(layers=[fn.Dense(8), *separate, fn.Dense(4)]),
        _model(layers=[fn.Dense(8, fused, **alpha), *dropout, fn.Dense(4)]),
    ]
    for model in models:
        model.fit(X, y, epochs=2, batch_size=64, verbose=0)
        assert (
            model.step_description
            == "numba fused step (forward, loss and backward in one JIT call)"
        )
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with fn.record_kernels(models[0].backend) as ran:
        proba = models[0].predict_proba(X)
    assert ran["matmul"] == "blas (numba, fused inference)"
    np.testing.assert_array_equal(proba, models[1].predict_proba(X))
