"""GPU-only behaviour of the cupy backend (skipped cleanly without a usable GPU)."""

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn
from fastnet.backends import probe

pytestmark = pytest.mark.skipif(not probe("cupy").available, reason=f"cupy: {probe('cupy').reason}")


def _mlp(seed=0, opt=None):
    return fn.Sequential(
        [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)],
        optimizer=opt or fn.Adam(1e-3),
        backend="cupy",
        seed=seed,
    )


def test_cuda_graph_rejects_unsupported_models():
    X, y = make_blobs(n=100)
    model = fn.Sequential([fn.Dense(8), fn.Softmax(), fn.Dense(4)], backend="cupy")
    with pytest.raises(ValueError, match="not Softmax"):  # Dropout is captured since DropoutPlan
        model.fit(X, y, epochs=1, verbose=0, compiled=True)
    with pytest.raises(ValueError, match="numpy has no compiled step"):
        fn.Sequential([fn.Dense(4)], backend="numpy").fit(X, y, epochs=1, verbose=0, compiled=True)


def test_labels_from_another_gpu_framework_are_adopted():
    model = _mlp()  # the backend (and its cuBLAS library) first, then torch's libraries
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("a PyTorch build without CUDA")
    X, y = make_blobs(n=200)
    model.fit(
        torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda"), epochs=1, verbose=0
    )
    assert model.history["loss"]


def test_validation_split_takes_device_sample_weights():
    import cupy as cp

    X, y = make_blobs(n=200)
    w = cp.asarray(np.linspace(0.5, 2.0, 200), cp.float32)  # weights, not all ones
    models = [_mlp(), _mlp()]
    models[0].fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=w)
    models[1].fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=w.get())
    assert models[0].history["val_loss"] == pytest.approx(models[1].history["val_loss"])


def test_data_stays_on_device_and_predict_returns_numpy():
    import cupy as cp

    X, y = make_blobs()
    model = _mlp()
    model.fit(cp.asarray(X), cp.asarray(y), epochs=1, verbose=0)
    out = model.predict_proba(cp.asarray(X))
    assert isinstance(out, np.ndarray) and isinstance(model.parameters()[0].value, cp.ndarray)


def test_numpy_model_refuses_gpu_array():
    import cupy as cp

    X, y = make_blobs()
    with pytest.raises(TypeError, match="cupy .*numpy"):
        fn.Sequential([fn.Dense(4)], backend="numpy").fit(cp.asarray(X), y, verbose=0)


def test_pool_memory_does_not_grow_across_epochs():
    import cupy as cp

    X, y = make_blobs(n=4000)
    model = _mlp()
    model.fit(X, y, epochs=2, verbose=0)
    cp.cuda.Device().synchronize()
    held = model.backend.peak_memory()
    model.fit(X, y, epochs=50, verbose=0)
    assert model.backend.peak_memory() <= held * 1.05 + 2**20


def test_tf32_precision_is_per_call_and_per_model():
    be = fn.get_backend("cupy")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    want = a.astype(np.float64) @ b
    fast = be.matmul(be.asarray(a), be.asarray(b), precision="tf32").get()
    exact = be.matmul(be.asarray(a), be.asarray(b)).get()  # no state left behind
    err = lambda x: np.linalg.norm(x - want) / np.linalg.norm(want)  # noqa: E731
    assert err(exact) < 1e-6 and 1e-6 < err(fast) < 5e-3
    import ctypes

    import cupy as cp

    mode = ctypes.c_int(-1)
    be.k.cublas_gemm().lib.cublasGetMathMode(cp.cuda.device.get_cublas_handle(), ctypes.byref(mode))
    assert mode.value == 0  # CuPy's shared handle is left in its default math mode
    # two models on one backend, same weights: each computes at its own precision
    X = rng.standard_normal((256, 512)).astype(np.float32)
    exact_model = fn.Sequential([fn.Dense(64)], backend=be, seed=0).build(512)
    tf32_model = fn.Sequential([fn.Dense(64)], backend=be, seed=0, precision="tf32").build(512)
    want = X.astype(np.float64) @ exact_model.layers[0].W.value.get()
    assert err(tf32_model.forward(be.asarray(X)).get()) > 1e-6
    assert err(exact_model.forward(be.asarray(X)).get()) < 1e-6
    assert tf32_model.get_config()["precision"] == "tf32"


