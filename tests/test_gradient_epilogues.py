"""Dense backward through cuBLASLt's gradient epilogues (cupy): a ReLU layer's forward stores
its bit-mask (RELU_AUX_BIAS), the layer above's input-gradient GEMM applies the derivative and
sums the bias gradient (DRELU_BGRAD), the output layer's weight-gradient GEMM sums its bias
gradient (BGRADA). Used only where a probe on exact data says the library does what fastnet
reads in its documentation; the gradients equal the reference's either way. On a GPU
(``cupy``), and in CI on the CPU emulator (``cupy-emulated``, the fake cuBLASLt)."""

import contextlib

import numpy as np
import pytest
from conftest import EMULATED, make_blobs, needs_bfloat16_arrays

import fastnet as fn

FUSED = {
    "linear": "cublaslt-relu-mask-epilogue",
    "input_gradient": "cublaslt-drelu-bgrad-epilogue",
    "weight_gradients": "cublaslt-bgrad-epilogue",
}


def _forget(gpu):
    lt = gpu.lt.lt_gemm(gpu._cublas_path)
    caches = (lt._relu_nan, lt._gradients_ok, lt._kernel_mask_ok)
    for answers in caches + (gpu._relu_nan, gpu._gradients_ok, gpu._kernel_mask_ok):
        answers.clear()
    return lt


@contextlib.contextmanager
def library(gpu, keeps_nan=1, quirk=0):
    """On the emulator, a cuBLASLt whose ReLU epilogue keeps NaN (or not) and with a
    ``quirk`` (``fake_cublaslt_quirk``); on a GPU, the library as it is."""
    lt = _forget(gpu)
    if gpu.name != EMULATED:
        yield
        return
    lt.lib.fake_cublaslt_relu_keeps_nan(keeps_nan)
    lt.lib.fake_cublaslt_quirk(quirk)
    try:
        yield
    finally:
        lt.lib.fake_cublaslt_relu_keeps_nan(0)
        lt.lib.fake_cublaslt_quirk(0)
        _forget(gpu)


def _fused_expected(gpu, dtype, precision):
    """What should run: the mask's writer ("epilogue", "kernel" or None) and whether BGRADA
    serves: both on the emulator (set up so); on a GPU as the probes say (printed). On a GPU,
    float32 at fp32 must pass BGRADA's probe, and the RELU_AUX_BIAS mask's wherever the ReLU
    epilogue keeps NaN (that probe asks it too); the ReLU kernel's mask is fastnet's reading of
    the mask's layout, so only printed."""
    lt = gpu.lt.lt_gemm(gpu._cublas_path)
    tf32 = precision == "tf32"
    keeps_nan = lt.relu_keeps_nan(dtype, tf32)
    relu, bgrada = (lt.gradient_epilogues_work(dtype, tf32, w) for w in ("relu_mask", "bgrada"))
    kernel = lt.kernel_mask_works(dtype, tf32, gpu.k.relu_mask)
    print(
        f"{np.dtype(dtype).name}/{precision}: NaN kept {keeps_nan}, epilogue mask {relu}, "
        f"kernel mask {kernel}, BGRADA {bgrada}"
    )
    if gpu.name == EMULATED or (dtype == np.float32 and not tf32):
        assert bgrada and relu == keeps_nan
    if gpu.name == EMULATED:
        assert kernel
    writer = "epilogue" if keeps_nan and relu else ("kernel" if kernel else None)
    return writer, bgrada


@contextlib.contextmanager
def epilogues_used(gpu):
    """The cuBLASLt epilogue codes of the GEMMs that ran: ``(code, capturing)`` pairs."""
    used, lt_gemm = [], gpu._lt_gemm

    def recording(x, w, out, precision, epi):
        ran = lt_gemm(x, w, out, precision, epi)
        if ran:
            used.append((epi.code, gpu.xp.cuda.get_current_stream().is_capturing()))
        return ran

    gpu._lt_gemm = recording
    try:
        yield used
    finally:
        del gpu._lt_gemm


def _layers():
    return [fn.Dense(64, "relu"), fn.Dense(40, "relu"), fn.Dense(5)]


