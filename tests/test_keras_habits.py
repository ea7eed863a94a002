"""What Keras and notebook users do on their first day works (issue: a new user's first hour,
items 9 and 13): validation_split, Keras-style and plain-function callbacks checked before
training, a fresh history per fit, regression metrics, user metrics, monitored names checked
up front, and LeakyReLU with any slope. Also (issue: a newcomer's callbacks and metrics): scores
such as R2 monitored as higher-is-better, checkpoint path keys checked before training, ``acc``
and ``val_acc`` as aliases, user metrics checked before training or given labels with
``fastnet.metrics.on_labels``, ``callbacks=None``."""

import numpy as np
import pytest

import fastnet as fn
from fastnet.gradcheck import check_layer


def _blobs(n=240, d=6, k=3, seed=0):
    r = np.random.default_rng(seed)
    y = np.sort(r.integers(0, k, n))  # sorted by class, as a careless .npy would be
    X = r.normal(size=(n, d)) + 3 * y[:, None]
    return X.astype(np.float32), y


def _model(**kw):
    return fn.Sequential(
        [fn.Dense(8, "relu"), fn.Dense(3)], optimizer=fn.Adam(0.02), backend="numpy", seed=0, **kw
    )


def test_validation_split_holds_out_a_shuffled_stratified_fraction():
    X, y = _blobs()
    hist = _model().fit(X, y, epochs=25, batch_size=32, verbose=0, validation_split=0.25)
    assert len(hist["val_accuracy"]) == 25 and hist["val_accuracy"][-1] > 0.9  # all classes
    with pytest.raises(ValueError, match="validation_split must be a finite number in"):
        _model().fit(X, y, epochs=1, verbose=0, validation_split=1.5)
    with pytest.raises(ValueError, match="not both"):
        _model().fit(X, y, epochs=1, verbose=0, validation_split=0.2, validation_data=(X, y))


def test_fit_returns_a_fresh_history_each_call():
    X, y = _blobs()
    model = _model()
    first = model.fit(X, y, epochs=2, verbose=0)
    second = model.fit(X, y, epochs=3, verbose=0)
    assert len(first["loss"]) == 2 and len(second["loss"]) == 3
    assert len(model.history["loss"]) == 5  # the model keeps every epoch


def test_model_history_entries_stay_aligned_by_epoch_across_fits():
    X, y = _blobs()
    model = _model()
    model.fit(X, y, epochs=2, verbose=0)  # no validation: no val_ entries in these epochs
    third = model.fit(X, y, epochs=1, verbose=0, validation_data=(X, y))
    model.fit(X, y, epochs=1, verbose=0, callbacks=[lambda epoch, logs: logs.update(extra=1.0)])
    assert {len(v) for v in model.history.values()} == {4}  # history[key][i]: epoch i's
    assert np.isnan(model.history["val_loss"]).tolist() == [True, True, False, True]
    assert model.history["val_loss"][2] == third["val_loss"][0]
    assert np.isnan(model.history["extra"]).tolist() == [True, True, True, False]
    assert len(third["loss"]) == len(third["val_loss"]) == 1  # (each call's own: no padding)


def test_keras_style_and_function_callbacks():
    X, y = _blobs()
    seen = []

    class KerasLike:  # not a fastnet Callback; hooks without the model, as Keras's
        def on_epoch_end(self, epoch, logs=None):
            seen.append(("keras", epoch, round(logs["loss"], 6), self.model is not None))

    class Subclass(fn.Callback):
        def on_epoch_end(self, epoch, logs):  # Keras signature on a fastnet Callback
            seen.append(("sub", epoch))

    def stop_after_two(epoch, logs):
        return epoch == 1

    model = _model()
    model.fit(X, y, epochs=5, verbose=0, callbacks=[KerasLike(), Subclass(), stop_after_two])
    assert [s[:2] for s in seen] == [("keras", 0), ("sub", 0), ("keras", 1), ("sub", 1)]
    assert all(s[3] for s in seen if s[0] == "keras")
    assert "stopped by callback after epoch 2" in model.stop_reason


def test_keras_train_end_gets_the_last_logs_and_unknown_hooks_are_warned_about():
    X, y = _blobs()
    seen = {}

    class KerasLike:
        def on_train_end(self, logs=None):  # Keras passes the last epoch's logs
            seen.update(logs)

        def on_epoch_ends(self, epoch, logs=None):  # a typo: never called
            raise AssertionError

        def on_test_end(self, logs=None):  # Keras's evaluate hook
            raise AssertionError

        def on_improvement(self):  # a helper of its own: no warning
            raise AssertionError

        on_gpu = False  # (not a method)

    with pytest.warns(UserWarning) as caught:
        _model().fit(X, y, epochs=2, verbose=0, callbacks=[KerasLike()], validation_split=0.2)
    assert seen["val_loss"] > 0 and "accuracy" in seen
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "callback KerasLike.on_epoch_ends is no hook fit calls: did you mean on_epoch_end?",
        "callback KerasLike.on_test_end is no hook fit calls: Keras's evaluate and predict "
        "hooks have no fastnet counterpart",
    ]
    assert all(w.filename == __file__ for w in caught)  # (the fit call's line)


