import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn


def _mlp(backend, seed=0, optimizer=None, **kw):
    return fn.Sequential(
        [fn.Dense(32, "relu"), fn.Dense(16, "tanh"), fn.Dense(4)],
        optimizer=optimizer or fn.Adam(1e-2),
        backend=backend,
        seed=seed,
        **kw,
    )


def test_fit_learns_blobs_and_records_history(backend):
    X, y = make_blobs()
    model = _mlp(backend)
    hist = model.fit(
        X[:500], y[:500], epochs=5, batch_size=32, validation_data=(X[500:], y[500:]), verbose=0
    )
    assert set(hist) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert len(hist["loss"]) == 5 and hist["loss"][-1] < hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.9
    pred = model.predict(X[500:])
    assert isinstance(pred, np.ndarray) and pred.shape == (100,)
    proba = model.predict_proba(X[500:])
    assert isinstance(proba, np.ndarray)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert model.evaluate(X[500:], y[500:])["accuracy"] == pytest.approx((pred == y[500:]).mean())


@pytest.mark.parametrize(
    "opt",
    [
        fn.SGD(0.1),
        fn.Momentum(0.05, nesterov=True),
        fn.AdaGrad(0.05),
        fn.RMSProp(0.005),
        fn.Adam(0.01, weight_decay=1e-4),
    ],
)
def test_every_optimizer_trains(backend, opt):
    X, y = make_blobs()
    model = _mlp(backend, optimizer=opt)
    hist = model.fit(X, y, epochs=4, batch_size=64, verbose=0)
    assert hist["loss"][-1] < hist["loss"][0] * 0.7


def test_same_seed_same_result_and_backends_agree(backend):
    X, y = make_blobs()
    a = _mlp("numpy", seed=7).fit(X, y, epochs=3, verbose=0)
    b = _mlp(backend, seed=7).fit(X, y, epochs=3, verbose=0)
    if backend.name.startswith("cupy"):  # shuffles with CuPy's own generator: other batches
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=0.1)
        assert abs(a["accuracy"][-1] - b["accuracy"][-1]) <= 0.02
        return
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3)
    assert abs(a["accuracy"][-1] - b["accuracy"][-1]) <= 0.005


def test_float64_training(backend):
    X, y = make_blobs()
    model = _mlp(backend, dtype="float64")
    model.fit(X, y, epochs=2, verbose=0)
    assert model.parameters()[0].value.dtype == np.float64


def test_batchnorm_dropout_model_trains_and_eval_is_deterministic(backend):
    X, y = make_blobs()
    model = fn.Sequential(
        [fn.Dense(32), fn.BatchNorm1d(), fn.ReLU(), fn.Dropout(0.2), fn.Dense(4)],
        optimizer=fn.Adam(1e-2),
        backend=backend,
        seed=1,
    )
    hist = model.fit(X, y, epochs=4, batch_size=50, verbose=0)
    assert hist["loss"][-1] < hist["loss"][0]
    np.testing.assert_array_equal(model.predict_proba(X[:20]), model.predict_proba(X[:20]))
    assert model.evaluate(X, y)["accuracy"] > 0.8


def test_per_layer_optimizer_injection(backend):
    X, y = make_blobs()
    frozen = fn.Dense(32, "relu", optimizer=fn.SGD(1e-12))
    model = fn.Sequential([frozen, fn.Dense(4)], optimizer=fn.Adam(1e-2), backend=backend)
    model.fit(X[:10], y[:10], epochs=1, verbose=0)
    w0 = backend.to_numpy(frozen.W.value).copy()
    model.fit(X, y, epochs=2, verbose=0)
    np.testing.assert_allclose(backend.to_numpy(frozen.W.value), w0, atol=1e-8)


def test_initializers(backend):
    rng = np.random.default_rng(0)
    for init, std in [
        (fn.Gaussian(0.05), 0.05),
        (fn.He(), np.sqrt(2 / 400)),
        (fn.Xavier(), np.sqrt(2 / 600)),
    ]:
        w = init(rng, 400, 200)
        assert w.dtype == np.float32 and abs(w.std() - std) / std < 0.05
    for bad in (-1, True, np.bool_(True), "0.1", np.nan):  # (True was sigma=1.0)
        with pytest.raises(ValueError, match="sigma must be a positive finite number"):
            fn.Gaussian(bad)
    assert fn.Gaussian(np.float32(0.25)).sigma == 0.25  # (refused as not a number)


