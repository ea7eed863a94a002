"""The cupy backend's CUDA kernels against the NumPy reference: on a GPU (``cupy``), and in CI
on the CPU (``cupy-emulated``: the same backend code and kernel sources, compiled for the CPU by
``cuda_emulator.py``)."""

import numpy as np
import pytest
from capture_backend import CaptureSimBackend
from conftest import EMULATED, make_blobs, needs_bfloat16_arrays

import fastnet as fn


def _mlp(backend, seed=0):
    layers = [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)]
    return fn.Sequential(layers, optimizer=fn.Adam(1e-3), backend=backend, seed=seed)


def test_float64_kernels_and_extreme_logits(gpu):
    be = gpu
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], np.float32)
    loss, d = be.softmax_xent(be.asarray(logits), be.asarray(np.array([1, 2])))
    assert np.isfinite(float(loss)) and np.isfinite(be.to_numpy(d)).all()
    assert float(loss) == pytest.approx((2e4 + np.log(3)) / 2, rel=1e-5)


def test_dropout_masks_and_batchnorm_match_the_numpy_reference(gpu):
    """The CUDA dropout draws the NumPy reference's masks (same counter-based stream), and the
    batch-norm kernels compute the reference's outputs, running statistics and gradients."""
    be, ref = gpu, fn.get_backend("numpy")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((300, 70)).astype(dtype)
        stream = np.array([12345, 7], np.int64)
        outs = []
        for b in (ref, be):
            out, mask = b.empty(x.shape, dtype), b.empty(x.shape, dtype)
            b.dropout(b.asarray(x), b.asarray(stream), 5_000_000, 1.5, out, mask)
            outs.append((b.to_numpy(out), b.to_numpy(mask)))
        np.testing.assert_array_equal(outs[1][1], outs[0][1])
        np.testing.assert_array_equal(outs[1][0], outs[0][0])
        gamma, beta = rng.uniform(0.5, 2, 70).astype(dtype), rng.normal(size=70).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
        for training in (True, False):
            results = []
            for b in (ref, be):
                a = b.asarray
                running = (a(np.full(70, 0.1, dtype)), a(np.full(70, 2.0, dtype)))
                out = (b.empty(x.shape, dtype), b.empty(x.shape, dtype), b.empty((70,), dtype))
                b.batchnorm(a(x), a(gamma), a(beta), running, 0.9, 1e-5, training, out)
                grads, dx = (b.empty((70,), dtype), b.empty((70,), dtype)), b.empty(x.shape, dtype)
                b.batchnorm_backward(a(dy), out[1], out[2], a(gamma), grads, training, dx)
                results.append([b.to_numpy(v) for v in (*out, *running, *grads, dx)])
            for got, want in zip(results[1], results[0]):
                np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_bce_kernel_over_many_blocks_adds_into_its_totals(gpu, dtype):
    """330,000 elements: 1,024 blocks, a grid-stride loop, a block reduction each and their
    atomics, added into totals that are not zero (a kernel that wrote them, or one block
    that did the work, passed the small cases)."""
    be, ref = gpu, fn.get_backend("numpy")
    r = np.random.default_rng(0)
    logits = (r.standard_normal((1100, 300)) * 3).astype(dtype)
    targets = (r.random((1100, 300)) > 0.5).astype(dtype)
    weights = r.random(1100).astype(dtype)
    totals, want = be.asarray(np.array([5.0, 7.0])), np.array([5.0, 7.0])
    got = be.sigmoid_bce(be.asarray(logits), be.asarray(targets), be.asarray(weights), totals)
    grad = ref.sigmoid_bce(logits, targets, weights, want)
    tol = 1e-12 if dtype == np.float64 else 1e-6  # (float32: glibc's expf against NumPy's)
    np.testing.assert_allclose(be.to_numpy(totals), want, rtol=tol)
    np.testing.assert_allclose(be.to_numpy(got), grad, rtol=tol, atol=tol * np.abs(grad).max())
    assert be.kernel_report["sigmoid_bce"] == "cuda-fused"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_squared_error_kernel_over_many_blocks_adds_into_its_totals(gpu, dtype):
    """As the sigmoid kernel's test: 330,000 elements, 1,024 blocks, a grid-stride loop."""
    be, ref = gpu, fn.get_backend("numpy")
    r = np.random.default_rng(0)
    outputs = (r.standard_normal((1100, 300)) * 3).astype(dtype)
    targets, weights = r.standard_normal((1100, 300)).astype(dtype), r.random(1100).astype(dtype)
    totals, want = be.asarray(np.array([5.0, 7.0])), np.array([5.0, 7.0])
    a = be.asarray
    got = be.squared_error(a(outputs), a(targets), a(weights), totals, 0.5)
    grad = ref.squared_error(outputs, targets, weights, want, 0.5)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(be.to_numpy(totals), want, rtol=tol)
    np.testing.assert_array_equal(be.to_numpy(got), grad)  # (no transcendental: bit for bit)
    assert be.kernel_report["squared_error"] == "cuda-fused"


