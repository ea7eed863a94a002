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
