"""Users' own losses, optimizers and initializers: a ``name`` in the class body registers
them (saved, loaded, pickled, copied like the built-ins); a subclass that kept its parent's
name is refused before anything is written; a subclass's own ``compute`` or ``reference``
runs on every backend, never its parent's fused forms."""

import pickle

import numpy as np
import pytest

import fastnet as fn
from fastnet.gradcheck import check_loss
from fastnet.initializers import Initializer
from fastnet.losses import Loss
from fastnet.optimizers import Optimizer


class Focal(Loss):
    """Softmax focal loss (gamma 2) on integer labels: a multiclass loss of one's own."""

    name = "test_focal"
    classification = counts_correct = multiclass = True
    predictions = "softmax"

    def compute(self, z, t, weights=None):
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        onehot = np.eye(z.shape[1])[t] if t.ndim == 1 else t
        pt = (p * onehot).sum(1, keepdims=True)
        loss = -((1 - pt) ** 2) * np.log(pt)
        # d/dz of -(1-pt)^2 log pt, with dpt/dz = pt (onehot - p)
        dpt = 2 * (1 - pt) * np.log(pt) - (1 - pt) ** 2 / pt
        grad = dpt * pt * (onehot - p) / len(z)
        return loss.mean(), grad.astype(z.dtype)


class FocalFromSoftmax(fn.SoftmaxCrossEntropy):
    """The same focal loss, written by overriding the softmax cross-entropy's compute."""

    name = "test_focal_from_softmax"
    compute = Focal.compute


class Lecun(Initializer):
    name = "test_lecun"

    def scale(self, fan_in, fan_out):
        return (1 / fan_in) ** 0.5


class SignSGD(Optimizer):
    name = "test_signsgd"

    def __init__(self, lr=0.01, weight_decay=0.0, **clipping):
        super().__init__(lr, weight_decay, **clipping)

    def reference(self, xp, p, g, slots, step, eps, constants):
        p -= step * xp.sign(g)


class SquareRootAdaGrad(fn.AdaGrad):
    """AdaGrad with eps inside the square root: a rule of its own, its parent's kernel not."""

    name = "test_sqrt_adagrad"

    def reference(self, xp, p, g, slots, step, eps, constants):
        (h,) = slots
        h += g * g
        p -= step * g / xp.sqrt(h + eps)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((60, 4)), rng.integers(0, 3, 60)


def _model(backend, loss="softmax_cross_entropy", optimizer="sgd", initializer=None):
    layers = [fn.Dense(5, "relu", initializer=initializer), fn.Dense(3)]
    return fn.Sequential(
        layers, loss=loss, optimizer=optimizer, backend=backend, dtype="float64", seed=0
    )


def test_a_multiclass_loss_of_ones_own_takes_integer_labels_and_predicts_as_declared(tmp_path):
    """Its ``predictions`` and ``counts_correct`` are honoured: labels, probabilities,
    accuracy, evaluation and the ONNX export as for the softmax cross-entropy."""
    z, t = np.random.default_rng(1).standard_normal((6, 4)), np.array([0, 1, 2, 3, 0, 1])
    assert check_loss(Focal(), z, t).ok
    assert Focal()(z, t)[0] == Focal()(z, np.eye(4)[t])[0]
    X, y = _data()
    model = _model("numpy", Focal())
    history = model.fit(X, y, epochs=3, verbose=0, validation_data=(X, y))
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1)
    np.testing.assert_array_equal(model.predict(X), proba.argmax(1))
    assert history["val_accuracy"][-1] == pytest.approx((model.predict(X) == y).mean())
    assert 0 < history["accuracy"][-1] and model.evaluate(X, y)["accuracy"] > 0
    pytest.importorskip("onnx")
    model.to_onnx(tmp_path / "focal.onnx")  # logits and softmax probabilities


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_subclass_overriding_compute_trains_its_own_loss(backend):
    X, y = _data()
    models = [_model(backend, loss) for loss in (Focal(), FocalFromSoftmax(), "cross_entropy")]
    for model in models:
        model.fit(X, y, epochs=2, batch_size=20, verbose=0, shuffle=False)
    focal, from_softmax, cross_entropy = (m.layers[0].W.value for m in models)
    np.testing.assert_allclose(from_softmax, focal, rtol=1e-12)
    assert np.abs(from_softmax - cross_entropy).max() > 1e-3


