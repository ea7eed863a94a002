"""What a user's own class must tell fastnet, and what happens when it does not: each case
came from writing layers, losses and optimizers as a user would (an extensibility audit).
Wrong files, wrong exports and wrong widths are refused with the fix named; configs that do
load are not refused."""

import copy
import pickle

import numpy as np
import pytest

import fastnet as fn
from fastnet.layers import Layer
from fastnet.optimizers import OPTIMIZERS, Optimizer


def _data(n=48, d=5, k=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.integers(0, k, n)


class MinimalSGD(Optimizer):
    """The smallest optimizer: its __init__ takes lr only (no weight_decay)."""

    name = "contract_minimal_sgd"

    def __init__(self, lr=0.01):
        super().__init__(lr)

    def reference(self, xp, p, g, slots, step, eps, constants):
        p -= step * g


class TempSoftmax(fn.SoftmaxCrossEntropy):
    """A loss whose config is its parent's (label_smoothing) plus its own T."""

    name = "contract_temp_softmax"

    def __init__(self, T=2.0):
        super().__init__()
        self.T = T

    def get_config(self):
        return {**super().get_config(), "T": self.T}


class GainDense(fn.Dense):
    """A Dense subclass fixing activation, whose config is Dense's plus gain."""

    name = "contract_gain_dense"

    def __init__(self, units, gain=2.0):
        super().__init__(units, "relu")
        self.gain = gain

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


def test_configs_holding_base_keys_the_init_does_not_take_load(tmp_path):
    """The base class's keys (weight_decay, label_smoothing, activation) made files that
    saved and then failed to load, copy or pickle: 'unexpected keyword argument'."""
    X, y = _data()
    model = fn.Sequential(
        [GainDense(4, gain=3.0), fn.Dense(3)],
        loss=TempSoftmax(3.0),
        optimizer=MinimalSGD(0.1),
        backend="numpy",
        seed=0,
    )
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    for copied in (
        fn.load_model(tmp_path / "m.npz"),
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
        fn.Sequential.from_config(model.get_config()),
    ):
        assert copied.layers[0].gain == 3.0 and copied.loss.T == 3.0
        assert isinstance(copied.optimizer, MinimalSGD) and copied.optimizer.lr == 0.1
    np.testing.assert_array_equal(
        fn.load_model(tmp_path / "m.npz", backend="numpy").predict_proba(X),
        model.predict_proba(X),
    )


def test_a_base_key_the_init_would_not_restore_is_refused(tmp_path):
    """weight_decay set on an optimizer whose __init__ cannot take it would load as 0."""
    X, y = _data()
    optimizer = MinimalSGD(0.1)
    optimizer.weight_decay = 0.5
    model = fn.Sequential([fn.Dense(3)], optimizer=optimizer, backend="numpy", seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(TypeError, match=r"weight_decay=0.5, which its __init__ does not take"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_a_config_that_loads_other_values_than_it_holds_is_refused():
    """Keys a user's __init__ does not take are left out on loading only where the object
    built without them has those values: a typo, or a value the class fixes otherwise, is
    an error, as it was before they were left out."""
    with pytest.raises(TypeError, match=r"activation='tanh', which its __init__ does not take"):
        GainDense.from_config({"name": GainDense.name, "units": 4, "activation": "tanh"})
    with pytest.raises(TypeError, match=r"gian=5, which its __init__ does not take"):
        GainDense.from_config({"name": GainDense.name, "units": 4, "gian": 5})
    spec = {"name": TempSoftmax.name, "T": 3.0, "label_smoothing": 0.2}
    with pytest.raises(TypeError, match=r"label_smoothing=0.2"):
        fn.Sequential([fn.Dense(3)], loss=spec)
    assert fn.Sequential([fn.Dense(3)], loss={**spec, "label_smoothing": 0.0}).loss.T == 3.0


class Noise(Layer):
    """Adds nothing at inference; ``seed`` is used in __init__ only, never stored."""

    name = "contract_noise"

    def __init__(self, sigma=0.1, seed=None):
        super().__init__()
        self.sigma = sigma
        self.draw = np.random.default_rng(seed).standard_normal

    def forward(self, x, training=True):
        return x

    def backward(self, dy, need_dx=True):
        return dy

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


def test_an_argument_left_at_its_default_need_not_be_stored():
    """The arguments each instance was given are recorded: seed=None (the default) left out
    of the config loses nothing; seed=3 does."""
    model = fn.Sequential([Noise(0.2), fn.Dense(3)], backend="numpy", seed=0).build(5)
    assert copy.deepcopy(model).layers[0].sigma == 0.2
    seeded = fn.Sequential([Noise(0.2, seed=3), fn.Dense(3)], backend="numpy").build(5)
    with pytest.raises(TypeError, match=r"lacks its __init__ argument\(s\) \['seed'\]"):
        copy.deepcopy(seeded)


class Mult(Layer):
    """y = factor x, the argument kept under another attribute name, no get_config."""

    name = "contract_mult_k"

    def __init__(self, factor=1.0):
        super().__init__()
        self.k = factor

    def forward(self, x, training=True):
        return x * self.k

    def backward(self, dy, need_dx=True):
        return dy * self.k


def test_an_argument_kept_under_another_name_is_refused(tmp_path):
    """Mult(3.0) saved, loaded and pickled as Mult(1.0), silently."""
    model = fn.Sequential([Mult(3.0), fn.Dense(3)], backend="numpy", seed=0).build(5)
    for save, argument in ((model.save, tmp_path / "m.npz"), (pickle.dumps, model)):
        with pytest.raises(TypeError, match=r"lacks its __init__ argument\(s\) \['factor'\]: ret"):
            save(argument)
    assert not (tmp_path / "m.npz").exists()


class Project(Layer):
    """Keeps the first ``width`` columns: a layer that changes the width."""

    name = "contract_project"

    def __init__(self, width=2, tells_width=True):
        super().__init__()
        self.width, self.tells_width = width, tells_width

    def build(self, input_dim, backend, dtype, rng):
        super().build(input_dim, backend, dtype, rng)
        return self.width

    def output_width(self, input_dim):
        return self.width if self.tells_width else input_dim

    def forward(self, x, training=True):
        self.shape = x.shape
        return x[:, : self.width]

    def backward(self, dy, need_dx=True):
        dx = np.zeros(self.shape, dy.dtype)
        dx[:, : self.width] = dy
        return dx


def test_a_layer_that_changes_the_width_must_say_so_before_building():
    """Its build returned 3, output_width said 4: the model had 4 outputs, one-hot targets
    were refused and confusion matrices were 4 x 4."""
    X, y = _data()
    silent = fn.Sequential([fn.Dense(4), Project(3, tells_width=False)], backend="numpy")
    with pytest.raises(TypeError, match=r"Project.build returned width 3 .* output_width"):
        silent.fit(X, y, epochs=1, verbose=0)
    inner = fn.Sequential([Project(3, tells_width=False), fn.Dense(3)], backend="numpy", seed=0)
    inner.fit(X, y, epochs=1, verbose=0)  # (the model's width is right: not refused)
    told = fn.Sequential([fn.Dense(4), Project(3)], backend="numpy", seed=0)
    told.fit(X, np.eye(3)[y], epochs=1, verbose=0)
    assert told.output_dim == 3 and told.confusion_matrix(X, y).shape == (3, 3)


def test_a_notebook_style_update_is_refused_when_the_class_is_defined():
    """update(params, grads) was accepted and failed at the first step: 'ParameterGroup
    object is not iterable'. The refused class does not take its name."""
    with pytest.raises(TypeError, match=r"update\(self, params, grads\) is the notebooks' form"):

        class NotebookSGD(Optimizer):
            name = "contract_notebook_sgd"

            def update(self, params, grads):
                for key in params:
                    params[key] -= 0.01 * grads[key]

    assert "contract_notebook_sgd" not in OPTIMIZERS
    with pytest.raises(TypeError, match=r"update\(self, layer\) is .*reference\(self, xp"):

        class LayerSGD(Optimizer):  # (notebook 004's form)
            name = "contract_layer_sgd"

            def update(self, layer):
                layer.W -= self.lr * layer.dW

    class Logged(fn.SGD):  # fastnet's own signature: an override of it is fine
        name = "contract_logged_sgd"

        def update(self, group, backend):
            super().update(group, backend)


def test_a_loss_whose_compute_takes_no_weights_is_refused_when_the_class_is_defined():
    """compute(self, z, t) was accepted and failed at fit's first step with Python's
    'takes 3 positional arguments but 4 were given'; the refused class takes no name."""
    from fastnet.losses import LOSSES, Loss

    with pytest.raises(TypeError, match=r"compute\(self, z, t\) must take \(self, outputs, targ"):

        class Unweighted(Loss):
            name = "contract_unweighted"

            def compute(self, z, t):
                return ((z - t) ** 2).mean(), 2 * (z - t) / z.size

    assert "contract_unweighted" not in LOSSES

    class Weighted(Loss):  # the documented form, and *args, pass
        name = "contract_weighted"

        def compute(self, z, t, w=None):
            return ((z - t) ** 2).mean(), 2 * (z - t) / z.size


def test_a_user_rule_is_reported_under_its_own_name():
    """Every kernel-less rule was recorded as 'update_'."""
    X, y = _data()
    model = fn.Sequential([fn.Dense(3)], optimizer=MinimalSGD(0.1), backend="numpy", seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    assert "update_MinimalSGD" in model.backend.kernel_report


def test_a_layer_without_super_init_says_so():
    class NoInit(Layer):
        def __init__(self):
            self.k = 1.0

    with pytest.raises(TypeError, match=r"NoInit\) is not set up as a Layer.*super\(\).__init__"):
        fn.Sequential([NoInit(), fn.Dense(2)]).build(3)


def test_onnx_export_refuses_subclasses_of_built_in_layers(tmp_path):
    """A ReLU subclass that kept its parent's name exported as Relu; a Dense subclass with
    its own maths as a plain Gemm: other outputs than predict's, silently."""
    pytest.importorskip("onnx")

    class Swish(fn.ReLU):
        def forward(self, x, training=True):
            self.x = x
            return x / (1 + np.exp(-x))

        def backward(self, dy, need_dx=True):
            s = 1 / (1 + np.exp(-self.x))
            return dy * (s + self.x * s * (1 - s))

    X, y = _data()
    for layers in ([fn.Dense(4), Swish(), fn.Dense(3)], [GainDense(4), fn.Dense(3)]):
        model = fn.Sequential(layers, backend="numpy", seed=0).build(5)
        with pytest.raises(ValueError, match=r"has no ONNX export: fastnet exports its own"):
            model.to_onnx(tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()


class Scale(Mult):
    """Mult with ``factor`` kept under its own name too; no get_config of its own."""

    name = "contract_scale"

    def __init__(self, factor=1.0):
        super().__init__(factor)
        self.factor = factor


class FixedSGD(fn.SGD):
    """SGD whose __init__ fixes lr (takes nothing)."""

    name = "contract_fixed_sgd"

    def __init__(self):
        super().__init__(lr=0.1)


def test_configs_checked_by_what_was_given_and_what_is_set(tmp_path):
    """A value set after construction was lost once given arguments were recorded; a
    partialmethod __init__ could not be defined; a fixed-lr optimizer whose schedule had set
    lr to 0 could not be saved (the loader's placeholder lr was compared)."""
    import functools

    layer = Scale()
    layer.factor = 3.0
    model = fn.Sequential([layer, fn.Dense(2)], backend="numpy", seed=0).build(3)
    with pytest.raises(TypeError, match=r"lacks its __init__ argument\(s\) \['factor'\]"):
        copy.deepcopy(model)

    class Partial(Layer):
        def _setup(self, k):
            Layer.__init__(self)
            self.k = k

        __init__ = functools.partialmethod(_setup, 2.0)

    assert Partial().k == 2.0
    X, y = _data()
    paused = fn.Sequential([fn.Dense(3)], optimizer=FixedSGD(), backend="numpy", seed=0)
    paused.fit(X, y, epochs=1, verbose=0)
    paused.optimizer.set_scheduled_lr(0.0)
    paused.save(tmp_path / "m.npz")
    assert fn.load_model(tmp_path / "m.npz").optimizer.lr == 0.0


def test_gradcheck_names_a_layer_without_super_init():
    class NoInit(Layer):
        def __init__(self):
            self.k = 1.0

    with pytest.raises(TypeError, match=r"must call super\(\).__init__\(\)"):
        fn.gradcheck.check_layer(NoInit(), np.zeros((2, 3)))