@pytest.mark.parametrize("m", [3, 10, 40, 100])
def test_softmax_xent_counts_correct_rows_in_the_same_kernel(gpu, m):
    """The fused kernel's correct count (first index of the largest logit, ties included)
    equals the reference's argmax count, for labels and one-hot targets."""
    be, ref = gpu, fn.get_backend("numpy")
    rng = np.random.default_rng(m)
    logits = rng.integers(-2, 3, (257, m)).astype(np.float32)  # many ties
    labels = rng.integers(0, m, 257)
    for targets in (labels, np.eye(m, dtype=np.float32)[labels]):
        want = np.zeros(1)
        ref.count_correct(logits, targets, want)
        totals = be.zeros((2,), np.float64)
        dlogits = be.empty(logits.shape, np.float32)
        be.softmax_xent(
            be.asarray(logits), be.asarray(targets), dlogits, totals[0:1], 1.0, hits=totals[1:2]
        )
        loss, _ = ref.softmax_xent(logits, targets, loss_out=np.zeros(1), loss_scale=1.0)
        got = be.to_numpy(totals)
        assert got[1] == want[0]
        np.testing.assert_allclose(got[0], loss[0], rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 128, 129, 1000])
def test_bias_gradient_without_a_memset_for_one_block_of_rows(gpu, rows):
    """Up to 128 rows the bias gradient is stored (no memset, no atomics); above, blocks add
    into a zeroed ``db``: both equal the reference, whatever ``db`` held before."""
    be, ref = gpu, fn.get_backend("numpy")
    rng = np.random.default_rng(rows)
    y = rng.standard_normal((rows, 70)).astype(np.float32)
    dy = rng.standard_normal((rows, 70)).astype(np.float32)
    dz_ref, db_ref = np.empty_like(y), np.empty(70, np.float32)
    ref.act_backward_bias(y, dy, fn.backends.Act.RELU, 0.01, dz_ref, db_ref)
    dz, db = be.empty(y.shape, np.float32), be.asarray(np.full(70, 7.0, np.float32))
    be.act_backward_bias(be.asarray(y), be.asarray(dy), fn.backends.Act.RELU, 0.01, dz, db)
    np.testing.assert_allclose(be.to_numpy(dz), dz_ref, rtol=1e-6)
    np.testing.assert_allclose(be.to_numpy(db), db_ref, rtol=1e-4, atol=1e-4)


def test_bias_gradient_blocks_stride_over_rows_beyond_the_grid_limit(monkeypatch):
    """gridDim.y stops at 65535 (8.4M rows of 128): blocks then take several chunks of rows.
    Checked with the limit lowered to 2 blocks for 1,000 rows (8 chunks), in the emulator."""
    import cuda_emulator

    gpu_kernels = cuda_emulator.load()
    monkeypatch.setattr(gpu_kernels, "_MAX_GRID_Y", 2)
    rng = np.random.default_rng(3)
    y, dy = rng.standard_normal((2, 1000, 40)).astype(np.float32)
    dz, db = np.empty_like(y), np.full(40, 7.0, np.float32)
    gpu_kernels.act_backward_bias(y, dy, int(fn.backends.Act.RELU), 0.01, dz, db)
    want = dy * (y > 0)
    np.testing.assert_allclose(dz, want, rtol=1e-6)
    np.testing.assert_allclose(db, want.sum(axis=0), rtol=1e-4, atol=1e-4)