@pytest.mark.parametrize("use_cublaslt, name", [(True, "cublaslt"), (False, "cublas-direct")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_gemm_handles_transposed_operands(monkeypatch, use_cublaslt, name, dtype):
    """cuBLASLt (algorithm timed per shape) and direct cuBLAS: every layout the step uses."""
    be = fn.get_backend("cupy")
    monkeypatch.setattr(be, "use_cublaslt", use_cublaslt)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 30)).astype(dtype)
    w = rng.standard_normal((50, 30)).astype(dtype)
    dx, dw = be.asarray(x), be.asarray(w)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    with fn.record_kernels() as report:
        for a, b in ((dx, dw.T), (dx.T, dx), (dw, dx.T), (dw.T.copy().T, dw.T)):
            want = be.to_numpy(a) @ be.to_numpy(b)
            np.testing.assert_allclose(be.matmul(a, b).get(), want, rtol=tol, atol=tol)
    assert report["matmul"] == name


def test_data_too_large_for_the_device_is_streamed_from_pinned_memory(monkeypatch):
    X, y = make_blobs(n=3000)
    be = fn.get_backend("cupy")
    resident = _mlp(seed=3)
    h1 = resident.fit(X, y, epochs=4, batch_size=64, verbose=0)
    monkeypatch.setattr(type(be), "device_data_limit_bytes", 1000)
    streamed = _mlp(seed=3)
    h2 = streamed.fit(X, y, epochs=4, batch_size=64, verbose=0, validation_data=(X[:500], y[:500]))
    assert streamed.streamed and not resident.streamed
    assert h2["loss"][-1] < h2["loss"][0] and h2["val_accuracy"][-1] > 0.9
    assert abs(h1["accuracy"][-1] - h2["accuracy"][-1]) < 0.05
    with pytest.raises(ValueError, match="resident on the GPU"):
        _mlp().fit(X, y, epochs=1, verbose=0, compiled=True)


def test_checkpoint_saved_on_gpu_loads_on_cpu(tmp_path):
    X, y = make_blobs()
    model = _mlp()
    model.fit(X, y, epochs=2, verbose=0)
    model.save(tmp_path / "gpu.npz")
    cpu = fn.load_model(tmp_path / "gpu.npz", backend="numpy")
    np.testing.assert_allclose(cpu.predict_proba(X), model.predict_proba(X), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_dense_forward_through_cublaslt_matches_the_reference(dtype, activation):
    """One cuBLASLt call with the bias (+ ReLU) epilogue equals x @ w + b (then ReLU), for C-
    and F-contiguous operands; TF32 within its tolerance."""
    from fastnet.backends.base import Act

    be, ref = fn.get_backend("cupy"), fn.get_backend("numpy")
    code = Act.RELU if activation == "relu" else Act.LINEAR
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 784)).astype(dtype)
    w = rng.standard_normal((784, 256)).astype(dtype) * 0.05
    b = rng.standard_normal(256).astype(dtype)
    want = ref.linear(x, w, b, code)
    precisions = ["fp32", "tf32"] if dtype == np.float32 else ["fp32"]
    for precision in precisions:
        for xd, wd in (
            (be.asarray(x), be.asarray(w)),
            (be.asarray(x.T).T, be.asarray(w.T).T),  # F-contiguous views
        ):
            with fn.record_kernels() as report:
                got = be.linear(xd, wd, be.asarray(b), code, precision=precision).get()
            assert report.get("linear") == "cublaslt-epilogue", report
            tol = 2e-2 if precision == "tf32" else (1e-4 if dtype == np.float32 else 1e-10)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_cublaslt_with_operands_at_4_byte_offsets():
    """Weights, biases and gradients of an arena start at any 4-byte offset: the algorithm is
    chosen for the pointers' real alignment (or cuBLAS serves), and results stay right."""
    from fastnet.backends.base import Act

    be = fn.get_backend("cupy")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((96, 33)).astype(np.float32)
    w = rng.standard_normal((33, 17)).astype(np.float32)
    b = rng.standard_normal(17).astype(np.float32)
    arena = be.zeros((1 + w.size + b.size + 96 * 17,), np.float32)
    dw, db = arena[1 : 1 + w.size].reshape(w.shape), arena[1 + w.size : 1 + w.size + 17]
    out = arena[1 + w.size + 17 :].reshape(96, 17)
    dw[...], db[...] = be.asarray(w), be.asarray(b)
    got = be.linear(be.asarray(x), dw, db, Act.RELU, out=out).get()
    np.testing.assert_allclose(got, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        be.matmul(be.asarray(x).T, out).get(), x.T @ got, rtol=1e-4, atol=1e-3
    )


