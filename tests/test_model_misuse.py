"""Model-level mistakes a newcomer makes in the first hour: each is refused with an error that
names the argument, or does what the notebooks' habits expect, and changes nothing."""

import numpy as np
import pytest
from capture_backend import CaptureSimBackend
from conftest import make_blobs

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
    with pytest.raises(ValueError, match=r"forward\(x, training=True\): an inference forward"):
        model.backward(np.zeros((20, 3), np.float32))
    with pytest.raises(ValueError, match=r"dout of shape \(\): .*an inference forward"):
        model.backward(np.float32(1.0))
    layered = [fn.Dense(5), fn.BatchNorm1d(), fn.Relu(), fn.Dense(3)]  # (evaluated layer by layer)
    notebook = fn.Sequential(layered, backend="numpy").build(4)
    out = notebook.forward(np.ones((20, 4), np.float32), training=True)
    notebook.evaluate(np.ones((6, 4), np.float32), np.zeros(6, int))  # the test accuracy, mid-step
    with pytest.raises(ValueError, match=r"\(predict, evaluate, training=False\) ran since"):
        notebook.backward(notebook.loss(out, np.zeros(20, int))[1])
    # Dense layers (Affine, Relu: one fused inference call) keep the step's saved inputs
    fused = fn.Sequential([fn.Dense(5), fn.Relu(), fn.Dense(3)], backend="numpy", seed=0)
    x, t = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32), np.arange(20) % 3
    fused.build(4)
    fused.backward(fused.loss(fused.forward(x, training=True), t)[1])
    alone = [p.grad.copy() for p in fused.parameters()]
    out = fused.forward(x, training=True)
    fused.evaluate(np.ones((6, 4), np.float32), np.zeros(6, int))
    fused.backward(fused.loss(out, t)[1])
    for a, p in zip(alone, fused.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, a)
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
    with pytest.raises(ValueError, match=r"layers\[0\] \(Dense\) is built \(by another model"):
        fn.Sequential([model.layers[0], fn.Dense(2)], backend="numpy")


@pytest.mark.parametrize("last", [[fn.Dense(1, "sigmoid")], [fn.Dense(1), fn.Sigmoid()]])
def test_a_sigmoid_before_binary_cross_entropy_is_refused(last):
    with pytest.raises(ValueError, match="applies sigmoid, and SigmoidBinaryCrossEntropy"):
        fn.Sequential([fn.Dense(8, "relu"), *last], loss="bce", backend="numpy")


def test_binary_predict_gives_one_label_per_row():
    r = np.random.default_rng(0)
    X = r.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(1)], loss="bce", backend="numpy", seed=0)
    model.fit(X, y, epochs=20, batch_size=32, verbose=0)
    labels = model.predict(X)
    assert labels.shape == (200,) and np.mean(labels == y) > 0.75


def test_the_learning_rate_of_a_hand_written_loop_is_used():
    model = _model()
    X, y = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32), np.arange(16) % 3
    before = [p.value.copy() for p in model.parameters()]
    model.optimizer.lr = 1e-30  # Adam's steps: about lr
    out = model.forward(X, training=True)
    model.backward(model.loss(out, y)[1])
    model.apply_gradients()
    for p, w in zip(model.parameters(), before):
        np.testing.assert_allclose(p.value, w, rtol=1e-20, atol=1e-20)  # 1e-3 moves them


def test_a_built_model_keeps_its_optimizer_and_takes_assigned_weights():
    model = _model()
    with pytest.raises(ValueError, match="optimizer: the model is built"):
        model.optimizer = fn.Adam(0.5)
    W = model.layers[0].W
    view = W.value
    W.value = np.full((4, 5), 0.5)  # the notebooks' params['W1'] = ... habit
    assert W.value is view and (view == 0.5).all()
    out = model.forward(np.ones((1, 4), np.float32))
    np.testing.assert_allclose(model.layers[0].y[0], np.maximum(2.0 + model.layers[0].b.value, 0))
    assert out.shape == (1, 3)
    with pytest.raises(ValueError, match=r"W: a value of shape \(3, 5\)"):
        W.value = np.zeros((3, 5))