def test_mixed_float16_trains_eagerly_as_the_reference_ops_do(gpu):
    """mixed_float16 on cupy, eager steps (half kernels, cuBLASLt): float32 master weights,
    float16 copies, the loss scale on the device; after two epochs the weights are the
    capture-semantics NumPy run's within float16 rounding, accuracy as float32's."""
    X, y = make_blobs(n=1000)
    models = {}
    for name, backend in (("cupy", gpu), ("numpy", CaptureSimBackend())):
        model = fn.Sequential(
            [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)],
            backend=backend,
            dtype="mixed_float16",
            seed=0,
        )
        model.fit(X, y, epochs=2, batch_size=64, verbose=0, shuffle=False, compiled=False)
        models[name] = model
    on_gpu, cpu = models["cupy"], models["numpy"]
    weight = on_gpu.layers[0].W
    assert weight.compute.dtype == np.float16 and weight.value.dtype == np.float32
    assert on_gpu.loss_scaler.scale == cpu.loss_scaler.scale
    for a, b in zip(on_gpu.parameters(), cpu.parameters()):
        np.testing.assert_allclose(gpu.to_numpy(a.value), b.value, rtol=2e-2, atol=2e-3)
    f32 = _mlp(gpu)
    f32.fit(X, y, epochs=2, batch_size=64, verbose=0, shuffle=False)
    assert abs(on_gpu.evaluate(X, y)["accuracy"] - f32.evaluate(X, y)["accuracy"]) < 0.02


