"""Every backend's ops against the NumPy reference: float32 and float64, extreme logits,
non-contiguous inputs, and property tests."""

import numpy as np
import pytest
from conftest import to_np
from hypothesis import given, settings
from hypothesis import strategies as st

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = [np.float32, np.float64]
ACTS = [0, 1, 2, 3, 4]


def _pair(backend, a):
    return backend.asarray(a), a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(7, 5, 3), (128, 784, 256), (33, 64, 1000)])
def test_linear_forward_and_backward_match_reference(fast_backend, ref, rng, dtype, act, shape):
    n, d, m = shape
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((d, m)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dy = rng.standard_normal((n, m)).astype(dtype)
    be = fast_backend
    y_ref = ref.linear(x, w, b, act, 0.1, np.empty((n, m), dtype))
    y = be.linear(be.asarray(x), be.asarray(w), be.asarray(b), act, 0.1, be.empty((n, m), dtype))
    np.testing.assert_allclose(to_np(be, y), y_ref, **TOL[dtype])
    outs_ref = [np.empty((d, m), dtype), np.empty(m, dtype), np.empty((n, d), dtype)]
    dx_ref = ref.linear_backward(x, w, y_ref, dy, act, 0.1, outs_ref[0], outs_ref[1], outs_ref[2])
    outs = [be.empty((d, m), dtype), be.empty((m,), dtype), be.empty((n, d), dtype)]
    dx = be.linear_backward(
        be.asarray(x),
        be.asarray(w),
        y,
        be.asarray(dy),
        act,
        0.1,
        outs[0],
        outs[1],
        outs[2],
        True,
        be.empty((n, m), dtype),
    )
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else TOL[dtype]
    np.testing.assert_allclose(to_np(be, dx), dx_ref, **tol)
    np.testing.assert_allclose(to_np(be, outs[0]), outs_ref[0], **tol)
    np.testing.assert_allclose(to_np(be, outs[1]), outs_ref[1], **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(128, 10), (512, 10), (4096, 1000), (3, 1), (5, 77)])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax_xent_matches_reference(fast_backend, ref, rng, dtype, shape, scale):
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    loss_ref, d_ref = ref.softmax_xent(logits, labels)
    loss, d = fast_backend.softmax_xent(fast_backend.asarray(logits), fast_backend.asarray(labels))
    assert np.isfinite(float(loss)) and np.isfinite(to_np(fast_backend, d)).all()
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=TOL[dtype]["rtol"] * 10)
    np.testing.assert_allclose(to_np(fast_backend, d), d_ref, **TOL[dtype])