def test_the_loss_refuses_inputs_for_outputs():
    model = _model()
    X, y = np.zeros((6, 4), np.float32), np.arange(6) % 3
    with pytest.raises(ValueError, match=r"outputs of shape \(6, 4\) for a model of 3 outputs"):
        model.loss(X, y)  # the notebooks' network.loss(x, t)
    model.loss(model.forward(X), y)


def test_notebook_signatures_and_shapes_get_their_meaning():
    with pytest.raises(ValueError, match=r"Affine/FC\(784, 400\) is Dense\(400\)"):
        fn.FC(784, 400)
    X = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    histories = [
        _model().fit(X, labels, epochs=2, batch_size=8, verbose=0, shuffle=False)["loss"]
        for labels in (y, y.reshape(-1, 1))  # Keras's sparse labels of shape (n, 1)
    ]
    assert histories[0] == histories[1]
    batches = list(fn.minibatches(X.tolist(), y.tolist(), batch_size=8, shuffle=False))
    assert [len(b) for _, b in batches] == [8, 8, 8, 6] and isinstance(batches[0][0], np.ndarray)
    model = _model()
    model.forward(X, training=True)
    with pytest.raises(TypeError, match="dout must be an array .* got a list"):
        model.backward(np.zeros((30, 3)).tolist())


def test_a_saved_sigmoid_before_bce_still_loads(tmp_path):
    """Refused in new models; a checkpoint written before that keeps its weights."""
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(1)], loss="bce", backend="numpy")
    config = model.build(3).get_config()
    config["layers"][-1]["activation"] = "sigmoid"
    loaded = fn.Sequential.from_config(config, backend="numpy")
    assert loaded.layers[-1].activation == "sigmoid" and loaded.built
    with pytest.raises(ValueError, match="applies sigmoid"):
        fn.Sequential([fn.Dense(4, "relu"), fn.Dense(1, "sigmoid")], loss="bce")


def test_one_loss_object_shared_by_models_of_several_widths():
    loss = fn.SoftmaxCrossEntropy()
    models = [fn.Sequential([fn.Dense(k)], loss=loss, backend="numpy").build(4) for k in (3, 5, 3)]
    X = np.zeros((2, 4), np.float32)
    for model in models:  # no model's width stands for the others'
        model.loss(model.forward(X), np.array([0, 1]))


def test_a_layer_built_on_its_own_computes_with_an_assigned_weight():
    layer = fn.Dense(2)
    layer.build(3, fn.get_backend("numpy"), np.dtype(np.float64), np.random.default_rng(0))
    layer.W.value, layer.b.value = np.zeros((3, 2)), np.zeros(2)
    np.testing.assert_array_equal(layer.forward(np.ones((1, 3))), [[0.0, 0.0]])


def test_confusion_matrix_takes_a_column_of_class_indices():
    model = _model()
    X = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    np.testing.assert_array_equal(
        model.confusion_matrix(X, y.reshape(-1, 1)), model.confusion_matrix(X, y)
    )


