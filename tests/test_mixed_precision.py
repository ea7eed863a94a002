"""Mixed precision (``fastnet.mixed``) through the reference ops, on CPU: float32 master
weights with half copies, gradients within half-precision tolerance of float32, fp16's dynamic
loss scale on the device (overflow skips the step and halves it, clean steps grow it), the
same training eagerly and captured, the scale in checkpoints, and mixed <-> float32 loads.
The capture-semantics backend computes in float16/bfloat16 (NumPy, ml_dtypes) here; CPU
backends refuse the policies for users (no half kernels faster than float32)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from capture_backend import CaptureSimBackend
from test_multi_step_graph import _assert_same

import fastnet as fn
from fastnet.mixed import LossScaler
from fastnet.model import load_model

POLICIES = ["mixed_float16", "mixed_bfloat16"]
HALF = {"mixed_float16": np.float16, "mixed_bfloat16": None}


def _needs(policy):
    if policy == "mixed_bfloat16":
        pytest.importorskip("ml_dtypes")


def _data(n=240, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :k] + 0.3 * rng.normal(size=(n, k))).argmax(axis=1)
    return X, y


def _model(dtype, backend=None, layers=None, optimizer="adam", seed=3):
    layers = layers or [fn.Dense(32, "relu"), fn.Dense(16, "tanh"), fn.Dense(4)]
    backend = backend or CaptureSimBackend()
    return fn.Sequential(layers, optimizer=optimizer, backend=backend, dtype=dtype, seed=seed)


@pytest.mark.parametrize("policy", POLICIES)
def test_master_weights_stay_float32_and_layers_compute_in_half(policy):
    _needs(policy)
    model = _model(policy).build(12)
    dense = model.layers[0]
    half = np.float16 if policy == "mixed_float16" else np.dtype("bfloat16")
    assert dense.W.value.dtype == np.float32 and dense.W.grad.dtype == np.float32
    assert all(s.dtype == np.float32 for s in dense.W.state.values())
    assert dense.W.compute.dtype == half
    np.testing.assert_array_equal(dense.W.compute, dense.W.value.astype(half))
    X, y = _data()
    out = model.forward(X[:8], training=True)
    assert out.dtype == np.float32 and dense.y.dtype == half  # float32 logits, half activations
    assert model.state_entries()[0].ref.dtype == np.float32
    assert (model.loss_scaler is not None) == (policy == "mixed_float16")
    assert model.get_config()["dtype"] == policy and policy in model.summary(print_fn=None)


@pytest.mark.parametrize("policy,tolerance", [("mixed_float16", 1.5e-2), ("mixed_bfloat16", 4e-2)])
def test_gradients_match_float32_within_half_precision(policy, tolerance):
    """Norm-relative error of every gradient (rounding and ReLU masks flipped by half
    pre-activations add up towards the first layer: measured 0.8%/2.4% there, 0.03%/0.2% at
    the last, float16/bfloat16)."""
    _needs(policy)
    X, y = _data()
    layers = lambda: [fn.Dense(64, "relu"), fn.Dense(32, "sigmoid"), fn.Dense(4)]  # noqa: E731
    grads = {}
    for dtype in ("float32", policy):
        model = _model(dtype, layers=layers()).build(12)
        logits = model.forward(X[:64], training=True)
        _, dlogits = model.backend.softmax_xent(logits, y[:64])
        model.backward(dlogits)
        scale = model.loss_scaler.scale if model.loss_scaler is not None else 1.0
        grads[dtype] = [p.grad / scale for p in model.parameters()]
    for (ref, got), p in zip(zip(grads["float32"], grads[policy]), model.parameters()):
        error = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert error < tolerance, (p.name, error)
        assert error > 0  # computed in half, not a float32 copy
    assert error < tolerance / 10  # the last layer's gradient: one rounding away


OVERFLOWS = pytest.mark.filterwarnings("ignore:.*(overflow|invalid value):RuntimeWarning")


@OVERFLOWS
def test_a_step_whose_gradients_overflow_is_skipped_and_halves_the_scale():
    X, y = _data()
    model = _model("mixed_float16").build(12)
    scaler = model.loss_scaler
    scaler.state[:] = [2.0**80, 7]  # dlogits * 2**80 is infinite in float16
    before = model.host_state()
    model.fit(X[:64], y[:64], epochs=1, batch_size=64, verbose=0, shuffle=False)
    after = model.host_state()
    for key, value in before.items():
        if key not in ("amp/loss_scaler", "data/order"):  # (the epoch ran: order [seed, 1])
            np.testing.assert_array_equal(after[key], value, err_msg=key)  # nothing moved
    np.testing.assert_array_equal(after["amp/loss_scaler"], [2.0**79, 0])
    assert model.arena.groups[0].step == 0


def test_clean_steps_grow_the_scale_and_training_proceeds():
    X, y = _data()
    model = _model("mixed_float16").build(12)
    scaler = model.arena.scaler
    scaler.growth_interval = 3
    scaler.state[:] = [1024.0, 0]
    model.fit(X, y, epochs=1, batch_size=30, verbose=0, shuffle=False)  # 8 clean steps
    np.testing.assert_array_equal(scaler.state, [4096.0, 2])
    assert model.arena.groups[0].step == 8 and model.loss_scaler.scale == 4096.0


def test_loss_scaler_update_rule_on_the_device():
    be = CaptureSimBackend()
    state, checks = np.array([8.0, 1.0]), np.zeros(2)
    be.update_loss_scale(state, checks, 2, 2.0, 0.5)  # second clean step: grow, reset
    np.testing.assert_array_equal(state, [16.0, 0.0])
    checks[1] = 3  # three non-finite gradients
    be.update_loss_scale(state, checks, 2, 2.0, 0.5)
    np.testing.assert_array_equal(state, [8.0, 0.0])
    g, checks[:] = np.array([4.0, np.inf, -8.0, np.nan], np.float32), 0
    be.unscale(g, state, checks)
    np.testing.assert_array_equal(g[[0, 2]], [0.5, -1.0])
    assert checks[1] == 2


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf])
def test_loss_scaler_checks_its_arguments(bad):
    with pytest.raises(ValueError, match="initial_scale"):
        LossScaler(CaptureSimBackend(), initial_scale=bad)
    with pytest.raises(ValueError, match="growth_interval"):
        LossScaler(CaptureSimBackend(), growth_interval=0)


@OVERFLOWS
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_captured_mixed_training_equals_eager(policy, steps):
    """Loss scaling, the skip and the half-copy refresh are device ops: replays compute what
    eager steps compute, an overflowing step included."""
    _needs(policy)
    X, y = _data(n=250)
    layers = lambda: [fn.Dense(32, "relu"), fn.BatchNorm1d(), fn.Dropout(0.2), fn.Dense(4)]  # noqa: E731
    models = []
    for backend, compiled in ((CaptureSimBackend(), False), (CaptureSimBackend(steps), True)):
        model = _model(policy, backend, layers()).build(12)
        if model.loss_scaler is not None:
            model.loss_scaler.state[:] = [2.0**22, 0]  # overflows first, then backs off
            model.loss_scaler.growth_interval = 4
        model.fit(X, y, epochs=3, batch_size=20, verbose=0, compiled=compiled)
        models.append(model)
    eager, graphed = models
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    assert graphed.backend.replays > 0
    _assert_same(eager, graphed)
    for key, value in eager.host_state().items():
        np.testing.assert_array_equal(graphed.host_state()[key], value, err_msg=key)
    if policy == "mixed_float16":
        skipped = 3 * 13 - eager.arena.groups[0].step
        assert skipped >= 1 and eager.loss_scaler.scale < 2.0**22


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_checkpoints_keep_the_scale_and_load_into_float32_and_back(policy, suffix, tmp_path):
    _needs(policy)
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    X, y = _data()
    model = _model(policy)
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / f"mixed{suffix}"
    model.save(path)
    again = load_model(path, backend=CaptureSimBackend())
    assert again.policy == policy
    _assert_equal_state(model, again)
    if policy == "mixed_float16":
        assert again.loss_scaler.scale == model.loss_scaler.scale
    np.testing.assert_array_equal(again.predict(X), model.predict(X))

    as_float32 = load_model(path, backend="numpy", dtype="float32")  # e.g. on a CPU machine
    assert as_float32.dtype == np.float32 and as_float32.policy is None
    for p, q in zip(model.parameters(), as_float32.parameters()):
        np.testing.assert_array_equal(q.value, p.value)  # the master weights, exactly
    assert (as_float32.predict(X) == model.predict(X)).mean() > 0.95

    path32 = tmp_path / f"float32{suffix}"
    as_float32.save(path32)
    back = load_model(path32, backend=CaptureSimBackend(), dtype=policy)
    for p, q in zip(model.parameters(), back.parameters()):
        np.testing.assert_array_equal(q.value, p.value)
        np.testing.assert_array_equal(q.compute, p.compute)  # refreshed from the loaded values
    back.fit(X, y, epochs=1, batch_size=32, verbose=0)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_mixed_checkpoint_loads_exports_and_predicts_on_a_cpu_backend(policy, tmp_path):
    """Without a dtype, a backend without half compute gets the float32 master weights (as
    ``to`` and unpickling do): ``fastnet export``/``predict`` work on a GPU model's file."""
    _needs(policy)
    from fastnet.cli import main

    X, y = _data()
    model = _model(policy)
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "mixed.npz"
    model.save(path)
    cpu = load_model(path, backend="numpy")
    assert cpu.dtype == np.float32 and cpu.policy is None
    for p, q in zip(model.parameters(), cpu.parameters()):
        np.testing.assert_array_equal(q.value, p.value)
    assert (cpu.predict(X) == model.predict(X)).mean() > 0.95  # float32 vs half compute
    if importlib.util.find_spec("onnx") is not None:
        assert main(["export", str(path), str(tmp_path / "mixed.onnx")]) == 0