class HalvedAccumulate(fn.SoftmaxCrossEntropy):
    """Half the cross-entropy's gradient, by overriding the training step's accumulate only."""

    name = "test_halved_accumulate"

    def accumulate(self, outputs, targets, weights, totals):
        return 0.5 * super().accumulate(outputs, targets, weights, totals)


@pytest.mark.parametrize("backend", ["numpy", "numba", "cupy-emulated"])
def test_a_loss_subclass_overriding_accumulate_alone_runs_it(backend):
    """Compiled steps ran the parent's fused softmax cross-entropy instead (silently)."""
    from conftest import make_backend

    X, y = _data()
    ours, reference = (
        _model(make_backend(name), loss=HalvedAccumulate(), optimizer=fn.SGD(0.2))
        for name in (backend, "numpy")
    )
    for model in (ours, reference):
        model.fit(X, y, epochs=2, batch_size=20, verbose=0, shuffle=False)
    np.testing.assert_allclose(ours.layers[0].W.value, reference.layers[0].W.value, rtol=1e-12)
    halved = _model("numpy", optimizer=fn.SGD(0.1))  # half the gradient: half the lr
    halved.fit(X, y, epochs=2, batch_size=20, verbose=0, shuffle=False)
    np.testing.assert_allclose(ours.layers[0].W.value, halved.layers[0].W.value, rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_subclass_with_its_own_rule_runs_it_not_the_parents_kernel(backend):
    X, y = _data()
    ours, reference = (
        _model(name, optimizer=SquareRootAdaGrad(0.1)) for name in (backend, "numpy")
    )
    for model in (ours, reference):
        model.fit(X, y, epochs=2, batch_size=20, verbose=0, shuffle=False)
    np.testing.assert_allclose(ours.layers[0].W.value, reference.layers[0].W.value, rtol=1e-12)
    plain = _model("numpy", optimizer=fn.AdaGrad(0.1))
    plain.fit(X, y, epochs=2, batch_size=20, verbose=0, shuffle=False)
    assert np.abs(plain.layers[0].W.value - ours.layers[0].W.value).max() > 1e-4


class MaskedDense(fn.Dense):
    """A Dense layer whose weights below the diagonal are held at zero (its own forward and
    backward, written as the notebooks' Affine: no fused kernels of its parent's)."""

    name = "test_masked_dense"

    def build(self, input_dim, backend, dtype, rng):
        width = super().build(input_dim, backend, dtype, rng)
        self.mask = np.triu(np.ones((input_dim, width), dtype))
        self.W.value[...] *= self.mask
        return width

    def forward(self, x, training=True):
        self.x = x
        self.z = x @ self.W.value + self.b.value
        return np.maximum(self.z, 0) if self.activation == "relu" else self.z

    def backward(self, dy, need_dx=True):
        dz = dy * (self.z > 0) if self.activation == "relu" else dy
        self.W.grad = (self.x.T @ dz) * self.mask
        self.b.grad = dz.sum(axis=0)
        return dz @ self.W.value.T


class HalfDropout(fn.Dropout):
    """Dropout of every other unit, the same in every step: its own forward and backward."""

    name = "test_half_dropout"

    def forward(self, x, training=True):
        self.keep = (np.arange(x.shape[1]) % 2 == 0) * 2.0 if training else 1.0
        return x * self.keep

    def backward(self, dy, need_dx=True):
        return dy * self.keep


@pytest.mark.parametrize("backend", ["numpy", "numba", "cupy-emulated"])
def test_a_layer_subclass_with_its_own_forward_and_backward_runs_them(backend):
    """A subclass of a built-in layer overriding forward/backward ran its parent's fused
    kernels on numba (the mask ignored, silently) and crashed on numpy (the Dense gradient
    fusion's arguments); now its own code runs, eagerly, on every backend."""
    from conftest import make_backend

    X, y = _data()

    def model(name):
        layers = [MaskedDense(6, "relu"), HalfDropout(0.5), MaskedDense(5, "relu"), fn.Dense(3)]
        kw = {"backend": make_backend(name), "dtype": "float64", "seed": 0, "optimizer": "adam"}
        return fn.Sequential(layers, **kw)

    ours, reference = model(backend), model("numpy")
    for m in (ours, reference):
        m.fit(X, y, epochs=2, batch_size=20, verbose=0, shuffle=False)
    assert ours.step_description.startswith("eager")
    for a, b in zip(ours.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    W = ours.get_weights()[0]
    assert (W[np.tril_indices(4, -1)] == 0).all() and (W[np.triu_indices(4)] != 0).all()
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), rtol=1e-12)
    why = r"MaskedDense \(computes with its own" if backend != "numpy" else "no compiled step"
    with pytest.raises(ValueError, match=why):
        model(backend).fit(X, y, epochs=1, verbose=0, compiled=True)