def test_bad_callback_signatures_fail_before_training():
    X, y = _blobs()

    class Wrong(fn.Callback):
        def on_epoch_end(self, a, b, c, d):
            return False

    model = _model()
    with pytest.raises(TypeError, match=r"Wrong.on_epoch_end must take \(model, epoch, logs\)"):
        model.fit(X, y, epochs=3, verbose=0, callbacks=[Wrong()])
    assert not model.built and model.history == {}  # nothing trained
    with pytest.raises(TypeError, match="callbacks must be"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[42])


def test_monitored_names_are_checked_before_training():
    X, y = _blobs()
    model = _model()
    with pytest.raises(ValueError, match="'val_acuracy'.*valid names: .*val_accuracy"):
        model.fit(
            X,
            y,
            epochs=3,
            verbose=0,
            validation_split=0.2,
            callbacks=[fn.EarlyStopping("val_acuracy")],
        )
    with pytest.raises(ValueError, match="validation_data or validation_split"):
        model.fit(X, y, epochs=3, verbose=0, callbacks=[fn.ReduceLROnPlateau("val_loss")])
    assert not model.built


def test_regression_reports_mae_rmse_r2_never_accuracy(capsys):
    r = np.random.default_rng(0)
    X = r.normal(size=(300, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * r.normal(size=300)
    model = fn.Sequential(
        [fn.Dense(16, "relu"), fn.Dense(1)],
        loss="mse",
        backend="numpy",
        optimizer=fn.Adam(0.01),
        seed=0,
        dtype="float64",
    )
    hist = model.fit(X, y, epochs=40, verbose=2, validation_split=0.2)
    out = capsys.readouterr().out
    assert "acc" not in out and "val_mae" in out and "val_r2" in out
    assert "accuracy" not in hist and hist["val_r2"][-1] > 0.8
    scores = model.evaluate(X, y)
    pred = model.predict(X).ravel()
    assert scores["mae"] == pytest.approx(np.abs(pred - y).mean(), rel=1e-9)
    assert scores["rmse"] == pytest.approx(np.sqrt(((pred - y) ** 2).mean()), rel=1e-9)
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert scores["r2"] == pytest.approx(r2, rel=1e-9)


def test_r2_of_targets_far_from_zero_is_exact():
    """R2 from summed squares must not cancel: targets 1e8 +- 1 (two columns, in batches)."""
    r = np.random.default_rng(1)
    X = r.normal(size=(200, 3))
    y = 1e8 + r.normal(size=(200, 2))
    model = fn.Sequential([fn.Dense(2)], loss="mse", backend="numpy", dtype="float64", seed=0)
    model.build(3)
    model.layers[0].b.value = np.full(2, 1e8)
    pred = model.predict(X)
    r2 = 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert model.evaluate(X, y, batch_size=64)["r2"] == pytest.approx(r2.mean(), rel=1e-9)


def test_user_metrics_are_logged_on_validation_data():
    X, y = _blobs()

    def balanced_error(y_true, proba):
        return float((proba.argmax(1) != y_true).mean())

    hist = _model().fit(X, y, epochs=2, verbose=0, validation_split=0.25, metrics=[balanced_error])
    assert hist["val_balanced_error"][-1] == pytest.approx(1 - hist["val_accuracy"][-1])
    with pytest.raises(ValueError, match="validation data"):
        _model().fit(X, y, epochs=1, verbose=0, metrics=[balanced_error])
    with pytest.raises(TypeError, match="metrics must be functions"):
        _model().fit(X, y, epochs=1, verbose=0, validation_split=0.2, metrics=["f1"])


@pytest.mark.parametrize("alpha", [-0.5, -2.0, 0.3])
def test_leaky_relu_takes_any_slope_with_the_exact_gradient(alpha):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    for layers in ([fn.Dense(4, "leaky_relu", alpha=alpha)], [fn.Dense(4), fn.LeakyReLU(alpha)]):
        model = fn.Sequential(layers, loss="mse", backend="numpy", dtype="float64", seed=1)
        model.build(5)
        inputs = [x, np.array(model.layers[0].forward(x))]
        for layer, inp in zip(model.layers, inputs):
            result = check_layer(layer, inp)
            assert result.ok, (alpha, layer, result)
    y = (
        fn.Sequential([fn.Dense(3, "leaky_relu", alpha=alpha)], backend="numpy", seed=0)
        .build(5)
        .forward(np.array([[1.0] * 5], np.float32))
    )
    assert y.shape == (1, 3)
    with pytest.raises(ValueError, match="finite number"):
        fn.LeakyReLU(float("nan"))


def test_summary_prints_like_keras(capsys):
    model = _model().build(6)
    assert model.summary() is None  # (a notebook cell showed the table, then its repr again)
    printed = capsys.readouterr().out
    assert "total params=" in printed
    assert model.summary(print_fn=None) + "\n" == printed  # the text, printing nothing
    assert capsys.readouterr().out == ""


def test_evaluate_takes_user_metrics():
    X, y = _blobs()
    model = _model()
    model.fit(X, y, epochs=3, verbose=0)

    def error_rate(y_true, proba):
        return float((proba.argmax(1) != y_true).mean())

    scores = model.evaluate(X, y, metrics=[error_rate])
    assert scores["error_rate"] == pytest.approx(1 - scores["accuracy"])


def _regression(n=300, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, 4)).astype(np.float32)
    return X, (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * r.normal(size=n)).astype(np.float32)


HIGHER = ["val_r2", "val_accuracy", "acc", "val_acc", "val_top5_accuracy", "val_auc", "val_f1"]
HIGHER += ["val_precision", "val_recall", "val_score", "val_roc_auc_score", "val_bal_acc"]
HIGHER += ["val_iou", "val_dice", "val_mcc", "val_cohen_kappa", "val_specificity"]
HIGHER += ["val_neg_log_loss", "neg_mean_squared_error", "val_neg_brier_score"]  # scikit-learn
LOWER = ["loss", "val_loss", "val_mae", "val_rmse", "val_balanced_error", "val_zero_one_loss"]
LOWER += ["val_mape", "val_cross_entropy"]


@pytest.mark.parametrize("name", HIGHER + LOWER)
def test_auto_mode_knows_which_scores_are_higher_is_better(name):
    want = "max" if name in HIGHER else "min"
    made = [fn.EarlyStopping(name), fn.ReduceLROnPlateau(name), fn.ModelCheckpoint("m.npz", name)]
    assert [cb.mode for cb in made] == [want] * 3


@pytest.mark.parametrize("make", [fn.EarlyStopping, fn.ReduceLROnPlateau, fn.ModelCheckpoint])
def test_auto_mode_refuses_a_name_of_no_known_direction(make, tmp_path):
    """A user metric ``val_foo`` was minimised silently (EarlyStopping then kept the worst
    weights of a score); Keras 3 refuses it too. Before training; a typo is named as one."""

    def foo(y_true, y_pred):
        return 0.5

    def made(name, **kw):
        if make is fn.ModelCheckpoint:  # (it watches a name only to save the best)
            return make(str(tmp_path / "m.npz"), name, save_best_only=True, **kw)
        return make(name, **kw)

    X, y = _blobs()
    fit = dict(epochs=1, verbose=0, validation_split=0.2, metrics=[foo])
    model = _model()
    with pytest.raises(ValueError, match="cannot tell whether a higher or a lower 'val_foo'"):
        model.fit(X, y, callbacks=[made("val_foo")], **fit)
    assert not model.built and model.history == {}
    with pytest.raises(ValueError, match="'val_fo'.*valid names: "):
        model.fit(X, y, callbacks=[made("val_fo")], **fit)
    model.fit(X, y, callbacks=[made("val_foo", mode="max")], **fit)


def _keras_stop_epoch(values, patience, min_delta, baseline, start_from_epoch):
    """Keras 3's EarlyStopping.on_epoch_end over ``values`` (mode "min"): the stop epoch."""
    best, wait = np.inf, 0
    for epoch, current in enumerate(values):
        if epoch < start_from_epoch:
            continue
        wait += 1
        if current + min_delta < best:  # (Keras negates min_delta in "min" mode)
            best = current
            if baseline is None or current + min_delta < baseline:
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return epoch
    return None


def test_early_stopping_baseline_and_start_from_epoch_as_keras():
    """Keras's baseline and start_from_epoch (a ported EarlyStopping got a TypeError), and
    Keras-style callbacks get Keras's ``params``."""
    rng = np.random.default_rng(0)
    model = type("Model", (), {"stop_reason": None})()
    for trial in range(300):
        values = rng.uniform(0, 1, 12)  # (no ties: 0.3 + 0.1 < 0.4 and 0.4 - 0.3 > 0.1 disagree)
        patience, start = int(rng.integers(1, 4)), int(rng.integers(0, 4))
        baseline = [None, 0.3, 0.05][trial % 3]
        stop = fn.EarlyStopping(
            "val_loss",
            patience,
            min_delta=0.1 * (trial % 2),
            mode="min",
            restore_best_weights=False,
            baseline=baseline,
            start_from_epoch=start,
        )
        stop.on_train_begin(model)
        got = next(
            (e for e, v in enumerate(values) if stop.on_epoch_end(model, e, {"val_loss": v})), None
        )
        assert got == _keras_stop_epoch(values, patience, 0.1 * (trial % 2), baseline, start)
    X, y = _blobs()
    seen = []

    class KerasLike:
        def on_train_begin(self, logs=None):
            seen.append(self.params)

    _model().fit(X, y, epochs=3, batch_size=50, verbose=0, callbacks=[KerasLike()])
    assert seen == [{"epochs": 3, "steps": -(-len(X) // 50), "verbose": 0}]


def test_early_stopping_on_a_rising_r2_keeps_training():
    X, y = _regression()
    model = fn.Sequential([fn.Dense(16, "relu"), fn.Dense(1)], loss="mse", backend="numpy", seed=0)
    stop = fn.EarlyStopping("val_r2", patience=1)
    hist = model.fit(X, y, epochs=4, verbose=0, validation_split=0.2, callbacks=[stop])
    assert np.all(np.diff(hist["val_r2"]) > 0) and len(hist["val_r2"]) == 4
    assert model.stop_reason is None and stop.best == hist["val_r2"][-1]


def test_checkpoint_path_keys_are_checked_before_training(tmp_path):
    X, y = _blobs()
    model = _model()
    ckpt = fn.ModelCheckpoint(tmp_path / "m-{epoch}-{val_loss:.3f}.npz")
    with pytest.raises(ValueError, match=r"ModelCheckpoint path .*'val_loss'.*valid names: .*loss"):
        model.fit(X, y, epochs=2, verbose=0, callbacks=[ckpt])
    with pytest.raises(ValueError, match=r"\{loss:d\}.* not a valid template: Unknown format code"):
        model.fit(
            X, y, epochs=2, verbose=0, callbacks=[fn.ModelCheckpoint(tmp_path / "{loss:d}.npz")]
        )
    assert not model.built and not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="Keras's order: save_best_only=True goes by name"):
        fn.ModelCheckpoint(tmp_path / "m.npz", "val_acc", True)
    ckpt = fn.ModelCheckpoint(tmp_path / "m-{epoch}-{val_acc:.2f}.npz", "val_acc", 0, True)
    hist = model.fit(X, y, epochs=2, verbose=0, validation_split=0.25, callbacks=[ckpt])
    assert ckpt.saved[0].endswith(f"m-1-{hist['val_accuracy'][0]:.2f}.npz")


def test_acc_and_val_acc_are_aliases_wherever_a_log_entry_is_named():
    X, y = _blobs()
    cbs = [fn.EarlyStopping("val_acc", patience=1), fn.ReduceLROnPlateau("acc", patience=1)]
    hist = _model().fit(X, y, epochs=4, verbose=0, validation_split=0.25, callbacks=cbs)
    assert cbs[0].best == max(hist["val_accuracy"]) and cbs[1].best == max(hist["accuracy"])
    with pytest.raises(ValueError, match="'val_acc'.*val_.* needs validation_data"):
        _model().fit(X, y, epochs=1, verbose=0, callbacks=[fn.EarlyStopping("val_acc")])


def test_user_metrics_are_checked_before_training_and_may_take_labels():
    X, y = _blobs()
    model = _model()
    sk = pytest.importorskip("sklearn.metrics")
    with pytest.raises(ValueError, match=r"'accuracy_score' failed on .*\(60, 3\).*on_labels"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=0.25, metrics=[sk.accuracy_score])

    def per_row(y_true, y_pred):  # not one number
        return y_true

    with pytest.raises(ValueError, match="'per_row' failed"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=0.25, metrics=[per_row])
    assert not model.built and model.history == {}

    def hits(y_true, y_pred):
        assert y_true.shape == y_pred.shape == (60,)
        return float((y_true == y_pred).mean())

    metrics = [fn.metrics.on_labels(sk.accuracy_score), fn.metrics.on_labels(hits)]
    Y = fn.one_hot(y, 3)  # one-hot targets: labels are their class indices
    hist = model.fit(X, Y, epochs=2, verbose=0, validation_split=0.25, metrics=metrics)
    assert hist["val_accuracy_score"] == hist["val_hits"] == hist["val_accuracy"]
    assert model.evaluate(X, y, metrics=metrics[:1])["accuracy_score"] == pytest.approx(
        model.evaluate(X, y)["accuracy"]
    )
    with pytest.raises(TypeError, match="on_labels takes a function"):
        fn.metrics.on_labels("accuracy")


def test_callbacks_none_and_csv_logger_wording(tmp_path):
    X, y = _blobs()
    assert len(_model().fit(X, y, epochs=1, verbose=0, callbacks=None, metrics=None)["loss"]) == 1
    log = fn.CSVLogger(tmp_path / "log.csv")
    _model().fit(X, y, epochs=1, verbose=0, callbacks=log)  # one callback, not in a list
    assert (tmp_path / "log.csv").exists()
    with pytest.raises(FileNotFoundError, match=r"^CSVLogger path '.*' is missing$"):
        _model().fit(X, y, epochs=1, verbose=0, callbacks=[fn.CSVLogger(tmp_path / "no" / "a")])


@pytest.mark.parametrize(
    "name,higher",
    [("val_f1score", True), ("val_top5acc", True), ("val_recall@5", True)]
    + [("val_accuracyScore", True), ("val_logloss", False), ("val_balanced_error", False)],
)
def test_auto_mode_reads_joined_and_camel_case_names(name, higher):
    assert fn.EarlyStopping(name).mode == ("max" if higher else "min")


def test_a_metric_that_needs_positive_predictions_passes_the_check():
    X, t = _regression()
    t = (t - t.min()) / (t.max() - t.min()) + 0.05  # targets in (0, 1]: a sigmoid output

    def mean_poisson_deviance(y, p):  # as scikit-learn's: needs y_pred > 0
        if (p <= 0).any():
            raise ValueError("y_pred must be positive")
        return float(np.mean(2 * (y * np.log(y / p) - y + p)))

    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(1, "sigmoid")], loss="mse", seed=0)
    hist = model.fit(
        X, t, epochs=1, verbose=0, validation_split=0.2, metrics=[mean_poisson_deviance]
    )
    assert np.isfinite(hist["val_mean_poisson_deviance"][0])


def test_a_checkpoint_path_may_name_what_a_keras_style_callback_provides(tmp_path):
    X, y = _blobs()

    class Auc:  # Keras-style: no model argument
        provides = ("val_auc",)

        def on_epoch_end(self, epoch, logs):
            logs["val_auc"] = 0.5 + epoch / 10

    ckpt = fn.ModelCheckpoint(tmp_path / "m-{val_auc:.2f}.npz")
    _model().fit(X, y, epochs=2, verbose=0, validation_split=0.25, callbacks=[Auc(), ckpt])
    assert [p.rsplit("/", 1)[1] for p in ckpt.saved] == ["m-0.50.npz", "m-0.60.npz"]
    with pytest.raises(ValueError, match="names it in its provides"):
        _model().fit(X, y, epochs=1, verbose=0, callbacks=[fn.ModelCheckpoint("{val_x}.npz")])


@pytest.mark.parametrize("name", ["val_err2", "val_layer2_norm", "val_microcost"])
def test_auto_mode_does_not_read_short_words_inside_others(name):
    assert fn.EarlyStopping(name).mode == ("min" if name == "val_microcost" else "auto")


@pytest.mark.parametrize("name", ["loss", "accuracy", "acc", "f1", "top2_accuracy"])
def test_a_user_metric_may_not_take_a_built_in_scores_name(name):
    """It would replace the built-in (EarlyStopping on val_loss then watched the user's
    number): refused before training, and by evaluate."""
    X, y = _blobs()
    model = _model()

    def metric(y_true, y_pred):
        return 123.0

    metric.__name__ = name
    with pytest.raises(ValueError, match=f"'{name}' names a built-in score"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=0.25, metrics=[metric], top_k=2)
    assert not model.built
    model.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=f"'{name}' names a built-in score"):
        model.evaluate(X, y, metrics=[metric], top_k=2)