def _assert_equal_state(a, b):
    sa, sb = a.host_state(), b.host_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sb[key], sa[key], err_msg=key)


def test_a_bad_loss_scale_in_a_state_is_refused_and_changes_nothing():
    model = _model("mixed_float16").build(12)
    state = model.host_state()
    before = model.arena.scaler.state.copy()
    state["amp/loss_scaler"] = np.array([0.0, 0.0])
    with pytest.raises(fn.StateError, match="amp/loss_scaler"):
        model.set_state(state)
    np.testing.assert_array_equal(model.arena.scaler.state, before)


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_training_reaches_float32_accuracy(policy):
    _needs(policy)
    X, y = _data(n=600)
    accuracy = {}
    for dtype in ("float32", policy):
        model = _model(dtype, optimizer=fn.Adam(3e-3))
        model.fit(X[:480], y[:480], epochs=15, batch_size=32, verbose=0)
        accuracy[dtype] = model.evaluate(X[480:], y[480:])["accuracy"]
    assert accuracy["float32"] > 0.8
    assert abs(accuracy[policy] - accuracy["float32"]) <= 0.025, accuracy


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cpu_backends_still_refuse_the_policies(backend):
    pytest.importorskip(backend)
    with pytest.raises(ValueError, match="needs the cupy backend"):
        fn.Sequential([fn.Dense(4)], backend=backend, dtype="mixed_float16")


