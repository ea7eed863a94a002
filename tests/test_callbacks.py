"""Callbacks and schedules on every backend: checkpoints on improvement, plateau reduction,
CSV logs, NaN termination, per-step warmup, step decay, batch hooks."""

import csv
import math
import os
from decimal import Decimal

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn


def _model(backend, **kw):
    opt = kw.pop("optimizer", fn.Adam(1e-2))
    return fn.Sequential(
        [fn.Dense(16, "relu"), fn.Dense(4)], optimizer=opt, backend=backend, seed=0, **kw
    )


def _data():
    X, y = make_blobs(n=320)
    return X[:256], y[:256], (X[256:], y[256:])


def test_model_checkpoint_best_only_with_epoch_in_path(backend, tmp_path):
    X, y, val = _data()
    ckpt = fn.ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.3f}.npz", save_best_only=True)
    model = _model(backend)
    model.fit(X, y, epochs=4, validation_data=val, verbose=0, callbacks=[ckpt])
    assert ckpt.saved and all((tmp_path / p.split("/")[-1]).exists() for p in ckpt.saved)
    best = fn.model.load_model_with_meta(ckpt.saved[-1])[1]["extra"]
    assert best["val_loss"] == pytest.approx(min(model.history["val_loss"]), rel=1e-6)
    every = fn.ModelCheckpoint(tmp_path / "last.safetensors")
    model.fit(X, y, epochs=2, verbose=0, callbacks=[every])
    assert fn.load_model(tmp_path / "last.safetensors").built
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="ModelCheckpoint path '"):
        model.fit(
            X, y, epochs=1, verbose=0, callbacks=[fn.ModelCheckpoint(tmp_path / "file" / "m.npz")]
        )


def test_reduce_lr_on_plateau(backend):
    X, y, val = _data()
    model = _model(backend, optimizer=fn.SGD(1e-9))  # no progress: a plateau at once
    cb = fn.ReduceLROnPlateau("loss", factor=0.5, patience=1, min_delta=1.0, min_lr=2e-10)
    model.fit(X, y, epochs=5, verbose=0, callbacks=[cb])  # epoch 1 sets the baseline
    assert model.history["lr"] == pytest.approx([1e-9, 1e-9, 5e-10, 2.5e-10, 2e-10])


def test_csv_logger(backend, tmp_path):
    X, y, val = _data()
    path = tmp_path / "log.csv"
    model = _model(backend)
    model.fit(X, y, epochs=2, validation_data=val, verbose=0, callbacks=[fn.CSVLogger(path)])
    model.fit(
        X, y, epochs=1, validation_data=val, verbose=0, callbacks=[fn.CSVLogger(path, append=True)]
    )
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "0"]  # Keras's 0-based epoch index
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(rows[0])
    assert float(rows[1]["loss"]) == pytest.approx(model.history["loss"][1])


def test_terminate_on_nan(backend):
    X, y, _ = _data()
    model = _model(backend, optimizer=fn.SGD(1e8))
    with np.errstate(all="ignore"):
        model.fit(
            X * 1e3,
            y,
            epochs=20,
            verbose=0,
            on_divergence="ignore",
            callbacks=[fn.TerminateOnNaN()],
        )
    assert len(model.history["loss"]) < 20 and not math.isfinite(model.history["loss"][-1])
    assert model.stop_reason.startswith("TerminateOnNaN")


def test_checkpoints_skip_nan_weights_and_beat_an_initial_threshold(tmp_path):
    """on_divergence="ignore" with TerminateOnNaN stops cleanly, the NaN epoch not saved;
    initial_value_threshold: a resumed run's best to beat (Keras's)."""
    X, y, val = _data()
    every = fn.ModelCheckpoint(tmp_path / "nan-{epoch}.npz")
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="NaN or inf.*not saved"):
        _model("numpy", optimizer=fn.SGD(1e30)).fit(
            X * 1e3, y, epochs=5, verbose=0, on_divergence="ignore",
            callbacks=[fn.TerminateOnNaN(), every],
        )  # fmt: skip
    assert all(fn.load_model(p).built for p in every.saved)
    assert len(os.listdir(tmp_path)) == len(every.saved)
    model = _model("numpy")
    worse = fn.ModelCheckpoint(tmp_path / "b.npz", save_best_only=True, initial_value_threshold=0)
    model.fit(X, y, epochs=2, validation_data=val, verbose=0, callbacks=[worse])
    assert not worse.saved and not (tmp_path / "b.npz").exists()
    better = fn.ModelCheckpoint(tmp_path / "b.npz", save_best_only=True, initial_value_threshold=9)
    model.fit(X, y, epochs=1, validation_data=val, verbose=0, callbacks=[better])
    assert better.saved == [str(tmp_path / "b.npz")]
    with pytest.raises(ValueError, match="initial_value_threshold must be a finite number"):
        fn.ModelCheckpoint("m.npz", initial_value_threshold=float("nan"))


