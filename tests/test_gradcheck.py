"""Finite-difference gradient checks (float64) of every layer and loss on every backend."""

import numpy as np
import pytest

import fastnet as fn
from fastnet.gradcheck import check_layer, check_loss, relative_error

LAYERS = {
    "dense-linear": lambda: fn.Dense(6),
    "dense-relu": lambda: fn.Dense(6, "relu"),
    "dense-leaky": lambda: fn.Dense(6, "leaky_relu", alpha=0.1),
    "dense-sigmoid": lambda: fn.Dense(6, "sigmoid"),
    "dense-tanh": lambda: fn.Dense(6, "tanh"),
    "dense-nobias": lambda: fn.Dense(6, "tanh", use_bias=False),
    "relu": fn.ReLU,
    "leaky": lambda: fn.LeakyReLU(0.2),
    "sigmoid": fn.Sigmoid,
    "tanh": fn.Tanh,
    "softmax": fn.Softmax,
    "batchnorm": fn.BatchNorm1d,
    "dropout": lambda: fn.Dropout(0.3),
}


def _inputs(rng, shape):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-2] = 0.5  # keep ReLU kinks away from the finite-difference step
    return x


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients(backend, rng, name, mode):
    """Every layer in both modes (check_layer rewinds dropout's random stream: one mask). In
    eval mode BatchNorm is a fixed affine map: its gradient must not use batch statistics."""
    layer = LAYERS[name]()
    layer.build(5, backend, np.float64, rng)
    if name == "batchnorm":  # non-trivial running statistics for eval mode
        layer.running_mean[...] = backend.asarray(rng.standard_normal(5))
        layer.running_var[...] = backend.asarray(rng.random(5) + 0.5)
    for batch in (4, 1) if mode == "eval" else (4,):
        x = backend.asarray(_inputs(rng, (batch, 5)))
        result = check_layer(layer, x, training=mode == "train", tolerance=1e-6)
        assert result.ok, f"batch {batch}: {result}"


def test_leaky_relu_slope_must_be_finite():
    for make in (lambda a: fn.LeakyReLU(a), lambda a: fn.Dense(3, "leaky_relu", alpha=a)):
        assert make(-0.5).alpha == -0.5  # any finite slope, as PyTorch (gradient: keras test)
        with pytest.raises(ValueError, match="alpha"):
            make(float("nan"))
        with pytest.raises(ValueError, match="alpha"):
            make(float("inf"))
    assert fn.LeakyReLU(np.float32(0.2)).alpha == pytest.approx(0.2)


def test_dropout_backward_uses_forward_mask(backend, rng):
    layer = fn.Dropout(0.5, seed=3)
    layer.build(50, backend, np.float64, rng)
    x = backend.asarray(np.ones((40, 50)))
    y = backend.to_numpy(layer.forward(x, training=True)).copy()
    dx = backend.to_numpy(layer.backward(backend.asarray(np.ones((40, 50)))))
    np.testing.assert_array_equal(dx, y)  # with x = 1 and dy = 1 both equal the scaled mask
    kept = (y > 0).mean()
    assert 0.4 < kept < 0.6 and np.allclose(y[y > 0], 2.0)
    eval_out = backend.to_numpy(layer.forward(x, training=False))
    np.testing.assert_array_equal(eval_out, 1.0)