def test_adagrad_accumulator_starts_at_zero_with_eps():
    be, rule = fn.get_backend("numpy"), fn.AdaGrad(lr=0.1, eps=1e-7)
    p, g, h, s = np.array([1.0]), np.array([0.5]), np.zeros(1), np.array([0.1] + [0.0] * 7)
    be.advance_scalars(s, np.zeros(2), rule.scalar_constants())
    be.update(rule, p, g, (h,), s, rule.constants(), 1, 0.0, None)
    assert h[0] == 0.25 and p[0] == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-7))


def test_early_stopping_restores_best(backend):
    X, y = make_blobs()
    model = _mlp(backend, optimizer=fn.SGD(1e-6))  # no progress: patience runs out
    stopper = fn.EarlyStopping("val_loss", patience=1, min_delta=1.0)
    hist = model.fit(
        X[:500],
        y[:500],
        epochs=10,
        validation_data=(X[500:], y[500:]),
        callbacks=[stopper],
        verbose=0,
    )
    assert len(hist["loss"]) == 2 and "early stopping" in model.stop_reason
    assert model.evaluate(X[500:], y[500:])["loss"] == pytest.approx(stopper.best, rel=1e-5)


def test_divergence_restores_last_good_weights(backend):
    X, y = make_blobs()
    X = X * 1e18  # a linear model with a huge step overflows to inf/NaN within an epoch
    model = fn.Sequential([fn.Dense(4)], optimizer=fn.SGD(1e3), backend=backend, seed=0)
    model.build(X.shape[1])
    w0 = backend.to_numpy(model.parameters()[0].value).copy()
    with pytest.warns(RuntimeWarning, match="loss became"), np.errstate(all="ignore"):
        model.fit(X, y, epochs=5, batch_size=16, verbose=0)
    np.testing.assert_array_equal(backend.to_numpy(model.parameters()[0].value), w0)
    assert "restored" in model.stop_reason and model.history["loss"] == []
    model2 = fn.Sequential([fn.Dense(4)], optimizer=fn.SGD(1e3), backend=backend)
    with pytest.raises(fn.TrainingDivergedError), np.errstate(all="ignore"):
        model2.fit(X, y, epochs=5, batch_size=16, verbose=0, on_divergence="raise")