def _gradients(model, X, y):
    """The gradients of one training step's loss (no update)."""
    be = model.backend
    logits = model.forward(be.asarray(X), training=True)
    dout = model.loss.accumulate(logits, be.asarray(y), None, be.zeros((2,), np.float64))
    model.backward(dout)
    return [be.to_numpy(p.grad).copy() for p in model.parameters()]


@pytest.mark.parametrize(
    "dtype,precision", [(np.float32, "fp32"), (np.float32, "tf32"), (np.float64, "fp32")]
)
def test_gradients_through_the_epilogues_equal_the_reference(gpu, dtype, precision):
    """One step's gradients of a ReLU MLP, with every Dense backward through the epilogues
    (the report names them), equal NumPy's; off (``fuse_gradients = False``), the kernels."""
    X, y = make_blobs(n=96, d=30, k=5)
    X = X.astype(dtype)
    kw = dict(dtype=np.dtype(dtype).name, precision=precision, seed=1)
    ref = fn.Sequential(_layers(), backend="numpy", **{**kw, "precision": "fp32"}).build(30)
    want = _gradients(ref, X, y)
    tol = 2e-2 if precision == "tf32" else (1e-4 if dtype == np.float32 else 1e-10)
    with library(gpu):
        writer, bgrada = _fused_expected(gpu, dtype, precision)
        for on in (True, False):
            gpu.fuse_gradients = on
            try:
                model = fn.Sequential(_layers(), backend=gpu, **kw).build(30)
                with fn.record_kernels() as report:
                    got = _gradients(model, X, y)
            finally:
                gpu.fuse_gradients = True
            expected = {"input_gradient": writer is not None, "weight_gradients": bgrada}
            for op, fused in expected.items():  # the last call of each
                assert (report.get(op) == FUSED[op]) == (on and fused), (op, report)
            masks = [layer.relu_mask for layer in model.layers[:2]]
            assert all(m is not None and m.written for m in masks) == (on and writer is not None)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("quirk", [1, 2])
def test_a_library_that_differs_from_the_documentation_is_not_used(gpu, quirk):
    """A cuBLASLt whose BGRADA sums the other operand (1), or whose DRELU_BGRAD ignores the
    mask (2): the probe says no, no layer stores a mask, and the gradients are right."""
    if gpu.name != EMULATED:
        pytest.skip("the fake cuBLASLt's quirks")
    X, y = make_blobs(n=64, d=30, k=5)
    X = X.astype(np.float32)
    want = _gradients(fn.Sequential(_layers(), backend="numpy", seed=1).build(30), X, y)
    with library(gpu, quirk=quirk):
        lt = gpu.lt.lt_gemm(gpu._cublas_path)
        which = "bgrada" if quirk == 1 else "relu_mask"
        assert not lt.gradient_epilogues_work(np.float32, False, which)
        model = fn.Sequential(_layers(), backend=gpu, seed=1).build(30)
        with fn.record_kernels() as report:
            got = _gradients(model, X, y)
    op = "weight_gradients" if quirk == 1 else "input_gradient"
    assert report.get(op) != FUSED[op], report
    assert all(layer.relu_mask is None for layer in model.layers) == (quirk == 2)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quirk", [0, 3])
