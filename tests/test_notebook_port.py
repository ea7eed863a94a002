"""Defects found porting the from-scratch notebooks: plots of regression histories and the
session's matplotlib backend, float64-only and Dropout-aware gradient checks, notebook names."""

import subprocess
import sys

import numpy as np
import pytest

import fastnet as fn
from fastnet.cli import main
from fastnet.gradcheck import check_layer, check_loss, numerical_gradient


@pytest.fixture
def plot():
    pytest.importorskip("matplotlib")
    from fastnet import plot

    return plot


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def _regression_data(n=64):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 5)).astype(np.float32)
    return X, X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(n)


def test_plot_history_of_a_regression_model(plot, tmp_path):
    """Loss and validation R2 (two panels) with a validation set; the loss alone without."""
    X, y = _regression_data()
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(1)], loss="mse", backend="numpy", seed=0)
    model.fit(X, y, epochs=2, verbose=0, validation_split=0.25)
    assert "accuracy" not in model.history and "val_r2" in model.history
    plot.plot_history(model.history, str(tmp_path / "val.png"))
    plain = fn.Sequential([fn.Dense(1)], loss="mse", backend="numpy", seed=0)
    plain.fit(X, y, epochs=2, verbose=0)
    plot.plot_history(plain.history, str(tmp_path / "plain.png"))
    assert _png_width(tmp_path / "val.png") == 2 * _png_width(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="'loss'"):
        plot.plot_history({}, str(tmp_path / "empty.png"))


def test_plot_history_numbers_a_resumed_runs_epochs(plot, tmp_path):
    history = {"loss": [2.0, 1.0, 0.5], "val_loss": [float("nan"), 1.5, 0.9]}
    fig = plot.plot_history(history, str(tmp_path / "h.png"), first_epoch=4)
    train, val = fig.axes[0].lines
    assert train.get_xdata().tolist() == val.get_xdata().tolist() == [4, 5, 6]
    assert np.isnan(val.get_ydata()[0]) and val.get_ydata()[1] == 1.5  # (aligned by epoch)
    with pytest.raises(ValueError, match="first_epoch must be a positive integer"):
        plot.plot_history(history, str(tmp_path / "h.png"), first_epoch=0)


def test_plot_history_numbers_a_fit_from_initial_epoch_by_itself(plot, tmp_path):
    X, y = _regression_data(64)
    model = fn.Sequential([fn.Dense(4), fn.ReLU(), fn.Dense(1)], loss="mse", seed=0)
    model.fit(X, y, epochs=5, initial_epoch=3, verbose=0)
    fig = plot.plot_history(model.history, str(tmp_path / "h.png"))
    assert fig.axes[0].lines[0].get_xdata().tolist() == [4, 5]