@pytest.mark.parametrize("targets", ["int", "onehot", "soft", "unnormalized", "zero-row"])
def test_softmax_cross_entropy_gradient(backend, rng, targets):
    loss = fn.SoftmaxCrossEntropy()
    loss.build(backend)
    logits = rng.standard_normal((6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    t = {
        "int": labels,
        "onehot": fn.one_hot(labels, 4, np.float64),
        "soft": rng.dirichlet(np.ones(4), 6),
        "unnormalized": rng.random((6, 4)) * 2,  # rows sum to anything: grad = p*sum(t) - t
        "zero-row": np.vstack([np.zeros((1, 4)), rng.random((5, 4))]),
    }[targets]
    result = check_loss(loss, backend.asarray(logits), backend.asarray(t))
    assert result.ok, str(result)


@pytest.mark.parametrize(
    "cls", [fn.SigmoidBinaryCrossEntropy, fn.MeanSquaredError, fn.Poisson, lambda: fn.Poisson(3)]
)
def test_other_loss_gradients(backend, rng, cls):
    loss = cls()
    loss.build(backend)
    logits = rng.standard_normal((5, 3)) * 2
    t = (rng.random((5, 3)) > 0.5).astype(np.float64)
    result = check_loss(loss, backend.asarray(logits), backend.asarray(t))
    assert result.ok, str(result)


def test_losses_reject_targets_outside_their_domain(backend):
    ce, bce = fn.SoftmaxCrossEntropy(), fn.SigmoidBinaryCrossEntropy()
    ce.build(backend)
    bce.build(backend)
    logits = backend.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        ce(logits, backend.asarray(np.array([[1.0, -0.5, 0.5], [0.0, 1.0, 0.0]])))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce(logits, backend.asarray(np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0]])))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce(logits, backend.asarray(np.array([[1.0, -0.1, 0.0], [0.0, 1.0, 0.0]])))
    X = np.zeros((4, 3), np.float32)
    model = fn.Sequential([fn.Dense(2)], backend=backend)
    with pytest.raises(ValueError, match="y: soft targets must be non-negative"):
        model.fit(X, -np.ones((4, 2)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y: the targets are all zero: no row names a class"):
        model.fit(X, np.zeros((4, 2)), epochs=1, verbose=0)  # (labels never filled in)
    model.fit(X, np.array([[0, 0], [1, 0], [0, 2], [0.5, 0.5]]), epochs=1, verbose=0)  # weights
    model = fn.Sequential([fn.Dense(1)], loss="bce", backend=backend)
    with pytest.raises(ValueError, match=r"y: targets must be in \[0, 1\]"):
        model.fit(X, np.full(4, 3.0), epochs=1, verbose=0)
    assert not model.built


def test_gradcheck_detects_a_wrong_gradient(rng):
    class BrokenTanh(fn.Tanh):
        def backward(self, dy, need_dx=True):
            return dy * 1.0  # forgets the derivative

    layer = BrokenTanh()
    backend = fn.get_backend("numpy")
    layer.build(5, backend, np.float64, rng)
    assert not check_layer(layer, rng.standard_normal((3, 5)) * 2).ok
    assert relative_error(np.ones(3), np.ones(3)) == 0.0
    noise = np.full(3, 1e-10)  # finite differences of a gradient that is truly 0
    assert relative_error(np.zeros(3), noise) == 1.0
    assert relative_error(np.zeros(3), noise, floor=1.0) < 1e-9


def test_gradcheck_fails_a_nan_gradient_and_checks_its_arguments(rng):
    """A backward returning NaN passed with error 0 (max(nan, floor) is NaN, read as "no
    gradient"); eps=nan passed everything; eps=0 divided by zero; an unbuilt layer was said
    to be float32."""

    from fastnet.layers import Layer

    class NanSquare(Layer):
        name = "test_nan_square"

        def forward(self, x, training=True):
            self.x = x
            return x * x

        def backward(self, dy, need_dx=True):
            dx = 2 * dy * self.x
            dx[0, 0] = np.nan
            return dx

    layer = NanSquare()
    layer.build(4, fn.get_backend("numpy"), np.float64, rng)
    x = rng.standard_normal((3, 4))
    result = check_layer(layer, x)
    assert not result.ok and result.errors["input"] == np.inf, str(result)
    assert relative_error(np.array([1.0, np.nan]), np.array([1.0, 5.0])) == np.inf
    assert relative_error(np.ones(2), np.array([1.0, np.inf])) == np.inf
    dense = fn.Dense(3)
    for eps in (float("nan"), 0, -1e-6, "1e-6"):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            check_layer(layer, x, eps=eps)
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        check_layer(layer, x, tolerance="1e-6")
    assert check_layer(layer, x, tolerance=np.inf).errors["input"] == np.inf  # (not ok)
    assert not check_layer(layer, x, tolerance=np.inf).ok
    with pytest.raises(RuntimeError, match="Dense is not built"):
        check_layer(dense, x)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        check_loss(fn.MeanSquaredError(), x, x, eps=0)


def test_check_layer_passes_batch_norm_on_an_input_drawn_from_its_seed():
    """R once came from default_rng(seed): an input drawn from it was a function of R."""
    layer = fn.BatchNorm1d()
    layer.build(4, fn.get_backend("numpy"), np.float64, np.random.default_rng(1))
    x = np.random.default_rng(0).standard_normal((8, 4)) * 3 + 1
    assert check_layer(layer, x).ok, str(check_layer(layer, x))
    assert check_layer(layer, x, seed=None).ok  # a fresh R
    # the running statistics are the layer's as before (each forward in training moved them:
    # a trained model's predictions changed by 0.18 after a check)
    np.testing.assert_array_equal(layer.running_mean, np.zeros(4))
    np.testing.assert_array_equal(layer.running_var, np.ones(4))


def test_gradcheck_requires_float64(rng):
    layer = fn.Dense(3)
    layer.build(2, fn.get_backend("numpy"), np.float32, rng)
    with pytest.raises(ValueError, match="float64"):
        check_layer(layer, np.ones((2, 2), np.float32))


def test_bce_loss_is_stable_for_extreme_logits(backend):
    loss = fn.SigmoidBinaryCrossEntropy()
    loss.build(backend)
    z = backend.asarray(np.array([[1e4], [-1e4], [0.0]], np.float32))
    t = backend.asarray(np.array([[0.0], [1.0], [1.0]], np.float32))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, grad = loss(z, t)
    assert float(value) == pytest.approx((1e4 + 1e4 + np.log(2)) / 3, rel=1e-5)
    assert np.isfinite(backend.to_numpy(grad)).all()


def test_model_gradients_match_finite_differences(backend, rng):
    """The whole stack's backward, as ``Sequential.backward`` runs it (a Dense layer carries
    the gradient on through the Dense layer under it: its activation derivative and bias
    gradient), against finite differences of the loss, for every parameter (the bias before
    BatchNorm has none: its units' leaky slope is the same across this batch)."""
    model = fn.Sequential(
        [
            fn.Dense(7, "relu"),
            fn.Dense(6, "tanh"),
            fn.Dense(5, "sigmoid", use_bias=False),
            fn.Dense(6, "leaky_relu", alpha=-0.2),
            fn.BatchNorm1d(),
            fn.Dense(4, "relu"),
            fn.Dense(3),
        ],
        backend=backend,
        dtype="float64",
        seed=3,
    ).build(5)
    x = backend.asarray(_inputs(rng, (8, 5)))
    y = backend.asarray(np.arange(8) % 3)

    def loss() -> float:
        return float(backend.to_numpy(model.loss.compute(model.forward(x, True), y)[0]))

    model.backward(model.loss.compute(model.forward(x, True), y)[1])
    grads = [backend.to_numpy(p.grad).copy() for p in model.parameters()]
    names = [f"{i}:{p.name}" for i, layer in enumerate(model.layers) for p in layer.parameters()]
    for name, p, grad in zip(names, model.parameters(), grads):
        numeric = fn.gradcheck.numerical_gradient(loss, p.value)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_the_little_errors_point_the_way():
    """check_loss on a loss used on its own (it built itself for a call, not for the check);
    a half dtype names the mixed policy; numba's data-parallel steps say why they are eager."""
    logits = np.random.default_rng(0).standard_normal((4, 3))
    labels = np.array([0, 1, 2, 0])
    assert "passed" in str(fn.gradcheck.check_loss(fn.SoftmaxWithLoss(), logits, labels))
    with pytest.raises(TypeError, match="the policy 'mixed_float16'"):
        fn.Sequential([fn.Dense(2)], dtype="float16")
    assert "trains in one process" in fn.get_backend("numba").graph_capture_reason()