def test_a_layers_own_initializer_attribute_is_its_business(tmp_path):
    """Only Initializer objects are checked as parts: a custom layer may keep a string."""

    class Scaled(fn.layers.Layer):
        name = "test_scaled"

        def __init__(self, initializer="ones"):
            super().__init__()
            self.initializer = initializer

        def get_config(self):
            return {"name": self.name, "initializer": self.initializer}

        def forward(self, x, training=True):
            return x

        def backward(self, dy, need_dx=True):
            return dy

    model = fn.Sequential([Scaled(), fn.Dense(3)], seed=0).build(4)
    pickle.loads(pickle.dumps(model)).get_config()
    model.save(tmp_path / "m.npz")
    assert fn.load_model(tmp_path / "m.npz").layers[0].initializer == "ones"


def test_a_class_defined_again_still_pickles(tmp_path):
    """A re-run notebook cell: the model's class is no longer importable by its name; the
    registry loads the current one."""
    cell = "class Again(fn.SGD):\n    name = 'test_again'\n"
    scope = {"fn": fn, "__name__": __name__}
    exec(cell, scope)
    model = _model("numpy", optimizer=scope["Again"](0.1)).build(4)
    exec(cell, scope)  # defined again
    assert type(pickle.loads(pickle.dumps(model)).optimizer).__name__ == "Again"