def test_a_relu_epilogue_that_drops_nan_leaves_the_mask_to_the_relu_kernel(gpu, quirk):
    """Where the ReLU epilogue maps NaN to 0 the forward keeps the ReLU kernel (a NaN weight
    reaches the outputs), which writes the mask where DRELU_BGRAD reads it as fastnet expects;
    a library whose mask bits run the other way (quirk 3) fails the kernel's probe: no mask.
    The gradients are the reference's either way."""
    if gpu.name != EMULATED:
        pytest.skip("the fake cuBLASLt's NaN setting")
    X, y = make_blobs(n=64, d=30, k=5)
    X = X.astype(np.float32)
    want = _gradients(fn.Sequential(_layers(), backend="numpy", seed=1).build(30), X, y)
    with library(gpu, keeps_nan=0, quirk=quirk):
        model = fn.Sequential(_layers(), backend=gpu, seed=1).build(30)
        with epilogues_used(gpu) as used:
            got = _gradients(model, X, y)
        model.layers[0].W.value[3, 2] = np.nan
        nan = gpu.to_numpy(model.forward(gpu.asarray(X), training=True))
    masks = [layer.relu_mask for layer in model.layers[:2]]
    assert all(m is not None and m.written for m in masks) == (quirk == 0)
    codes = [code for code, _ in used]
    assert gpu.lt.EPILOGUE_RELU_AUX_BIAS not in codes
    assert (gpu.lt.EPILOGUE_DRELU_BGRAD in codes) == (quirk == 0)
    assert np.isnan(nan).all()  # unit 2 of layer 0 is NaN, and every output after it
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_stacks_the_epilogues_cannot_serve_keep_their_gradients(gpu):
    """Dense layers without a bias, with other activations, a negative leaky slope (the
    pre-activation kept), Dropout and an odd width between them, after forwards at other
    batch sizes and in inference: each pairing fused where it can be, the rest through the
    kernels, and every gradient equals the reference's."""
    layers = lambda: [  # noqa: E731
        fn.Dense(33, "relu", use_bias=False),
        fn.Dense(130, "relu"),
        fn.Dense(20, "leaky_relu", alpha=-0.1),
        fn.Dense(24, "tanh"),
        fn.Dense(17, "relu"),
        fn.Dropout(0.0),
        fn.Dense(9, "relu"),
        fn.Dense(5),
    ]
    X, y = make_blobs(n=80, d=30, k=5)
    X = X.astype(np.float32)
    want = _gradients(fn.Sequential(layers(), backend="numpy", seed=2).build(30), X, y)
    with library(gpu):
        writer, bgrada = _fused_expected(gpu, np.float32, "fp32")
        model = fn.Sequential(layers(), backend=gpu, seed=2).build(30)
        model.forward(gpu.asarray(X[:7]), training=True)
        model.forward(gpu.asarray(X[:5]), training=False)
        with epilogues_used(gpu) as used:
            got = _gradients(model, X, y)
    lt = gpu.lt
    codes = {code for code, _ in used}
    assert (lt.EPILOGUE_RELU_AUX_BIAS in codes) == (writer == "epilogue"), codes
    assert (lt.EPILOGUE_BGRADA in codes) == bgrada, codes
    masks = [getattr(layer, "relu_mask", None) for layer in model.layers]
    assert masks[4] is None  # Dense(17) feeds Dropout: no mask stored
    written = [m is not None and m.written for m in masks]
    assert written == [writer is not None and i in (1, 6) for i in range(8)]
    # Dense(130) under the leaky layer and Dense(9) under the output layer: two DRELU_BGRADs
    drelu = sum(code == lt.EPILOGUE_DRELU_BGRAD for code, _ in used)
    assert drelu == (2 if writer else 0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch,units", [(48, 1), (1, 5), (48, 5)])
def test_shapes_the_probes_never_ran_go_through_the_kernels(gpu, batch, units):
    """A one-unit layer over a ReLU layer (DRELU_BGRAD at k = 1, BGRADA at n = 1: refused by
    nvmath-python, never probed) and a batch of one take the kernels for those GEMMs, and
    their gradients are the reference's; other shapes still fuse."""
    X, _ = make_blobs(n=48, d=30, k=5)
    X = X[:batch].astype(np.float32)
    y = np.random.default_rng(0).normal(size=(batch, units)).astype(np.float32)

    def layers():
        return [fn.Dense(64, "relu"), fn.Dense(40, "relu"), fn.Dense(units)]

    ref = fn.Sequential(layers(), loss="mse", backend="numpy", seed=1).build(30)
    want = _gradients(ref, X, y)
    with library(gpu):
        writer, bgrada = _fused_expected(gpu, np.float32, "fp32")
        model = fn.Sequential(layers(), loss="mse", backend=gpu, seed=1).build(30)
        with epilogues_used(gpu) as used:
            got = _gradients(model, X, y)
    codes = [code for code, _ in used]
    lt = gpu.lt
    drelu = codes.count(lt.EPILOGUE_DRELU_BGRAD)
    assert drelu == (0 if batch == 1 or writer is None else 2 if units > 1 else 1), codes
    assert (lt.EPILOGUE_BGRADA in codes) == (bgrada and min(batch, units) > 1), codes
    assert (lt.EPILOGUE_RELU_AUX_BIAS in codes) == (writer == "epilogue" and batch > 1), codes
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_gradient_epilogues_are_asked_only_as_probed():
    """``as_probed``: no dimension of 1, and each epilogue's probed operand layouts."""
    from fastnet.kernels import cublaslt as lt

    x, w = np.ones((8, 6), np.float32), np.ones((6, 4), np.float32)
    drelu, bgrada = lt.EPILOGUE_DRELU_BGRAD, lt.EPILOGUE_BGRADA
    assert lt.as_probed(x, w.T.copy().T, drelu) and not lt.as_probed(x, w, drelu)
    assert lt.as_probed(x.T.copy().T, w, bgrada) and not lt.as_probed(x, w, bgrada)
    assert not lt.as_probed(x[:, :1], w[:1].T.copy().T, drelu)  # k = 1
    assert not lt.as_probed(x[:1], w.T.copy().T, drelu)  # one row
    assert not lt.as_probed(x.T.copy().T, w[:, :1], bgrada)  # one unit


@pytest.mark.parametrize("steps_per_graph", [1, 4])
def test_captured_training_through_the_epilogues_equals_eager(gpu, steps_per_graph):
    """The graph holds the fused backward (its GEMMs with DRELU_BGRAD and BGRADA captured,
    masks stored in the forward of each replayed step): float64 weights after 2 epochs equal
    eager training's, and the epoch's loss the NumPy reference's."""
    X, y = make_blobs(n=640)  # full batches only: every training step replays the graph

    def model(backend):
        return fn.Sequential(
            _layers()[:2] + [fn.Dense(4)], backend=backend, seed=0, dtype="float64"
        )

    ref = model("numpy")
    kw = dict(epochs=2, batch_size=64, verbose=0, shuffle=False)  # the reference's batches
    want = ref.fit(X, y, **kw)["loss"]
    with library(gpu):
        writer, bgrada = _fused_expected(gpu, np.float64, "fp32")
        models = [model(gpu) for _ in range(2)]
        saved, gpu.steps_per_graph = gpu.steps_per_graph, steps_per_graph
        try:
            hist = models[0].fit(X, y, **kw, compiled=False)
            with epilogues_used(gpu) as used:
                models[1].fit(X, y, **kw, compiled=True)
        finally:
            gpu.steps_per_graph = saved
    eager, graphed = models
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    captured = {code for code, capturing in used if capturing}
    lt = gpu.lt
    assert (lt.EPILOGUE_DRELU_BGRAD in captured) == (writer is not None), captured
    assert (lt.EPILOGUE_BGRADA in captured) == bgrada, captured
    np.testing.assert_allclose(hist["loss"], want, rtol=1e-9)
    for a, b in zip(eager.parameters(), graphed.parameters()):
        np.testing.assert_allclose(
            gpu.to_numpy(a.value), gpu.to_numpy(b.value), rtol=1e-9, atol=1e-12
        )


def test_a_probe_that_raises_turns_its_feature_off(gpu, monkeypatch):
    """The probes were written without a GPU: one that raises (not a device error) leaves its
    epilogue unused, says why in ``probe_errors``, and training goes on with the kernels."""
    X, y = make_blobs(n=64, d=30, k=5)
    X = X.astype(np.float32)
    want = _gradients(fn.Sequential(_layers(), backend="numpy", seed=1).build(30), X, y)
    with library(gpu):
        lt = gpu.lt.lt_gemm(gpu._cublas_path)

        def broken(*args):
            raise TypeError("a probe's own bug")

        for name in ("_gradient_probe", "_kernel_mask_probe"):
            monkeypatch.setattr(lt, name, broken)
        model = fn.Sequential(_layers(), backend=gpu, seed=1).build(30)
        with epilogues_used(gpu) as used:
            got = _gradients(model, X, y)
    assert not {code for code, _ in used} & {gpu.lt.EPILOGUE_DRELU_BGRAD, gpu.lt.EPILOGUE_BGRADA}
    assert any("a probe's own bug" in e for e in lt.probe_errors), lt.probe_errors
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_a_device_error_in_a_probe_is_not_hidden(gpu, monkeypatch):
    """A device's own error (a fault an earlier kernel left) raised inside a probe reaches the
    caller: it is not a verdict on the epilogue."""
    with library(gpu):
        lt = gpu.lt.lt_gemm(gpu._cublas_path)
        fault = type("CUDADriverError", (RuntimeError,), {})

        def faulting(*args):
            raise fault("an illegal address, from an earlier kernel")

        monkeypatch.setattr(lt, "_gradient_probe", faulting)
        with pytest.raises(fault):
            lt.gradient_epilogues_work(np.float32, False, "bgrada")
        assert not lt.probe_errors


@pytest.mark.parametrize("keeps_nan", [1, 0])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_backward_through_the_epilogues(gpu, policy, keeps_nan):
    """Mixed precision: half activations and their mask (from RELU_AUX_BIAS, or the half ReLU
    kernel where the epilogue drops NaN), float32 weight and bias gradients written by the
    epilogues (a float32 bias gradient of a half GEMM: BIAS_DATA_TYPE): the weight gradients
    equal the kernels' (the same half dz), the bias gradients within half rounding (summed
    before or after it), all within half precision of NumPy's emulation of the policy."""
    if gpu.name != EMULATED and not keeps_nan:
        pytest.skip("the fake cuBLASLt's NaN setting")
    if policy == "mixed_bfloat16":
        needs_bfloat16_arrays(gpu)
    X, y = make_blobs(n=96, d=30, k=5)
    ref = fn.get_backend("numpy")
    ref.emulate_mixed = True
    try:
        want = _gradients(
            fn.Sequential(_layers(), backend=ref, dtype=policy, seed=1).build(30), X, y
        )
    finally:
        ref.emulate_mixed = False
    grads, codes, written = {}, {}, {}
    with library(gpu, keeps_nan=keeps_nan):
        for on in (True, False):
            gpu.fuse_gradients = on
            try:
                model = fn.Sequential(_layers(), backend=gpu, dtype=policy, seed=1).build(30)
                with epilogues_used(gpu) as used:
                    grads[on] = _gradients(model, X, y)
            finally:
                gpu.fuse_gradients = True
            codes[on] = [code for code, _ in used]
            written[on] = [
                m is not None and m.written for m in (lay.relu_mask for lay in model.layers[:2])
            ]
        writer, bgrada = _fused_expected(gpu, model.compute_dtype, "fp32")
    lt = gpu.lt
    assert codes[True].count(lt.EPILOGUE_DRELU_BGRAD) == (2 if writer else 0), codes
    assert (lt.EPILOGUE_RELU_AUX_BIAS in codes[True]) == (writer == "epilogue"), codes
    assert (lt.EPILOGUE_BGRADA in codes[True]) == bgrada, codes
    assert not {lt.EPILOGUE_DRELU_BGRAD, lt.EPILOGUE_BGRADA} & set(codes[False])
    assert written == {True: [writer is not None] * 2, False: [False, False]}
    names = [p.name for p in model.parameters()]
    for name, fused, kernels, w in zip(names, grads[True], grads[False], want):
        if name == "W":
            np.testing.assert_array_equal(fused, kernels)
        else:
            assert np.linalg.norm(fused - kernels) <= 4e-3 * np.linalg.norm(kernels), name
        assert np.linalg.norm(fused - w) <= 2e-2 * np.linalg.norm(w), name


def test_a_probe_asked_while_cublaslt_is_off_is_asked_again(gpu):
    """The answer 'no' given while ``use_cublaslt`` was False (the bench's cuBLAS contestant
    asked first) was kept: the fused epilogues stayed off for the rest of the process."""
    with library(gpu):
        gpu.use_cublaslt = False
        try:
            assert not gpu._gradient_epilogues_work(np.dtype(np.float32), False, "bgrada")
        finally:
            del gpu.use_cublaslt  # (the class's: True)
        expected = gpu.lt.lt_gemm(gpu._cublas_path).gradient_epilogues_work(
            np.dtype(np.float32), False, "bgrada"
        )
        assert gpu._gradient_epilogues_work(np.dtype(np.float32), False, "bgrada") == expected
        if gpu.name == EMULATED:
            assert expected
