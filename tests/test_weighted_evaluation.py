"""Weighted evaluation: ``evaluate(sample_weight=)`` and ``validation_data=(X, y, w)`` (and
``validation_split`` with ``sample_weight``, whose held-out rows keep their weights). The loss
is normalised over the rows, as ``fit``'s; every metric over the weights, equal to
scikit-learn's with ``sample_weight``, on every backend and over data-parallel ranks."""

import numpy as np
import pytest
from conftest import make_backend

import fastnet as fn
from fastnet.estimator import _r2

skm = pytest.importorskip("sklearn.metrics")


def _data(n=300, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8)
    return X, y, r.uniform(0, 3, n)


def _trained(backend, outputs=3, loss=None, y=None):
    X, labels, _ = _data()
    model = fn.Sequential(
        [fn.Dense(12, "relu"), fn.Dense(outputs)],
        loss=loss or fn.SoftmaxCrossEntropy(),
        optimizer=fn.Adam(0.01),
        backend=make_backend(backend),
        dtype="float64",
        seed=0,
    )
    model.fit(X, labels if y is None else y, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("backend", ["numpy", "numba", "cupy-emulated"])
def test_weighted_classifier_scores_equal_scikit_learns(backend):
    X, y, w = _data()
    model = _trained(backend)
    got = model.evaluate(X, y, sample_weight=w, top_k=2)
    pred, proba = model.predict(X), model.predict_proba(X)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w), 1e-12)
    for name in ("precision", "recall", "f1"):
        score = getattr(skm, f"{name}_score")(y, pred, average="macro", sample_weight=w)
        assert got[name] == pytest.approx(score, rel=1e-12), name
    top2 = skm.top_k_accuracy_score(y, proba, k=2, sample_weight=w)
    assert got["top2_accuracy"] == pytest.approx(top2, rel=1e-12)
    per_row = -np.log(proba[np.arange(len(y)), y])
    assert got["loss"] == pytest.approx((w * per_row).mean(), rel=1e-9)  # over rows, as fit's
    plain = model.evaluate(X, y)
    assert plain["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), rel=1e-12)
    assert got["accuracy"] != plain["accuracy"]


def test_a_class_seen_only_in_rows_of_weight_zero_counts_in_macro_scores():
    """scikit-learn averages over the labels present in y_true or y_pred, whatever their
    weight (precision 0.26); fastnet dropped the class (0.40)."""
    import warnings

    X, y, w = _data()
    model = _trained("numpy")
    pred = model.predict(X)
    w = np.where((y == 2) | (pred == 2), 0.0, w)
    got = model.evaluate(X, y, sample_weight=w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (scikit-learn's zero-division warning)
        for name in ("precision", "recall", "f1"):
            score = getattr(skm, f"{name}_score")(y, pred, average="macro", sample_weight=w,
                                                   zero_division=0)  # fmt: skip
            assert got[name] == pytest.approx(score, rel=1e-12), name


def test_integer_weights_score_as_repeated_rows():
    X, y, w = _data()
    counts = np.rint(w).astype(np.int64)
    model = _trained("numpy")
    weighted = model.evaluate(X, y, sample_weight=counts, top_k=2)
    repeated = model.evaluate(np.repeat(X, counts, 0), np.repeat(y, counts), top_k=2)
    for key in ("accuracy", "precision", "recall", "f1", "top2_accuracy"):
        assert weighted[key] == pytest.approx(repeated[key], rel=1e-12), key


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_weighted_regression_scores_equal_scikit_learns(backend):
    X, _, w = _data()
    Y = np.c_[2 * X[:, 0] + 1, X[:, 1] - X[:, 2]] + 1e6  # far from zero: R2 kept exact
    model = _trained(backend, outputs=2, loss=fn.MeanSquaredError(), y=Y)
    got, pred = model.evaluate(X, Y, sample_weight=w), model.predict(X)
    assert got["r2"] == pytest.approx(skm.r2_score(Y, pred, sample_weight=w), rel=1e-9)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(Y, pred, sample_weight=w), 1e-12)
    mse = skm.mean_squared_error(Y, pred, sample_weight=w)
    assert got["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-12)
    small = model.evaluate(X, Y, sample_weight=w / 1000)  # weights summing below 1
    for key in ("r2", "mae", "rmse"):
        assert small[key] == pytest.approx(got[key], rel=1e-9), key


def test_user_metrics_with_a_sample_weight_parameter_get_the_weights_others_not():
    """As scikit-learn's metrics take them; one without the parameter is unweighted, as
    Keras's ``metrics`` (it was refused, which broke validation_split with sample_weight)."""
    X, y, w = _data()
    model = _trained("numpy")
    on_labels = fn.metrics.on_labels(skm.balanced_accuracy_score)
    plain = fn.metrics.on_labels(lambda t, p: skm.balanced_accuracy_score(t, p))
    got = model.evaluate(X, y, sample_weight=w, metrics=[on_labels, plain])
    pred = model.predict(X)
    expected = skm.balanced_accuracy_score(y, pred, sample_weight=w)
    assert got["balanced_accuracy_score"] == pytest.approx(expected, rel=1e-12)
    assert got["<lambda>"] == pytest.approx(skm.balanced_accuracy_score(y, pred), rel=1e-12)
    h = model.fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=w,
                  metrics=[lambda t, p: 0.5])  # fmt: skip
    assert h["val_<lambda>"] == [0.5]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_weighted_validation_data_scores_as_evaluate_does(backend):
    X, y, w = _data()
    model = _trained(backend)
    h = model.fit(
        X[:200], y[:200], epochs=1, verbose=0, validation_data=(X[200:], y[200:], w[200:])
    )
    scores = model.evaluate(X[200:], y[200:], sample_weight=w[200:])
    for key in ("loss", "accuracy", "f1"):
        assert h[f"val_{key}"][0] == pytest.approx(scores[key], rel=1e-12), key
    h = model.fit(X[:200], y[:200], epochs=1, verbose=0, validation_data=(X[200:], y[200:], None))
    assert h["val_accuracy"][0] == pytest.approx(model.evaluate(X[200:], y[200:])["accuracy"])


def test_validation_split_keeps_the_held_out_rows_weights():
    X, y, w = _data()
    X[:, 5] = np.arange(len(X))  # a column naming each row
    model = _trained("numpy")
    *_, val = model._split_validation(X, y, w, None, 0.25, int(model._order[0]))
    rows = val[0][:, 5].astype(np.int64)
    assert len(val) == 3 and len(rows) == 75
    np.testing.assert_array_equal(val[2], w[rows])
    np.testing.assert_array_equal(val[1], y[rows])
    h = model.fit(X, y, sample_weight=w, validation_split=0.25, epochs=1, verbose=0)
    scores = model.evaluate(X[rows], y[rows], sample_weight=w[rows])
    assert h["val_accuracy"][0] == pytest.approx(scores["accuracy"], rel=1e-12)


def test_bad_weights_are_refused_naming_them():
    X, y, w = _data()
    model = _trained("numpy")
    with pytest.raises(ValueError, match=r"sample_weight must hold 300 numbers"):
        model.evaluate(X, y, sample_weight=w[:10])
    with pytest.raises(ValueError, match=r"sample_weight must be finite and non-negative"):
        model.evaluate(X, y, sample_weight=-w)
    with pytest.raises(ValueError, match=r"row weights \(sample_weight\) are all zero"):
        model.evaluate(X, y, sample_weight=0 * w)
    with pytest.raises(ValueError, match=r"validation_data's sample weights must hold 100"):
        model.fit(X, y, epochs=1, verbose=0, validation_data=(X[:100], y[:100], w))
    with pytest.raises(ValueError, match=r"sample_weight must hold 300 numbers"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=w[:10])
    with pytest.raises(ValueError, match=r"sample_weight must hold 300 numbers"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=np.ones(400))
    held = model._split_validation(X, y, w, None, 0.2, int(model._order[0]))[3][0]
    zero = np.where(np.isin(X[:, 0], held[:, 0]), 0.0, w)  # the held-out rows weigh 0
    with pytest.raises(ValueError, match=r"the 60 rows validation_split=0.2 holds out all have"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=zero)
    with pytest.raises(ValueError, match=r"a pair \(X_val, y_val\) or a triple"):
        model.fit(X, y, epochs=1, verbose=0, validation_data=(X, y, w, w))


def test_standalone_r2_weighs_rows_and_scores_constant_targets_as_scikit_learn():
    r = np.random.default_rng(1)
    y = r.normal(size=(50, 2))
    pred, w = y + r.normal(size=(50, 2)), r.uniform(0, 2, 50)
    assert _r2(y, pred, w) == pytest.approx(skm.r2_score(y, pred, sample_weight=w), rel=1e-12)
    constant = np.ones(5)
    assert _r2(constant, constant + 1) == skm.r2_score(constant, constant + 1) == 0.0
    assert _r2(constant, constant) == skm.r2_score(constant, constant) == 1.0


@pytest.mark.parametrize("backend", ["numpy", "numba", "cupy-emulated"])
def test_tied_scores_rank_by_class_index_so_top_1_is_accuracy(backend):
    """Ties counted as hits: all-zero scores scored top-1 accuracy 1.0 (accuracy 0.25) and
    an untrained model top-3 1.0 of 6 classes."""
    scores, y = np.zeros((4, 3)), np.array([0, 1, 2, 2])
    assert fn.metrics.top_k_accuracy(scores, y, 1) == 0.25  # argmax: class 0
    assert fn.metrics.top_k_accuracy(scores, y, 2) == 0.5
    assert fn.metrics.top_k_accuracy(np.array([[0.0, 1, 1]]), np.array([2]), 2) == 1.0
    assert fn.metrics.top_k_accuracy(np.array([[1.0, 1, 0]]), np.array([1]), 1) == 0.0
    model = fn.Sequential([fn.Dense(6)], backend=make_backend(backend), seed=0)
    model.build(4)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # all scores tied
    X, labels = np.ones((12, 4)), np.arange(12) % 6
    scores = model.evaluate(X, labels, top_k=3)
    assert scores["accuracy"] == 2 / 12  # (class 0)
    assert scores["top3_accuracy"] == 6 / 12  # (classes 0, 1, 2)