def test_a_restore_two_epochs_back_drops_the_undone_epochs_history(monkeypatch):
    """A divergence whose own epoch's start still gives a non-finite loss restores the start
    of the epoch before: that epoch's history entry goes too (it stayed, logged twice on
    resume from epochs_trained), and the learning rate is that epoch's."""
    X, y = make_blobs()
    model, once = _mlp("numpy"), _mlp("numpy")
    once.fit(X, y, epochs=1, verbose=0, callbacks=[fn.LearningRateScheduler(lambda e: 0.01)])
    check, loss_on = fn.Sequential._divergence, fn.Sequential._loss_on
    calls = []

    def third_epoch_breaks(self, loss, group):
        return "loss became NaN" if len(self.history["loss"]) == 2 else check(self, loss, group)

    def first_restore_is_not_finite(self, X, y):
        calls.append(1)
        return np.inf if len(calls) == 1 else loss_on(self, X, y)

    def first_epoch_note(epoch, logs):  # a key logged in some epochs only: kept
        if epoch == 0:
            logs["note"] = 1.0

    monkeypatch.setattr(fn.Sequential, "_divergence", third_epoch_breaks)
    monkeypatch.setattr(fn.Sequential, "_loss_on", first_restore_is_not_finite)
    rising = fn.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))
    with pytest.warns(RuntimeWarning, match="start of epoch 2 restored"):
        h = model.fit(X, y, epochs=5, verbose=0, callbacks=[first_epoch_note, rising])
    assert model.optimizer.lr == 0.01  # its lr then too (0.03 diverged: it stayed)
    assert len(h["loss"]) == len(model.history["loss"]) == model.epochs_trained == 1
    assert h["loss"] == once.history["loss"] and h["note"] == model.history["note"] == [1.0]
    for a, b in zip(model.get_weights(), once.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keyboard_interrupt_restores_last_finished_epoch(backend):
    X, y = make_blobs()
    model = _mlp(backend)
    model.fit(X, y, epochs=1, verbose=0)
    before = {
        k: (backend.to_numpy(v) if not isinstance(v, int) else v)
        for k, v in model.get_state().items()
    }
    calls = {"n": 0}
    original = model.train_step

    def interrupting_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.train_step = interrupting_step
    with pytest.raises(KeyboardInterrupt):  # eager: a graph replay would not call the patch
        model.fit(X, y, epochs=3, verbose=0, compiled=False)
    after = model.get_state()
    for k, v in before.items():
        np.testing.assert_array_equal(
            backend.to_numpy(after[k]) if not isinstance(v, int) else after[k], v
        )
    assert len(model.history["loss"]) == 1 and "interrupted" in model.stop_reason


@pytest.mark.parametrize("hook", ["on_epoch_end", "on_train_batch_end"])
def test_an_error_in_a_callback_restores_the_last_finished_epoch(backend, hook):
    """A callback's bug in epoch 2 kept that epoch's weights and count but not its history
    (or, in a batch hook, steps with no epoch counted): a fit after the fix went on from
    them. Now the last finished epoch is restored, as Ctrl-C does, and the error raised."""
    X, y = make_blobs()
    reference = _mlp(backend)
    reference.fit(X, y, epochs=1, verbose=0)

    class Buggy(fn.Callback):
        def on_epoch_end(self, model, epoch, logs):
            if hook == "on_epoch_end" and epoch == 1:
                raise RuntimeError("a bug")

        def on_train_batch_end(self, model, batch, logs=None):
            if hook == "on_train_batch_end" and model.epochs_trained == 1 and batch == 2:
                raise RuntimeError("a bug")

    model = _mlp(backend)
    with pytest.raises(RuntimeError, match="a bug"):
        model.fit(X, y, epochs=3, verbose=0, callbacks=[Buggy()])
    assert model.epochs_trained == len(model.history["loss"]) == 1
    assert model.stop_reason.startswith("RuntimeError in epoch 2; weights of the last finished")
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    model.fit(X, y, epochs=3, initial_epoch=1, verbose=0)  # resumed: as uninterrupted
    reference.fit(X, y, epochs=3, initial_epoch=1, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", ["on_epoch_end", "validation metric", "divergence check"])
def test_ctrl_c_after_an_epochs_steps_undoes_that_epoch_too(where, monkeypatch):
    """An interrupt in validation, an epoch-end callback or the checks between them kept the
    epoch's weights and count but not its logs (a resume then had one history entry too few):
    now it restores the last finished epoch, as one during the steps does."""
    X, y = make_blobs(n=200)
    check = fn.Sequential._divergence

    def interrupted_check(self, loss, group):
        if len(self.history["loss"]) == 2 and where == "divergence check":
            raise KeyboardInterrupt
        return check(self, loss, group)

    monkeypatch.setattr(fn.Sequential, "_divergence", interrupted_check)

    class Interrupt(fn.Callback):
        def on_epoch_end(self, model, epoch, logs=None):
            if epoch == 2 and where == "on_epoch_end":
                raise KeyboardInterrupt

    def metric(y_true, y_pred):
        if len(model.history.get("loss", [])) == 2 and where == "validation metric":
            raise KeyboardInterrupt
        return 0.0

    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(4)], backend="numpy", seed=0)
    straight = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(4)], backend="numpy", seed=0)
    straight.fit(X, y, epochs=2, validation_split=0.2, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y, epochs=6, validation_split=0.2, verbose=0, callbacks=[Interrupt()],
                  metrics=[metric])  # fmt: skip
    assert model.epochs_trained == len(model.history["loss"]) == 2
    assert "interrupted in epoch 3" in model.stop_reason
    for a, b in zip(model.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", ["on_epoch_end", "on_epoch_begin", "a batch"])
def test_an_undone_epoch_undoes_its_learning_rate_changes(where):
    """An error in an epoch restores the lr of the last finished epoch with its weights: a
    ReduceLROnPlateau cut (at epoch end, before a later callback failed), a schedule's change
    at epoch begin or per step."""
    X, y = make_blobs(n=200)

    class Fail(fn.Callback):
        def on_epoch_begin(self, model, epoch, logs=None):
            if epoch == 2 and where == "on_epoch_begin":
                raise RuntimeError("begin")

        def on_batch_end(self, model, batch, logs=None):
            if model.epochs_trained == 2 and batch == 1 and where == "a batch":
                raise RuntimeError("batch")

        def on_epoch_end(self, model, epoch, logs=None):
            if epoch == 2 and where == "on_epoch_end":
                raise RuntimeError("end")

    plateau = fn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    scheduled = fn.LearningRateScheduler(lambda epoch, lr: lr * 0.9)
    layers = [fn.Dense(8, "relu"), fn.Dense(4)]
    model = fn.Sequential(layers, optimizer=fn.SGD(0.1), backend="numpy", seed=0)
    model.fit(X, y, epochs=2, verbose=0, callbacks=[plateau, scheduled])
    lr, weights = model.optimizer.lr, model.get_weights()
    assert lr < 0.1 * 0.9 * 0.5
    ramp = fn.WarmupCosine(warmup_epochs=1, epochs=6)
    with pytest.raises(RuntimeError, match=where.split()[-1].replace("on_epoch_", "")):
        model.fit(
            X, y, epochs=6, initial_epoch=2, verbose=0, callbacks=[plateau, scheduled, ramp, Fail()]
        )
    assert model.optimizer.lr == lr
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


def test_a_fit_inside_the_models_own_fit_is_refused():
    """fit from one of the model's callbacks (or another thread) is refused before it changes
    anything (it trained the model under the running fit, whose flags it then cleared); a copy
    trains, and after the refused fit's error ends the outer one the model fits again."""
    import copy

    X, y = make_blobs(n=100)
    copies = []

    class Nested(fn.Callback):
        def on_epoch_end(self, model, epoch, logs=None):
            twin = copy.deepcopy(model)
            twin.fit(X, y, epochs=1, verbose=0)
            copies.append(twin)
            if epoch == 1:
                model.fit(X, y, epochs=1, verbose=0)

    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(4)], backend="numpy", seed=0)
    with pytest.raises(RuntimeError, match="already in fit .*one fit at a time"):
        model.fit(X, y, epochs=3, verbose=0, callbacks=[Nested()])
    assert len(copies) == 2 and model.epochs_trained == 1
    model.fit(X, y, epochs=1, verbose=0)
    assert model.epochs_trained == 2