def test_mixed_float16_overflow_skips_the_step_on_the_device(gpu):
    X, y = make_blobs(n=64)
    layers = [fn.Dense(16, "relu"), fn.Dense(4)]
    model = fn.Sequential(layers, backend=gpu, dtype="mixed_float16")
    model.build(X.shape[1])
    model.loss_scaler.state[:] = model.backend.asarray(np.array([2.0**80, 5.0]))
    before = model.host_state()
    model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    after = model.host_state()
    for key in before:
        if key not in ("amp/loss_scaler", "data/order"):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    np.testing.assert_array_equal(after["amp/loss_scaler"], [2.0**79, 0.0])
    assert after["data/order"][1] == 1  # the epoch ran (its one step skipped)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_kernels_match_the_reference_ops(gpu, half):
    """cupy's half-precision ops (mixed precision) against the NumPy reference on the same
    half inputs: casts with the device loss scale, bias + activation, activation and its
    gradient, the fused activation gradient with float32 bias sums, unscale and the scale
    update; within one half rounding."""
    from fastnet.backends.base import Act, Backend

    if half == "bfloat16":
        needs_bfloat16_arrays(gpu)
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(np.float16)
    ref = Backend()
    r = np.random.default_rng(0)
    z32 = r.normal(size=(300, 40)).astype(np.float32)
    z, b = z32.astype(dtype), r.normal(size=40).astype(dtype)
    tol = dict(rtol=1e-2 if half == "float16" else 2e-2, atol=1e-2)
    scale = np.array([1024.0])

    def move(a):
        if isinstance(a, tuple):
            return tuple(move(b) for b in a)
        return gpu.asarray(a) if isinstance(a, np.ndarray) else a

    def flat(a):  # the device arrays, nested tuples flattened, back on the host as float32
        if isinstance(a, tuple):
            return [x for b in a for x in flat(b)]
        return [gpu.to_numpy(a).astype(np.float32)] if gpu.is_native(a) else []

    def on_gpu(fn_name, *args):
        moved = [move(a) for a in args]
        out = getattr(gpu, fn_name)(*moved)
        return [x for a in moved for x in flat(a)], out

    got, _ = on_gpu("cast", z32, np.empty(z.shape, dtype), scale)
    want = ref.cast(z32, np.empty(z.shape, dtype), scale).astype(np.float32)
    np.testing.assert_array_equal(got[1], want)  # one rounding of an exact product
    for act in Act:
        got, _ = on_gpu("bias_act", z.copy(), b, act, 0.1)
        want = ref.bias_act(z.astype(np.float32), b.astype(np.float32), act, 0.1)
        np.testing.assert_allclose(got[0], want, **tol)
        y = ref.activation(z, act, 0.1, np.empty_like(z))
        got, _ = on_gpu(
            "act_backward_bias", y, z, act, 0.1, np.empty_like(z), np.empty(40, np.float32)
        )
        dz = ref.activation_backward(y.astype(np.float32), z.astype(np.float32), act, 0.1)
        np.testing.assert_allclose(got[2], dz, **tol)
        np.testing.assert_allclose(got[3], dz.sum(axis=0), rtol=1e-2, atol=0.5)
    stream = np.array([12345, 7], np.int64)  # dropout: the reference's masks, exactly
    got, _ = on_gpu("dropout", z, stream, 2**22, 1 / 0.7, np.empty_like(z), np.empty_like(z))
    mask, out = np.empty_like(z), np.empty_like(z)
    ref.dropout(z, stream, 2**22, 1 / 0.7, out, mask)
    np.testing.assert_array_equal(got[3], mask.astype(np.float32))
    np.testing.assert_array_equal(got[2], out.astype(np.float32))
    d = z.shape[1]  # batch norm: half x, gamma, beta, y, xhat; float32 statistics
    gamma, beta = (r.normal(size=d).astype(dtype) for _ in range(2))
    for training in (True, False):
        stats = [np.zeros(d, np.float32), np.ones(d, np.float32)]
        outs = (np.empty_like(z), np.empty_like(z), np.empty(d, np.float32))
        got, _ = on_gpu("batchnorm", z, gamma, beta, tuple(stats), 0.9, 1e-5, training, outs)
        want_stats = [s.copy() for s in stats]
        want = (np.empty_like(z), np.empty_like(z), np.empty(d, np.float32))
        ref.batchnorm(z, gamma, beta, tuple(want_stats), 0.9, 1e-5, training, want)
        for a, b in zip(got[3:], (*want_stats, *want)):  # running stats, y, xhat, inv_std
            np.testing.assert_allclose(a, b.astype(np.float32), **tol)
        for with_dx in (True, False):
            grads = (np.empty(d, np.float32), np.empty(d, np.float32))
            dx = np.empty_like(z) if with_dx else None
            args = (z, want[1], want[2], gamma, grads, training, dx)
            got, _ = on_gpu("batchnorm_backward", *args)
            ref_grads = (np.empty(d, np.float32), np.empty(d, np.float32))
            ref_dx = np.empty_like(z) if with_dx else None
            ref.batchnorm_backward(z, want[1], want[2], gamma, ref_grads, training, ref_dx)
            np.testing.assert_allclose(got[4], ref_grads[0], rtol=1e-2, atol=0.5)
            np.testing.assert_allclose(got[5], ref_grads[1], rtol=1e-2, atol=0.5)
            if with_dx:
                np.testing.assert_allclose(got[6], ref_dx.astype(np.float32), **tol)
    g = np.array([4.0, np.inf, -8.0, np.nan] * 100, np.float32)
    state, checks = np.array([4.0, 3.0]), np.zeros(2)
    got, _ = on_gpu("unscale", g, state, checks)
    assert got[2][1] == 200 and got[0][0] == 1.0 and got[0][2] == -2.0
    got, _ = on_gpu("update_loss_scale", state, got[2].astype(np.float64), 4, 2.0, 0.5)
    np.testing.assert_array_equal(got[0], [2.0, 0.0])


