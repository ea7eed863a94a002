"""Model-level mistakes a newcomer makes in the first hour: each is refused with an error that
names the argument, or does what the notebooks' habits expect, and changes nothing."""

import numpy as np
import pytest

import fastnet as fn


def test_one_layer_object_at_two_places_is_refused():
    d = fn.Dense(20, "tanh")
    with pytest.raises(ValueError, match=r"layers\[0\] and layers\[1\] are the same Dense"):
        fn.Sequential([d, d, fn.Dense(3)], backend="numpy")


def test_build_keeps_the_weights_of_a_trained_or_loaded_model(tmp_path):
    X = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    y = np.arange(64) % 3
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend="numpy", seed=0)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "m.npz")
    for m in (model, fn.load_model(tmp_path / "m.npz")):
        before = m.predict_proba(X)
        assert m.build(6) is m
        np.testing.assert_array_equal(m.predict_proba(X), before)
        with pytest.raises(
            ValueError, match="input_dim=5: the model is built for inputs of width 6"
        ):
            m.build(5)
        np.testing.assert_array_equal(m.predict_proba(X), before)


def _model():
    return fn.Sequential([fn.Dense(5, "relu"), fn.Dense(3)], backend="numpy", seed=0).build(4)


def test_backward_needs_a_training_forward_of_its_shape():
    model = _model()
    with pytest.raises(ValueError, match=r"dout of shape \(20, 3\).*\(none ran\)"):
        model.backward(np.zeros((20, 3), np.float32))
    model.forward(np.zeros((20, 4), np.float32), training=False)
    with pytest.raises(ValueError, match="none ran"):
        model.backward(np.zeros((20, 3), np.float32))
    model.forward(np.zeros((20, 4), np.float32), training=True)
    with pytest.raises(ValueError, match=r"of shape \(20, 3\)$"):
        model.backward(np.zeros((8, 3), np.float32))
    model.backward(np.zeros((20, 3), np.float32))


def test_lists_are_named_as_lists():
    model = _model()
    with pytest.raises(TypeError, match="got a list .model.backend.asarray"):
        model.forward(np.zeros((2, 4)).tolist())
    with pytest.raises(RuntimeError, match="not built yet"):
        fn.Sequential([fn.Dense(3)], backend="numpy").forward(np.zeros((2, 4), np.float32))
    out = model.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="targets must be an array, got a list"):
        model.loss(out, [0, 1])


def test_a_loss_on_its_own_checks_class_indices_against_the_outputs():
    loss = fn.SoftmaxWithLoss()  # used alone, as the notebooks' loss layer
    out = np.zeros((4, 3), np.float32)
    value, grad = loss(out, np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(value, np.log(3), rtol=1e-6)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
        loss(out, np.array([0, 1, 7, 0]))


def test_minibatches_checks_its_arguments_at_the_call():
    X, y = np.arange(20).reshape(10, 2), np.arange(10)
    with pytest.raises(ValueError, match="X has 10 rows but y has 3"):
        fn.minibatches(X, y[:3])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        fn.minibatches(X, y, batch_size=0)
    got = [b.tolist() for _, b in fn.minibatches(X, y, batch_size=np.int64(4), shuffle=False)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(fn.minibatches(X[:0], y[:0])) == []


def test_a_layer_of_a_built_model_is_refused_in_another():
    model = _model()
    with pytest.raises(ValueError, match=r"layers\[0\] \(Dense\) is built, in another model"):
        fn.Sequential([model.layers[0], fn.Dense(2)], backend="numpy")