BAD_INPUTS = [
    (lambda X, y: (X[:, :, None], y), ValueError, "must be 2-D"),
    (lambda X, y: (X, y[:-1]), ValueError, "labels"),
    (
        lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y),
        ValueError,
        "NaN",
    ),
    (lambda X, y: (X, np.where(np.arange(len(y)) == 0, 9, y)), ValueError, "label 9"),
    (lambda X, y: (X, -y - 1), ValueError, "negative"),
    (lambda X, y: (X, y + 0.5), ValueError, "non-integer"),
    (lambda X, y: (X[:0], y[:0]), ValueError, "empty"),
    (lambda X, y: (X.astype(str), y), TypeError, "numbers"),
    (lambda X, y: (X.astype(object), y), TypeError, "numbers"),
    (lambda X, y: (X, y.reshape(-1, 1, 1)), ValueError, "shape"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_is_rejected_before_any_work(backend, case):
    X, y = make_blobs(n=64)
    mutate, exc, match = BAD_INPUTS[case]
    model = _mlp(backend)
    model.build(X.shape[1])
    state = {
        k: (backend.to_numpy(v).copy() if not isinstance(v, int) else v)
        for k, v in model.get_state().items()
    }
    with pytest.raises(exc, match=match):
        model.fit(*mutate(X, y), epochs=1, verbose=0)
    for k, v in model.get_state().items():  # nothing was lost or changed
        np.testing.assert_array_equal(
            backend.to_numpy(v) if not isinstance(v, int) else v, state[k]
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"on_divergence": "pray"}, "on_divergence"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    X, y = make_blobs(n=32)
    with pytest.raises(ValueError, match=match):
        _mlp("numpy").fit(X, y, verbose=0, **kwargs)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: fn.Adam(lr=0), "lr"),
        (lambda: fn.SGD(lr=-1), "lr"),
        (lambda: fn.Adam(beta1=1.0), "beta1"),
        (lambda: fn.Dropout(1.0), "dropout"),
        (lambda: fn.Dense(0), "units"),
        (lambda: fn.Dense(3, "swish"), "unknown activation"),
        (lambda: fn.Sequential([fn.Dense(3)], optimizer="lbfgs"), "unknown optimizer"),
        (lambda: fn.Sequential([fn.Dense(3)], loss="hinge"), "unknown loss"),
        (lambda: fn.Sequential([fn.Dense(3)], dtype="int32"), "float32 or float64"),
        (lambda: fn.Sequential([]), "non-empty"),
    ],
)
def test_bad_construction_arguments(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


def test_predict_checks_feature_count_and_fitted_state(backend):
    X, y = make_blobs()
    model = _mlp(backend)
    with pytest.raises(RuntimeError, match="not built"):
        model.predict(X)
    model.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="19 features but the model expects 20"):
        model.predict(X[:, :19])