@pytest.mark.parametrize("beta2", [0.999, 0.9999, 0.99999])
@pytest.mark.parametrize("half", [False, True], ids=["float32", "with-half-copy"])
def test_first_float32_adam_step_of_the_fused_kernel_is_lr(gpu, beta2, half):
    """The kernel takes ``1 - beta1`` and ``1 - beta2`` computed in float64 on the host: its
    first step is ``lr * g / (|g| + eps)``, ``lr * sign(g)`` to 2e-8 here (``(T)1 - beta2``
    from the rounded beta2 made it 7e-6 to 7e-4 off). Also in the kernel writing a half copy."""
    rule, a, get = fn.Adam(1e-2, beta2=beta2), gpu.asarray, gpu.to_numpy
    g = np.tile(np.array([1.0, -2.0, 0.5, -0.25], np.float32), 250)
    p = gpu.zeros(1000, np.float32)
    slots = (gpu.zeros(1000, np.float32), gpu.zeros(1000, np.float32))
    s = a(np.array([1e-2] + [0.0] * 7))
    compute = gpu.zeros(1000, np.float16) if half else None
    gpu.advance_scalars(s, gpu.zeros(2, np.float64), rule.scalar_constants())
    gpu.update(rule, p, a(g), slots, s, rule.constants(), 500, 0.0, None, compute)
    assert gpu.kernel_report["update_adam"] == "cuda-fused"
    np.testing.assert_allclose(-get(p).astype(np.float64), 1e-2 * np.sign(g), rtol=2.5e-7, atol=0)
    np.testing.assert_allclose(get(slots[0]), np.float32(1 - 0.9) * g, rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [0.99, 0.999, 0.99999])