def test_users_classes_save_load_pickle_and_copy(tmp_path):
    X, y = _data()
    model = _model("numpy", Focal(), SignSGD(0.05), Lecun())
    model.fit(X, y, epochs=2, batch_size=20, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    for copy in (fn.load_model(path), pickle.loads(pickle.dumps(model)), model.to("numba")):
        assert type(copy.loss) is Focal and type(copy.optimizer) is SignSGD
        assert type(copy.layers[0].initializer) is Lecun
        np.testing.assert_allclose(copy.predict_proba(X), model.predict_proba(X), rtol=1e-12)


def test_a_subclass_without_a_name_of_its_own_is_refused_before_writing(tmp_path):
    class Quiet(fn.AdaGrad):  # would load as AdaGrad
        pass

    model = _model("numpy", optimizer=Quiet(0.1)).build(4)
    with pytest.raises(TypeError, match=r"Quiet has no name of its own \('adagrad' loads AdaGrad"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(TypeError, match="loss name 'mean_squared_error' is taken"):

        class Clash(Loss):
            name = "mean_squared_error"

    assert fn.Nesterov(0.1).get_config()["name"] == "momentum"  # saved as what it is


def test_an_initializer_is_checked_and_missing_methods_say_what_to_write():
    class Transposed(Initializer):
        def __call__(self, rng, fan_in, fan_out, dtype=np.float32):
            return np.zeros((fan_out, fan_in), dtype)

    with pytest.raises(ValueError, match=r"gave float32 \(3, 6\) for Dense\(3\): an initializer"):
        fn.Sequential([fn.Dense(3, initializer=Transposed())]).build(6)
    with pytest.raises(NotImplementedError, match=r"Initializer.scale\(fan_in, fan_out\)"):
        fn.Sequential([fn.Dense(3, initializer=Initializer())]).build(6)

    class NoRule(Optimizer):
        pass

    model = _model("numpy", optimizer=NoRule(0.1))
    with pytest.raises(NotImplementedError, match=r"NoRule.reference\(xp, p, g, slots"):
        model.fit(*_data(), epochs=1, verbose=0)


def test_a_loss_with_its_own_predictions_is_evaluated_and_exported_by_them(tmp_path):
    class Poisson(Loss):
        name = "test_poisson"

        def compute(self, z, t, weights=None):
            return (np.exp(z) - t * z).mean(), (np.exp(z) - t) / z.size

        def predict_output(self, z):
            return np.exp(z)

    X, _ = _data()
    counts = np.random.default_rng(2).poisson(2.0, (60, 1)).astype(float)
    model = fn.Sequential([fn.Dense(1)], loss=Poisson(), backend="numpy", dtype="float64")
    model.fit(X, counts, epochs=2, verbose=0)
    rate = model.predict_proba(X)
    assert model.evaluate(X, counts)["mae"] == pytest.approx(np.abs(rate - counts).mean())
    with pytest.raises(ValueError, match="Poisson makes its predictions with its own"):
        model.to_onnx(tmp_path / "m.onnx")


class Huber(Loss):
    """A loss with an argument its config leaves out (the base class's config: its name)."""

    name = "test_huber_without_config"
    predictions = "identity"

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def compute(self, z, t, weights=None):
        e = z - t.reshape(z.shape)
        small = np.abs(e) <= self.delta
        loss = np.where(small, 0.5 * e * e, self.delta * (np.abs(e) - 0.5 * self.delta))
        return loss.mean(), np.where(small, e, self.delta * np.sign(e)) / e.size


class ScaledSGD(fn.SGD):
    """An optimizer subclass with an argument of its own its config leaves out."""

    name = "test_scaled_sgd_without_config"

    def __init__(self, lr=0.01, factor=1.0, **kw):
        super().__init__(lr, **kw)
        self.factor = factor

    def reference(self, xp, p, g, slots, step, eps, constants):
        p -= self.factor * step * g


def test_a_loss_or_optimizer_whose_config_lacks_an_argument_is_refused(tmp_path):
    """They came back with the default (delta 1, factor 1) from a checkpoint, a copy or a
    pickle, silently; now refused, as a layer is, before anything is written."""
    import copy

    X, y = _data()
    for loss, optimizer, lost in (
        (Huber(0.1), "sgd", "delta"),
        ("mse", ScaledSGD(0.1, 5.0), "factor"),
    ):
        model = fn.Sequential([fn.Dense(1)], loss=loss, optimizer=optimizer, seed=0)
        model.fit(X, y.astype(float), epochs=1, verbose=0)
        saves = ((model.save, tmp_path / "m.npz"), (copy.deepcopy, model), (pickle.dumps, model))
        for save, argument in saves:
            with pytest.raises(TypeError, match=rf"lacks its __init__ argument\(s\) \['{lost}'\]"):
                save(argument)
        assert not (tmp_path / "m.npz").exists()
    kept = fn.Sequential([fn.Dense(1)], loss=Huber(), optimizer=ScaledSGD(0.1), seed=0)
    kept.fit(X, y.astype(float), epochs=1, verbose=0)  # defaults: nothing is lost
    kept.save(tmp_path / "kept.npz")
    assert fn.load_model(tmp_path / "kept.npz").loss.delta == 1.0


class Doubler(fn.layers.Activation):
    """A layer whose get_config returns its own arguments only (no 'name')."""

    name = "test_doubler_without_name"

    def __init__(self, factor=2.0):
        super().__init__()
        self.factor = factor

    def forward(self, x, training=False):
        return x * self.factor

    def backward(self, dout):
        return dout * self.factor

    def get_config(self):
        return {"factor": self.factor}


class NamelessLecun(Lecun):
    name = "test_lecun_without_name"

    def get_config(self):
        return {}


def test_a_config_without_its_name_is_refused_before_saving(tmp_path):
    """It was saved, and load_model, copies and pickles failed: 'unknown layer None'."""
    import copy

    X, y = _data()
    for layers, cls in (
        ([Doubler(3.0), fn.Dense(3)], "Doubler"),
        ([fn.Dense(3, initializer=NamelessLecun())], "NamelessLecun"),
    ):
        model = fn.Sequential(layers, seed=0)
        model.fit(X, y, epochs=1, verbose=0)
        for save, argument in ((model.save, tmp_path / "m.npz"), (copy.deepcopy, model)):
            with pytest.raises(TypeError, match=rf"{cls}.get_config\(\) must return a dict with"):
                save(argument)
        assert not (tmp_path / "m.npz").exists()


class SharpSigmoid(fn.losses.SigmoidBinaryCrossEntropy):
    """A sigmoid loss whose predictions (and so its reference gradient) are its own."""

    name = "test_sharp_sigmoid"

    def predict_output(self, z):
        return 1 / (1 + self.backend.xp.exp(-2 * z))


def test_a_sigmoid_loss_with_its_own_predictions_trains_by_them_on_numba():
    """numba's fused sigmoid kernel took the plain sigmoid's gradient for it (weights 0.12
    apart from numpy's after 5 epochs): its own predictions keep it on the reference."""
    X, y = _data()
    models = []
    for backend in ("numpy", "numba"):
        model = fn.Sequential(
            [fn.Dense(1)], loss=SharpSigmoid(), backend=backend, dtype="float64", seed=0
        )
        model.fit(X, (y > 0).astype(float), epochs=5, verbose=0)
        models.append(model)
    assert models[1].loss.plan().fused == ""
    np.testing.assert_allclose(models[1].get_weights()[0], models[0].get_weights()[0], rtol=1e-10)


class ConfidentHits(fn.losses.SigmoidBinaryCrossEntropy):
    """Counts an output correct only where the logit is confident (|z| > 1) and right."""

    name = "test_confident_hits"

    def count_correct(self, z, t):
        t = t.reshape(-1, 1) if t.ndim == 1 else t
        return (((z > 1) & (t > 0.5)) | ((z < -1) & (t <= 0.5))).sum() / z.shape[1]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_loss_with_its_own_correct_count_trains_by_it(backend):
    """The fused sigmoid op counted z > 0 itself: the training accuracy of a loss with its
    own count_correct disagreed with evaluate's on the same weights."""
    X, y = _data()
    model = fn.Sequential(
        [fn.Dense(1)], loss=ConfidentHits(), optimizer=fn.SGD(1e-12), backend=backend, seed=0
    )
    h = model.fit(X, (y > 0).astype(float), epochs=1, batch_size=60, verbose=0)
    assert model.loss.plan().fused == ""
    assert h["accuracy"][0] == pytest.approx(
        model.evaluate(X, (y > 0).astype(float))["accuracy"], rel=1e-6
    )


class _L1Value:
    """A mixin with its own value and gradient (the mean absolute error)."""

    def compute(self, outputs, targets, weights=None):
        diff = outputs - targets.reshape(outputs.shape)
        return abs(diff).mean(), np.sign(diff) / diff.size


class MixedInL1(_L1Value, fn.MeanSquaredError):
    name = "test_mixed_in_l1"


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_mixins_compute_ahead_of_a_fused_loss_is_what_trains(backend):
    """The fused form inherited from MeanSquaredError was found before the mixin's compute:
    the model trained on the squared error, silently."""
    X = np.random.default_rng(0).normal(size=(64, 3))
    t = X.sum(axis=1) * 3
    model = fn.Sequential([fn.Dense(1)], loss=MixedInL1(), backend=backend, seed=0)
    h = model.fit(X, t, epochs=1, batch_size=64, verbose=0)
    assert model.loss.plan().fused == ""
    first = np.abs(model.predict_raw(X)[:, 0] - t).mean()  # (after the step: below the start)
    assert h["loss"][0] == pytest.approx(float(np.abs(t).mean()), rel=0.05)
    assert first < h["loss"][0] * 1.01


def test_a_loss_pickled_before_its_hyperparameter_was_checked_loads():
    """MeanSquaredError's scale became a checked attribute: a pickle holding it under its
    plain name read no scale (AttributeError in fit)."""
    import pickle

    loss = fn.MeanSquaredError(2.0)
    old = dict(vars(loss))
    old["scale"] = old.pop("_checked_scale")  # as the pickle of a release before held it
    loss.__dict__.clear()
    loss.__dict__.update(old)
    again = pickle.loads(pickle.dumps(loss))
    assert again.scale == 2.0 and again.plan().scale == 2.0


def test_layers_pickled_before_their_attributes_were_checked_load():
    """Dropout's seed and BatchNorm1d's synchronized became checked attributes: a pickle of
    the bare layer holding them (and rate, momentum, eps) under their plain names loaded, and
    then read no seed (AttributeError in build, get_config and deepcopy)."""
    import pickle

    for layer in (fn.Dropout(0.3, seed=5), fn.BatchNorm1d(0.8, synchronized=True)):
        expected = layer.get_config()
        old = {k.removeprefix("_checked_"): v for k, v in vars(layer).items()}
        layer.__dict__.clear()
        layer.__dict__.update(old)  # as the pickle of a release before held it
        again = pickle.loads(pickle.dumps(layer))
        assert again.get_config() == expected
        model = fn.Sequential([fn.Dense(3), again, fn.Dense(2)], loss="mse", backend="numpy")
        model.build(4)
