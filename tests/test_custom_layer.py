"""A user's own Layer subclass, written as the Layer docstring says: it trains (its assigned
gradients reach the optimizer), a Parameter it forgets to list is refused, and it saves and
loads by its own name; a subclass without one is refused before it would load as another."""

import pickle

import numpy as np
import pytest

import fastnet as fn
from fastnet.layers import Layer
from fastnet.parameter import Parameter


class Scale(Layer):
    """y = x * a, one learned factor per feature."""

    name = "test_scale"

    def build(self, input_dim, backend, dtype, rng):
        super().build(input_dim, backend, dtype, rng)
        self.a = Parameter("a", backend.asarray(np.ones(input_dim, dtype)), decay=False)
        return input_dim

    def forward(self, x, training=True):
        self.x = x
        return x * self.a.value

    def backward(self, dy, need_dx=True):
        self.a.grad = (dy * self.x).sum(axis=0)  # assigned, as the docstring says
        return dy * self.a.value

    def parameters(self):
        return [self.a]


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_custom_layer_trains_checks_and_round_trips(backend, tmp_path):
    X, y = _data()
    model = fn.Sequential([Scale(), fn.Dense(8, "relu"), fn.Dense(3)], backend=backend,
                          dtype="float64", seed=0).build(4)  # fmt: skip
    assert "passed" in str(fn.gradcheck.check_layer(model.layers[0], X[:5]))
    model.fit(X, y, epochs=3, verbose=0)
    factors = model.backend.to_numpy(model.layers[0].a.value)
    assert not np.allclose(factors, 1.0)  # it trained (an assigned grad was lost before)
    model.save(tmp_path / "m.npz")
    loaded = fn.load_model(tmp_path / "m.npz", backend=backend)
    assert isinstance(loaded.layers[0], Scale)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict_proba(X),
                                  model.predict_proba(X))  # fmt: skip
    with pytest.raises(ValueError, match="a gradient of shape"):
        model.layers[0].a.grad = np.ones(5)


def test_unlisted_parameters_and_borrowed_names_are_refused():
    class Forgetful(Scale):
        name = "test_forgetful"

        def parameters(self):
            return []

    with pytest.raises(TypeError, match=r"Forgetful holds Parameter\(s\) \['a'\]"):
        fn.Sequential([Forgetful(), fn.Dense(3)]).build(4)

    class Float64(Scale):  # NumPy's default dtype in a float32 model: a file that won't load
        name = "test_float64_scale"

        def build(self, input_dim, backend, dtype, rng):
            super().build(input_dim, backend, dtype, rng)
            self.a = Parameter("a", backend.asarray(np.ones(input_dim)), decay=False)
            return input_dim

    model = fn.Sequential([Float64(), fn.Dense(3)], backend="numpy")
    with pytest.raises(TypeError, match=r"Float64's Parameter\(s\) \['a'\] are not float32"):
        model.build(4)
    assert not model.built and not model.layers[0].built

    class TwoScales(Scale):  # two Parameters of one name: checkpoints would keep one of them
        name = "test_two_scales"

        def build(self, input_dim, backend, dtype, rng):
            super().build(input_dim, backend, dtype, rng)
            self.b = Parameter("a", backend.asarray(np.zeros(input_dim, dtype)), decay=False)
            return input_dim

        def parameters(self):
            return [self.a, self.b]

    model = fn.Sequential([TwoScales(), fn.Dense(3)])
    with pytest.raises(TypeError, match=r"TwoScales's parameters\(\) holds names \['a'\] more"):
        model.build(4)
    assert not model.built

    class Renamed(fn.Dense):  # keeps Dense's name: its config would load a Dense
        pass

    model = fn.Sequential([Renamed(3)]).build(4)
    with pytest.raises(TypeError, match="Renamed has no name of its own"):
        model.get_config()
    with pytest.raises(TypeError, match="'dense' is taken by Dense"):

        class Clash(Layer):
            name = "dense"

    from fastnet.layers import LAYERS

    cell = "from fastnet.layers import Layer\nclass Again(Layer):\n    name = 'test_again'\n"
    first, second = {"__name__": "notebook"}, {"__name__": "notebook"}
    exec(cell, first)
    exec(cell, second)  # a notebook cell run again: the new class replaces the old
    assert LAYERS["test_again"] is second["Again"] is not first["Again"]


class Mult(Layer):
    """y = k x, with ``k`` an __init__ argument its get_config returns."""

    name = "test_mult"

    def __init__(self, k=1.0):
        super().__init__()
        self.k = k

    def forward(self, x, training=True):
        return x * self.k

    def backward(self, dy, need_dx=True):
        return dy * self.k

    def get_config(self):
        return {"name": self.name, "k": self.k}


class Forgets(Mult):
    name = "test_forgets"

    def get_config(self):  # (the base class's: the name only)
        return {"name": self.name}


