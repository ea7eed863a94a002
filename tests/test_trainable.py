"""``Layer.trainable = False`` freezes a layer's parameters, as Keras's attribute and PyTorch's
``requires_grad_(False)``: no optimizer step changes them (nor their optimizer state), while
gradients still flow through the layer to the layers below; on every backend, eager or
compiled, before or after the model is built, saved in its config."""

import numpy as np
import pytest
from conftest import make_backend

import fastnet as fn


def _data(n=96, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    return r.normal(size=(n, 6)) + y[:, None], y


def _model(backend):
    layers = [fn.Dense(8, "relu"), fn.Dense(8, "relu"), fn.Dense(3)]
    return fn.Sequential(layers, optimizer=fn.Adam(0.01), backend=make_backend(backend),
                         dtype="float64", seed=0)  # fmt: skip


@pytest.mark.parametrize("backend", ["numpy", "numba", "cupy-emulated"])
@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_a_frozen_layer_keeps_its_weights_and_passes_gradients_down(backend, frozen):
    X, y = _data()
    model, reference = _model(backend), _model("numpy")
    for m in (model, reference):
        m.fit(X, y, epochs=1, batch_size=32, verbose=0, shuffle=False)  # then frozen
        m.layers[frozen].trainable = False
    before = model.get_weights()
    slots = {k: v for k, v in model.host_state().items() if k.startswith(f"slot/{frozen}/")}
    for m in (model, reference):
        m.fit(X, y, epochs=2, batch_size=32, verbose=0, shuffle=False)  # (cupy: its own order)
    after = model.get_weights()
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        owner = [0, 0, 1, 1, 2, 2][i]  # W, b of each Dense
        assert np.array_equal(a, b) == (owner == frozen), (i, owner)
    for key, value in slots.items():  # its optimizer state untouched too
        np.testing.assert_array_equal(model.host_state()[key], value)
    for a, b in zip(after, reference.get_weights(), strict=True):  # every backend alike
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert backend == "numpy" or not model.step_description.startswith("eager")


def test_unfreezing_resumes_training_and_the_flag_is_saved(tmp_path):
    X, y = _data()
    model = _model("numpy")
    model.layers[0].trainable = False  # before the build
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    assert len(model.arena.groups) == 2 and model.arena.groups[0].frozen
    model.save(tmp_path / "m.npz")
    loaded = fn.load_model(tmp_path / "m.npz", backend="numpy")
    assert [x.trainable for x in loaded.layers] == [False, True, True]
    first = loaded.get_weights()[0].copy()
    loaded.fit(X, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_array_equal(loaded.get_weights()[0], first)
    loaded.layers[0].trainable = True
    loaded.fit(X, y, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(loaded.get_weights()[0], first)
    assert len(loaded.arena.groups) == 1  # one group again: one step count (the trained one)
    assert loaded.host_state()["step/0/W"] == loaded.host_state()["step/2/W"] == 9
    with pytest.raises(TypeError, match="trainable must be True or False, got 'no'"):
        loaded.layers[1].trainable = "no"


def test_a_hand_written_loop_freezes_at_the_next_apply_gradients():
    X, y = _data()
    model = _model("numpy")
    model.build(6)
    model.layers[2].trainable = False
    W = model.layers[2].W.value.copy()
    outputs = model.forward(model.backend.asarray(X[:32]), training=True)
    model.backward(model.loss(outputs, model.backend.asarray(y[:32]))[1])
    lower = model.layers[0].W.grad.copy()
    model.apply_gradients()
    np.testing.assert_array_equal(model.layers[2].W.value, W)
    assert np.abs(lower).max() > 0  # the gradient went through the frozen top layer


def test_a_model_saved_or_copied_after_a_change_is_the_one_the_next_step_trains(tmp_path):
    """Unfrozen and saved before the next fit: the config said unfrozen while the step counts
    were still two groups' (8 and 0): save wrote a file that did not load, pickle and deepcopy
    raised, ``to`` kept either count."""
    import copy
    import pickle

    X, y = _data()
    model = _model("numpy")
    model.layers[0].trainable = False
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    model.layers[0].trainable = True
    model.save(tmp_path / "m.npz")
    for other in (fn.load_model(tmp_path / "m.npz", backend="numpy"), model.to("numpy"),
                  copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # fmt: skip
        state = other.host_state()
        assert state["step/0/W"] == state["step/2/W"] == 12, other
        assert all(x.trainable for x in other.layers)


def test_apply_gradients_after_a_change_applies_the_gradients_computed_before_it():
    """The regroup zeroed the gradient buffers: the update after it used none."""
    X, y = _data()
    models = [_model("numpy").build(6) for _ in range(2)]
    models[0].layers[0].trainable = False
    for model in models:
        outputs = model.forward(model.backend.asarray(X[:32]), training=True)
        model.backward(model.loss(outputs, model.backend.asarray(y[:32]))[1])
        model.apply_gradients()
    frozen, plain = (m.get_weights() for m in models)
    np.testing.assert_array_equal(frozen[0], _model("numpy").build(6).get_weights()[0])
    for a, b in zip(frozen[2:], plain[2:], strict=True):  # the other layers trained alike
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["numba", "cupy-emulated"])
def test_a_callbacks_change_applies_after_the_fit_on_every_step(backend, tmp_path):
    """A callback freezing a layer mid-fit: the fit keeps its groups (a captured graph holds
    them), eager and compiled alike; its checkpoints load; the next fit freezes it."""

    class Freeze(fn.Callback):
        def on_epoch_end(self, model, epoch, logs):
            model.layers[0].trainable = False

    X, y = _data()
    saved = fn.ModelCheckpoint(tmp_path / "m-{epoch}.npz")
    eager, compiled = _model(backend), _model(backend)
    for model, how in ((eager, False), (compiled, "auto")):
        model.fit(X, y, epochs=3, batch_size=32, verbose=0, shuffle=False, compiled=how,
                  callbacks=[Freeze(), saved])  # fmt: skip
    for a, b in zip(eager.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert fn.load_model(tmp_path / "m-3.npz").layers[0].trainable  # (as that fit trained)
    first = compiled.get_weights()[0]
    compiled.fit(X, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_array_equal(compiled.get_weights()[0], first)


def test_a_state_saved_while_frozen_loads_into_the_unfrozen_model(tmp_path):
    """Its parameters' step counts differ (the frozen layer's stopped): set_state refused it
    ("different step counts {16, 32}"); the merged group takes the larger, as a regroup."""
    X, y = _data()
    model = _model("numpy")
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    model.layers[0].trainable = False
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    state = model.host_state()
    assert state["step/0/W"] == 6 and state["step/2/W"] == 12
    twin = _model("numpy").build(6)  # every layer trainable: one group
    twin.set_state(state)
    assert twin.arena.groups[0].step == 12
    for a, b in zip(twin.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.layers[0].trainable = True
    model.set_state(state)
    assert len(model.arena.groups) == 1 and model.arena.groups[0].step == 12


def test_keras_model_trainable_freezes_every_layer_and_fit_says_so():
    X, y = _data()
    model = _model("numpy")
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    model.trainable = False  # was accepted and ignored: every weight changed in fit
    before = model.get_weights()
    with pytest.warns(UserWarning, match=r"every layer is frozen \(trainable=False\)"):
        model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not model.trainable and not any(x.trainable for x in model.layers)
    model.trainable = True
    assert all(x.trainable for x in model.layers)


def test_model_surgery_a_keras_user_tries_is_refused_clearly():
    """A Dense's activation set after construction showed in its config and not in its
    computation (the saved model differed from the live one); model.layers.pop() on a built
    model trained a 32-way softmax on hidden units."""
    X, y = _data()
    model = _model("numpy")
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    for name, value in (("activation", "tanh"), ("units", 16), ("use_bias", False)):
        with pytest.raises(AttributeError, match=rf"Dense.{name} is fixed at construction"):
            setattr(model.layers[0], name, value)
    model.layers.pop()
    for call in (lambda: model.fit(X, y, epochs=1, verbose=0), lambda: model.predict(X)):
        with pytest.raises(ValueError, match="model.layers changed after the model was built"):
            call()


def test_model_checkpoint_keeps_its_best_across_fits_and_the_metadata(tmp_path):
    """Keras's ModelCheckpoint keeps ``best`` across fits: a fine-tune's worse epoch
    overwrote the feature-extraction fit's better file; its files lost model.metadata."""
    X, y = _data()
    model = _model("numpy")
    model.metadata = {"classes": ["a", "b", "c"]}
    best = fn.ModelCheckpoint(tmp_path / "best.npz", monitor="loss", save_best_only=True)
    model.fit(X, y, epochs=3, batch_size=32, verbose=0, callbacks=[best])
    kept = best.best
    model.optimizer.lr = 5.0  # a fine-tune that only gets worse
    model.fit(X, y, epochs=1, batch_size=32, verbose=0, callbacks=[best])
    assert best.best == kept
    loaded = fn.load_model(tmp_path / "best.npz")
    assert loaded.metadata["classes"] == ["a", "b", "c"] and loaded.metadata["loss"] == kept


def test_review_of_the_surgery_and_checkpoint_changes(tmp_path):
    """A Dense subclass setting units before its parent does (the same value) builds; a loss
    set on an unbuilt model trains; a checkpoint of a loaded checkpoint's model keeps no old
    logs; metadata that JSON cannot hold is refused before training."""

    class Wide(fn.Dense):
        name = "test_wide_dense"

        def __init__(self, units, **kw):
            self.units = units
            super().__init__(units, **kw)

    X, y = _data()
    model = fn.Sequential([Wide(8, activation="relu"), fn.Dense(3)], backend="numpy", seed=0)
    model.loss = "softmax_cross_entropy"  # (was: "not built" in fit)
    model.fit(X, y, epochs=1, verbose=0, validation_data=(X[:20], y[:20]),
              callbacks=[fn.ModelCheckpoint(tmp_path / "a.npz")])  # fmt: skip
    loaded = fn.load_model(tmp_path / "a.npz", backend="numpy")
    assert "val_loss" in loaded.metadata
    again = fn.ModelCheckpoint(tmp_path / "b.npz", monitor="loss")
    loaded.fit(X, y, epochs=1, verbose=0, callbacks=[again])
    assert "val_loss" not in fn.load_model(tmp_path / "b.npz").metadata
    loaded.metadata["classes"] = {"neg", "pos"}
    with pytest.raises(TypeError, match="model.metadata holds a set"):
        loaded.fit(X, y, epochs=1, verbose=0, callbacks=[fn.ModelCheckpoint(tmp_path / "c.npz")])