class _DLPackArray:
    """A foreign array speaking DLPack: host data (a NumPy view) or a claimed GPU device."""

    def __init__(self, data, device=(1, 0), module="torch"):
        self.data, self.device = data, device
        type(self).__module__ = module

    def __dlpack__(self, **kwargs):
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


def test_mixed_array_types_are_explicit_errors():
    gpu = _DLPackArray(np.zeros((3, 2), np.float32), device=(2, 0), module="cupy")
    model = _mlp("numpy")
    with pytest.raises(TypeError, match="X is a cupy array on the GPU .*numpy.*backend"):
        model.fit(gpu, np.zeros(3, np.int64), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="y is a cupy array on the GPU"):
        model.fit(np.zeros((3, 2)), gpu, epochs=1, verbose=0)
    assert not model.built


def test_dlpack_host_arrays_are_adopted_without_copy(backend):
    X, y = make_blobs()
    foreign = _DLPackArray(X)
    from fastnet.backends.interop import as_input

    adopted = as_input(foreign, "X", fn.get_backend("numpy"))
    assert np.shares_memory(adopted, X)  # a view, no copy
    model = _mlp(backend)
    model.fit(foreign, _DLPackArray(y), epochs=1, verbose=0)
    np.testing.assert_allclose(model.predict_proba(_DLPackArray(X)), model.predict_proba(X))


def test_model_to_other_backend_keeps_weights(backend):
    X, y = make_blobs()
    model = _mlp("numpy")
    model.fit(X, y, epochs=1, verbose=0)
    moved = model.to(backend)
    np.testing.assert_allclose(moved.predict_proba(X), model.predict_proba(X), rtol=1e-4, atol=1e-6)
    assert moved.arena.groups[0].step == model.arena.groups[0].step


def test_outputs_are_copies_not_live_buffers(backend):
    X, y = make_blobs()
    model = _mlp(backend)
    model.fit(X, y, epochs=1, verbose=0)
    first = model.predict_raw(X[:10])
    model.predict_raw(X[10:20])
    np.testing.assert_allclose(first, model.predict_raw(X[:10]))


