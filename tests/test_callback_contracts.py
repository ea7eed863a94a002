"""Callbacks as Keras users write them (issue: a newcomer's callbacks): Keras's order of
arguments and ``verbose``, hooks' return values ignored as Keras does, entries checked in the
order ``on_epoch_end`` adds them, a CSV log with every entry's column, arguments checked where
they are given, and History's ``epoch`` and ``params``."""

import copy
import csv
import pickle

import numpy as np
import pytest

import fastnet as fn


def _data(n=64):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 5)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def _model():
    return fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], optimizer=fn.SGD(0.05),
                         backend="numpy", seed=0)  # fmt: skip


class TrainScore(fn.Callback):
    """Adds an entry every other epoch (declared in provides)."""

    provides = ("train_score",)

    def on_epoch_end(self, model, epoch, logs):
        if epoch % 2:
            logs["train_score"] = float(epoch)
        return False


def test_keras_positional_order_and_verbose(capsys):
    plateau = fn.ReduceLROnPlateau("val_loss", 0.5, 1, 1)  # Keras: the 4th is verbose
    assert (plateau.verbose, plateau.min_lr) == (1, 0.0)
    X, y = _data()
    plateau = fn.ReduceLROnPlateau("loss", 0.5, 0, 1, "min", 10.0)  # (no epoch gains 10)
    model = _model()
    scheduler = fn.LearningRateScheduler(lambda e, lr: lr, verbose=1)
    model.fit(X, y, epochs=3, verbose=0, callbacks=[plateau, scheduler])
    out = capsys.readouterr().out
    assert "Epoch 1: LearningRateScheduler setting learning rate to 0.05." in out
    assert "ReduceLROnPlateau reducing learning rate to" in out
    with pytest.raises(TypeError, match="positional"):
        fn.ReduceLROnPlateau("val_loss", 0.5, 1, 0, "auto", 1e-4, 0, 0.0, 7)
    assert fn.CSVLogger("log.csv", ";").separator == ";"  # Keras's (filename, separator, append)


def test_a_keras_hook_returning_a_value_does_not_stop_training():
    class Recorder:  # a Keras port: on_epoch_end returns what it recorded
        def __init__(self):
            self.losses = []

        def on_epoch_end(self, epoch, logs=None):
            self.losses.append(logs["loss"])
            return self.losses

    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=3, verbose=0, callbacks=[Recorder()])
    assert model.epochs_trained == 3 and model.stop_reason is None


def test_a_needed_entry_added_by_a_later_callback_is_named_before_training(tmp_path):
    X, y = _data()
    model = _model()
    stop = fn.EarlyStopping("train_score", mode="max")
    with pytest.raises(ValueError, match="EarlyStopping needs an entry that TrainScore, after it"):
        model.fit(X, y, epochs=2, verbose=0, callbacks=[stop, TrainScore()])
    path = str(tmp_path / "m-{train_score}.npz")
    with pytest.raises(ValueError, match="ModelCheckpoint needs an entry that TrainScore"):
        model.fit(X, y, epochs=2, verbose=0, callbacks=[fn.ModelCheckpoint(path), TrainScore()])
    assert not model.built


