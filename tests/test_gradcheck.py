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
    "batchnorm-train": fn.BatchNorm1d,
    "dropout-eval": lambda: fn.Dropout(0.3),
}


def _inputs(rng, shape):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-2] = 0.5  # keep ReLU kinks away from the finite-difference step
    return x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients(backend, rng, name):
    layer = LAYERS[name]()
    layer.build(5, backend, np.float64, rng)
    x = backend.asarray(_inputs(rng, (4, 5)))
    training = name != "dropout-eval"
    result = check_layer(layer, x, training=training, tolerance=1e-6)
    assert result.ok, str(result)


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


@pytest.mark.parametrize("targets", ["int", "onehot", "soft"])
def test_softmax_cross_entropy_gradient(backend, rng, targets):
    loss = fn.SoftmaxCrossEntropy()
    loss.build(backend)
    logits = rng.standard_normal((6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    t = {
        "int": labels,
        "onehot": fn.one_hot(labels, 4, np.float64),
        "soft": rng.dirichlet(np.ones(4), 6),
    }[targets]
    result = check_loss(loss, backend.asarray(logits), backend.asarray(t))
    assert result.ok, str(result)


@pytest.mark.parametrize("cls", [fn.SigmoidBinaryCrossEntropy, fn.MeanSquaredError])
def test_other_loss_gradients(backend, rng, cls):
    loss = cls()
    loss.build(backend)
    logits = rng.standard_normal((5, 3)) * 2
    t = (rng.random((5, 3)) > 0.5).astype(np.float64)
    result = check_loss(loss, backend.asarray(logits), backend.asarray(t))
    assert result.ok, str(result)


def test_gradcheck_detects_a_wrong_gradient(rng):
    class BrokenTanh(fn.Tanh):
        def backward(self, dy, need_dx=True):
            return dy * 1.0  # forgets the derivative

    layer = BrokenTanh()
    backend = fn.get_backend("numpy")
    layer.build(5, backend, np.float64, rng)
    assert not check_layer(layer, rng.standard_normal((3, 5)) * 2).ok
    assert relative_error(np.ones(3), np.ones(3)) == 0.0


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