def test_long_run_does_not_grow_memory():
    import resource

    X, y = make_blobs(n=256)
    model = _mlp("numpy")
    model.fit(X, y, epochs=5, verbose=0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.fit(X, y, epochs=50, verbose=0)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grown_kib < 20_000, f"RSS grew by {grown_kib} KiB over 50 epochs"


def test_cosine_decay_schedule_sets_lr_each_epoch():
    X, y = make_blobs()
    model = _mlp("numpy", optimizer=fn.Adam(0.01))
    seen = []

    class Spy(fn.Callback):
        def on_epoch_end(self, model, epoch, logs):
            seen.append(model.optimizer.lr)

    model.fit(X, y, epochs=4, verbose=0, callbacks=[fn.CosineDecay(4, min_lr=0.001), Spy()])
    expected = [0.001 + 0.009 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose(seen, expected)
    with pytest.raises(ValueError, match="epochs"):
        fn.CosineDecay(0)


def test_layers_and_losses_check_their_inputs(backend):
    dense = fn.Dense(3)
    with pytest.raises(RuntimeError, match="not built"):
        dense.forward(np.ones((2, 4)))
    dense.build(4, backend, np.float32, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 4\), got \(2, 5\)"):
        dense.forward(backend.asarray(np.ones((2, 5), np.float32)))
    loss = fn.SoftmaxCrossEntropy()
    loss.build(backend)
    logits = backend.asarray(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="do not match"):
        loss(logits, backend.asarray(np.zeros(5, np.int64)))
    with pytest.raises(TypeError, match="integer class indices"):
        loss(logits, backend.asarray(np.zeros(4, np.complex64)))
    flags = np.array([True, False, True, True])
    for given in (flags, flags[:, None]):  # (a column too, as fit takes it)
        got = float(loss(logits, backend.asarray(given))[0])
        assert got == float(loss(logits, backend.asarray(np.array([1, 0, 1, 1])))[0])
    with pytest.raises(TypeError, match="weights must be an array .one per row., got a list"):
        loss(logits, backend.asarray(np.array([0, 2, 1, 2])), [1.0] * 4)
    whole = loss(logits, backend.asarray(np.array([0.0, 2.0, 1.0, 2.0], np.float32)))[0]
    assert float(whole) == float(loss(logits, backend.asarray(np.array([0, 2, 1, 2])))[0])
    with pytest.raises(ValueError, match="row 2 holds 1.5"):
        loss(logits, backend.asarray(np.array([0.0, 2.0, 1.5, 2.0], np.float32)))
    with pytest.raises(ValueError, match="2-D"):
        loss(backend.asarray(np.zeros(4, np.float32)), backend.asarray(np.zeros(4, np.int64)))


def test_cli_interrupt_saves_checkpoint(tmp_path, monkeypatch, capsys):
    from test_data import make_dataset

    from fastnet.cli import main

    make_dataset(tmp_path, n_train=300, n_test=50)
    original = fn.Sequential.train_step
    calls = {"n": 0}

    def interrupted(self, xb, yb, wb=None, totals=None):
        calls["n"] += 1
        if calls["n"] == 7:  # in the second epoch (270 samples: 5 batches an epoch)
            raise KeyboardInterrupt
        return original(self, xb, yb, wb, totals)

    monkeypatch.setattr(fn.Sequential, "train_step", interrupted)
    ckpt = tmp_path / "m.npz"
    rc = main(
        [
            "train",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--layers",
            "8",
            "--backend",
            "numpy",
            "--save",
            str(ckpt),
            "--verbose",
            "0",
        ]
    )
    assert rc == 130 and ckpt.exists()
    assert "interrupted" in capsys.readouterr().err
    assert fn.load_model(ckpt).arena.groups[0].step == 5  # the finished first epoch


def test_graph_capture_reasons_are_checked_without_a_gpu():
    """Which models the captured step refuses, and why (from the model's step plan)."""

    def reason(layers, **kw):
        return fn.Sequential(layers, backend="numpy", **kw).build(4).step_plan().capture_reason()

    assert reason([fn.Dense(8, "relu"), fn.Dense(3)]) == ""
    assert reason([fn.Dense(8), fn.Dropout(0.5), fn.BatchNorm1d(), fn.Dense(3)]) == ""
    assert "Softmax" in reason([fn.Dense(8), fn.Softmax(), fn.Dense(3)])
    assert reason([fn.Dense(8, optimizer=fn.SGD(0.1)), fn.ReLU(), fn.Dense(3)]) == ""
    assert reason([fn.Dense(3)], optimizer=fn.Adam(clip_norm=1.0)) == ""
    assert reason([fn.Dense(3)], loss=fn.SoftmaxCrossEntropy(0.1)) == ""
    assert reason([fn.Dense(3)], loss="mse") == "" and reason([fn.Dense(1)], loss="bce") == ""

    class Hinge(fn.losses.Loss):  # array expressions, no backend op
        name = "test_hinge_plan"

        def compute(self, outputs, targets, weights=None):
            return outputs.mean(), outputs * 0 + 1 / outputs.size

    assert "not test_hinge_plan (array expressions)" in reason([fn.Dense(3)], loss=Hinge())


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_precision_is_a_checked_model_setting(backend_name):
    from fastnet.backends import probe

    if not probe(backend_name).available:
        pytest.skip(f"{backend_name} unavailable")
    layers = [fn.Dense(4)]
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'tf32'"):
        fn.Sequential(layers, backend=backend_name, precision="fp16")
    with pytest.raises(ValueError, match="needs the cupy backend"):
        fn.Sequential(layers, backend=backend_name, precision="tf32")
    model = fn.Sequential(layers, backend=backend_name).build(3)
    config = model.get_config()
    assert config["precision"] == "fp32"
    # a model trained at TF32 on a GPU loads on a CPU backend and computes in fp32 there
    config["precision"] = "tf32"
    assert fn.Sequential.from_config(config, backend=backend_name).precision == "fp32"
    del config["precision"]  # configs written before precision existed
    assert fn.Sequential.from_config(config, backend=backend_name).precision == "fp32"


def test_compiled_steps_are_reused_by_later_fits(monkeypatch):
    """A second fit at the same batch size reuses the compiled step (on cupy: no recapture);
    a new batch size or a replaced loss compiles again."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend="numba")
    calls = []
    compile_step = model.backend.compile_step

    def counting(m, batch_size, spec):
        calls.append(batch_size)
        return compile_step(m, batch_size, spec)

    monkeypatch.setattr(model.backend, "compile_step", counting)
    X = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    y = np.arange(40) % 3
    for batch_size in (16, 16, 8, 16):
        model.fit(X, y, epochs=1, batch_size=batch_size, verbose=0)
    assert calls == [16, 8]
    assert model.step_description.startswith("numba fused step")
    model.loss = fn.SoftmaxCrossEntropy(label_smoothing=0.1)
    model.loss.build(model.backend)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    assert calls == [16, 8, 16] and model.step_description.startswith("numba fused step")


def test_mlp_builder_layers_and_build():
    """``fn.mlp``: Dense+activation (or Dense, BatchNorm1d, activation layer) and Dropout per
    hidden width, a linear output layer; built only when the input width is given."""
    model = fn.mlp(None, (6, 4), 3, "tanh", dropout=0.2, seed=0, backend="numpy")
    assert [type(layer).__name__ for layer in model.layers] == [
        "Dense",
        "Dropout",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert not model.built and model.layers[0].activation == "tanh"
    bn = fn.mlp(5, (6,), 2, "relu", batch_norm=True, loss="mean_squared_error", seed=0)
    assert [type(layer).__name__ for layer in bn.layers] == [
        "Dense",
        "BatchNorm1d",
        "ReLU",
        "Dense",
    ]
    assert bn.built and bn.output_dim == 2 and bn.loss.name == "mean_squared_error"
    same = fn.Sequential(
        [fn.Dense(6), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(2)], loss="mean_squared_error", seed=0
    ).build(5)
    for a, b in zip(bn.parameters(), same.parameters()):
        np.testing.assert_array_equal(bn.backend.to_numpy(a.value), same.backend.to_numpy(b.value))


@pytest.mark.parametrize(
    "opt",
    [
        lambda: fn.SGD(0.05, weight_decay=0.01),
        lambda: fn.Momentum(0.02, nesterov=True),
        lambda: fn.AdaGrad(0.05),
        lambda: fn.RMSProp(0.005, clip_value=0.5),
        lambda: fn.AdamW(0.01, weight_decay=0.1, clip_norm=1.0),
    ],
)
def test_parameters_sit_aligned_in_their_arena_with_zeros_between(backend, opt):
    """Every parameter starts 256 bytes into its group's buffers (GEMMs and cuBLASLt's bias
    epilogues want aligned operands: odd widths too); the gaps stay zero through training and
    weigh nothing in a clip norm, and decay reaches every weight and no bias."""
    from fastnet.kernels.cublaslt import address

    from fastnet.parameter import ALIGN_BYTES

    X, y = make_blobs(n=300)
    model = fn.Sequential(
        [fn.Dense(13, "relu"), fn.Dense(7, "tanh"), fn.Dense(4)],
        optimizer=opt(),
        backend=backend,
        seed=0,
        dtype="float64",
    )
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)
    (group,) = model.arena.groups
    to = backend.to_numpy
    used = np.zeros(group.values.size, bool)
    for p in group.params:
        start = address(p.value) - address(group.values)
        assert start % ALIGN_BYTES == 0, (p.name, start)
        lo = start // group.values.itemsize
        used[lo : lo + p.size] = True
        # weights lie before n_decay, biases after it
        assert (lo + p.size <= group.n_decay) if p.decay else (lo >= group.n_decay)
    assert not used.all()  # there are gaps: widths 13, 7, 4 are not multiples of 32
    for buf in [group.values, group.grads, *group.slots.values()]:
        assert not to(buf)[~used].any()