def test_batchnorm_running_averages_take_one_minus_momentum_in_float64(gpu, momentum):
    """float32 running averages ``momentum * r + (1 - momentum) * batch`` with ``1 - momentum``
    computed in float64 and rounded once, as the reference: from the layer's initial zero
    mean, ``(W)1 - momentum`` from the rounded momentum made the first running mean 1.3e-5
    (0.999) to 1.4e-3 (0.99999) off the rule in float64; now 2e-7."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((200, 40)) + 3).astype(np.float32)
    gamma, beta = np.ones(40, np.float32), np.zeros(40, np.float32)
    r0 = np.zeros(40, np.float32), np.ones(40, np.float32)  # BatchNorm1d's initial statistics
    a = gpu.asarray
    running = (a(r0[0]), a(r0[1]))
    out = tuple(gpu.empty(shape, np.float32) for shape in (x.shape, x.shape, (40,)))
    gpu.batchnorm(a(x), a(gamma), a(beta), running, momentum, 1e-5, True, out)
    x64 = x.astype(np.float64)
    batch = (x64.mean(axis=0), x64.var(axis=0, ddof=1))
    for got, r, b in zip(running, r0, batch):
        want = momentum * r.astype(np.float64) + (1 - momentum) * b
        np.testing.assert_allclose(gpu.to_numpy(got), want, rtol=2e-7, atol=0)


def test_the_update_kernel_refreshes_the_half_copy_in_the_same_pass(gpu):
    """Mixed precision: the fused Adam kernel writes the float16 copy of the new float32
    parameters; a skipped step (SKIP) leaves parameters, slots and the copy alone."""
    rule, a, get = fn.Adam(1e-2), gpu.asarray, gpu.to_numpy
    p = a(np.linspace(-1, 1, 1000, dtype=np.float32))
    g = a(np.full(1000, 0.5, np.float32))
    slots = (gpu.zeros(1000, np.float32), gpu.zeros(1000, np.float32))
    half, s = gpu.zeros(1000, np.float16), a(np.array([1e-2] + [0.0] * 7))
    gpu.advance_scalars(s, gpu.zeros(2, np.float64), rule.scalar_constants())
    gpu.update(rule, p, g, slots, s, rule.constants(), 1000, 0.0, None, half)
    assert gpu.kernel_report["update_adam"] == "cuda-fused"
    np.testing.assert_array_equal(get(half), get(p).astype(np.float16))
    before = [get(v) for v in (p, *slots, half)]
    gpu.advance_scalars(s, a(np.array([0.0, 1.0])), rule.scalar_constants())
    gpu.update(rule, p, g, slots, s, rule.constants(), 1000, 0.0, None, half)
    for v, b in zip((p, *slots, half), before):
        np.testing.assert_array_equal(get(v), b)


@pytest.mark.parametrize("use_cublaslt, name", [(True, "cublaslt"), (False, "cublas-direct")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_gemm_handles_transposed_operands(gpu, monkeypatch, use_cublaslt, name, dtype):
    """cuBLASLt (algorithm timed per shape) and direct cuBLAS: every layout the step uses."""
    be = gpu
    monkeypatch.setattr(be, "use_cublaslt", use_cublaslt)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 30)).astype(dtype)
    w = rng.standard_normal((50, 30)).astype(dtype)
    dx, dw = be.asarray(x), be.asarray(w)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    with fn.record_kernels() as report:
        for a, b in ((dx, dw.T), (dx.T, dx), (dw, dx.T), (dw.T.copy().T, dw.T)):
            want = be.to_numpy(a) @ be.to_numpy(b)
            np.testing.assert_allclose(be.to_numpy(be.matmul(a, b)), want, rtol=tol, atol=tol)
    assert report["matmul"] == name


def relu_epilogue_readings(gpu, dtype=np.float32, tf32=False):
    """Yields whether cuBLASLt's ReLU epilogue keeps NaN: on a GPU, the library's answer; on
    the emulator, each reading of the fake (NaN to 0 as a max instruction, or kept)."""
    lt = gpu.lt.lt_gemm(gpu._cublas_path)
    if gpu.name != EMULATED:
        yield lt.relu_keeps_nan(dtype, tf32)
        return
    try:
        for keep in (0, 1):
            lt.lib.fake_cublaslt_relu_keeps_nan(keep)
            lt._relu_nan.clear()
            gpu._relu_nan.clear()
            assert lt.relu_keeps_nan(dtype, tf32) == bool(keep)
            yield bool(keep)
    finally:
        lt.lib.fake_cublaslt_relu_keeps_nan(0)
        lt._relu_nan.clear()
        gpu._relu_nan.clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_dense_forward_through_cublaslt_matches_the_reference(gpu, dtype, activation):
    """One cuBLASLt call with the bias (+ ReLU) epilogue equals x @ w + b (then ReLU), for C-
    and F-contiguous operands; TF32 within its tolerance. ReLU is in the epilogue where that
    keeps NaN, else the ReLU kernel follows the bias epilogue."""
    from fastnet.backends.base import Act

    be, ref = gpu, fn.get_backend("numpy")
    code = Act.RELU if activation == "relu" else Act.LINEAR
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 784)).astype(dtype)
    w = rng.standard_normal((784, 256)).astype(dtype) * 0.05
    b = rng.standard_normal(256).astype(dtype)
    want = ref.linear(x, w, b, code)
    precisions = ["fp32", "tf32"] if dtype == np.float32 else ["fp32"]
    operands = [(be.asarray(x), be.asarray(w)), (be.asarray(x.T).T, be.asarray(w.T).T)]  # C, F
    for precision in precisions:
        for keeps_nan in relu_epilogue_readings(gpu, dtype, precision == "tf32"):  # one at a time
            one_call = code == Act.LINEAR or keeps_nan
            for xd, wd in operands:
                with fn.record_kernels() as report:
                    got = be.to_numpy(be.linear(xd, wd, be.asarray(b), code, precision=precision))
                expected = "cublaslt-epilogue" if one_call else "cublaslt-bias-epilogue"
                assert report.get("linear") == expected, report
                tol = 2e-2 if precision == "tf32" else (1e-4 if dtype == np.float32 else 1e-10)
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_cublaslt_with_operands_at_4_byte_offsets(gpu):
    """Weights, biases and gradients of an arena start at any 4-byte offset: the algorithm is
    chosen for the pointers' real alignment (or cuBLAS serves), and results stay right."""
    from fastnet.backends.base import Act

    be = gpu
    rng = np.random.default_rng(5)
    x = rng.standard_normal((96, 33)).astype(np.float32)
    w = rng.standard_normal((33, 17)).astype(np.float32)
    b = rng.standard_normal(17).astype(np.float32)
    arena = be.zeros((1 + w.size + b.size + 96 * 17,), np.float32)
    dw, db = arena[1 : 1 + w.size].reshape(w.shape), arena[1 + w.size : 1 + w.size + 17]
    out = arena[1 + w.size + 17 :].reshape(96, 17)
    dw[...], db[...] = be.asarray(w), be.asarray(b)
    got = be.to_numpy(be.linear(be.asarray(x), dw, db, Act.RELU, out=out))
    np.testing.assert_allclose(got, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        be.to_numpy(be.matmul(be.asarray(x).T, out)), x.T @ got, rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("shape", [(32, 16, 8), (256, 784, 128)])
def test_a_nan_weight_reaches_the_dense_outputs_on_every_forward_path(gpu, shape):
    """A NaN in the weights stays NaN through the Dense forward (cuBLASLt's bias/ReLU
    epilogue where it keeps NaN, else its bias epilogue and the ReLU kernel; cuBLAS and the
    bias kernel), as in the reference: a diverged layer is seen; at a small and a layer's
    shape (cuBLASLt may pick kernels of other kinds)."""
    from fastnet.backends.base import Act

    be, ref = gpu, fn.get_backend("numpy")
    rows, k, n = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[3, 2] = np.nan
    b = rng.standard_normal(n).astype(np.float32)
    want = ref.linear(x, w, b, Act.RELU)
    assert np.isnan(want[:, 2]).all()
    for keeps_nan in relu_epilogue_readings(gpu):
        for use_cublaslt in (True, False):
            be.use_cublaslt = use_cublaslt
            try:
                with fn.record_kernels() as report:
                    args = (be.asarray(x), be.asarray(w), be.asarray(b), Act.RELU)
                    got = be.to_numpy(be.linear(*args))
            finally:
                be.use_cublaslt = True
            path = "cublaslt-epilogue" if keeps_nan else "cublaslt-bias-epilogue"
            assert (report.get("linear") == path) == use_cublaslt, report
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # NaN where NaN


def test_half_dense_forward_with_a_bias_at_a_2_byte_offset(gpu):
    """A float16 bias at a 2-byte offset of its arena gets no epilogue: the GEMM through
    cuBLASLt, then the half bias kernel; the result is the reference's within float16 rounding
    (the reference rounds once, this path twice)."""
    from fastnet.backends.base import Act

    be, ref = gpu, fn.get_backend("numpy")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 40)).astype(np.float16)
    w = (rng.standard_normal((40, 24)) * 0.2).astype(np.float16)
    b = rng.standard_normal(24).astype(np.float16)
    arena = be.zeros((1 + b.size,), np.float16)
    arena[1:] = be.asarray(b)
    out = be.empty((64, 24), np.float16)
    for code in (Act.RELU, Act.LINEAR, Act.SIGMOID):
        with fn.record_kernels() as report:
            got = be.to_numpy(be.linear(be.asarray(x), be.asarray(w), arena[1:], code, out=out))
        assert report.get("linear") != "cublaslt-epilogue", report
        assert report.get("bias_act") == "cuda-half", report  # not the float32 fallback
        want = ref.linear(x, w, b, code, out=np.empty((64, 24), np.float16))
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=4e-3, atol=4e-3)