class _Recorder(fn.Callback):
    def __init__(self):
        self.lrs, self.sizes = [], []

    def on_batch_begin(self, model, batch):
        self.lrs.append(model.optimizer.lr)

    def on_batch_end(self, model, batch, logs):
        self.sizes.append(logs["size"])


def test_warmup_cosine_is_per_step_and_batch_hooks_run(backend):
    X, y, _ = _data()
    model = _model(backend, optimizer=fn.Adam(0.01))
    rec = _Recorder()
    model.fit(
        X,
        y,
        epochs=4,
        batch_size=64,
        verbose=0,
        callbacks=[fn.WarmupCosine(1, 4, min_lr=1e-4), rec],
    )
    lrs = rec.lrs  # 4 steps per epoch: warmup 0.0025 .. 0.01, then cosine down
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 1e-4
    assert rec.sizes == [64] * 16
    rec = _Recorder()  # warmup ending inside an epoch (0.3 x 4 steps): up to the lr, not past
    model.fit(X, y, epochs=3, batch_size=64, verbose=0, callbacks=[fn.WarmupCosine(0.3, 3), rec])
    assert rec.lrs[:2] == pytest.approx([0.01 / 1.2, 0.01]) and max(rec.lrs) == 0.01  # (1.67x)


def test_step_decay_and_scheduler_function(backend):
    X, y, _ = _data()
    model = _model(backend, optimizer=fn.Adam(0.01))
    model.fit(X, y, epochs=5, verbose=0, callbacks=[fn.StepDecay(2, gamma=0.5)])
    assert model.history["lr"] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    model = _model(backend, optimizer=fn.Adam(0.01))
    model.fit(
        X,
        y,
        epochs=3,
        verbose=0,
        callbacks=[fn.LearningRateScheduler(lambda epoch, lr: lr * 0.1 if epoch else lr)],
    )
    assert model.history["lr"] == pytest.approx([0.01, 0.001, 0.0001])
    model = _model(backend, optimizer=fn.Adam(0.01))  # Keras's older fn(epoch)
    schedule = fn.LearningRateScheduler(lambda epoch: 0.1 * 0.5**epoch)
    model.fit(X, y, epochs=3, verbose=0, callbacks=[schedule])
    assert model.history["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_schedules_reject_bad_arguments():
    with pytest.raises(ValueError, match="warmup_epochs"):
        fn.WarmupCosine(5, 5)
    with pytest.raises(ValueError, match="gamma"):
        fn.StepDecay(1, 0)
    with pytest.raises(ValueError, match="factor"):
        fn.ReduceLROnPlateau(factor=2)
    with pytest.raises(TypeError):
        fn.LearningRateScheduler(0.1)
    with pytest.raises(TypeError, match=r"fn\(epoch, lr\) or fn\(epoch\)"):
        fn.LearningRateScheduler(lambda: 0.1)


def test_metrics_in_evaluate_history_and_against_scikit_learn(backend):
    X, y, val = _data()
    model = _model(backend)
    h = model.fit(X, y, epochs=2, validation_data=val, verbose=0, top_k=2)
    for key in ("val_precision", "val_recall", "val_f1", "val_top2_accuracy"):
        assert len(h[key]) == 2 and 0 <= h[key][-1] <= 1
    scores = model.evaluate(*val, top_k=2)
    cm = model.confusion_matrix(*val)
    assert cm.sum() == len(val[1]) and np.trace(cm) / cm.sum() == pytest.approx(scores["accuracy"])
    metrics = pytest.importorskip("sklearn.metrics")
    pred = model.predict(val[0])
    np.testing.assert_array_equal(cm, metrics.confusion_matrix(val[1], pred, labels=range(4)))
    for name in ("precision", "recall", "f1"):
        want = getattr(metrics, f"{name}_score")(val[1], pred, average="macro", zero_division=0)
        assert scores[name] == pytest.approx(want)
    want = metrics.top_k_accuracy_score(val[1], model.predict_proba(val[0]), k=2)
    assert scores["top2_accuracy"] == pytest.approx(want)


def test_macro_scores_of_a_class_never_predicted():
    cm = fn.metrics.confusion_matrix([0, 0, 1, 1, 2], [0, 0, 0, 1, 1], 4)
    scores = fn.metrics.macro_scores(cm)  # class 2 never predicted, class 3 absent
    assert scores["precision"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert scores["recall"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_metric_functions_refuse_labels_they_would_misread():
    """One-hot rows were counted as 0/1 labels cell by cell; top_k_accuracy wrapped label -1
    to the last class, truncated 2.9 and took k=0."""
    onehot = np.eye(3)[[0, 1, 2, 1]]
    with pytest.raises(ValueError, match=r"y_true has shape \(4, 3\): one class label per row"):
        fn.metrics.confusion_matrix(onehot, onehot)
    assert fn.metrics.confusion_matrix([[0], [1]], [[0], [0]]).tolist() == [[1, 0], [1, 0]]
    scores = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert fn.metrics.top_k_accuracy(scores, [2, 1], k=2) == 1.0
    for labels, k, message in [
        ([-1, 0], 1, "labels must be class indices 0 to 2"),
        ([2.9, 0], 1, "labels must hold integer class labels"),
        ([2, 0], 0, "k must be a positive integer"),
        ([2], 1, r"one row per label, got \(2, 3\) for 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            fn.metrics.top_k_accuracy(scores, labels, k)


def _lrs(model, X, y, schedule, **kw):
    return model.fit(X, y, epochs=4, verbose=0, callbacks=[schedule], **kw)["lr"]


def test_a_schedule_scales_each_optimizers_own_learning_rate():
    """One schedule object on two models: each decays from its own lr (the second model's
    was taken for the first's); an lr set by hand between fits is the next schedule's base;
    a model fitted again with a new schedule starts from the lr it was given."""
    X, y = make_blobs(n=64)
    schedule = fn.CosineDecay(4)

    def model(lr):
        return fn.Sequential([fn.Dense(8, "relu"), fn.Dense(4)], optimizer=fn.Adam(lr), seed=0)

    first, second = model(3e-2), model(1e-4)
    a, b = _lrs(first, X, y, schedule), _lrs(second, X, y, schedule)
    np.testing.assert_allclose(np.array(b) / 1e-4, np.array(a) / 3e-2, rtol=1e-12)
    assert b[0] == 1e-4 and first.optimizer.initial_lr == 3e-2
    again = _lrs(first, X, y, fn.CosineDecay(4))  # not from the decayed 0.0044
    assert again == a
    first.optimizer.lr = 1e-3  # by hand: the base from now on
    assert first.optimizer.initial_lr is None
    assert _lrs(first, X, y, fn.CosineDecay(4))[0] == 1e-3
    with pytest.raises(ValueError, match="initial_lr"):
        first.optimizer.initial_lr = -1.0


def test_initial_epoch_resumes_callbacks_and_schedules(tmp_path):
    """A fit stopped after 2 of 4 epochs of a cosine schedule, saved and resumed with Keras's
    ``initial_epoch``: the same learning rates, checkpoint names and weights, bit for bit."""
    X, y = make_blobs(n=96)

    def model():
        return fn.Sequential([fn.Dense(8, "relu"), fn.Dense(4)], optimizer=fn.Adam(3e-2), seed=2)

    kw = dict(batch_size=32, verbose=0)
    whole = model()
    lrs = whole.fit(X, y, epochs=4, callbacks=[fn.WarmupCosine(1, 4)], **kw)["lr"]
    part = model()
    save = fn.ModelCheckpoint(tmp_path / "e{epoch}.npz")
    part.fit(X, y, epochs=2, callbacks=[fn.WarmupCosine(1, 4), save], **kw)
    resumed = fn.load_model(tmp_path / "e2.npz")
    assert resumed.optimizer.initial_lr == 3e-2  # saved with the optimizer's config
    save = fn.ModelCheckpoint(tmp_path / "e{epoch}.npz")
    history = resumed.fit(
        X,
        y,
        epochs=4,
        initial_epoch=resumed.epochs_trained,
        callbacks=[fn.WarmupCosine(1, 4), save],
        **kw,
    )
    assert history["lr"] == lrs[2:] and len(history["loss"]) == 2
    assert [os.path.basename(p) for p in save.saved] == ["e3.npz", "e4.npz"]
    np.testing.assert_array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    for bad, match in ((4, "no epoch to run"), (-1, ">= 0"), (1.0, "integer")):
        with pytest.raises(ValueError, match=match):
            resumed.fit(X, y, epochs=4, initial_epoch=bad, **kw)
    assert resumed.epochs_trained == 4


def test_reduce_lr_on_plateau_keeps_the_schedules_base():
    """ReduceLROnPlateau changes lr as a schedule does: ``initial_lr`` (what a resumed fit's
    schedule starts from) stays the first base."""
    X, y = make_blobs(n=64)
    model = fn.Sequential([fn.Dense(4)], optimizer=fn.Adam(1e-2), seed=0)
    plateau = fn.ReduceLROnPlateau("loss", factor=0.5, patience=1, min_delta=10.0)
    model.fit(X, y, epochs=3, verbose=0, callbacks=[fn.CosineDecay(10), plateau])
    assert model.optimizer.initial_lr == 1e-2
    alone = fn.Sequential([fn.Dense(4)], optimizer=fn.Adam(1e-2), seed=0)
    alone.fit(X, y, epochs=3, verbose=0, callbacks=[plateau])
    assert alone.optimizer.lr < 1e-2 and alone.optimizer.initial_lr is None


class _Scripted(fn.Callback):
    """Logs ``fake`` (best in epoch 0), keeps each epoch's weights, and at epoch ``blow``'s
    start sets an lr that makes the loss infinite."""

    provides = ("fake",)

    def __init__(self, blow=None):
        self.blow, self.weights = blow, []

    def on_epoch_begin(self, model, epoch):
        if epoch == self.blow:
            model.optimizer.lr = 1e30

    def on_epoch_end(self, model, epoch, logs):
        logs["fake"] = float(epoch)
        self.weights.append(np.array(model.parameters()[0].value))


def test_early_stopping_restores_neither_after_a_divergence_nor_the_streams():
    """The best state (epoch 0 here) comes back with the data order and dropout streams
    going on; after a divergence, which restores its own last good weights (stop_reason
    says so), it restores nothing."""
    X, y = make_blobs()

    def model():
        layers = [fn.Dense(8, "relu"), fn.Dropout(0.2), fn.Dense(4)]
        return fn.Sequential(layers, optimizer=fn.SGD(0.05), seed=0)

    scripted, plain = _Scripted(), model()
    plain.fit(
        X, y, epochs=3, verbose=0, callbacks=[scripted, fn.EarlyStopping("fake", 9, mode="min")]
    )
    np.testing.assert_array_equal(plain.parameters()[0].value, scripted.weights[0])
    assert plain.epochs_trained == 3 and int(plain.layers[1].stream[1]) == 3 * 5  # 5 steps
    scripted, blown = _Scripted(blow=3), model()
    with pytest.warns(RuntimeWarning, match="loss became"), np.errstate(all="ignore"):
        blown.fit(
            X, y, epochs=4, verbose=0, callbacks=[scripted, fn.EarlyStopping("fake", 9, mode="min")]
        )
    np.testing.assert_array_equal(blown.parameters()[0].value, scripted.weights[2])
    assert "restored" in blown.stop_reason and blown.diverged


def test_early_stopping_continues_from_a_previous_fits_progress():
    """``progress()`` after a fit, ``continue_from`` before the next: the best value to beat
    and the epochs waited go on (the scripted "fake" never improves again: one more epoch
    stops it), and a model at that best is the state restored. Another monitor's progress,
    or a damaged one, is refused before training."""
    X, y = make_blobs()
    layers = [fn.Dense(8, "relu"), fn.Dense(4)]
    model = fn.Sequential(layers, optimizer=fn.SGD(0.05), seed=0, backend="numpy")
    first = fn.EarlyStopping("fake", 3, mode="max")
    model.fit(X, y, epochs=2, verbose=0, callbacks=[_Scripted(), first])
    assert first.progress() == {
        "monitor": "fake",
        "best": 1.0,
        "wait": 0,
        "at_best": True,
        "state": None,
    }
    kept = [np.array(p.value) for p in model.parameters()]
    with pytest.raises(ValueError, match="progress of 'val_loss', this callback monitors"):
        first.continue_from({**first.progress(), "monitor": "val_loss"})
    with pytest.raises((ValueError, TypeError), match="progress\\['wait'\\]"):
        first.continue_from({**first.progress(), "wait": -1})
    later = fn.EarlyStopping("fake", 1, mode="min")
    later.continue_from({"monitor": "fake", "best": -1.0, "wait": 0, "at_best": True})
    model.fit(X, y, epochs=5, initial_epoch=2, verbose=0, callbacks=[_Scripted(), later])
    assert model.epochs_trained == 3 and later.stopped_epoch == 2
    for param, value in zip(model.parameters(), kept):
        np.testing.assert_array_equal(param.value, value)  # (the carried best restored)
    assert later.progress()["at_best"] and later.progress()["wait"] == 1
    fresh = fn.EarlyStopping("fake", 1, mode="min")
    model.fit(X, y, epochs=7, initial_epoch=3, verbose=0, callbacks=[_Scripted(), fresh])
    assert model.epochs_trained == 5  # (without progress: epoch 3 is a first best)
    unwatched = fn.EarlyStopping("fake", 1, mode="min", start_from_epoch=99)
    model.fit(X, y, epochs=6, initial_epoch=5, verbose=0, callbacks=[_Scripted(), unwatched])
    assert unwatched.progress()["best"] == np.inf  # (no epoch watched: taken back as it is)
    fn.EarlyStopping("fake", 1, mode="min").continue_from(unwatched.progress())


class _LayerRates(fn.Callback):
    """Each epoch's (first layer's, model's) learning rate, as the epoch trained."""

    def on_epoch_end(self, model, epoch, logs):
        self.seen = [*getattr(self, "seen", []), (model.layers[0].optimizer.lr, logs["lr"])]


def _per_layer_model(layer_lr, model_lr):
    layers = [fn.Dense(8, "relu", optimizer=fn.SGD(layer_lr)), fn.Dense(4)]
    return fn.Sequential(layers, optimizer=fn.SGD(model_lr), seed=0)


def test_plateau_never_raises_a_per_layer_rate_and_reduces_each_down_to_min_lr():
    """A per-layer lr below min_lr went up to min_lr (10x higher); a per-layer lr above it
    stayed once the model's had reached min_lr. Now each is Keras's: reduced while above."""
    X, y = make_blobs(n=64)
    plateau = dict(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    for layer_lr, model_lr, expected in (
        (0.001, 0.1, [(0.001, 0.1), (0.001, 0.1), (0.001, 0.05), (0.001, 0.025)]),
        (0.5, 0.01, [(0.5, 0.01), (0.5, 0.01), (0.25, 0.01), (0.125, 0.01)]),
    ):
        rates = _LayerRates()  # (first: the rates each epoch trained with)
        callbacks = [rates, fn.ReduceLROnPlateau(**plateau, min_lr=0.01)]
        _per_layer_model(layer_lr, model_lr).fit(X, y, epochs=4, verbose=0, callbacks=callbacks)
        assert rates.seen == expected


def test_a_scheduler_function_of_the_epoch_keeps_per_layer_ratios():
    """fn(epoch) set every optimizer to the model's lr (a layer's 10x smaller lr lost)."""
    X, y = make_blobs(n=64)
    rates = _LayerRates()
    schedule = fn.LearningRateScheduler(lambda epoch: 0.1 * 0.5**epoch)
    _per_layer_model(0.01, 0.1).fit(X, y, epochs=3, verbose=0, callbacks=[schedule, rates])
    np.testing.assert_allclose(rates.seen, [(0.01, 0.1), (0.005, 0.05), (0.0025, 0.025)])
    for bad in ("0.1", True, np.array([0.1]), None, 1j, np.array("0.1")):
        with pytest.raises(ValueError, match=r"epoch 0: returned .* not a learning rate"):
            schedule = fn.LearningRateScheduler(lambda epoch, lr, bad=bad: bad)
            _model("numpy").fit(X, y, epochs=1, verbose=0, callbacks=[schedule])
    with pytest.raises(ValueError, match="returned None.*a path through it returns nothing"):
        schedule = fn.LearningRateScheduler(lambda epoch: 0.1 if epoch > 0 else None)
        _model("numpy").fit(X, y, epochs=1, verbose=0, callbacks=[schedule])
    from decimal import Decimal

    for good in (np.float32(0.05), np.array(0.05), 1, Decimal("0.05")):  # (a 0-d array too)
        model = _model("numpy")
        schedule = fn.LearningRateScheduler(lambda epoch, lr, good=good: good)
        model.fit(X, y, epochs=1, verbose=0, callbacks=[schedule])
        assert model.optimizer.lr == float(good)


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda v: fn.WarmupCosine(1, 4, min_lr=v), "min_lr"),
        (lambda v: fn.CosineDecay(4, min_lr=v), "min_lr"),
        (lambda v: fn.WarmupCosine(v, 4), "warmup_epochs"),
        (lambda v: fn.StepDecay(2, gamma=v), "gamma"),
        (lambda v: fn.EarlyStopping(min_delta=v), "min_delta"),
        (lambda v: fn.ReduceLROnPlateau(min_lr=v), "min_lr"),
        (lambda v: fn.ReduceLROnPlateau(factor=v), "factor"),
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "a", None, True])
def test_schedule_and_callback_numbers_are_checked_at_construction(make, argument, bad):
    """A NaN, inf or string failed mid-training naming the lr, or never (a NaN min_lr kept
    the lr), or raised a bare TypeError: now a ValueError naming the argument, at once."""
    with pytest.raises(ValueError, match=rf"^{argument} must be a finite number"):
        make(bad)


def test_numpy_scalars_are_numbers_and_counts_everywhere():
    """NumPy's integers and floats are taken where Python's are (as fit's epochs is)."""
    X, y = make_blobs(n=60)
    assert fn.EarlyStopping(patience=np.int64(3)).patience == 3
    assert fn.ReduceLROnPlateau(patience=np.int32(2), factor=np.float32(0.5)).patience == 2
    assert fn.CosineDecay(np.int64(4)).epochs == 4 and fn.StepDecay(np.int64(2)).step == 2
    assert fn.WarmupCosine(np.float64(0.5), np.int64(3)).warmup == 0.5
    assert fn.ReduceLROnPlateau(factor=Decimal("0.5")).factor == 0.5  # (as before the checks)
    model = fn.Sequential([fn.Dense(4)], seed=0)
    model.fit(X, y, epochs=1, verbose=0, validation_split=np.float32(0.2))
    assert "val_loss" in model.history
    with pytest.raises(ValueError, match="patience must be a non-negative integer"):
        fn.EarlyStopping(patience=1.5)
    with pytest.raises(ValueError, match=r"validation_split must be a finite number in \(0, 1\)"):
        model.fit(X, y, epochs=1, verbose=0, validation_split=1.0)


@pytest.mark.parametrize("schedule", [fn.CosineDecay(3, min_lr=0.5), fn.WarmupCosine(1, 3, 0.5)])
def test_a_decay_never_raises_an_lr_below_its_min_lr(schedule):
    """A min_lr above an optimizer's lr (a fine-tuned backbone's, say) raised that lr as it
    'decayed': an lr below min_lr stays (as ReduceLROnPlateau keeps one), the others decay."""
    X, y = make_blobs(n=60)
    model = fn.Sequential([fn.Dense(8, optimizer=fn.SGD(0.1)), fn.Dense(4)], optimizer=fn.SGD(2.0))
    model.fit(X, y, epochs=3, verbose=0, callbacks=[schedule])
    assert model.layers[0].optimizer.lr <= 0.1 + 1e-12
    assert 0.5 <= model.optimizer.lr < 2.0


def test_callback_paths_are_checked_before_anything_changes(tmp_path):
    """A ModelCheckpoint with an unknown extension was refused after the model was built and
    after a CSVLogger before it had emptied its existing log."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), np.arange(40) % 3
    log = tmp_path / "keep.csv"
    log.write_text("epoch,loss\n0,1.0\n")
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0)
    callbacks = [fn.CSVLogger(log), fn.ModelCheckpoint(tmp_path / "ck.txt")]
    with pytest.raises(ValueError, match=r"unknown checkpoint extension '.txt'"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=callbacks)
    assert log.read_text() == "epoch,loss\n0,1.0\n" and not model.built
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"CSVLogger path .* is a file"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[fn.CSVLogger(tmp_path / "file" / "l")])
    assert not model.built


def test_checkpoint_templates_in_the_extension_and_folders_made_by_another_callback(tmp_path):
    """ck.{epoch} passed the early check and was refused after building; a CSVLogger in the
    folder ModelCheckpoint creates was refused by the early check."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), np.arange(40) % 3
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"unknown checkpoint extension '.1'"):
        model.fit(
            X, y, epochs=1, verbose=0, callbacks=[fn.ModelCheckpoint(tmp_path / "ck.{epoch}")]
        )
    assert not model.built
    run = tmp_path / "run"
    callbacks = [fn.ModelCheckpoint(run / "ck.npz"), fn.CSVLogger(run / "log.csv")]
    model.fit(X, y, epochs=1, verbose=0, callbacks=callbacks)
    assert sorted(os.listdir(run)) == ["ck.npz", "log.csv"]