def test_inference_takes_keras_batch_size_and_verbose():
    """``predict(X, verbose=0)``, ``predict(X, batch_size=n)`` and ``evaluate(...,
    verbose=0)`` run as in Keras (chunks of batch_size rows: the same numbers)."""
    X, y = _blobs()
    model = _model()
    model.fit(X, y, epochs=2, verbose=0)
    want = model.predict_proba(X)
    np.testing.assert_allclose(model.predict_proba(X, batch_size=7, verbose=0), want, rtol=1e-6)
    np.testing.assert_array_equal(model.predict(X, batch_size=50, verbose=1), want.argmax(1))
    scores = model.evaluate(X, y, verbose=0, batch_size=9)
    assert scores["accuracy"] == model.evaluate(X, y)["accuracy"]
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(X, batch_size=0)
    with pytest.raises(ValueError, match="verbose"):
        model.predict(X, verbose="loud")


def test_submodules_are_reached_from_the_package():
    """``import fastnet as fn; fn.datasets.load_arrays`` as the README writes it."""
    code = (
        "import sys, fastnet as fn; f = fn.datasets.load_arrays; fn.tabular.Scaler; "
        "print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        fn.nonsense  # noqa: B018


def test_targets_beyond_float32_are_refused_before_training():
    model = fn.Sequential([fn.Dense(1)], loss="mse", backend="numpy", seed=0)
    X = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"y contains 1 NaN .* \(as float32: or beyond"):
        model.fit(X, np.array([1.0, 2.0, 1e39, 1.0]), epochs=1, verbose=0)
    assert not model.built or model.epochs_trained == 0