def test_minibatches_index_array_likes_without_converting_them():
    class DeviceLike:  # as a CuPy array: rows by index arrays, no __array__
        def __init__(self, a):
            self.a = a

        def __len__(self):
            return len(self.a)

        def __getitem__(self, idx):
            return DeviceLike(self.a[idx])

        def __array__(self, *args, **kwargs):
            raise TypeError("implicit conversion to a NumPy array is not allowed")

    X, y = DeviceLike(np.arange(20).reshape(10, 2)), DeviceLike(np.arange(10))
    batches = list(fn.minibatches(X, y, batch_size=4, shuffle=False))
    assert [b.a.tolist() for _, b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_standardize_goes_first_under_mixed_precision():
    layers = [fn.Dropout(0.1), fn.Standardize([0.0] * 4, [1.0] * 4), fn.Dense(3)]
    with pytest.raises(ValueError, match="a Standardize layer goes first"):
        fn.Sequential(layers, backend=CaptureSimBackend(), dtype="mixed_float16")


def test_a_built_layers_optimizer_is_not_replaced_silently():
    """Setting ``layer.optimizer`` after the build would be ignored (the state lives with
    the optimizer the layer was built with): refused by name; before the build it counts."""
    X = np.random.default_rng(0).standard_normal((32, 5)).astype(np.float32)
    y = np.arange(32) % 3
    dense = fn.Dense(8, "relu")
    dense.optimizer = "sgd"  # a name, as for the model's
    assert isinstance(dense.optimizer, fn.SGD)
    model = fn.Sequential([dense, fn.Dense(3)], seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    before = dense.optimizer
    with pytest.raises(ValueError, match="optimizer: Dense is built"):
        dense.optimizer = fn.Adam(1e-3)
    dense.optimizer = before  # the same object is no change
    assert dense.optimizer is before and model.arena.group_of[id(dense.W)].optimizer is before
    with pytest.raises(ValueError, match="unknown optimizer"):
        fn.Dense(4, optimizer="adamm")


def test_confusion_matrix_of_a_binary_model_has_two_classes():
    """A sigmoid/BCE model of one output predicts classes 0 and 1 (it said n_classes=1);
    regression and multi-label models have no confusion matrix: said by name."""
    X = np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    binary = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(1)], loss="bce", seed=0)
    binary.fit(X, y, epochs=5, verbose=0)
    matrix = binary.confusion_matrix(X, y)
    assert matrix.shape == (2, 2) and matrix.sum() == 60
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(y))
    np.testing.assert_array_equal(binary.confusion_matrix(X, y[:, None].astype(float)), matrix)
    regression = fn.Sequential([fn.Dense(1)], loss="mse", seed=0)
    regression.fit(X, X[:, 0], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="not a regression model"):
        regression.confusion_matrix(X, y)
    labels = (X[:, :3] > 0).astype(np.float32)
    multi = fn.Sequential([fn.Dense(3)], loss="bce", seed=0)
    multi.fit(X, labels, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="multi-label"):
        multi.confusion_matrix(X, labels)


def test_the_loss_takes_a_column_of_class_indices_as_evaluate_does():
    model = _model()
    out = model.forward(np.ones((4, 4), np.float32), training=True)
    labels = np.array([0, 2, 1, 2])
    loss, grad = model.loss(out, labels)
    loss, grad = float(loss), np.array(grad)  # (the gradient is a reused buffer)
    loss_of_column, grad_of_column = model.loss(out, labels.reshape(-1, 1))
    assert loss == float(loss_of_column)
    np.testing.assert_array_equal(grad, grad_of_column)