def test_a_mixed_model_moves_to_a_cpu_backend_as_float32_and_pickles(tmp_path):
    import pickle

    from fastnet.backends import probe

    X, y = _data()
    model = _model("mixed_float16")
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)
    cpu = model.to("numpy")  # no half compute there: float32, the master weights
    assert cpu.policy is None and cpu.dtype == np.float32
    back = cpu.to(CaptureSimBackend(), dtype="mixed_float16")
    for p, q, r in zip(model.parameters(), cpu.parameters(), back.parameters()):
        np.testing.assert_array_equal(q.value, p.value)
        np.testing.assert_array_equal(r.compute, p.compute)
    # pickled on a GPU, unpickled on a CPU machine: rebuilt on the default backend, float32
    model.backend.name = "cupy"
    if probe("cupy").available:
        pytest.skip("this machine has a GPU")
    clone = pickle.loads(pickle.dumps(model))
    assert clone.policy is None and clone.dtype == np.float32
    np.testing.assert_array_equal(clone.parameters()[0].value, model.parameters()[0].value)


def test_a_backend_that_cannot_capture_mixed_steps_keeps_data_parallel_steps_eager():
    """Data-parallel steps ask the backend's ``plan_capture_reason`` as compiled steps do
    (cupy: mixed steps run eagerly until half kernels exist)."""
    from fastnet.training import BatchSpec, DistributedStep

    class NoMixedCapture(CaptureSimBackend):
        def plan_capture_reason(self, plan):
            return "no mixed capture" if plan.compute_dtype != plan.dtype else ""

    class OneRank:
        rank, world_size, name = 0, 1, "fake"

        def capture_reason(self, backend):
            return ""

        def any(self, flag):  # (one rank: its own)
            return bool(flag)

    for dtype, eager in (("mixed_float16", True), ("float32", False)):
        model = _model(dtype, NoMixedCapture()).build(12)
        spec = BatchSpec((), "int64", False)
        step = model._distributed_step(OneRank(), [32], 32, "auto", False, spec)
        assert isinstance(step, DistributedStep) == eager, (dtype, step)


