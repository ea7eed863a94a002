"""A newcomer's input edges: pandas labels of dtype object, DataFrames in the data helpers, the
stratified split's total, confusion_matrix's labels and messages that say what to pass."""

import warnings

import numpy as np
import pytest

import fastnet as fn
from fastnet.metrics import confusion_matrix

pd = pytest.importorskip("pandas")


def data(n=50, k=3, d=6):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.integers(0, k, n)


def model(outputs=3, **kw):
    return fn.Sequential([fn.Dense(8, "relu"), fn.Dense(outputs)], seed=0, backend="numpy", **kw)


def trained(X, y, outputs=3, **kw):
    m = model(outputs, **kw)
    m.fit(X, y, epochs=2, batch_size=16, verbose=0)
    return m


# ---------------------------------------------------------------- 1: pandas labels of dtype object
def test_pandas_labels_of_dtype_object_train_as_integers():
    X, y = data()
    ours = trained(X, pd.Series(y, dtype=object))
    reference = trained(X, y)
    for a, b in zip(ours.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.evaluate(X, pd.Series(y, dtype=object)) == reference.evaluate(X, y)


@pytest.mark.parametrize("kind", ["object", "categorical", "string"])
def test_string_labels_get_the_class_label_message_naming_y(kind):
    X, y = data()
    names = np.array(["a", "b", "c"])[y]
    labels = pd.Series(pd.Categorical(names) if kind == "categorical" else names, dtype=None)
    labels = labels.astype(kind if kind != "categorical" else "category")
    m = trained(X, y)
    before = m.get_weights()
    with pytest.raises(
        TypeError, match=r"y must hold integer class labels.*'a'.*LabelEncoding.fit"
    ):
        m.fit(X, labels, epochs=1, verbose=0)
    with pytest.raises(TypeError, match=r"y must hold integer class labels"):
        m.evaluate(X, labels)
    for a, b in zip(m.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- 2: data helpers take pandas
def test_minibatches_and_train_val_split_take_pandas_and_lists_by_position():
    X, y = data()
    frame = pd.DataFrame(X, index=np.arange(100, 150))  # labels no position
    series = pd.Series(y, index=np.arange(50)[::-1])
    batches = list(fn.minibatches(frame, series, 20, seed=1))
    for (xb, yb), (xa, ya) in zip(batches, fn.minibatches(X, y, 20, seed=1), strict=True):
        np.testing.assert_array_equal(xb, xa)
        np.testing.assert_array_equal(yb, ya)
    expected = fn.train_val_split(X, y, 0.2)
    for given in ((frame, series), (X.tolist(), y.tolist())):
        got = fn.train_val_split(*given, 0.2)
        for a, b in zip([*got[0], *got[1]], [*expected[0], *expected[1]], strict=True):
            assert isinstance(a, np.ndarray)
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fraction", ["0.1", None, True])
def test_a_bad_fraction_is_named(fraction):
    X, y = data()
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\)"):
        fn.train_val_split(X, y, fraction)


# ---------------------------------------------------------------- 3: the stratified total
@pytest.mark.parametrize(("n", "fraction", "held"), [(30, 0.2, 6), (30, 0.5, 15), (40, 0.1, 4)])
def test_the_stratified_split_holds_out_round_n_times_fraction(n, fraction, held):
    X, y = np.arange(n), np.arange(n) % 10
    (Xt, yt), (Xv, yv) = fn.train_val_split(X, y, fraction, seed=0)
    assert len(Xv) == held and len(Xt) == n - held
    assert np.isin(
        np.bincount(yv, minlength=10), [np.floor(3 * fraction), np.ceil(4 * fraction)]
    ).all()
    again = fn.train_val_split(X, y, fraction, seed=0)
    np.testing.assert_array_equal(again[1][0], Xv)  # seeded
    assert sorted([*Xt, *Xv]) == list(range(n))


def test_the_stratified_split_keeps_its_rows_where_rounding_already_summed_right():
    X, y = np.arange(40), np.arange(40) % 4  # 10 per class: 2 each at 0.2
    (_, _), (Xv, _) = fn.train_val_split(X, y, 0.2, seed=3)
    assert Xv.tolist() == [11, 17, 18, 19, 22, 24, 29, 36]  # the rows held out before the fix
    (_, _), (Xv, _) = fn.train_val_split(X, y, 0.25, seed=3)  # 2.5 each: rounded to 2 before
    assert len(Xv) == 10


def test_validation_split_of_ten_classes_in_forty_rows_and_a_named_refusal():
    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 10
    history = model(10).fit(X, y, epochs=1, validation_split=0.1, verbose=0)
    assert len(history["val_loss"]) == 1
    with pytest.raises(
        ValueError,
        match=r"0\.1 \(val_fraction; validation_split in fit\) holds out 0 of 4 .*0\.25 to 0\.75",
    ):
        model(10).fit(X[:4], y[:4], epochs=1, validation_split=0.1, verbose=0)


# ---------------------------------------------------------------- 4: confusion_matrix's labels
def test_confusion_matrix_checks_its_labels_as_evaluate_does():
    X, y = data()
    m = trained(X, y)
    assert m.confusion_matrix(X, y).sum() == 50
    np.testing.assert_array_equal(m.confusion_matrix(X, fn.one_hot(y, 3)), m.confusion_matrix(X, y))
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        m.confusion_matrix(X, y + 0.5)
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        m.confusion_matrix(X, np.array(["a", "b", "c"])[y])
    with pytest.raises(ValueError, match="y contains label 3"):
        m.confusion_matrix(X, np.where(y == 0, 3, y))
    binary = trained(X, y % 2, 1, loss="bce")
    assert binary.confusion_matrix(X, y % 2).shape == (2, 2)
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        binary.confusion_matrix(X, np.full(50, 0.5))
    with pytest.raises(ValueError, match="y_true must hold integer class labels"):
        confusion_matrix(y + 0.5, y)


# ---------------------------------------------------------------- 5: messages that say what to pass
def test_fit_names_a_dataframes_string_column_as_predict_does():
    X, y = data()
    frame = pd.DataFrame({"a": X[:, 0], "b": ["x"] * 50})
    with pytest.raises(TypeError, match=r"X must hold numbers.*column\(s\) 'b'.*encode or drop"):
        model().fit(frame, y, epochs=1, verbose=0)


def test_a_sparse_matrix_is_named_with_what_to_do():
    sparse = pytest.importorskip("scipy.sparse")
    X, y = data()
    m = trained(X, y)
    for call in (
        lambda: m.fit(sparse.csr_matrix(X), y, verbose=0),
        lambda: m.predict(sparse.csr_matrix(X)),
    ):
        with pytest.raises(TypeError, match=r"X is a scipy.sparse matrix.*X\.toarray\(\)"):
            call()


def test_masked_cells_and_bfloat16_arrays_are_named_with_what_to_do():
    """A masked array's mask would be dropped (the values under it read); bfloat16 (JAX's,
    ml_dtypes') crashed in DLPack or was called no number."""
    X, y = data()
    m = model()
    with pytest.raises(ValueError, match=r"X is a masked array with masked cells.*X.filled"):
        m.fit(np.ma.masked_array(X, mask=X > 1), y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y is a masked array"):
        m.fit(X, np.ma.masked_array(y, mask=y == 0), epochs=1, verbose=0)
    assert not m.built
    m.fit(np.ma.masked_array(X), y, epochs=1, verbose=0)  # nothing masked: its data
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(TypeError, match=r"bfloat16 \(pass X.astype\('float32'\)\)"):
        m.predict(X.astype(ml_dtypes.bfloat16))
    with pytest.raises(TypeError, match=r"y must hold numbers, got dtype bfloat16 \(pass y"):
        m.fit(X, y.astype(ml_dtypes.bfloat16), epochs=1, verbose=0)
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError, match=r"X of dtype bfloat16 .*DLPack.*X.astype\('float32'\)"):
        m.predict(jnp.asarray(X, dtype=jnp.bfloat16))


def test_a_column_of_float_labels_trains_as_flat_ones():
    X, y = data()
    ours, reference = trained(X, y.astype(float).reshape(-1, 1)), trained(X, y.astype(float))
    for a, b in zip(ours.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="y must hold integer class labels, got non-integer"):
        model().fit(X, y.reshape(-1, 1) + 0.5, epochs=1, verbose=0)


def estimator(cls, **kw):
    return cls(hidden_layer_sizes=(4,), max_iter=3, backend="numpy", **kw)


@pytest.mark.parametrize("cls", [fn.MLPClassifier, fn.MLPRegressor])
def test_estimators_name_n_iter_no_change_and_take_a_random_state_object(cls):
    X, y = data()
    with pytest.raises(
        ValueError,
        match=r"n_iter_no_change must be an integer >= 0 or numpy\.inf \(never stop\), got -1",
    ):
        estimator(cls, n_iter_no_change=-1).fit(X, y)
    with pytest.raises(ValueError, match="random_state must be None, an integer >= 0 or a numpy"):
        estimator(cls, random_state="0").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drawn = estimator(cls, random_state=np.random.RandomState(0)).fit(X, y)
        seeded = estimator(cls, random_state=209652396).fit(X, y)  # RandomState(0)'s first int
        state = np.random.RandomState(0)
        first, second = (estimator(cls, random_state=state).fit(X, y) for _ in range(2))
    for a, b in zip(drawn.coefs_, seeded.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.coefs_[0], second.coefs_[0])  # a new draw each fit