def test_hyperparameters_set_on_a_built_model_are_checked_as_at_construction():
    """A callback or a user setting a dropout rate of 1 (ZeroDivisionError mid-fit) or -0.5
    (numpy and numba trained to different losses), a smoothing of 2, a momentum of 1.5, a NaN
    slope: accepted before; refused now, the model unchanged. The backend or dtype of a built
    model changed only the attribute (the arrays stayed where they were)."""
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = np.arange(40) % 3
    layers = [fn.Dense(8, "leaky_relu"), fn.Dropout(0.2), fn.BatchNorm1d(), fn.LeakyReLU(0.1)]
    model = fn.Sequential([*layers, fn.Dense(3)], loss=fn.SoftmaxCrossEntropy(0.1), seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    for part, name, bad, match in (
        (model.layers[1], "rate", 1.0, r"dropout rate must be in \[0, 1\)"),
        (model.layers[1], "rate", -0.5, r"dropout rate must be in \[0, 1\)"),
        (model.loss, "label_smoothing", 2, r"label_smoothing must be in \[0, 1\)"),
        (model.layers[2], "momentum", 1.5, r"momentum must be in \[0, 1\)"),
        (model.layers[2], "eps", 0, "eps must be positive"),
        (model.layers[0], "alpha", float("nan"), "slope"),
        (model.layers[3], "alpha", "0.1", "slope"),
        (model.optimizer, "beta1", 1.0, r"beta1 must be in \[0, 1\)"),  # numpy: ZeroDivision
        (model.optimizer, "beta_2", -0.5, r"beta2 must be in \[0, 1\)"),
        (model.optimizer, "eps", 0.0, "eps must be a finite number > 0"),
        (model.optimizer, "lr", 10**400, "lr must be a finite number > 0"),  # (OverflowError)
        (model.optimizer, "beta1", 10**400, r"beta1 must be in \[0, 1\)"),
        (model.optimizer, "eps_hat", "no", "eps_hat must be True or False"),  # (truthy: on)
        (model.layers[1], "seed", -1, "dropout seed must be a non-negative integer"),
        (model.layers[2], "synchronized", "no", "synchronized must be True or False"),
        (fn.Momentum(0.1), "nesterov", 1, "nesterov must be True or False"),  # (unloadable)
    ):
        before = getattr(part, name)
        with pytest.raises((ValueError, TypeError), match=match):
            setattr(part, name, bad)
        assert getattr(part, name) == before, name
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        model.optimizer.set_scheduled_lr(10**400)
    model.layers[1].rate = 0.3  # a valid change is kept, and saved
    assert model.get_config()["layers"][1]["rate"] == 0.3
    backend = model.backend
    with pytest.raises(ValueError, match=r"backend: the model is built .* model.to\(backend\)"):
        model.backend = "numpy" if backend.name != "numpy" else "numba"
    with pytest.raises(ValueError, match=r"dtype: the model is built .* model.to\("):
        model.dtype = np.float64
    assert model.backend is backend and model.dtype == np.float32


def test_flags_and_top_k_are_checked_and_a_huge_batch_is_the_data():
    """``shuffle="no"`` shuffled and ``Dense(use_bias="no")`` kept its bias (truthy strings);
    ``top_k="5"`` failed deep in evaluation, 2.5 and True made ``top2.5_accuracy``; a batch
    of 10**9 rows on numba asked for a 6e9-element random draw (and would size step buffers)."""
    X = np.random.default_rng(0).normal(size=(50, 6))
    y = np.arange(50) % 3
    with pytest.raises(TypeError, match="use_bias must be True or False, got 'no'"):
        fn.Dense(3, use_bias="no")
    with pytest.raises(TypeError, match="nesterov must be True or False"):
        fn.Momentum(0.1, nesterov="yes")
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dropout(0.2), fn.Dense(3)], seed=0)
    with pytest.raises(TypeError, match="shuffle must be True or False, got 'no'"):
        model.fit(X, y, epochs=1, verbose=0, shuffle="no")
    for bad in ("5", 2.5, True, 0):
        with pytest.raises(ValueError, match="top_k must be None or an integer >= 1"):
            model.fit(X, y, epochs=1, verbose=0, validation_split=0.2, top_k=bad)
    assert not model.built  # refused before anything changed
    model.fit(X, y, epochs=1, verbose=False, batch_size=10**9, top_k=None)
    assert model.steps_per_epoch == 1 and "top" not in "".join(model.evaluate(X, y, top_k=None))
    with pytest.raises(ValueError, match="top_k must be None"):
        model.evaluate(X, y, top_k="5")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_refused_compiled_fit_leaves_an_unbuilt_model_unbuilt(backend):
    """``compiled=True`` refused after the build (numpy has no compiled step; numba's fused
    step covers no BatchNorm) left the model built: the refused fit changed it."""
    X = np.random.default_rng(0).normal(size=(48, 5))
    y = np.arange(48) % 3

    def model():
        layers = [fn.Dense(8, "relu"), fn.BatchNorm1d(), fn.Dense(3)]
        return fn.Sequential(layers, backend=backend, seed=0, dtype="float64")

    refused = model()
    with pytest.raises(ValueError, match="a compiled step was required"):
        refused.fit(X, y, epochs=1, verbose=0, compiled=True)
    assert not refused.built and refused.arena is None
    refused.fit(X, y, epochs=1, verbose=0, shuffle=False)  # as a model that never was refused
    fresh = model()
    fresh.fit(X, y, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(refused.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_class_for_its_instance_or_a_misspelt_name_is_named_as_such():
    """``optimizer=fn.Adam``, ``loss="crossentropy"`` and a notebook's initializer object all
    said "a custom ...'s class must be defined before loading", though nothing was loaded."""
    cases = [
        (dict(optimizer=fn.Adam), r"optimizer <class .*Adam'>: pass an instance, Adam\(\.\.\.\)"),
        (dict(loss=fn.SoftmaxWithLoss), r"pass an instance, SoftmaxCrossEntropy\(\.\.\.\), not"),
        (dict(loss="crossentropy"), r"defined before loading; or did you mean 'cross_entropy' or "),
        (dict(optimizer="adm"), r"did you mean 'adam' or 'adamw'\?"),
        (dict(loss="zzz"), r"a custom loss's class must be defined before loading"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            fn.Sequential([fn.Dense(3)], backend="numpy", **kwargs)

    class HeInitializer:  # the notebooks' initializer object
        def W(self, shape):
            return np.zeros(shape)

    with pytest.raises(
        ValueError, match=r"notebook.s initializer \(W\(\)/B\(\) methods\) is fn.Gaussian"
    ):
        fn.Dense(3, initializer=HeInitializer())


def test_nan_weights_are_refused_and_a_nan_row_is_no_top_k_hit():
    """``layer.W.value = nan`` was accepted where set_weights refuses NaN, and evaluate then
    scored NaN outputs a top-5 hit (top5_accuracy 1.0 for a model of NaN weights)."""
    from fastnet.metrics import top_k_correct

    X = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    model = fn.Sequential([fn.Dense(10)], backend="numpy", seed=0)
    model.fit(X, np.arange(40) % 10, epochs=1, verbose=0)
    before = model.get_weights()
    with pytest.raises(ValueError, match="W: a value holding NaN or inf"):
        model.layers[0].W.value = np.full((5, 10), np.nan)
    np.testing.assert_array_equal(model.get_weights()[0], before[0])
    scores = np.zeros((3, 10))
    scores[1, 4] = np.nan
    assert top_k_correct(scores, np.array([0, 1, 2]), 5) == 2


def test_notebook_habits_get_messages_that_name_them(tmp_path):
    """Each raised from inside Python or pathlib, or was silently ignored (alpha)."""
    X = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    assert len(fn.Sequential(fn.Dense(3), backend="numpy").layers) == 1  # one layer, no list
    with pytest.raises(TypeError, match=r"data_dir must be a folder's path or None, got True"):
        fn.load_fashion_mnist(True)  # the book's load_mnist(normalize)
    model = fn.Sequential([fn.Dense(2)], backend="numpy", seed=0).build(3)
    with pytest.raises(TypeError, match=r"save_model\(model, path\) takes the model first"):
        fn.save_model(str(tmp_path / "m.npz"), model)

    class EpochOnly(fn.Callback):
        def on_epoch_end(self, epoch):
            pass

    with pytest.raises(
        TypeError, match=r"\(model, epoch, logs\) or, Keras-style, \(epoch, logs=None\)$"
    ):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[EpochOnly()])
    with pytest.raises(ValueError, match=r"alpha=0.3 is leaky_relu's slope.*activation is 'relu'"):
        fn.Sequential([fn.Dense(4, "relu", alpha=0.3), fn.Dense(2)], backend="numpy")
    leaky = fn.Sequential([fn.Dense(4, "leaky_relu", alpha=0.3), fn.Dense(2)], backend="numpy")
    leaky.fit(X, y, epochs=1, verbose=0)
    path = tmp_path / "leaky.npz"
    leaky.save(path)
    assert fn.load_model(path).layers[0].alpha == 0.3


@pytest.mark.parametrize("loss", ["mean_squared_error", "sigmoid_binary_cross_entropy", None])
def test_a_model_of_dropout_alone_predicts_without_touching_the_callers_array(backend, loss):
    """Dropout alone (the identity at inference) left no layer for the fused inference: NumPy
    returned the caller's X (sigmoid outputs written into it), numba's kernel failed typing;
    now the layers run one by one, into new arrays."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 4)).astype(np.float32)
    y = {None: np.arange(20) % 4, "sigmoid_binary_cross_entropy": (X > 0).astype(np.float32)}
    kwargs = {"loss": loss} if loss else {}
    model = fn.Sequential([fn.Dropout(0.5)], backend=backend, seed=0, **kwargs)
    model.fit(X, y.get(loss, X), epochs=1, verbose=0)
    before = X.copy()
    outputs = [model.predict(X)]
    if loss != "mean_squared_error":
        outputs.append(model.predict_proba(X))
    for out in outputs:
        assert not isinstance(out, np.ndarray) or not np.shares_memory(out, X)
    np.testing.assert_array_equal(X, before)
    if loss == "mean_squared_error":
        np.testing.assert_array_equal(backend.to_numpy(model.predict(X)), X)


def test_two_models_made_of_one_list_of_layers_do_not_share_them_silently():
    """Two models of the same unbuilt layers (comparing optimizers, as the notebooks do): the
    second one's fit rebuilt the layers the first had built, and the first then failed with a
    bare KeyError (get_weights, save, fit); now the second is refused and the first is kept."""
    X, y = make_blobs(n=60)
    layers = [fn.Dense(8, "relu"), fn.Dense(4)]
    sgd = fn.Sequential(layers, optimizer=fn.SGD(0.1), backend="numpy", seed=0)
    adam = fn.Sequential(layers, optimizer=fn.Adam(), backend="numpy", seed=0)
    sgd.fit(X, y, epochs=1, verbose=0)
    weights = sgd.get_weights()
    with pytest.raises(ValueError, match=r"layers\[0\] \(Dense\) is built .*make new layer"):
        adam.fit(X, y, epochs=1, verbose=0)
    assert not adam.built and adam.history == {}
    for a, b in zip(sgd.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    sgd.fit(X, y, epochs=1, verbose=0)


def test_assigning_an_array_to_a_layers_parameter_is_refused_naming_the_way(backend):
    """The notebooks' ``layer.W = W`` replaced the Parameter: the model kept training its
    own copy and predict/get_weights failed on the array ('no attribute compute'). It is
    refused naming ``layer.W.value = ...``, which writes the values in place."""
    model = fn.Sequential([fn.Dense(4, "relu"), fn.BatchNorm1d(), fn.Dense(3)], backend=backend)
    with pytest.raises(AttributeError, match="created when the model is built"):
        model.layers[0].W.value  # noqa: B018  (before build: the way to get one, named)
    model.build(5)
    before = model.get_weights()
    for layer, name in [(0, "W"), (0, "b"), (1, "gamma"), (1, "beta"), (2, "b")]:
        with pytest.raises(AttributeError, match=rf"\.{name} is a Parameter .*\.{name}\.value ="):
            setattr(model.layers[layer], name, np.zeros(3))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    model.layers[0].W.value = np.ones((5, 4), np.float32)
    assert float(np.sum(model.get_weights()[0])) == 20.0
    model.predict(np.ones((2, 5), np.float32))


def test_a_build_that_fails_partway_can_be_retried():
    """A layer's error in build (here an initializer of the wrong shape) left the layers before
    it built, and the fit after the fix refused them as another model's; it builds again, the
    weights drawn as a first build draws them."""

    class Transposed(fn.initializers.Initializer):
        name = "transposed_for_this_test"

        def __call__(self, rng, n_in, n_out, dtype):
            return np.zeros((n_out, n_in), dtype)

    X, y = make_blobs(n=40)
    layers = [fn.Dense(8, "relu"), fn.Dense(4, initializer=Transposed())]
    model = fn.Sequential(layers, backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"Transposed\(\) gave float32 \(4, 8\)"):
        model.fit(X, y, epochs=1, verbose=0)
    assert not model.built and not model.layers[0].built
    model.layers[1].initializer = fn.initializers.Xavier()
    model.build(X.shape[1])
    fresh = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(4)], backend="numpy", seed=0)
    fresh.build(X.shape[1])
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    model.fit(X, y, epochs=1, verbose=0)


def test_mlp_checks_its_widths_and_names_activations_alike():
    """``mlp(4, "64", 3)`` built layers of 6 and 4 units, ``(8.9,)`` 8 and ``True`` 1 (each
    cast with int()); ``mlp(4, 64, 3)`` failed on iterating an int; with ``batch_norm`` an
    activation named as Dense takes it ("ReLU", "linear") raised KeyError."""
    widths = lambda model: [layer.units for layer in model.layers if hasattr(layer, "units")]  # noqa: E731
    assert widths(fn.mlp(4, 64, 3, backend="numpy")) == [64, 3]  # (one int: one layer)
    assert widths(fn.mlp(4, np.array([16, 8]), 3, backend="numpy")) == [16, 8, 3]
    assert widths(fn.mlp(4, (), 3, backend="numpy")) == [3]
    for hidden, error, message in [
        ("64", TypeError, "hidden must be the hidden layers' widths .* got '64'"),
        (None, TypeError, "got None"),
        ((8.9,), ValueError, "hidden widths must be positive integers, got 8.9"),
        ((True,), ValueError, "got True"),
        ((8, 0), ValueError, "got 0"),
    ]:
        with pytest.raises(error, match=message):
            fn.mlp(4, hidden, 3)
    with pytest.raises(ValueError, match="outputs must be a positive integer, got 3.7"):
        fn.mlp(4, (8,), 3.7)
    kinds = lambda model: [type(layer).__name__ for layer in model.layers]  # noqa: E731
    bn = fn.mlp(4, (8,), 3, "ReLU", batch_norm=True, backend="numpy")
    assert kinds(bn) == ["Dense", "BatchNorm1d", "ReLU", "Dense"]
    for linear in ("linear", None):
        bn = fn.mlp(4, (8,), 3, linear, batch_norm=True, backend="numpy")
        assert kinds(bn) == ["Dense", "BatchNorm1d", "Dense"]
    for batch_norm in (False, True):
        with pytest.raises(ValueError, match="unknown activation 'bogus'"):
            fn.mlp(4, (8,), 3, "bogus", batch_norm=batch_norm)


def test_a_validation_split_too_small_for_batch_norm_is_named():
    """It said "X has 1 sample(s)" of an X of 3 rows: the rows validation_split left."""
    X, y = make_blobs(n=3, d=4, k=2)
    model = fn.Sequential([fn.Dense(4), fn.BatchNorm1d(), fn.Dense(2)], backend="numpy")
    with pytest.raises(ValueError, match="validation_split=0.5 leaves 1 of X's 3 rows to train"):
        model.fit(X, y, validation_split=0.5, verbose=0)
    assert not model.built


def test_fit_evaluate_and_predictions_run_with_the_models_device_current(monkeypatch):
    """A ``cupy:1`` model's evaluation and predictions launched their kernels on whichever GPU
    was current (only its steps entered GPU 1): each public entry point now enters its
    backend's ``device_scope`` (a no-op on a CPU; CuPy's device on a GPU)."""
    import contextlib

    X, y = make_blobs(n=60, d=4, k=3)
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend="numpy", seed=0)
    entered = []

    @contextlib.contextmanager
    def scope():
        entered.append(True)
        yield

    monkeypatch.setattr(model.backend, "device_scope", scope)
    calls = {
        "fit": lambda: model.fit(X, y, epochs=1, verbose=0),
        "evaluate": lambda: model.evaluate(X, y),
        "predict": lambda: model.predict(X),
        "predict_proba": lambda: model.predict_proba(X),
        "predict_raw": lambda: model.predict_raw(X),
        "confusion_matrix": lambda: model.confusion_matrix(X, y),
    }
    for name, call in calls.items():
        entered.clear()
        call()
        assert entered, name