def test_softmax_xent_extreme_logits_float32_are_finite(backend):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], np.float32)
    labels = np.array([1, 2, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, d = backend.softmax_xent(backend.asarray(logits), backend.asarray(labels))
    d = to_np(backend, d)
    assert np.isfinite(float(loss)) and np.isfinite(d).all()
    assert float(loss) == pytest.approx((2e4 + np.log(3) + np.log(2)) / 3, rel=1e-4)


def test_softmax_xent_non_contiguous_logits(fast_backend, ref, rng):
    base = rng.standard_normal((64, 40)).astype(np.float32)
    logits = base[:, ::4]  # non-contiguous view
    labels = rng.integers(0, 10, 64)
    loss_ref, d_ref = ref.softmax_xent(logits, labels)
    be = fast_backend
    loss, d = be.softmax_xent(be.asarray(base)[:, ::4], be.asarray(labels))
    np.testing.assert_allclose(to_np(be, d), d_ref, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(float(loss_ref), rel=1e-5)


def test_softmax_xent_soft_targets_reference_path(backend, ref, rng):
    logits = rng.standard_normal((16, 5))
    targets = rng.dirichlet(np.ones(5), 16)
    loss_ref, d_ref = ref.softmax_xent(logits, targets)
    loss, d = backend.softmax_xent(backend.asarray(logits), backend.asarray(targets))
    np.testing.assert_allclose(to_np(backend, d), d_ref, rtol=1e-12)
    assert float(loss) == pytest.approx(float(loss_ref))


def test_softmax_xent_rejects_out_of_range_labels(fast_backend):
    if fast_backend.name.startswith("cupy"):
        pytest.skip("the GPU kernel trusts validated labels (checked at the model boundary)")
    logits = fast_backend.asarray(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        fast_backend.softmax_xent(logits, fast_backend.asarray(np.array([0, 1, 3, 0])))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_and_backward_non_contiguous(backend, ref, rng, dtype, act):
    base = rng.standard_normal((20, 30)).astype(dtype) * 5
    x = base[::2, 1::2]
    dy = rng.standard_normal(x.shape).astype(dtype)
    y_ref = ref.activation(x, act, 0.2)
    y = backend.activation(backend.asarray(base)[::2, 1::2], act, 0.2)
    np.testing.assert_allclose(to_np(backend, y), y_ref, **TOL[dtype])
    g_ref = ref.activation_backward(y_ref, dy, act, 0.2)
    g = backend.activation_backward(y, backend.asarray(dy), act, 0.2)
    np.testing.assert_allclose(to_np(backend, g), g_ref, **TOL[dtype])


def test_sigmoid_tanh_saturate_without_warnings(backend):
    x = backend.asarray(np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], np.float32))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = to_np(backend, backend.activation(x, 3))
        t = to_np(backend, backend.activation(x, 4))
    np.testing.assert_allclose(s[0], [0, 0, 0.5, 1, 1], atol=1e-30)
    np.testing.assert_allclose(t[0], [-1, -1, 0, 1, 1])


UPDATES = {
    "sgd": lambda be, p, g, s, t: be.update_sgd(p, g, 0.1, 0.01),
    "momentum": lambda be, p, g, s, t: be.update_momentum(p, g, s[0], 0.1, 0.9, False, 0.01),
    "nesterov": lambda be, p, g, s, t: be.update_momentum(p, g, s[0], 0.1, 0.9, True, 0.0),
    "adagrad": lambda be, p, g, s, t: be.update_adagrad(p, g, s[0], 0.1, 1e-7, 0.01),
    "rmsprop": lambda be, p, g, s, t: be.update_rmsprop(p, g, s[0], 0.01, 0.9, 1e-7, 0.01),
    "adam": lambda be, p, g, s, t: be.update_adam(
        p, g, s[0], s[1], 1e-3, 0.9, 0.999, 1e-8, t, 0.01
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", sorted(UPDATES))
@pytest.mark.parametrize("size", [(10,), (784, 256), (1500, 1000)])
def test_fused_optimizer_updates_match_reference(fast_backend, ref, rng, dtype, rule, size):
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    p_ref, s_ref = p0.copy(), [np.zeros(size, dtype), np.zeros(size, dtype)]
    be = fast_backend
    p, s = be.asarray(p0), [be.zeros(size, dtype), be.zeros(size, dtype)]
    for t, g in enumerate(grads, start=1):
        UPDATES[rule](ref, p_ref, g, s_ref, t)
        UPDATES[rule](be, p, be.asarray(g), s, t)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(to_np(be, p), p_ref, **tol)
    np.testing.assert_allclose(to_np(be, s[0]), s_ref[0], **tol)


@pytest.mark.parametrize("rule", sorted(UPDATES))
def test_numba_updates_on_strided_parameters_use_the_reference(ref, rng, rule):
    """A strided parameter view cannot be flattened in place: the numba backend must run the
    reference update on it (and say so), with the same result."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    be = get_backend("numba")
    full = rng.standard_normal((40, 30)).astype(np.float32)
    grads = [rng.standard_normal((40, 15)).astype(np.float32) for _ in range(3)]
    p, p_ref = full.copy()[:, ::2], full[:, ::2].copy()
    s = [np.zeros((40, 15), np.float32), np.zeros((40, 15), np.float32)]
    s_ref = [a.copy() for a in s]
    for t, g in enumerate(grads, start=1):
        UPDATES[rule](ref, p_ref, g, s_ref, t)
        UPDATES[rule](be, p, g, s, t)
    op = "update_momentum" if rule == "nesterov" else f"update_{rule}"
    assert be.kernel_report[op] == "reference"
    np.testing.assert_allclose(p, p_ref, rtol=1e-6, atol=1e-7)
    UPDATES[rule](be, np.ascontiguousarray(p), grads[0], s, 4)
    assert be.kernel_report[op] == "numba-fused"


@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 7, 3), (16, 128, 10), (64, 300, 70)])
def test_numba_small_matmul_kernel_matches_blas(rng, shape):
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.bench.handwritten_matmul import matmul

    n, k, m = shape
    a = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal((k, m)).astype(np.float32)
    out = np.full((n, m), np.nan, np.float32)
    matmul(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    m=st.integers(1, 60),
    scale=st.sampled_from([0.1, 10.0, 1e3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_numba_softmax_xent(n, m, scale, seed):
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    r = np.random.default_rng(seed)
    logits = (r.standard_normal((n, m)) * scale).astype(np.float32)
    labels = r.integers(0, m, n)
    loss_ref, d_ref = get_backend("numpy").softmax_xent(logits, labels)
    loss, d = get_backend("numba").softmax_xent(logits, labels)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-6)
    assert abs(float(loss) - float(loss_ref)) <= 1e-5 * max(1.0, abs(float(loss_ref)))
    # the gradient rows of a softmax cross-entropy sum to zero
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-6)


_F32 = np.float32(0.5)
_PRE = (np.float32(0.9), np.float32(3.0), np.float32(0.99))  # grad scale, clip, shrink
_F32_KERNEL_ARGS = {
    "bias_act": lambda a, v: [(a((8, 16)), v(16), code, _F32) for code in ACTS],
    "act_backward_bias": lambda a, v: [
        (a((8, 16)), a((8, 16)), code, _F32, a((8, 16)), v(16)) for code in ACTS
    ],
    "sgd_update": lambda a, v: [(v(64), v(64), _F32, _F32, 32, *_PRE)],
    "momentum_update": lambda a, v: [(v(64), v(64), v(64), _F32, _F32, True, _F32, 32, *_PRE)],
    "adagrad_update": lambda a, v: [(v(64), v(64), v(64), _F32, _F32, _F32, 32, *_PRE)],
    "rmsprop_update": lambda a, v: [(v(64), v(64), v(64), _F32, _F32, _F32, _F32, 32, *_PRE)],
    "adam_update": lambda a, v: [
        (v(64), v(64), v(64), v(64), _F32, _F32, _F32, _F32, _F32, 32, *_PRE)
    ],
}


@pytest.mark.parametrize("name", sorted(_F32_KERNEL_ARGS))
def test_numba_float32_kernels_never_widen_to_float64(name):
    """A stray int or Python-float constant (``1 - beta``) silently makes numba compute a
    float32 kernel in float64: half the SIMD width, 2.4x slower Adam. Check the LLVM IR."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_cpu
    from numba import njit

    options = {**numba_cpu.SERIAL, "cache": False}
    fresh = njit(**options)(getattr(numba_cpu, name).py_func)

    def a(shape):
        return np.full(shape, 0.25, np.float32)

    for args in _F32_KERNEL_ARGS[name](a, a):
        fresh(*args)
    for sig, ir in fresh.inspect_llvm().items():
        assert "fpext float" not in ir and "fadd double" not in ir, f"{name}{sig} uses float64"


_UPDATE_KERNELS = sorted(name for name in _F32_KERNEL_ARGS if name.endswith("_update"))


@pytest.mark.parametrize("name", _UPDATE_KERNELS)
def test_numba_update_kernels_vectorize_every_loop(name):
    """An update runs a plain loop (no scaling, clipping or decay) or a decayed and an
    undecayed loop; all three must vectorize. Indexing ``p[i]`` with ``i`` from
    ``range(n_decay, n)`` made numba wrap negative indices, which kept LLVM from vectorizing the
    undecayed loop (5-10x slower)."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    import re

    from fastnet.kernels import numba_cpu
    from numba import njit

    fresh = njit(**{**numba_cpu.SERIAL, "cache": False})(getattr(numba_cpu, name).py_func)
    def ones(shape):
        return np.ones(shape, np.float32)

    for args in _F32_KERNEL_ARGS[name](ones, ones):
        fresh(*args)
    ir = "\n".join(fresh.inspect_llvm().values())
    assert len(re.findall(r"^vector\.body[\d.]*:", ir, re.M)) >= 3, f"{name} lost a vector loop"


@pytest.mark.parametrize("name", _UPDATE_KERNELS)
def test_numba_plain_update_equals_the_general_loops(name, rng):
    """Without scaling, clipping or decay the kernels take a plain loop of the bare rule; it
    must give exactly what the general loops give (forced here by a clip no value reaches)."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_cpu

    def random(shape):
        return np.abs(rng.standard_normal(shape)).astype(np.float32)

    kernel = getattr(numba_cpu, name)
    for args in _F32_KERNEL_ARGS[name](random, random):
        neutral = list(args[:-5]) + [np.float32(0), 32, np.float32(1), np.float32(np.inf),
                                     np.float32(1)]
        general = neutral[:-2] + [np.float32(1e30), np.float32(1)]
        plain = [a.copy() if isinstance(a, np.ndarray) else a for a in neutral]
        before = plain[0].copy()
        kernel(*plain)
        kernel(*general)
        for got, want in zip(plain, general):
            if isinstance(got, np.ndarray):
                np.testing.assert_array_equal(got, want)
        assert not np.array_equal(plain[0], before), f"{name} changed nothing"


@pytest.mark.parametrize("name", sorted(_F32_KERNEL_ARGS))
def test_numba_parallel_flavours_match_serial(name, rng):
    """The threaded flavour of every kernel computes what the serial one does (updates exactly,
    bias gradients up to summation order), with every split between decayed and undecayed."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_cpu

    def random(shape):
        return rng.standard_normal(shape).astype(np.float32)

    for args in _F32_KERNEL_ARGS[name](random, random):
        splits = [0, 17, 64] if name.endswith("_update") else [None]
        for n_decay in splits:
            if n_decay is not None:
                args = tuple(n_decay if type(a) is int else a for a in args)
            serial = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            threaded = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            getattr(numba_cpu, name)(*serial)
            getattr(numba_cpu, f"{name}_parallel")(*threaded)
            for s, t in zip(serial, threaded):
                if isinstance(s, np.ndarray):
                    np.testing.assert_allclose(t, s, rtol=1e-6, atol=1e-6)
            arrays = [(s, a) for s, a in zip(serial, args) if isinstance(a, np.ndarray)]
            assert any(not np.array_equal(s, a) for s, a in arrays), f"{name} changed nothing"


def test_numba_matmul_uses_numba_blas_for_what_np_dot_takes(rng):
    """C and transposed operands go through numba's BLAS; strided views and mixed dtypes fall
    back to NumPy's; all give a @ b."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    be = get_backend("numba")
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((7, 3)).astype(np.float32)
    cases = [
        (a, b, "blas (numba)"),
        (b.T, a.T, "blas (numba)"),
        (a[:, ::2], b[::2], "blas"),
        (a.astype(np.float64), b, "blas"),
    ]
    for x, y, path in cases:
        np.testing.assert_allclose(be.matmul(x, y), x @ y, rtol=1e-5, atol=1e-6)
        assert be.kernel_report["matmul"] == path
    out = np.empty((5, 3), np.float32)
    assert be.matmul(a, b, out) is out