@pytest.mark.filterwarnings("ignore:X has column names, but the model takes")  # (below)
def test_a_data_frame_of_mixed_numeric_columns_trains_and_others_are_named():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "flag": [True, False, True, False]})
    model = fn.Sequential([fn.Dense(2)], backend="numpy", seed=0)
    model.fit(frame, np.array([0, 1, 0, 1]), epochs=1, verbose=0)  # bool + float: object array
    np.testing.assert_array_equal(model.predict(frame), model.predict(frame.to_numpy(float)))
    assert model.metadata.pop("features") == ["a", "flag"]  # (by position from here on)
    missing = frame.assign(n=pd.array([1.0, None, 2.0, 3.0], dtype="Float64"))
    with pytest.raises(ValueError, match="X contains NaN .* the first in row 1"):
        model.predict(missing.drop(columns="a"))
    kinds = frame.assign(kind=pd.Categorical(["x", "y", "x", "y"])).drop(columns="a")
    with pytest.raises(TypeError, match=r"X must hold .* column\(s\) 'kind' \(category\) are"):
        model.predict(kinds)
    numbered = pd.DataFrame({0: [1.0, 2.0, 3.0, 4.0], 1: ["a", "b", "c", "d"]})  # int labels
    with pytest.raises(TypeError, match=r"column\(s\) 1 \(\w+\) are of no numeric dtype"):
        model.predict(numbered)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_callbacks_written_as_keras_documents_them(backend):
    """Keras's hooks take logs=None and no model: each is called with Keras's arguments (the
    docs' LossHistory verbatim), batch logs hold the running loss, stop_training stops."""
    X, y = _blobs()

    class LossHistory(fn.Callback):
        def on_train_begin(self, logs={}):  # noqa: B006 (as Keras's docs write it)
            self.losses = []

        def on_batch_end(self, batch, logs={}):  # noqa: B006
            self.losses.append(logs.get("loss"))

    class Keras3:
        def on_epoch_begin(self, epoch, logs=None):
            self.epochs = [*getattr(self, "epochs", []), epoch]

        def on_train_batch_end(self, batch, logs=None):
            self.batches = getattr(self, "batches", 0) + 1

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    history, keras3 = LossHistory(), Keras3()
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend=backend, seed=0)
    h = model.fit(X, y, epochs=5, batch_size=50, verbose=0, callbacks=[history, keras3])
    assert h.history is h and len(h["loss"]) == 2 and keras3.epochs == [0, 1]
    per_epoch = len(history.losses) // 2
    assert keras3.batches == len(history.losses) and per_epoch == -(-len(X) // 50)
    assert history.losses[per_epoch - 1] == pytest.approx(h["loss"][0], rel=1e-9)

    class Named(fn.Callback):  # fastnet's hook, its model by another name
        def on_epoch_end(self, net, epoch, logs=None):
            self.seen = (type(net).__name__, epoch)

    named = Named()
    model.fit(X, y, epochs=1, verbose=0, callbacks=[named])
    assert named.seen == ("Sequential", 0)

    class NoDefaults:  # Keras calls every hook (epoch, logs): a logs without default is Keras's
        def on_train_begin(self, logs):
            self.calls = [("train_begin", logs)]

        def on_epoch_begin(self, epoch, logs):
            self.calls.append(("epoch_begin", epoch, logs))

        def on_train_batch_begin(self, batch, logs):
            self.calls.append(("batch_begin", batch, logs))

        def on_train_end(self, logs):
            self.calls.append(("train_end", logs))

    keras = NoDefaults()
    model.fit(X, y, epochs=1, batch_size=len(X), verbose=0, callbacks=[keras])
    want = [("train_begin", {}), ("epoch_begin", 0, {}), ("batch_begin", 0, {})]
    assert keras.calls[:3] == want and keras.calls[3][0] == "train_end"
    last = {key: values[-1] for key, values in model.history.items()}
    assert keras.calls[3][1] == last  # (Keras's: the last epoch's logs)
    with pytest.raises(TypeError, match=r"pass EarlyStopping\(...\), not the class"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[fn.EarlyStopping])
    with pytest.raises(ValueError, match="verbose must be 0, 1 .* or 2"):
        model.fit(X, y, epochs=1, verbose=3)


def test_keras_names_and_argument_order():
    X, y = _blobs()
    model = fn.Sequential(
        [fn.Dense(8, "relu", input_dim=X.shape[1]), fn.Dense(3)],
        loss="sparse_categorical_crossentropy",
        optimizer=fn.Adam(0.02),
        backend="numpy",
        seed=0,
    )
    assert model.built and isinstance(model.loss, fn.SoftmaxCrossEntropy)  # as Keras builds
    model.optimizer.learning_rate = 0.05  # Keras's attribute names set fastnet's
    model.optimizer.beta_1 = 0.8
    assert model.optimizer.lr == 0.05 and model.optimizer.beta1 == 0.8
    model.fit(X, y, epochs=2, verbose=0, metrics=["accuracy"])  # reported anyway
    scores = model.evaluate(X, y, 32)  # Keras's order: batch_size third
    assert "top32_accuracy" not in scores and scores == model.evaluate(X, y)
    assert fn.Sequential([fn.Dense(1)], loss="binary_crossentropy").loss.name.startswith("sigmoid")
    with pytest.raises(ValueError, match="the loss applies softmax: leave the last Dense linear"):
        fn.Dense(3, "softmax")
    keras_adam = fn.Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99)  # (Keras's names)
    assert keras_adam.get_config() == fn.Adam(0.01, 0.8, 0.99).get_config()
    keras_sgd = fn.SGD(learning_rate=0.1, global_clipnorm=1.0, clipvalue=0.5)
    assert keras_sgd.get_config() == fn.SGD(0.1, clip_norm=1.0, clip_value=0.5).get_config()
    with pytest.raises(TypeError, match="learning_rate .another name of lr. and lr: give one"):
        fn.Adam(learning_rate=1e-3, lr=1e-2)
    with pytest.raises(TypeError, match="Adam's is the paper's epsilon hat"):
        fn.Adam(epsilon=1e-7)  # (placed elsewhere: refused, not silently another update)

    class Own(fn.SGD):  # a subclass's own argument of a Keras name stays its own
        name = "test_own_learning_rate"

        def __init__(self, learning_rate=0.01, **kwargs):
            super().__init__(learning_rate, **kwargs)

    assert Own(learning_rate=0.1, clipvalue=0.5).get_config()["clip_value"] == 0.5
    with pytest.raises(TypeError, match=r"SGD with momentum is fn.Momentum\(lr, momentum\)"):
        fn.SGD(0.1, momentum=0.9)
    sgd = fn.SGD(0.1)  # Keras's clipnorm is per weight (set, it was fastnet's global norm)
    sgd.global_clipnorm, sgd.clipvalue = 1.0, 0.5
    assert (sgd.clip_norm, sgd.clip_value) == (1.0, 0.5) == (sgd.global_clipnorm, sgd.clipvalue)
    for clip in (lambda: setattr(sgd, "clipnorm", 1.0), lambda: fn.SGD(0.1, clipnorm=1.0)):
        with pytest.raises((AttributeError, TypeError), match="clips each weight's gradient by"):
            clip()
    assert sgd.clip_norm == 1.0 and "clipnorm" not in vars(sgd)