def test_a_config_that_would_not_rebuild_the_layer_is_refused():
    """A copy, pickle or checkpoint rebuilds a layer from its config: one that lacks an
    __init__ argument set to another value (it came back with the default) is refused when
    the config is made."""
    import copy

    kept = fn.Sequential([Mult(5.0), fn.Dense(2)], seed=0).build(3)
    assert copy.deepcopy(kept).layers[0].k == 5.0
    lost = fn.Sequential([Forgets(5.0), fn.Dense(2)], seed=0).build(3)
    with pytest.raises(TypeError, match=r"Forgets.get_config\(\) lacks its __init__ argument"):
        copy.deepcopy(lost)
    fine = fn.Sequential([Forgets(), fn.Dense(2)], seed=0).build(3)  # k: the default
    assert copy.deepcopy(fine).layers[0].k == 1.0


def test_a_pickle_brings_its_layer_classes(tmp_path):
    """A pickled model holding a custom layer loads in a fresh process that has not imported
    the layer's module (joblib, multiprocessing): the class travels by reference."""
    import subprocess
    import sys

    (tmp_path / "userlayers.py").write_text(
        "from fastnet.layers import Layer\n"
        "class Halve(Layer):\n"
        "    name = 'test_halve'\n"
        "    def forward(self, x, training=True):\n"
        "        return x * 0.5\n"
        "    def backward(self, dy, need_dx=True):\n"
        "        return dy * 0.5\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        from userlayers import Halve

        model = fn.Sequential([Halve(), fn.Dense(2)], seed=0).build(3)
        (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    finally:
        sys.path.remove(str(tmp_path))
    code = "import pickle, sys; m = pickle.load(open(sys.argv[1], 'rb')); print(type(m.layers[0]))"
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    argv = [sys.executable, "-c", code, str(tmp_path / "m.pkl")]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert run.stdout.strip() == "<class 'userlayers.Halve'>", run.stderr[-2000:]


class Gain(Layer):
    """y = x * factor, a fixed factor per feature given as a NumPy array."""

    name = "test_gain"

    def __init__(self, factor=(1.0,)):
        super().__init__()
        self.factor = np.asarray(factor, dtype=np.float64)

    def forward(self, x, training=True):
        return x * self.backend.asarray(self.factor.astype(x.dtype))

    def backward(self, dy, need_dx=True):
        return dy * self.backend.asarray(self.factor.astype(dy.dtype))

    def parameters(self):
        return []

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}  # an ndarray, as users write


def test_a_config_holding_numpy_values_saves_them_as_json_lists(tmp_path):
    X, y = _data()
    model = fn.Sequential([Gain(np.array([1.0, 2.0, 0.5, 3.0])), fn.Dense(3)], backend="numpy")
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")  # (json refused the ndarray before)
    loaded = fn.load_model(tmp_path / "m.npz", backend="numpy")
    np.testing.assert_array_equal(loaded.layers[0].factor, [1.0, 2.0, 0.5, 3.0])
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    model.layers[0].get_config = lambda: {"name": "test_gain", "factor": {1.0}}
    with pytest.raises(TypeError, match="get_config.. of the model's layers.*holds a set"):
        model.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


class NotebookScale(Scale):
    """The notebooks' habit: the gradient kept as an attribute, or added to p.grad."""

    name = "test_notebook_scale"

    def __init__(self, habit="attribute"):
        super().__init__()
        self.habit = habit

    def backward(self, dy, need_dx=True):
        if self.habit == "attribute":
            self.da = (dy * self.x).sum(axis=0)  # no gradient fastnet sees
        elif self.habit == "zeroed":  # zeroed by a multiply, then added to: fine
            self.a.grad *= 0
            self.a.grad += (dy * self.x).sum(axis=0)
        else:
            self.a.grad += (dy * self.x).sum(axis=0)  # added to the last step's
        return dy * self.a.value


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("habit", ["attribute", "added"])
def test_a_backward_that_writes_no_gradient_is_refused_at_its_first_step(backend, habit):
    X, y = _data()
    model = fn.Sequential([NotebookScale(habit), fn.Dense(3)], backend=backend, seed=0)
    with pytest.raises(TypeError, match=r"NotebookScale.backward wrote no gradient into .*\['a'\]"):
        model.fit(X, y, epochs=1, verbose=0)
    assert model.epochs_trained == 0
    fine = fn.Sequential([Scale(), fn.Dense(3)], backend=backend, seed=0)
    fine.fit(X, y, epochs=2, verbose=0)  # (checked once, at its first step)
    assert not fine._unchecked and fine.epochs_trained == 2
    zeroed = fn.Sequential([NotebookScale("zeroed"), fn.Dense(3)], backend=backend, seed=0)
    zeroed.fit(X, y, epochs=1, verbose=0)  # (NaN-filled gradients stayed NaN through *= 0)
    assert zeroed.epochs_trained == 1 and not zeroed.diverged