def test_a_nan_weight_reaches_the_dense_outputs_on_every_forward_path():
    """A NaN in the weights stays NaN through the Dense forward (cuBLASLt's bias/ReLU
    epilogue, cuBLAS and the bias kernel), as in the reference: a diverged layer is seen."""
    from fastnet.backends.base import Act

    be, ref = fn.get_backend("cupy"), fn.get_backend("numpy")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    w[3, 2] = np.nan
    b = rng.standard_normal(8).astype(np.float32)
    want = ref.linear(x, w, b, Act.RELU)
    assert np.isnan(want[:, 2]).all()
    for use_cublaslt in (True, False):
        be.use_cublaslt = use_cublaslt
        try:
            with fn.record_kernels() as report:
                got = be.linear(be.asarray(x), be.asarray(w), be.asarray(b), Act.RELU).get()
        finally:
            be.use_cublaslt = True
        assert (report.get("linear") == "cublaslt-epilogue") == use_cublaslt, report
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # NaN where NaN


def test_half_dense_forward_with_a_bias_at_a_2_byte_offset():
    """A float16 bias at a 2-byte offset of its arena gets no epilogue: the GEMM through
    cuBLASLt, then the half bias kernel; the result is the reference's within float16 rounding
    (the reference rounds once, this path twice)."""
    from fastnet.backends.base import Act

    be, ref = fn.get_backend("cupy"), fn.get_backend("numpy")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 40)).astype(np.float16)
    w = (rng.standard_normal((40, 24)) * 0.2).astype(np.float16)
    b = rng.standard_normal(24).astype(np.float16)
    arena = be.zeros((1 + b.size,), np.float16)
    arena[1:] = be.asarray(b)
    out = be.empty((64, 24), np.float16)
    for code in (Act.RELU, Act.LINEAR, Act.SIGMOID):
        with fn.record_kernels() as report:
            got = be.linear(be.asarray(x), be.asarray(w), arena[1:], code, out=out).get()
        assert report.get("linear") != "cublaslt-epilogue", report
        assert report.get("bias_act") == "cuda-half", report  # not the float32 fallback
        want = ref.linear(x, w, b, code, out=np.empty((64, 24), np.float16))
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=4e-3, atol=4e-3)


def test_mixed_bfloat16_on_cupy_14_or_a_clear_error():
    """CuPy >= 14 has bfloat16 arrays (ml_dtypes): bf16 trains; older CuPy says what it needs."""
    import cupy

    if int(cupy.__version__.split(".")[0]) < 14:
        with pytest.raises(NotImplementedError, match="mixed_bfloat16.*CuPy >= 14"):
            fn.Sequential([fn.Dense(4)], backend="cupy", dtype="mixed_bfloat16")
        return
    X, y = make_blobs(n=1000)
    layers = [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)]
    model = fn.Sequential(layers, backend="cupy", dtype="mixed_bfloat16", seed=0)
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)
    assert model.layers[0].W.compute.dtype.name == "bfloat16" and model.loss_scaler is None
    assert model.evaluate(X, y)["accuracy"] > 0.9


MIXED_LAYERS = {
    "dense": lambda: [fn.Dense(64, "relu"), fn.Dense(32, "tanh"), fn.Dense(4)],
    "dropout-batchnorm": lambda: [
        fn.Dense(64, use_bias=False),
        fn.BatchNorm1d(),
        fn.ReLU(),
        fn.Dropout(0.2, seed=1),
        fn.Dense(4),
    ],
}


@pytest.mark.parametrize("layers", sorted(MIXED_LAYERS))
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_steps_are_captured_and_equal_eager(policy, layers):
    """Mixed precision is captured on cupy (half kernels for every layer, cuBLASLt GEMMs, loss
    scaling on the device) and trains as the eager step does."""
    import cupy

    if policy == "mixed_bfloat16" and int(cupy.__version__.split(".")[0]) < 14:
        pytest.skip("CuPy < 14 has no bfloat16 arrays")
    X, y = make_blobs(n=1000)
    models = []
    for compiled in (False, True):
        model = fn.Sequential(MIXED_LAYERS[layers](), backend="cupy", dtype=policy, seed=0)
        model.fit(X, y, epochs=2, batch_size=64, verbose=0, compiled=compiled, shuffle=False)
        models.append(model)
    eager, graphed = models
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    for a, b in zip(eager.parameters(), graphed.parameters()):
        np.testing.assert_allclose(a.value.get(), b.value.get(), rtol=1e-5, atol=1e-6)
    assert graphed.evaluate(X, y)["accuracy"] > 0.9