def test_a_mixed_regressor_keeps_float32_targets():
    t, _ = fn.MLPRegressor(dtype="mixed_float16")._targets(np.arange(6), False, None)
    assert t.dtype == np.float32 and t.shape == (6, 1)


def test_loss_scale_settings_are_arguments_saved_in_the_config(tmp_path):
    settings = {"initial_scale": 1024.0, "growth_interval": 5}
    layers = [fn.Dense(8, "relu"), fn.Dense(4)]
    model = fn.Sequential(
        layers, backend=CaptureSimBackend(), dtype="mixed_float16", loss_scale=settings
    )
    scaler = model.loss_scaler
    assert scaler.scale == 1024.0 and scaler.growth_interval == 5
    X, y = _data()
    model.fit(X, y, epochs=1, batch_size=24, verbose=0)  # 10 clean steps: two growths
    assert scaler.scale == 4096.0
    model.save(tmp_path / "m.npz")
    again = load_model(tmp_path / "m.npz", backend=CaptureSimBackend())
    assert again.loss_scaler.settings() == scaler.settings()
    assert again.loss_scaler.scale == 4096.0  # the state's scale, not the initial one
    assert load_model(tmp_path / "m.npz", backend="numpy", dtype="float32").loss_scaler is None
    layers = [fn.Dense(8, "relu"), fn.Dense(4)]  # new ones: the model above keeps its own
    with pytest.raises(ValueError, match="loss_scale.*mixed_float16"):
        fn.Sequential(layers, backend=CaptureSimBackend(), loss_scale=settings)
    with pytest.raises(ValueError, match="loss_scale"):
        fn.Sequential(
            layers, backend=CaptureSimBackend(), dtype="mixed_float16", loss_scale={"bad": 1}
        )


def test_a_float16_overflow_hints_at_bfloat16():
    """Regression outputs beyond float16's 65504 make the loss infinite: the divergence
    message names the range and mixed_bfloat16, not only a lower lr."""
    _needs("mixed_float16")
    X = np.full((64, 4), 1e5, np.float32)  # outputs of about 1e5: beyond float16
    model = fn.Sequential([fn.Dense(1)], loss="mse", backend=CaptureSimBackend(),
                          dtype="mixed_float16", seed=0)  # fmt: skip
    with pytest.warns(RuntimeWarning, match="float16 holds values up to 65504"):
        with np.errstate(all="ignore"):
            model.fit(X, np.zeros(64, np.float32), epochs=2, verbose=0)