def test_a_schedule_may_pause_training_and_a_bad_value_names_it():
    X, y = _blobs()
    model = _model()
    pause = fn.LearningRateScheduler(lambda epoch, lr: 0.0 if epoch == 1 else 0.02)
    model.fit(X, y, epochs=2, verbose=0, callbacks=[pause])
    assert model.history["lr"] == [0.02, 0.0]
    bad = fn.LearningRateScheduler(lambda epoch: -1.0)
    with pytest.raises(ValueError, match="LearningRateScheduler's function, epoch 0: lr must"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[bad])
    import pickle

    assert pickle.loads(pickle.dumps(model)).optimizer.lr == 0.0  # a paused model loads
    halve = fn.LearningRateScheduler(lambda epoch, lr: np.where(epoch < 1, 0.02, lr * 0.5))
    model.fit(X, y, epochs=2, verbose=0, callbacks=[halve])  # a 0-d array is a number
    assert model.history["lr"][-2:] == [0.02, 0.01]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_get_and_set_weights_as_keras(backend):
    X, y = _blobs()
    model = fn.Sequential([fn.Dense(8, "relu"), fn.BatchNorm1d(), fn.Dense(3)], backend=backend)
    model.fit(X, y, epochs=1, verbose=0)
    weights = model.get_weights()
    shapes = [(6, 8), (8,), (8,), (8,), (8,), (8,), (8, 3), (3,)]  # BatchNorm's statistics too
    assert [w.shape for w in weights] == shapes
    assert model.count_params() == sum(w.size for w in weights) - 16  # (buffers: not params)
    other = fn.Sequential([fn.Dense(8, "relu"), fn.BatchNorm1d(), fn.Dense(3)], backend=backend)
    other.build(6)
    other.set_weights(weights)
    np.testing.assert_array_equal(other.predict_raw(X), model.predict_raw(X))
    weights[0][0, 0] = np.nan
    before, variances = other.get_weights(), [*other.get_weights()[:5], -np.ones(8), *weights[6:]]
    strings = [np.full(w.shape, "1.5") if i == 1 else w for i, w in enumerate(before)]
    complexes = [w + 1j if i == 2 else w for i, w in enumerate(before)]
    for bad, match in [
        (weights, r"weights\[0\] \(W of layer 0\) must be finite"),
        (variances, r"weights\[5\] \(running_var of layer 1\) must be finite, >= 0"),
        ([], "8 arrays"),
        (strings, r"weights\[1\] must hold real numbers, got dtype <U3"),
        (complexes, r"weights\[2\] must hold real numbers, got dtype complex"),
    ]:
        with pytest.raises(ValueError, match=match):
            other.set_weights(bad)
    for got, want in zip(other.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # a refused list changed nothing


def test_a_model_without_a_seed_draws_one_and_keeps_it():
    X, y = _blobs()
    first, second = (fn.Sequential([fn.Dense(3)], backend="numpy") for _ in range(2))
    assert first.seed != second.seed and first.get_config()["seed"] == first.seed
    first.fit(X, y, epochs=1, verbose=0)
    again = fn.Sequential.from_config({**first.get_config(), "input_dim": None}, "numpy")
    again.fit(X, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(again.predict_raw(X), first.predict_raw(X))  # recreated


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_stop_training_set_in_a_batch_hook_ends_the_epoch_after_that_batch(backend):
    """As Keras: the epoch ends after the batch whose hook set ``stop_training`` (its logs
    average the rows trained), then validation and ``on_epoch_end`` run and training stops:
    the weights are those of training on those rows alone."""
    X, y = _blobs()

    class Halt(fn.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.last = logs
            if batch == 2:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_logs = dict(logs)

    def model():
        return fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend=backend, seed=0)

    halt, stopped = Halt(), model()
    h = stopped.fit(X, y, epochs=4, batch_size=50, shuffle=False, verbose=0, callbacks=[halt],
                    validation_data=(X[:40], y[:40]))  # fmt: skip
    assert len(h["loss"]) == 1 and stopped.rows_trained == 150 and halt.last["batch"] == 2
    assert h["loss"][0] == pytest.approx(halt.last["loss"], rel=1e-12)
    assert "val_loss" in halt.epoch_logs and "after 150 of" in stopped.stop_reason
    alone = model()
    alone.fit(X[:150], y[:150], epochs=1, batch_size=50, shuffle=False, verbose=0)
    for a, b in zip(stopped.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    class HaltAtBegin:  # only on_batch_begin: it ran the whole epoch
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    begun = model()
    begun.fit(X, y, epochs=4, batch_size=50, shuffle=False, verbose=0, callbacks=[HaltAtBegin()])
    assert begun.rows_trained == 150 and len(begun.history["loss"]) == 1
    for a, b in zip(begun.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_keras_keyword_names_and_early_stoppings_order(tmp_path):
    """Keras's keywords were TypeErrors: ``fit(x=..., y=...)``, ``evaluate(x=...)``,
    ``predict(x=...)``, ``ModelCheckpoint(filepath=..., save_weights_only=...)``,
    ``CSVLogger(filename=...)``, ``LearningRateScheduler(schedule=...)``; they name fastnet's
    arguments now (one given both ways refused). Keras's ``EarlyStopping("loss", 0, 5)``
    (min_delta, patience) trained as patience 0, min_delta 5 unsaid: arguments after
    patience by position now give a FutureWarning naming Keras's order (read in fastnet's
    older order until they are refused)."""
    X, y = _blobs(n=80)
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend="numpy", seed=0)
    callbacks = [
        fn.ModelCheckpoint(filepath=str(tmp_path / "m.npz"), save_weights_only=True),
        fn.CSVLogger(filename=str(tmp_path / "log.csv")),
        fn.LearningRateScheduler(schedule=lambda epoch: 0.01),
    ]
    model.fit(x=X, y=y, epochs=1, verbose=0, validation_split=0.2, callbacks=callbacks)
    assert (tmp_path / "m.npz").exists() and (tmp_path / "log.csv").exists()
    assert model.optimizer.lr == 0.01
    assert model.evaluate(x=X, y=y) == model.evaluate(X, y)
    for predict in (model.predict, model.predict_proba, model.predict_raw):
        np.testing.assert_array_equal(predict(x=X), predict(X))
    with pytest.raises(TypeError, match=r"^fit\(\) got X twice \(and as Keras's x=\)"):
        model.fit(X, y, x=X)
    with pytest.raises(TypeError, match="got path twice"):
        fn.CSVLogger("a.csv", filename="b.csv")
    with pytest.warns(FutureWarning, match=r"Keras's order is \(monitor, min_delta, patience"):
        stop = fn.EarlyStopping("loss", 0, 5)  # (Keras's min_delta 0, patience 5: said)
    assert (stop.patience, stop.min_delta) == (0, 5)  # (fastnet's older order, as before)
    with pytest.warns(FutureWarning, match=r"older order \(min_delta, mode\)"):
        older = fn.EarlyStopping("val_loss", 5, 0.01, "min")
    assert (older.patience, older.min_delta, older.mode) == (5, 0.01, "min")
    with pytest.raises(TypeError, match="got mode twice"):
        fn.EarlyStopping("val_loss", 5, 0.01, "min", mode="max")
    with pytest.raises(ValueError, match="patience must be a non-negative integer"):
        fn.EarlyStopping("val_loss", 0.001)
    stop = fn.EarlyStopping("loss", 5, min_delta=0.001)
    assert (stop.patience, stop.min_delta) == (5, 0.001)


def test_a_frame_given_to_a_model_that_takes_features_by_position_is_warned_of():
    """Trained on an array (or on a frame whose names repeat), a model takes a frame's columns
    by position: reordered, they predicted otherwise, silently (scikit-learn warns too); a
    model trained on named columns reads them by name and says nothing."""
    import warnings

    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(0).random((20, 3))
    y = (X[:, 0] > 0.5).astype(int)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    for trained_on in (X, pd.DataFrame(X, columns=["a", "a", "c"])):
        model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(2)], backend="numpy", seed=0)
        model.fit(trained_on, y, epochs=1, verbose=0)
        with pytest.warns(UserWarning, match="X has column names, but the model takes its "):
            model.predict_proba(frame)
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(2)], backend="numpy", seed=0)
    with pytest.warns(UserWarning, match="X_val has column names, but"):  # (a first fit's)
        model.fit(X, y, epochs=1, verbose=0, validation_data=(frame, y))
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(2)], backend="numpy", seed=0)
    model.fit(frame, y, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            model.predict_proba(frame[["c", "a", "b"]]), model.predict_proba(X)
        )
