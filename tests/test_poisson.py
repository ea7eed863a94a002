"""The Poisson loss (half the deviance, on log-rates) and MLPRegressor(loss="poisson"):
values against the deviance's formula, predictions exp(outputs) everywhere a prediction is
made (predict, evaluate, scores, ONNX), scikit-learn's parameter and fitted attributes."""

import pickle
import warnings

import numpy as np
import pytest

import fastnet as fn


def _counts(n=1500, d=5, seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, d))
    rate = np.exp(0.5 * X[:, 0] + 0.3 * X[:, 1])
    return X, r.poisson(rate).astype(np.float64), rate


def test_value_is_half_the_poisson_deviance_and_its_gradient_the_rate_minus_the_count(backend):
    r = np.random.default_rng(1)
    z = r.standard_normal((7, 3))
    t = r.poisson(2.0, (7, 3)).astype(np.float64)
    t[0, 0] = 0.0  # (t log t is 0 at t = 0)
    w = r.random(7)
    loss = fn.Poisson(scale=3)
    loss.build(backend)
    value, grad = loss(backend.asarray(z), backend.asarray(t), backend.asarray(w))
    mu = np.exp(z)
    t_log = np.where(t > 0, t * np.log(np.where(t > 0, t / mu, 1)), 0.0)
    deviance = (t_log - t + mu) * w[:, None]  # scikit-learn's poisson_loss, per element
    np.testing.assert_allclose(float(value), 3 * deviance.mean(), rtol=1e-12)
    np.testing.assert_allclose(
        backend.to_numpy(grad), 3 * (mu - t) * w[:, None] / t.size, rtol=1e-12
    )
    perfect, _ = loss(backend.asarray(np.log(t[1:] + 1)), backend.asarray(t[1:] + 1))
    assert abs(float(perfect)) < 1e-12


def test_negative_counts_are_refused():
    loss = fn.Poisson()
    with pytest.raises(ValueError, match="counts or rates >= 0"):
        loss(np.zeros((2, 1)), np.array([[1.0], [-1.0]]))


def test_a_poisson_model_predicts_rates_evaluates_them_and_saves(tmp_path, backend):
    X, y, _ = _counts()
    X = X.astype(np.float32)
    model = fn.Sequential(
        [fn.Dense(16, "relu"), fn.Dense(1)],
        loss="poisson",
        optimizer=fn.Adam(0.01),
        seed=0,
        backend=backend,
    )
    history = model.fit(X, y, epochs=3, batch_size=100, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    raw = model.predict_raw(X[:20])
    np.testing.assert_allclose(model.predict(X[:20]), np.exp(raw), rtol=1e-6)
    np.testing.assert_allclose(model.predict_proba(X[:20]), np.exp(raw), rtol=1e-6)
    logs = model.evaluate(X, y)
    rates = model.predict(X)[:, 0]
    r2 = 1 - ((y - rates) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert logs["r2"] == pytest.approx(r2, rel=1e-4, abs=1e-5)  # of the rates, not the logs
    model.save(tmp_path / "m.npz")
    loaded = fn.load_model(tmp_path / "m.npz", backend="numpy")
    assert isinstance(loaded.loss, fn.Poisson)
    np.testing.assert_allclose(loaded.predict(X[:20]), model.predict(X[:20]), rtol=1e-6)


def test_onnx_export_gives_the_rates_as_predictions(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    X, y, _ = _counts(300)
    X = X.astype(np.float32)
    model = fn.Sequential(  # (Activation(): the identity, exported as none)
        [fn.Dense(8, "tanh"), fn.layers.Activation(), fn.Dense(2)], loss=fn.Poisson(), seed=0
    )
    model.fit(X, np.stack([y, y], 1), epochs=1, verbose=0)
    assert model.onnx_outputs() == ["outputs", "predictions"]
    model.to_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    outputs, rates = session.run(None, {"input": X[:50]})
    np.testing.assert_allclose(outputs, model.predict_raw(X[:50]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rates, model.predict(X[:50]), rtol=1e-5, atol=1e-6)


def test_mlp_regressor_with_poisson_loss_fits_counts_as_scikit_learns():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPRegressor

    X, y, _ = _counts()
    Xt, yt, _ = _counts(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        ours = fn.MLPRegressor((32,), loss="poisson", max_iter=60, random_state=0).fit(X, y)
        theirs = MLPRegressor(
            hidden_layer_sizes=(32,), loss="poisson", max_iter=60, random_state=0
        ).fit(X, y)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    np.testing.assert_array_equal(
        ours.predict(Xt[:5]), np.exp(ours.model_.predict_raw(Xt[:5]))[:, 0]
    )
    assert ours.score(Xt, yt) > theirs.score(Xt, yt) - 0.05
    # loss_curve_ is scikit-learn's objective: the deviance summed over outputs, mean over rows
    assert abs(ours.loss_curve_[-1] - theirs.loss_curve_[-1]) < 0.05
    assert ours.get_params()["loss"] == "poisson" and "loss='poisson'" in repr(ours)
    search = GridSearchCV(
        fn.MLPRegressor((8,), max_iter=3, random_state=0),
        {"loss": ["squared_error", "poisson"]},
        cv=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X[:400], y[:400])
    assert search.best_params_["loss"] in ("squared_error", "poisson")


def test_mlp_regressor_refuses_unknown_losses_and_negative_counts():
    X, y, _ = _counts(200)
    with pytest.raises(ValueError, match="loss='huber' is not supported by MLPRegressor"):
        fn.MLPRegressor(loss="huber", max_iter=1).fit(X, y)
    est = fn.MLPRegressor(loss="poisson", max_iter=1)
    with pytest.raises(ValueError, match="counts or rates >= 0 for loss='poisson'"):
        est.fit(X, y - 1)
    assert not hasattr(est, "model_")


def test_a_fit_that_finishes_no_epoch_raises_and_leaves_the_estimator_unfitted():
    """Inputs of mean 100: exp of the first outputs overflows float32 (scikit-learn raises a
    ValueError for weights that became non-finite; float64 takes them)."""
    r = np.random.RandomState(0)
    X, y = r.normal(loc=100, size=(100, 2)), r.poisson(3.0, 100).astype(float)
    est = fn.MLPRegressor((16,), loss="poisson", max_iter=3, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (fit's own divergence warning)
        with pytest.raises(ValueError, match="MLPRegressor diverged: .*dtype='float64'"):
            est.fit(X, y)
        assert not hasattr(est, "model_") and not hasattr(est, "n_features_in_")
        est.set_params(dtype="float64").fit(X, y)
    assert len(est.loss_curve_) == 3 and np.isfinite(est.loss_curve_).all()


def test_a_changed_loss_is_refused_by_partial_fit_and_old_pickles_load():
    X, y, _ = _counts(300)
    est = fn.MLPRegressor((8,), max_iter=2, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
        before = est.predict(X[:5])
        with pytest.raises(ValueError, match="partial_fit continues the fitted MeanSquared"):
            est.set_params(loss="poisson").partial_fit(X, y)
        np.testing.assert_array_equal(est.predict(X[:5]), before)
        assert est.out_activation_ == "identity"
        est.set_params(loss="poisson").fit(X, y)  # fit: a new model with it
        assert est.out_activation_ == "exp" and isinstance(est.model_.loss, fn.Poisson)
    del est.__dict__["loss"]  # a pickle of before loss was a parameter
    old = pickle.loads(pickle.dumps(est))
    assert old.get_params()["loss"] == "squared_error"