def test_csv_logger_writes_a_column_for_every_entry_an_epoch_may_hold(tmp_path):
    X, y = _data()
    path = tmp_path / "log.csv"
    _model().fit(X, y, epochs=4, verbose=0, callbacks=[TrainScore(), fn.CSVLogger(path)])
    rows = list(csv.DictReader(path.open()))
    assert [r["train_score"] for r in rows] == ["", "1.0", "", "3.0"]  # (dropped before)
    plain = tmp_path / "plain.csv"
    model = _model()
    model.fit(X, y, epochs=1, verbose=0, callbacks=[fn.CSVLogger(plain)])
    with pytest.warns(UserWarning, match=r"header lacks \['val_loss'"):
        model.fit(X, y, epochs=1, verbose=0, validation_data=(X, y),
                  callbacks=[fn.CSVLogger(plain, append=True)])  # fmt: skip


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: fn.ModelCheckpoint(p, save_best_only="False"), TypeError, "save_best_only"),
        (lambda p: fn.CSVLogger(p, append="False"), TypeError, "append must be True or False"),
        (lambda p: fn.CSVLogger(p, separator=";;"), ValueError, "separator must be one"),
        (lambda p: fn.EarlyStopping(monitor=None), TypeError, "monitor must be a log entry's"),
        (lambda p: fn.LearningRateScheduler(lambda e, lr, k: lr), TypeError, r"fn\(epoch, lr\)"),
        (lambda p: fn.ReduceLROnPlateau(verbose=-1), ValueError, "verbose must be"),
    ],
)
def test_callback_arguments_are_checked_where_they_are_given(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        make(str(tmp_path / "x.csv"))


def test_fit_refuses_callbacks_that_are_no_list_and_names_x_val():
    X, y = _data()
    for bad in (5, "es"):
        with pytest.raises(TypeError, match="callbacks must be a list of callbacks"):
            _model().fit(X, y, epochs=1, verbose=0, callbacks=bad)
    with pytest.raises(ValueError, match="X_val has 64 samples but y_val has 10"):
        _model().fit(X, y, epochs=1, verbose=0, validation_data=(X, y[:10]))


def test_history_has_keras_epoch_and_params():
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=2, verbose=0)
    history = model.fit(X, y, epochs=5, initial_epoch=2, verbose=0, batch_size=16)
    assert history.epoch == [2, 3, 4] and model.history.epoch == [0, 1, 2, 3, 4]
    assert history.params == {"epochs": 5, "steps": 4, "verbose": 0}


def test_a_callback_may_monitor_the_entry_it_adds_itself():
    class ScoreStopping(fn.EarlyStopping):
        provides = ("val_score",)

        def on_epoch_end(self, model, epoch, logs):
            logs["val_score"] = -float(epoch)
            return super().on_epoch_end(model, epoch, logs)

    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=3, verbose=0, callbacks=[ScoreStopping("val_score", mode="max")])
    assert model.epochs_trained >= 1


def test_history_numbering_survives_loading_and_copies(tmp_path):
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = fn.load_model(tmp_path / "m.npz", backend="numpy")
    loaded.fit(X, y, epochs=4, initial_epoch=2, verbose=0)
    assert loaded.history.epoch == [2, 3] and copy.deepcopy(loaded).history.epoch == [2, 3]
    assert pickle.loads(pickle.dumps(loaded)).history.epoch == [2, 3]


def test_model_checkpoint_verbose_prints_keras_lines(tmp_path, capsys):
    X, y = _data()
    worst = fn.ModelCheckpoint(tmp_path / "w.npz", "loss", 1, True, mode="max")  # (falls)
    _model().fit(X, y, epochs=2, verbose=0, callbacks=[worst])
    out = capsys.readouterr().out
    assert "Epoch 1: loss improved from -inf to " in out and ", saving model to " in out
    assert "Epoch 2: loss did not improve from" in out
    every = fn.ModelCheckpoint(tmp_path / "m{epoch}.npz", verbose=1)
    _model().fit(X, y, epochs=1, verbose=0, callbacks=[every])
    assert f"Epoch 1: saving model to {tmp_path / 'm1.npz'}" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_fit_that_finishes_no_epoch_leaves_an_unbuilt_model_unbuilt(backend):
    class Broken(fn.Callback):
        def on_train_begin(self, model):
            raise RuntimeError("no log folder")

    X, y = _data()
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend=backend, seed=0)
    with pytest.raises(RuntimeError, match="no log folder"):
        model.fit(X, y, epochs=2, verbose=0, callbacks=[Broken()])
    assert not model.built  # (built with weights drawn, before)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X[:, :2], columns=["a", "b"])
    with pytest.raises(RuntimeError, match="no log folder"):
        model.fit(frame, y, epochs=2, verbose=0, callbacks=[Broken()])
    assert "features" not in model.metadata  # (a later frame of 5 columns took 2 of them)
    model.fit(X, y, epochs=1, verbose=0)
    same = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend=backend, seed=0)
    same.fit(X, y, epochs=1, verbose=0)  # (the same initial weights: the draw was undone)
    np.testing.assert_array_equal(model.predict_raw(X), same.predict_raw(X))