def test_tf32_precision_is_per_call_and_per_model(gpu):
    be = gpu
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    want = a.astype(np.float64) @ b
    fast = be.to_numpy(be.matmul(be.asarray(a), be.asarray(b), precision="tf32"))
    exact = be.to_numpy(be.matmul(be.asarray(a), be.asarray(b)))  # no state left behind
    err = lambda x: np.linalg.norm(x - want) / np.linalg.norm(want)  # noqa: E731
    assert err(exact) < 1e-6 and 1e-6 < err(fast) < 5e-3
    import ctypes

    mode, handle = ctypes.c_int(-1), be.k.cp.cuda.device.get_cublas_handle()
    be.k.cublas_gemm().lib.cublasGetMathMode(handle, ctypes.byref(mode))
    assert mode.value == 0  # CuPy's shared handle is left in its default math mode
    # two models on one backend, same weights: each computes at its own precision
    X = rng.standard_normal((256, 512)).astype(np.float32)
    exact_model = fn.Sequential([fn.Dense(64)], backend=be, seed=0).build(512)
    tf32_model = fn.Sequential([fn.Dense(64)], backend=be, seed=0, precision="tf32").build(512)
    want = X.astype(np.float64) @ be.to_numpy(exact_model.layers[0].W.value)
    assert err(be.to_numpy(tf32_model.forward(be.asarray(X)))) > 1e-6
    assert err(be.to_numpy(exact_model.forward(be.asarray(X)))) < 1e-6
    assert tf32_model.get_config()["precision"] == "tf32"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_relu_mask_kernel_writes_the_documented_bits(gpu, dtype):
    """The ReLU kernel behind a bias epilogue that drops NaN: ``y = max(y, 0)``, NaN kept, and
    bit ``i + j * ld`` of the mask (``ld``: the units rounded up to 128 bits) set where
    ``y[j, i] > 0``, least significant bit first (NumPy's ``packbits`` of the padded matrix),
    stale bits overwritten; partial bytes, one and several words; on a GPU also more rows than
    a grid's 65,535."""
    from fastnet.kernels.cublaslt import mask_ld

    if dtype == "bfloat16":
        needs_bfloat16_arrays(gpu)
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    rng = np.random.default_rng(9)
    shapes = [(1, 1), (5, 7), (37, 131), (9, 300)]
    shapes += [(70001, 9)] if gpu.name != EMULATED else []
    for n, m in shapes:
        z = rng.standard_normal((n, m)).astype(dtype)
        z[0, 0], z[-1, -1] = np.nan, 0.0
        y, bits = gpu.asarray(z), gpu.xp.full(n * mask_ld(m) // 8, 0xA5, np.uint8)
        gpu.k.relu_mask(y, bits)
        padded = np.zeros((n, mask_ld(m)), bool)
        padded[:, :m] = z > 0
        want = np.packbits(padded, axis=1, bitorder="little").ravel()
        np.testing.assert_array_equal(gpu.to_numpy(bits), want)
        relu = np.maximum(z.astype(np.float64), 0)  # NaN where NaN
        np.testing.assert_array_equal(gpu.to_numpy(y).astype(np.float64), relu)
    with pytest.raises(ValueError, match="bits"):
        gpu.k.relu_mask(gpu.asarray(z), gpu.xp.zeros(3, np.uint8))  # too small: refused


@pytest.mark.parametrize("m", [3, 40])
def test_a_nan_logit_is_the_cuda_argmax_as_numpys(gpu, m):
    """count_correct and the fused softmax_xent count a row's first NaN as its argmax, as NumPy
    does (NaN compares false: the kernels skipped it), wherever it falls among the lanes."""
    be, ref = gpu, fn.get_backend("numpy")
    rng = np.random.default_rng(m)
    logits = rng.standard_normal((64, m)).astype(np.float32)
    for row, (lo, hi) in enumerate([(0, 0), (m - 1, m - 1), (1, m - 1), (m - 1, 1), (2, 0)]):
        logits[row, [lo, hi]] = np.nan  # one NaN, or two (the first counts)
    logits[10:20, rng.integers(0, m, 10)] = np.nan
    labels = np.argmax(logits, axis=1)
    labels[::3] = (labels[::3] + 1) % m
    for targets in (labels, np.eye(m, dtype=np.float32)[labels]):
        want = np.zeros(1)
        ref.count_correct(logits, targets, want)
        totals = be.zeros((3,), np.float64)
        be.count_correct(be.asarray(logits), be.asarray(targets), totals[2:3])
        dlogits = be.empty(logits.shape, np.float32)
        be.softmax_xent(
            be.asarray(logits), be.asarray(targets), dlogits, totals[0:1], 1.0, hits=totals[1:2]
        )
        assert be.to_numpy(totals)[1:].tolist() == [want[0], want[0]]