def test_cli_plots_a_regression_run(plot, tmp_path, capsys):
    X, y = _regression_data(200)
    np.savez(tmp_path / "r.npz", X=X, y=y)
    png = tmp_path / "p.png"
    argv = ["train", "--data", str(tmp_path / "r.npz"), "--epochs", "2", "--backend", "numpy"]
    assert main([*argv, "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and "wrote learning curves" in capsys.readouterr().out


def test_confusion_plot_names_the_classes(plot, tmp_path):
    fig = plot.plot_confusion(np.eye(3, dtype=int), str(tmp_path / "c.png"), "", ["a", "b", "c"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]


def test_plots_leave_the_matplotlib_backend_alone(plot, tmp_path):
    code = (
        "import sys, matplotlib, numpy as np; matplotlib.use('svg'); "
        "from fastnet.plot import plot_confusion, plot_history; "
        f"plot_history({{'loss': [2.0, 1.0], 'accuracy': [0.5, 0.7]}}, r'{tmp_path / 'h.png'}'); "
        f"plot_confusion(np.eye(3, dtype=int), r'{tmp_path / 'c.png'}'); "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["svg", "False"], out.stderr
    assert (tmp_path / "h.png").exists() and (tmp_path / "c.png").exists()


def test_gradient_checks_refuse_float32(rng):
    backend = fn.get_backend("numpy")
    with pytest.raises(ValueError, match="x is float32.*float64"):
        numerical_gradient(lambda: 0.0, np.ones(3, np.float32))
    loss = fn.SoftmaxCrossEntropy()
    loss.build(backend)
    with pytest.raises(ValueError, match="logits is float32"):
        check_loss(loss, np.ones((2, 3), np.float32), np.array([0, 1]))


def test_check_layer_holds_one_dropout_mask(backend, rng):
    """Training-mode Dropout passes (the stream is rewound before each forward), and a
    backward that ignores the mask still fails."""

    class Maskless(fn.Dropout):
        def backward(self, dy, need_dx=True):
            return dy / (1 - self.rate)

    for layer, ok in ((fn.Dropout(0.3, seed=1), True), (Maskless(0.3, seed=1), False)):
        layer.build(4, backend, np.float64, rng)
        result = check_layer(layer, backend.asarray(rng.standard_normal((6, 4))), training=True)
        assert result.ok is ok, result


def test_gradcheck_after_import_fastnet_only():
    code = "import fastnet; print(fastnet.gradcheck.check_layer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "check_layer", out.stderr


def test_notebook_optimizer_names():
    assert fn.RMSprop is fn.RMSProp and fn.Adagrad is fn.AdaGrad
    assert {"RMSprop", "Adagrad", "gradcheck"} <= set(fn.__all__)
    for name in ("SGD", "Momentum", "AdaGrad", "RMSprop", "Adam"):
        assert isinstance(getattr(fn, name)(0.01), fn.optimizers.Optimizer)
    assert fn.Momentum(0.01, nesterov=True).get_config()["nesterov"]  # the notebooks' Nesterov
    assert fn.RMSprop(0.01, decay_rate=0.99).rho == 0.99  # the notebooks' name of rho
    with pytest.raises(TypeError, match=r"take units, an int, not weights .* shape \(4, 3\)"):
        fn.Affine(np.zeros((4, 3)), np.zeros(3))  # the notebooks' Affine(W, b)
    grad = fn.gradcheck.numerical_gradient(lambda x: float(np.sum(x**2)), np.array([3.0, 4.0]))
    np.testing.assert_allclose(grad, [6.0, 8.0])  # the notebooks' f(x)
    net = fn.Sequential([fn.Dense(2)], loss="mse", backend="numpy", dtype="float64", seed=0)
    net.build(3)
    x, t = np.ones((4, 3)), np.zeros((4, 2))
    with pytest.raises(TypeError, match=r"model.loss returns \(loss, dout\), take \[0\]"):
        fn.gradcheck.numerical_gradient(
            lambda W: net.loss(net.forward(x, training=True), t), net.layers[0].W.value
        )
    with pytest.raises(TypeError, match=r"fit takes X and y by position .* validation_data"):
        net.fit(x, t, x, t)  # the notebooks' trainer order
    with pytest.raises(TypeError, match="unexpected keyword argument 'decay_rate'$"):
        fn.AdaGrad(0.01, decay_rate=0.99)  # (no rho to name)
    nesterov = fn.Nesterov(0.01, momentum=0.8)
    assert repr(nesterov).startswith("Momentum(lr=0.01") and "nesterov=True" in repr(nesterov)
    assert nesterov.get_config() == fn.Momentum(0.01, 0.8, nesterov=True).get_config()
    model = fn.Sequential([fn.Dense(2)], optimizer="nesterov")
    assert model.optimizer.nesterov and model.optimizer.momentum == 0.9
    params, grads = {"x": np.array([-7.0])}, {"x": np.array([1.0])}
    with pytest.raises(TypeError, match=r"call model.apply_gradients\(\) after model.backward"):
        fn.SGD(0.95).update(params, grads)  # the notebooks' optimizer.update(params, grads)
    with pytest.raises(TypeError, match=r"call model.apply_gradients\(\) after model.backward"):
        fn.SGD(0.95).update(fn.Dense(2))  # notebook 004's optimizer.update(layer)
    with pytest.raises(AttributeError, match=r"Dense keeps no dW: the gradient is layer.W.grad"):
        fn.Dense(2).dW  # noqa: B018 (the notebooks' layer.dW)


def test_documented_conventions():
    """What the README's notebook section says: BatchNorm1d's momentum keeps the running
    statistics' share; weight_decay adds lambda * W to the gradient, not to the loss."""
    backend = fn.get_backend("numpy")
    bn = fn.BatchNorm1d(momentum=0.9)
    bn.build(2, backend, np.float64, np.random.default_rng(0))
    bn.forward(np.array([[1.0, 3.0], [3.0, 5.0]]), training=True)
    np.testing.assert_allclose(bn.running_mean, [0.2, 0.4])
    np.testing.assert_allclose(bn.running_var, [0.9 + 0.1 * 2.0] * 2)  # unbiased: 2 / (2 - 1)
    drop = fn.Sequential([fn.Dropout(0.2)], seed=0).build(1000)  # inverted: 1 / (1 - rate)
    assert set(np.unique(drop.forward(np.ones((4, 1000), np.float32), True))) == {0, 1.25}
    mse = fn.Sequential([fn.Dense(2)], loss="mse", dtype="float64").build(3)
    assert mse.loss(np.array([[1.0, 3.0]]), np.array([[0.0, 0.0]]))[0] == 5.0  # mean, not 0.5 sum
    assert fn.Sequential([fn.Affine(4), fn.Relu()]).build(3).layers[0].initializer.name == "he"
    x, y = np.ones((2, 3)), np.array([0, 1])
    losses, steps = [], []
    for wd in (0.0, 0.5):
        model = fn.Sequential(
            [fn.Dense(2)], optimizer=fn.SGD(0.1, weight_decay=wd), dtype="float64", seed=0
        ).build(3)
        W = model.layers[0].W.value.copy()
        loss, dout = model.loss(model.forward(x, training=True), y)
        model.backward(dout)
        model.apply_gradients()
        losses.append(float(loss))
        steps.append(model.layers[0].W.value - W)
    assert losses[0] == losses[1]  # the reported loss holds no penalty
    np.testing.assert_allclose(steps[1] - steps[0], -0.1 * 0.5 * W)


def test_the_notebooks_own_fc_initializer_and_optimizer_get_their_fastnet_names():
    """FC(n_in, n_out, initializer, optimizer), a SimpleInitializer (W()/B()) and an optimizer
    with update(layer), as the notebooks write them: errors that name fastnet's forms (they
    were Python's 'takes from 2 to 3 positional arguments' and 'unknown initializer <obj>')."""

    class SimpleInitializer:
        def __init__(self, sigma):
            self.sigma = sigma

        def W(self, n1, n2):
            return self.sigma * np.ones((n1, n2))

    class SGD:
        def __init__(self, lr):
            self.lr = lr

        def update(self, layer):
            return layer

    with pytest.raises(TypeError, match=r"is Dense\(n_out, input_dim=n_in, initializer="):
        fn.FC(784, 400, fn.Gaussian(0.01), fn.SGD(0.01))
    with pytest.raises(ValueError, match=r"is fn.Gaussian\(sigma\) \(SimpleInitializer\)"):
        fn.Dense(4, initializer=SimpleInitializer(0.01))
    with pytest.raises(ValueError, match=r"rule of the same lr: fn.SGD\(lr\)"):
        fn.Dense(4, optimizer=SGD(0.1))
    with pytest.raises(ValueError, match=r"rule of the same lr: fn.SGD\(lr\)"):
        fn.Sequential([fn.Dense(2)], optimizer=SGD(0.1), backend="numpy")
    assert fn.FC(400, input_dim=784).units == 400  # (the right form)


def test_train_runs_without_matplotlib_and_a_plot_kind_is_checked_first(tmp_path):
    """Without the 'plot' extra `fastnet train` raised ImportError (a traceback) whatever the
    options; --plot curves.xyz failed after training, the JSON unwritten."""
    np.savez(tmp_path / "s.npz", X=np.zeros((20, 3), np.float32), y=np.arange(20) % 2)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from fastnet.cli import main\n"
        "argv = ['train', '--data', 's.npz', '--epochs', '1', '--backend', 'numpy', '--quiet']\n"
        "assert main(argv) == 0\n"
        "assert main([*argv, '--plot', 'c.png']) == 2\n"
        "assert main(['bench', '--quick', '--plot', 'b.png']) == 2\n"  # (an ImportError)
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("--plot needs matplotlib: pip install matplotlib") == 2
    pytest.importorskip("matplotlib")
    argv = ["train", "--data", str(tmp_path / "s.npz"), "--epochs", "1", "--backend", "numpy"]
    json_path = tmp_path / "h.json"
    assert main([*argv, "--json", str(json_path), "--plot", str(tmp_path / "c.xyz")]) == 2
    assert not json_path.exists()


def test_a_parameter_reads_as_its_array_in_numpy_code(backend):
    """The notebooks' ``x @ params['W1']``: ``x @ layer.W``, ``np.dot`` and ``np.asarray`` read
    the weights (``np.asarray`` gave a 0-d object array, ``@`` a bare gufunc error) through a
    read-only view; ``np.array`` copies; a GPU parameter is not copied to the host silently."""
    model = fn.Sequential([fn.Dense(3, "relu"), fn.Dense(2)], backend=backend, seed=0)
    model.build(4)
    W = model.layers[0].W
    assert W.shape == (4, 3) and W.dtype == np.float32
    assert repr(W) == "Parameter('W', shape=(4, 3), dtype=float32)"
    if not isinstance(W.value, np.ndarray):  # (the emulated GPU's arrays are NumPy's)
        with pytest.raises(TypeError, match=r"W lives on the GPU \(cupy\): read W.value there"):
            np.asarray(W)
        return
    x = np.ones((5, 4), np.float32)
    np.testing.assert_array_equal(x @ W, x @ W.value)
    np.testing.assert_array_equal(np.dot(x, W), x @ W.value)
    view = np.asarray(W)
    assert np.shares_memory(view, W.value) and not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1.0
    copied = np.array(W)
    copied[0, 0] = 123.0
    assert W.value[0, 0] != 123.0
    assert np.asarray(W, np.float64).dtype == np.float64


def test_a_device_parameter_is_not_read_as_a_host_array():
    class DeviceArray:  # (as CuPy's: no __array__, its own module, CUDA's interface)
        __module__ = "cupy._core.core"
        __cuda_array_interface__: dict = {}
        shape, dtype = (2, 2), np.dtype(np.float32)

        def __mul__(self, other):
            return self

    from fastnet.parameter import Parameter

    with pytest.raises(TypeError, match=r"W lives on the GPU \(cupy\): .*model.get_weights"):
        np.asarray(Parameter("W", DeviceArray()))


def test_a_parameter_read_as_another_dtype_or_assigned_from_a_parameter():
    """``np.asarray(W, float64, copy=False)`` cannot be a view: refused, as NumPy 2 asks; a
    NumPy scalar parameter reads as one; ``W.value = other.W`` copies the other's values
    (the Parameter object itself was stored, two layers aliased)."""
    from fastnet.parameter import Parameter

    W = Parameter("W", np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="W is float32: float64 needs a copy"):
        np.asarray(W, dtype=np.float64, copy=False)
    assert np.asarray(Parameter("s", np.float32(0.5))) == np.float32(0.5)
    a, b = fn.Dense(2), fn.Dense(2)
    fn.Sequential([a], backend="numpy", seed=0).build(2)
    fn.Sequential([b], backend="numpy", seed=1).build(2)
    b.W.value = a.W
    np.testing.assert_array_equal(b.W.value, a.W.value)
    assert not np.shares_memory(b.W.value, a.W.value)
    loose = Parameter("W", np.zeros((2, 2), np.float32))
    loose.value = W
    assert isinstance(loose.value, np.ndarray) and not np.shares_memory(loose.value, W.value)


@pytest.mark.parametrize(
    "name, kept",
    [("ReLU", "relu"), ("Relu", "relu"), ("LeakyReLU", "leaky_relu"), ("Sigmoid", "sigmoid")],
)
def test_activation_names_in_pytorchs_and_the_notebooks_capitals(name, kept):
    """``Dense(10, "ReLU")`` (PyTorch's class name, the notebooks' ``Relu``) was an unknown
    activation: it is fastnet's lower-case name, in the layer and its config."""
    layer = fn.Dense(10, name)
    assert layer.activation == kept and layer.get_config()["activation"] == kept
    with pytest.raises(ValueError, match="the loss applies softmax"):
        fn.Dense(10, "Softmax")


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_the_notebooks_loss_forward_and_backward_say_the_call_that_does_both(method):
    """``SoftmaxWithLoss().forward(x, t)`` was a bare AttributeError: it names the call
    ``loss, dout = loss_fn(outputs, targets)``, whose gradient is backward(dout=1)'s."""
    loss_fn = fn.SoftmaxWithLoss()
    with pytest.raises(AttributeError, match=r"call it, loss, dout = loss_fn\(outputs, targets\)"):
        getattr(loss_fn, method)
    x, t = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]), np.array([0, 2])
    loss, dout = loss_fn(x, t)
    y = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(dout, (y - np.eye(3)[t]) / 2)
    assert not hasattr(loss_fn, "no_such_attribute")


def test_one_hot_takes_whole_number_float_labels_as_fit_does():
    """A CSV's labels read as floats (3.0): fit took them, ``one_hot`` refused them; a label
    that is no whole number is named with its row."""
    np.testing.assert_array_equal(fn.one_hot(np.array([0.0, 2.0, 1.0]), 3), np.eye(3)[[0, 2, 1]])
    with pytest.raises(ValueError, match=r"whole class indices, got 1.5 in row 1"):
        fn.one_hot(np.array([0.0, 1.5, 2.0]), 3)
    with pytest.raises(ValueError, match=r"got nan in row 2"):
        fn.one_hot(np.array([0.0, 1.0, np.nan]), 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        fn.one_hot(np.array([0.0, 3.0]), 3)
