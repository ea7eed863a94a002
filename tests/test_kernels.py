"""Every backend's ops against the NumPy reference: float32 and float64, extreme logits,
non-contiguous inputs, and property tests."""

import numpy as np
import pytest
from conftest import to_np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnet.backends import get_backend
from fastnet.backends.base import Act
from fastnet.optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, AdamW, Momentum, RMSProp

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = [np.float32, np.float64]
ACTS = [int(a) for a in Act]  # every code: one without a kernel branch must fall back


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


def _bce(backend, logits, targets, weights=None):
    """(summed loss, correct count, gradient) as the training step accumulates them."""
    from fastnet.losses import SigmoidBinaryCrossEntropy

    loss, totals = SigmoidBinaryCrossEntropy(), backend.zeros((2,), np.float64)
    loss.build(backend)
    grad = loss.accumulate(logits, targets, weights, totals)
    totals = backend.to_numpy(totals)
    return totals[0], totals[1], grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
@pytest.mark.parametrize("shape", [(64, 1), (33, 5)])
def test_sigmoid_bce_kernels_match_the_reference(fast_backend, ref, rng, dtype, scale, shape):
    """numba's kernel (its eager op and its fused step's) and the CUDA one against the NumPy
    reference, with weights, flat and integer labels, non-contiguous logits and logits of
    +-1e4, into a kept gradient buffer."""
    be = fast_backend
    base = (rng.standard_normal((shape[0], 2 * shape[1])) * scale).astype(dtype)
    weights = rng.random(shape[0]).astype(dtype)
    labels = rng.integers(0, 2, shape[0] if shape[1] == 1 else shape)
    for targets in (labels, rng.random(shape).astype(dtype)):
        for w in (None, weights):
            want = _bce(ref, base[:, ::2], targets, w)
            a = be.asarray
            got = _bce(be, a(base)[:, ::2], a(targets), None if w is None else a(w))
            got = (got[0], got[1], be.to_numpy(got[2]))
            assert np.isfinite(got[0]) and np.isfinite(got[2]).all()
            np.testing.assert_allclose(got[0], want[0], rtol=TOL[dtype]["rtol"] * 10)
            assert got[1] == want[1]
            np.testing.assert_allclose(got[2], want[2], **TOL[dtype])
    assert be.kernel_report["sigmoid_bce"].endswith("-fused")


def test_sigmoid_bce_gradient_is_the_losss_derivative(backend, rng):
    """Every backend's op (the NumPy reference included) against central differences of its
    own loss, and its loss against ``SigmoidBinaryCrossEntropy.compute``'s expression."""
    from fastnet.losses import SigmoidBinaryCrossEntropy

    a, h = backend.asarray, 1e-6
    logits, targets, w = rng.standard_normal((6, 3)), rng.random((6, 3)), rng.random(6)
    loss, _, grad = _bce(backend, a(logits), a(targets), a(w))
    expression = SigmoidBinaryCrossEntropy()
    expression.build(get_backend("numpy"))
    assert loss / 6 == pytest.approx(float(expression.compute(logits, targets, w)[0]), rel=1e-12)
    grad = backend.to_numpy(grad)
    for i, j in np.ndindex(*logits.shape):
        up, down = logits.copy(), logits.copy()
        up[i, j] += h
        down[i, j] -= h
        slope = (
            (
                _bce(backend, a(up), a(targets), a(w))[0]
                - _bce(backend, a(down), a(targets), a(w))[0]
            )
            / (2 * h)
            / 6
        )
        assert slope == pytest.approx(grad[i, j], rel=1e-6, abs=1e-9)


def test_sigmoid_bce_extreme_logits_float32(backend):
    logits = backend.asarray(np.array([[1e4], [-1e4], [1e4], [0.0]], np.float32))
    loss, correct, grad = _bce(backend, logits, backend.asarray(np.array([0, 0, 1, 1])))
    assert loss == pytest.approx(1e4 + np.log(2), rel=1e-6) and correct == 2
    np.testing.assert_array_equal(backend.to_numpy(grad)[:, 0], np.float32([0.25, 0, 0, -0.125]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_logits_give_the_exact_finite_loss(backend, dtype):
    """A class masked with a -inf logit: 0 * -inf made one-hot/soft targets' loss NaN (the
    integer label's was finite), and sigmoid BCE's at z = -inf, t = 0 or z = +inf, t = 1."""
    from fastnet.losses import SigmoidBinaryCrossEntropy

    logits = np.array([[2.0, -np.inf, 0.5], [-np.inf, 1.0, 1.0]], dtype)
    labels, onehot = np.array([0, 2]), np.eye(3, dtype=dtype)[[0, 2]]
    want = (np.log1p(np.exp(-1.5)) + np.log(2)) / 2
    for targets, share in ((labels, 1.0), (onehot, 1.0), (onehot * 0.5, 0.5)):  # (soft rows)
        loss, d = backend.softmax_xent(backend.asarray(logits), backend.asarray(targets))
        assert float(loss) == pytest.approx(share * want, rel=1e-6)
        assert np.isfinite(to_np(backend, d)).all()
    z = np.array([[-np.inf, np.inf, -np.inf, 0.0]], dtype)
    t = np.array([[0.0, 1.0, 1.0, 1.0]], dtype)
    loss, _, grad = _bce(backend, backend.asarray(z), backend.asarray(t))
    assert loss == np.inf and np.isfinite(to_np(backend, grad)).all()  # (-inf labelled 1)
    t[0, 2] = 0.0
    loss, _, grad = _bce(backend, backend.asarray(z), backend.asarray(t))
    assert loss == pytest.approx(np.log(2) / 4, rel=1e-6)
    bce = SigmoidBinaryCrossEntropy()
    bce.build(backend)
    assert float(bce.compute(backend.asarray(z), backend.asarray(t))[0]) == pytest.approx(
        np.log(2) / 4, rel=1e-6
    )


def _squares(backend, outputs, targets, weights=None, scale=1.0):
    """(summed loss, gradient) of the mean squared error as the training step accumulates."""
    from fastnet.losses import MeanSquaredError

    loss, totals = MeanSquaredError(scale), backend.zeros((2,), np.float64)
    loss.build(backend)
    grad = loss.accumulate(outputs, targets, weights, totals)
    return backend.to_numpy(totals)[0], backend.to_numpy(grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 1), (33, 5)])
def test_squared_error_kernels_match_the_reference(fast_backend, ref, rng, dtype, shape):
    """numba's kernel (its eager op and its fused step's) and the CUDA one against the NumPy
    reference: weights, flat targets, non-contiguous outputs, a scale, values of 1e15."""
    be, a = fast_backend, fast_backend.asarray
    for magnitude in (1.0, 1e15):
        base = (rng.standard_normal((shape[0], 2 * shape[1])) * magnitude).astype(dtype)
        targets = rng.standard_normal(shape).astype(dtype)
        flat = targets[:, 0] if shape[1] == 1 else targets
        for w in (None, rng.random(shape[0]).astype(dtype)):
            want = _squares(ref, base[:, ::2], flat, w, 2.5)
            got = _squares(be, a(base)[:, ::2], a(flat), None if w is None else a(w), 2.5)
            np.testing.assert_allclose(got[0], want[0], rtol=TOL[dtype]["rtol"] * 10)
            np.testing.assert_allclose(got[1], want[1], **TOL[dtype])
    assert be.kernel_report["squared_error"].endswith("-fused")


def test_squared_error_gradient_is_the_losss_derivative(backend, rng):
    """Every backend's op (the NumPy reference included) against central differences of its
    own loss, and its loss against ``MeanSquaredError.compute``'s expression."""
    from fastnet.losses import MeanSquaredError

    a, h = backend.asarray, 1e-6
    outputs, targets, w = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), rng.random(6)
    loss, grad = _squares(backend, a(outputs), a(targets), a(w), 1.5)
    expression = MeanSquaredError(1.5)
    expression.build(get_backend("numpy"))
    assert loss / 6 == pytest.approx(float(expression.compute(outputs, targets, w)[0]), rel=1e-12)
    for i, j in np.ndindex(*outputs.shape):
        up, down = outputs.copy(), outputs.copy()
        up[i, j] += h
        down[i, j] -= h
        rise = _squares(backend, a(up), a(targets), a(w), 1.5)[0]
        fall = _squares(backend, a(down), a(targets), a(w), 1.5)[0]
        assert (rise - fall) / (2 * h) / 6 == pytest.approx(grad[i, j], rel=1e-6, abs=1e-9)


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


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activations_carry_nan_and_inf_as_the_reference(backend, ref, act):
    """A NaN reaching an activation stays NaN on every backend (a ReLU that made it 0 would
    hide a diverged layer from the loss and from on_divergence); infinities as NumPy gives."""
    from fastnet.backends.base import Act

    code = Act[act.upper()]
    z = np.array([[np.nan, np.inf, -np.inf, -0.0, 1.5, -2.0]], np.float32)
    b = np.zeros(6, np.float32)
    want = ref.activation(z.copy(), code, 0.01)
    got = to_np(backend, backend.activation(backend.asarray(z), code, 0.01))
    fused = to_np(backend, backend.bias_act(backend.asarray(z), backend.asarray(b), code, 0.01))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)  # NaN only where NaN
    np.testing.assert_allclose(fused, want, rtol=1e-6, atol=0)
    # backward: ReLU's gradient is a select, 0 where the unit is off even for an infinite or
    # NaN dy (cuBLASLt's DRELU epilogue, PyTorch, JAX); NumPy's dy * mask gave NaN there,
    # so a step that diverged on numpy trained on with numba
    y = np.tile(ref.activation(np.array([[-1, -0.0, 0, 2, -3, 4]], np.float32), code), (2, 1))
    dy = np.tile(np.array([[np.inf, np.nan, -np.inf, np.inf, np.nan, 1]], np.float32), (2, 1))
    with np.errstate(invalid="ignore"):  # (sigmoid's, tanh's inf * 0)
        want = ref.activation_backward(y, dy, code, 0.01)
    if act == "relu":
        np.testing.assert_array_equal(want[0], [0, 0, 0, np.inf, 0, 1])
    Y, DY = backend.asarray(y), backend.asarray(dy)
    got = to_np(backend, backend.activation_backward(Y, DY, code, 0.01))
    dz, db = backend.asarray(np.empty_like(y)), backend.asarray(np.empty(6, np.float32))
    backend.act_backward_bias(Y, DY, code, 0.01, dz, db)
    for have in (got, to_np(backend, dz)):
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(to_np(backend, db), want.sum(axis=0), rtol=1e-6, atol=0)


UPDATES = {
    "sgd": lambda: SGD(0.1, weight_decay=0.01),
    "momentum": lambda: Momentum(0.1, 0.9, weight_decay=0.01),
    "nesterov": lambda: Momentum(0.1, 0.9, nesterov=True),
    "adagrad": lambda: AdaGrad(0.1, 1e-7, weight_decay=0.01),
    "rmsprop": lambda: RMSProp(0.01, 0.9, 1e-7, weight_decay=0.01),
    "adam": lambda: Adam(1e-3, weight_decay=0.01),
    "adamw": lambda: AdamW(1e-3, weight_decay=0.1, clip_norm=0.5, clip_value=0.3),
}


def test_every_optimizer_and_update_kernel_is_in_these_tables():
    """A new optimizer (or numba update kernel) is tested here against its reference only once
    it has settings in ``UPDATES`` (and arguments in ``_F32_KERNEL_ARGS``): say so."""
    assert sorted(UPDATES) == OPTIMIZERS.builtin()
    from fastnet.backends import probe

    if probe("numba").available:
        from fastnet.kernels import numba_cpu

        kernels = {k for k in vars(numba_cpu) if k.endswith("_update") and not k.startswith("_")}
        assert kernels == set(_UPDATE_KERNELS)


class Group:
    """A flat parameter group as the arena holds one, stepped through the backend ops."""

    def __init__(self, be, rule, p, size, dtype):
        self.be, self.rule, self.p = be, rule, p
        self.slots = tuple(be.zeros(size, dtype) for _ in rule.slots)
        self.s, self.norm_sq = be.zeros((8,), np.float64), be.zeros((2,), np.float64)
        be.fill(self.s[0:1], rule.lr)

    def step(self, g):
        be, rule = self.be, self.rule
        be.fill(self.norm_sq, 0.0)
        be.sum_squares(g, self.norm_sq[:1])
        be.advance_scalars(self.s, self.norm_sq, rule.scalar_constants())
        n_decay = int(np.prod(self.p.shape)) // 2
        wd = 0.0 if rule.decoupled else rule.weight_decay
        be.update(
            rule, self.p, g, self.slots, self.s, rule.constants(), n_decay, wd, rule.clip_value
        )


def _last_update_call(be):
    """(kernel, arguments) of the numba backend's latest cached update."""
    call = list(be._update_calls.values())[-1]
    return call.kernel, call.args()


def test_numba_update_cache_keeps_no_dead_model_alive():
    """The numba backend caches each group's update arguments, holding the arrays weakly: a
    fitted model, once dropped, frees its parameters and optimizer state (the cache held up
    to 65 dead models' arrays, 12 MB per ``MLPClassifier((1024,))`` fit) and its entry goes;
    the last model's cached inference arguments go with it."""
    import gc
    import weakref

    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    import fastnet as fn

    X = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    y = np.arange(64) % 3
    layers = [fn.Dense(8, "relu"), fn.Dense(3)]
    model = fn.Sequential(layers, optimizer=Adam(1e-3), backend="numba", seed=0)
    del layers
    be = model.backend
    before = set(be._update_calls)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    model.predict(X)  # (its fused inference's arguments are cached too)
    (key,) = set(be._update_calls) - before
    arrays = [weakref.ref(a()) for a in be._update_calls[key].arrays]
    assert len(arrays) == 5  # parameters, gradients, Adam's two slots, device scalars
    assert be._infer_cache.args[0][0].base is arrays[0]()  # the first Dense's weight
    del model
    gc.collect()
    assert [a() for a in arrays] == [None] * 5
    assert key not in be._update_calls and be._infer_cache is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", sorted(UPDATES))
@pytest.mark.parametrize("size", [(10,), (784 * 256,), (1500 * 1000,)])
def test_fused_optimizer_updates_match_reference(fast_backend, ref, rng, dtype, rule, size):
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    be = fast_backend
    expected = Group(ref, UPDATES[rule](), p0.copy(), size, dtype)
    got = Group(be, UPDATES[rule](), be.asarray(p0), size, dtype)
    for g in grads:
        expected.step(g)
        got.step(be.asarray(g))
    assert be.kernel_report[f"update_{got.rule.kernel}"] != "reference"
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(to_np(be, got.p), expected.p, **tol)
    for a, b in zip(got.slots, expected.slots):
        np.testing.assert_allclose(to_np(be, a), b, **tol)
    np.testing.assert_allclose(to_np(be, got.s), expected.s, rtol=1e-12)  # norm: sum order


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
    got = Group(be, UPDATES[rule](), full.copy()[:, ::2], (40, 15), np.float32)
    expected = Group(ref, UPDATES[rule](), full[:, ::2].copy(), (40, 15), np.float32)
    for g in grads:
        got.step(g)
        expected.step(g)
    op = f"update_{got.rule.kernel}"
    assert be.kernel_report[op] == "reference"
    np.testing.assert_allclose(got.p, expected.p, rtol=1e-6, atol=1e-7)
    got.p = np.ascontiguousarray(got.p)
    got.step(grads[0])
    assert be.kernel_report[op] == "numba-fused"


@pytest.mark.parametrize("rule", sorted(UPDATES))
def test_updates_flush_subnormal_state(backend, rng, rule):
    """Optimizer state never holds subnormal floats (they make every later update of them many
    times slower on Intel cores): slots seeded with subnormals, under zero gradients (the
    weights of always-blank pixels), come out zero; normal slots stay normal."""
    tiny = np.finfo(np.float32).tiny
    n = 4096
    g = rng.standard_normal(n).astype(np.float32)
    g[: n // 4] = 0
    p = rng.standard_normal(n).astype(np.float32)
    p[: n // 4] = 0  # no decay term either
    got = Group(backend, UPDATES[rule](), backend.asarray(p), n, np.float32)
    for slot in got.slots:
        seeded = np.abs(rng.standard_normal(n)).astype(np.float32) + 1
        seeded[: n // 4] = tiny / 8
        slot[...] = backend.asarray(seeded)
    got.step(backend.asarray(g))
    for slot in got.slots:
        state = to_np(backend, slot)
        np.testing.assert_array_equal(state[: n // 4], 0)
        assert (np.abs(state[n // 4 :]) >= tiny).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_flush_zeroes_subnormals_of_either_sign_and_keeps_nan_and_inf(ref, dtype):
    tiny = np.finfo(dtype).tiny
    values = [tiny / 8, -tiny / 8, tiny / 2**20, 0.0, tiny, -tiny, 1.5, -3.0, np.nan, np.inf]
    a = np.array(values + [-np.inf], dtype=dtype)
    ref._flush_subnormal((a,), tiny)
    expected = np.array([0, 0, 0, 0, tiny, -tiny, 1.5, -3.0, np.nan, np.inf, -np.inf], dtype)
    np.testing.assert_array_equal(a, expected)
    assert a.dtype == dtype
    assert not np.signbit(a[0]) and np.signbit(a[1])  # flushed as the CPU's FTZ mode does


@pytest.mark.parametrize("rule", sorted(UPDATES))
def test_flushing_leaves_normal_updates_bit_for_bit(ref, rng, rule):
    """Where no state value is subnormal, the update is the published rule exactly."""
    n = 1000
    p0, g = (rng.standard_normal(n) for _ in range(2))
    group = Group(ref, UPDATES[rule](), p0.copy(), n, np.float64)
    group.step(g)
    r = group.rule
    p, slots = p0.copy(), tuple(np.zeros(n) for _ in r.slots)
    s = group.s
    geff = np.clip(g * s[5], -(r.clip_value or np.inf), r.clip_value or np.inf)
    if r.weight_decay and not r.decoupled:
        geff[: n // 2] += r.weight_decay * p[: n // 2]
    p[: n // 2] *= s[4]
    r.reference(np, p, geff, slots, s[2], s[3], r.constants())
    np.testing.assert_array_equal(group.p, p)
    for a, b in zip(group.slots, slots):
        np.testing.assert_array_equal(a, b)


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


def _scalars(shrink=0.99, gscale=0.9):
    """Device scalars of an update: lr, t, step size, eps, decay shrink, clip scale."""
    return np.array([0.5, 1.0, 0.5, 0.5, shrink, gscale, 0.0, 0.0])


def _tail(wd=_F32, clip=3.0):
    """The updates' trailing arguments: wd, n_decay, clip, tiny."""
    return (np.float32(wd), 32, np.float32(clip), np.finfo(np.float32).tiny)


#: the derived constants the backend passes after ``tiny`` (``Optimizer.derived_constants``:
#: 1 - beta, computed in float64 and rounded once; 1 - 0.5 here)
_DERIVED = {"rmsprop_update": (_F32,), "adam_update": (_F32, _F32)}


def _tiny_at(name, args):
    """Where ``tiny`` is in an update kernel's ``args`` (the derived constants follow it)."""
    return len(args) - 1 - len(_DERIVED.get(name, ()))


_F32_KERNEL_ARGS = {
    "bias_act": lambda a, v: [(a((8, 16)), v(16), code, _F32) for code in ACTS],
    "act_backward_bias": lambda a, v: [
        (a((8, 16)), a((8, 16)), code, _F32, a((8, 16)), v(16)) for code in ACTS
    ],
    "sgd_update": lambda a, v, s=None, t=None: [(v(64), v(64), _S(s), *_T(t))],
    "momentum_update": lambda a, v, s=None, t=None: [
        (v(64), v(64), v(64), _S(s), _F32, np.float32(1), *_T(t))
    ],
    "adagrad_update": lambda a, v, s=None, t=None: [(v(64), v(64), v(64), _S(s), *_T(t))],
    "rmsprop_update": lambda a, v, s=None, t=None: [
        (v(64), v(64), v(64), _S(s), _F32, *_T(t), *_DERIVED["rmsprop_update"])
    ],
    "adam_update": lambda a, v, s=None, t=None: [
        (v(64), v(64), v(64), v(64), _S(s), _F32, _F32, *_T(t), *_DERIVED["adam_update"])
    ],
}


def _S(s):
    return _scalars() if s is None else s


def _T(t):
    return _tail() if t is None else t


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


_VECTOR_LOOPS = {  # kernel: (options, arguments, vector loops it must have at least)
    # linear, relu and leaky ReLU (sigmoid and tanh call libm's scalar exp/tanh)
    "bias_act": ("SERIAL", lambda a, v: (a((8, 16)), v(16), 1, _F32), 3),
    # the five activation derivatives and the bias-gradient row sum
    "act_backward_bias": (
        "SERIAL",
        lambda a, v: (a((8, 16)), a((8, 16)), 1, _F32, a((8, 16)), v(16)),
        6,
    ),
    # the exp over the whole block and its 2**n scaling
    "softmax_xent": (
        "REDUCE",
        lambda a, v: (
            a((8, 16)),
            np.zeros(8, np.int64),
            a((0, 0)),
            a((8, 16)),
            np.float32(0.125),
            True,
            v(0),
            np.float32(0),
        ),
        2,
    ),
}


@pytest.mark.parametrize("name", sorted(_VECTOR_LOOPS))
def test_numba_elementwise_kernels_vectorize(name):
    """The step's elementwise kernels compile to SIMD loops, as wide as the host allows: at
    least 8 float32 lanes where the CPU has AVX2. (On AVX-512 CPUs LLVM's tuning for
    Skylake-SP and Sapphire Rapids prefers 256-bit vectors; forcing 512-bit ones measured no
    faster on a Skylake-SP Xeon, see README.)"""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    import re

    import llvmlite.binding as llvm
    from fastnet.kernels import numba_cpu
    from numba import njit

    options, make_args, loops = _VECTOR_LOOPS[name]
    fresh = njit(**{**getattr(numba_cpu, options), "cache": False})(
        getattr(numba_cpu, name).py_func
    )

    def full(shape):
        return np.full(shape, 0.25, np.float32)

    fresh(*make_args(full, full))
    ir = "\n".join(fresh.inspect_llvm().values())
    assert len(re.findall(r"^vector\.body[\d.]*:", ir, re.M)) >= loops, f"{name} lost a vector loop"
    if "+avx2" in llvm.get_host_cpu_features().flatten().split(","):
        assert re.search(r"<(8|16) x float>", ir), f"{name} uses vectors narrower than AVX2's"


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
    plain_args = _F32_KERNEL_ARGS[name](random, random, _scalars(1, 1), _tail(0, np.inf))[0]
    general = list(plain_args)
    general[_tiny_at(name, plain_args) - 1] = np.float32(1e30)  # clip
    plain = [a.copy() if isinstance(a, np.ndarray) else a for a in plain_args]
    general = [a.copy() if isinstance(a, np.ndarray) else a for a in general]
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
    """C and transposed operands go through the numba kernels' GEMM; strided views and mixed
    dtypes fall back to NumPy's matmul; all give a @ b."""
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


def test_numba_update_follows_changed_hyperparameters(ref, rng):
    """The numba backend keeps each group's prepared update call; a changed constant (beta1)
    or clip must still reach the kernel."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    be = get_backend("numba")
    p0 = rng.standard_normal(1000)
    got = Group(be, Adam(1e-2), p0.copy(), 1000, np.float64)
    expected = Group(ref, Adam(1e-2), p0.copy(), 1000, np.float64)
    for i, g in enumerate(rng.standard_normal((4, 1000))):
        if i == 2:
            for group in (got, expected):
                group.rule.beta1, group.rule.clip_value = 0.5, 0.1
        got.step(g)
        expected.step(g)
    np.testing.assert_allclose(got.p, expected.p, rtol=1e-12)


def test_parallel_update_threshold_override(monkeypatch):
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.backends.numba_backend import _parallel_min_updates

    monkeypatch.delenv("FASTNET_NUMBA_PARALLEL_UPDATES", raising=False)
    assert _parallel_min_updates() == 1 << 20
    monkeypatch.setenv("FASTNET_NUMBA_PARALLEL_UPDATES", "65536")
    assert _parallel_min_updates() == 65536
    monkeypatch.setenv("FASTNET_NUMBA_PARALLEL_UPDATES", "many")  # not a count: the default
    assert _parallel_min_updates() == 1 << 20


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "name", ["momentum_update", "adagrad_update", "rmsprop_update", "adam_update"]
)
def test_numba_flush_mode_updates_equal_explicit_flushing(name, dtype, rng):
    """``tiny=None`` runs an update in the CPU's flush-to-zero mode (x86-64): on normal inputs
    bit for bit what the explicit selects give, plain and with decay/clip; subnormal state
    comes out zero; the caller's mode (and so user code's subnormals) is untouched after."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_cpu, numba_fpmode
    from numba import njit

    if f"{name.removesuffix('_update')}" not in numba_cpu.FLUSH_MODE_RULES:
        pytest.skip("no flush-to-zero mode on this CPU architecture")
    read_mode = njit(lambda: numba_fpmode.read_mode())

    def mode():  # MXCSR's mode bits; bits 0-5 are sticky exception flags arithmetic sets
        return read_mode() & 0xFFC0

    kernel = getattr(numba_cpu, name)
    t, n = dtype, 1000
    tiny = t(np.finfo(dtype).tiny)

    def cast(a):  # the flat buffers; the scalars ``s`` stay float64, as the backend passes them
        return a.astype(dtype) if isinstance(a, np.ndarray) and a.shape == (n,) else a

    def random(shape):
        return np.abs(rng.standard_normal(n)).astype(dtype) + t(0.1)

    plain = _scalars(shrink=1.0, gscale=1.0)
    for s, tail in ((plain, (t(0), n, t(np.inf))), (_scalars(), (t(0.1), n // 2, t(3.0)))):
        (args,) = _F32_KERNEL_ARGS[name](random, random, s, (*tail, tiny))
        args = tuple(cast(t(a) if isinstance(a, np.float32) else a) for a in args)
        explicit = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        hardware = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        hardware[_tiny_at(name, args)] = None
        before = mode()
        kernel(*explicit)
        kernel(*hardware)
        assert mode() == before
        for e, h, a in zip(explicit, hardware, args):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(h, e)
        # subnormal state under zero gradients: zero after one update
        p, g = hardware[0], hardware[1]
        g[:] = 0
        slots = [a for a in hardware[2:] if isinstance(a, np.ndarray) and a.shape == p.shape]
        for slot in slots:
            slot[:] = tiny / 8
        kernel(*hardware)
        undecayed = slice(tail[1] if tail[0] else 0, n)  # no L2 term there
        for slot in slots:
            np.testing.assert_array_equal(slot[undecayed], 0)
        assert mode() == before
    assert t(tiny) * t(0.25) != 0  # user code still computes subnormals


@pytest.mark.parametrize("rule", sorted(UPDATES))
def test_numba_backend_flush_mode_on_and_off_agree(rng, rule):
    """The numba backend runs serial updates in flush-to-zero mode where the CPU has it
    (``tiny`` passed as None) and with explicit selects when ``flush_mode`` is False: the
    same parameters and state from subnormal-seeded slots."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.backends.numba_backend import NumbaBackend

    def tiny_at(args):  # the rule's derived constants (1 - beta) follow tiny
        r = UPDATES[rule]()
        return len(args) - 1 - len(r.derived_constants(r.constants()))

    n = 5000
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    for g in grads:
        g[:100] = 0
    groups = []
    for mode in (True, False):
        be = NumbaBackend()
        be.flush_mode = mode
        group = Group(be, UPDATES[rule](), p0.copy(), n, np.float32)
        for slot in group.slots:
            slot[:100] = np.float32(1e-39)
        for g in grads:
            group.step(g)
        kernel, args = _last_update_call(be)
        hardware = mode and UPDATES[rule]().kernel in be.k.FLUSH_MODE_RULES
        assert (args[tiny_at(args)] is None) == hardware
        groups.append(group)
    on, off = groups
    be = NumbaBackend()  # the threaded flavour: its workers do not inherit the mode
    be.parallel_min_updates = 1
    group = Group(be, UPDATES[rule](), p0.copy(), n, np.float32)
    group.step(grads[0])
    kernel, args = _last_update_call(be)
    assert kernel.__name__.endswith("_parallel") and args[tiny_at(args)] is not None
    np.testing.assert_array_equal(on.p, off.p)
    for a, b in zip(on.slots, off.slots):
        np.testing.assert_array_equal(a, b)
    assert get_backend("numba").flush_mode


@pytest.mark.parametrize(
    "rule",
    [Adam(1e-2, beta1=0.9, beta2=0.99999), AdamW(1e-2, beta2=0.9999), RMSProp(1e-2, rho=0.999)],
    ids=["adam", "adamw", "rmsprop"],
)
def test_numba_updates_take_one_minus_beta_computed_in_float64(rng, rule):
    """``1 - beta`` reaches the kernels computed in float64 and rounded once (what NumPy's
    reference computes from the Python floats), not in float32 from the rounded beta: 1.4e-3
    off for beta2 = 0.99999, where Adam's float32 steps were 7e-4 off. float64 updates are
    unchanged bit for bit (``1 - beta`` in float64 either way)."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    be = get_backend("numba")
    want = tuple(1.0 - c for c in rule.constants())
    assert rule.derived_constants(rule.constants()) == want
    for dtype in (np.float32, np.float64):
        n = 100
        p0, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
        group = Group(be, rule, p0.copy(), n, dtype)
        group.step(g)
        kernel, args = _last_update_call(be)
        derived = args[len(args) - len(want) :]
        assert [type(d) for d in derived] == [dtype] * len(want)
        assert derived == tuple(dtype(c) for c in want)
        # without them (a direct caller): 1 - beta in the parameters' dtype, from rounded beta
        group.step(g)
        _, args = _last_update_call(be)
        with_derived = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        without = [a.copy() if isinstance(a, np.ndarray) else a for a in args[: -len(want)]]
        kernel(*with_derived)
        kernel(*without)
        same = all(
            np.array_equal(a, b) for a, b in zip(with_derived, without) if isinstance(a, np.ndarray)
        )
        assert same == (dtype == np.float64)
    assert np.float32(1.0 - 0.99999) != np.float32(1) - np.float32(0.99999)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_gemm_matches_numpy_for_every_layout_and_edge_shape(rng, dtype):
    """The kernels' GEMM (NumPy's OpenBLAS, or np.dot fallbacks) against NumPy: C and
    transposed operands, one-row/one-column and empty shapes, and clear errors otherwise."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_blas

    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    numpy_openblas = config.get("name") == "scipy-openblas" and "USE64BITINT" in str(
        config.get("openblas configuration")
    )
    shapes = [(5, 3, 4), (1, 7, 1), (64, 300, 70), (0, 3, 2), (3, 0, 2), (1, 1, 1)]
    vectors = [(1, 300, 70), (70, 300, 1), (1, 7, 5), (6, 7, 1)]  # through GEMV
    for m, k, n in shapes + vectors:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        for x in (a, np.asfortranarray(a)):
            for y in (b, np.asfortranarray(b)):
                out = np.full((m, n), np.nan, dtype)
                numba_blas.gemm(x, y, out)
                np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-4)
                if numpy_openblas and (m, k, n) in vectors:  # NumPy's matmul: the same GEMV
                    np.testing.assert_array_equal(out, x @ y)
    # the views the kernels pass: row slices of scratch buffers, their transposes, read-only x
    big = rng.standard_normal((16, 9)).astype(dtype)
    w = rng.standard_normal((9, 5)).astype(dtype)
    scratch = np.full((16, 5), np.nan, dtype)
    x = big[:7]
    x.setflags(write=False)
    numba_blas.gemm(x, w, scratch[:7])
    np.testing.assert_allclose(scratch[:7], x @ w, rtol=1e-5, atol=1e-5)
    dw = np.empty((9, 5), dtype)
    numba_blas.gemm(big[:7].T, scratch[:7], dw)
    np.testing.assert_allclose(dw, big[:7].T @ scratch[:7], rtol=1e-5, atol=1e-4)
    numba_blas.gemm(big[:1], w, scratch[:1])
    np.testing.assert_allclose(scratch[:1], big[:1] @ w, rtol=1e-5, atol=1e-5)
    if numpy_openblas:
        assert numba_blas.SOURCE == "NumPy's OpenBLAS"
    a = rng.standard_normal((4, 6)).astype(dtype)
    with pytest.raises(ValueError, match="contiguous"):
        numba_blas.gemm(a[:, ::2], a[:3], np.empty((4, 4), dtype))
    with pytest.raises(ValueError, match="shapes"):
        numba_blas.gemm(a, a, np.empty((4, 4), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_gemm_fallback_computes_cblas_products(rng, dtype):
    """Where NumPy has no bundled ILP64 OpenBLAS, the GEMM symbols resolve to np.dot
    fallbacks with the CBLAS signature: every transpose pair gives a @ b."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_blas as nb

    fallback = nb._fallback(np.dtype(dtype).type).ctypes
    m, k, n = 5, 3, 4
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    for ta in (nb.NO_TRANS, nb.TRANS):
        for tb in (nb.NO_TRANS, nb.TRANS):
            x = a if ta == nb.NO_TRANS else np.ascontiguousarray(a.T)
            y = b if tb == nb.NO_TRANS else np.ascontiguousarray(b.T)
            out = np.full((m, n), np.nan, dtype)

            def ptr(arr):
                return arr.ctypes.data_as(fallback.argtypes[7])

            lda = k if ta == nb.NO_TRANS else m
            ldb = n if tb == nb.NO_TRANS else k
            fallback(nb.ROW_MAJOR, ta, tb, m, n, k, 1.0, ptr(x), lda, ptr(y), ldb, 0.0, ptr(out), n)
            np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_gemv_fallback_computes_cblas_products(rng, dtype):
    """The GEMV fallback (no NumPy OpenBLAS) with the CBLAS signature, both transposes."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_blas as nb

    fallback = nb._gemv_fallback(np.dtype(dtype).type).ctypes
    a = rng.standard_normal((5, 3)).astype(dtype)
    x3, x5 = rng.standard_normal(3).astype(dtype), rng.standard_normal(5).astype(dtype)

    def ptr(arr):
        return arr.ctypes.data_as(fallback.argtypes[5])

    y5, y3 = np.full(5, np.nan, dtype), np.full(3, np.nan, dtype)
    fallback(nb.ROW_MAJOR, nb.NO_TRANS, 5, 3, 1.0, ptr(a), 3, ptr(x3), 1, 0.0, ptr(y5), 1)
    np.testing.assert_allclose(y5, a @ x3, rtol=1e-5, atol=1e-5)
    fallback(nb.ROW_MAJOR, nb.TRANS, 5, 3, 1.0, ptr(a), 3, ptr(x5), 1, 0.0, ptr(y3), 1)
    np.testing.assert_allclose(y3, x5 @ a, rtol=1e-5, atol=1e-5)


def test_numba_kernels_cache_key_covers_the_helpers_they_inline():
    """numba's on-disk cache re-compiles numba_cpu.py's kernels when that file changes, not when
    numba_blas.py, numba_fpmode.py or numba_random.py (inlined into them) do: their hash lives
    in numba_cpu.py, so a change to a helper must edit numba_cpu.py too."""
    import hashlib
    from pathlib import Path

    kernels = Path(__file__).resolve().parents[1] / "kernels"
    digest = hashlib.sha256()
    for name in ("numba_blas.py", "numba_fpmode.py", "numba_random.py"):
        digest.update((kernels / name).read_bytes())
    source = (kernels / "numba_cpu.py").read_text()
    assert f'HELPERS_SHA256 = "{digest.hexdigest()}"' in source, digest.hexdigest()


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_softmax_xent_adds_the_correct_count_into_hits(backend_name):
    """``softmax_xent(..., hits=)`` counts as ``count_correct`` does (the training step's one
    loss op), for labels and one-hot targets, and leaves the loss and gradient unchanged."""
    from fastnet.backends import get_backend, probe

    if not probe(backend_name).available:
        pytest.skip(f"{backend_name} unavailable")
    be = get_backend(backend_name)
    r = np.random.default_rng(4)
    logits = r.integers(-2, 3, (50, 7)).astype(np.float32)
    labels = r.integers(0, 7, 50)
    for targets in (labels, np.eye(7, dtype=np.float32)[labels]):
        want = np.zeros(1)
        be.count_correct(logits, targets, want)
        plain = be.softmax_xent(logits, targets, loss_out=np.zeros(1), loss_scale=1.0)
        hits = np.full(1, 2.0)
        fused = be.softmax_xent(logits, targets, loss_out=np.zeros(1), loss_scale=1.0, hits=hits)
        assert hits[0] == want[0] + 2.0 and 0 < want[0] < 50
        np.testing.assert_array_equal(fused[0], plain[0])
        np.testing.assert_array_equal(fused[1], plain[1])


def test_an_activation_the_numba_kernels_lack_runs_the_reference(monkeypatch, ref, rng):
    """An ``Act`` code without a branch in the numba kernels computed tanh, silently (their
    last branch took every other code): now the kernels write NaN for it, and the backend
    runs the NumPy reference instead of them (its ops, fused inference and fused step)."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_cpu

    import fastnet as fn

    z, b, dy = (rng.standard_normal(s) for s in ((8, 16), (16,), (8, 16)))
    unknown = z.copy()
    numba_cpu.bias_act(unknown, b, 5, 0.0)
    assert np.isnan(unknown).all()
    monkeypatch.setattr(numba_cpu, "ACTIVATIONS", (0, 1, 2, 4))  # as if sigmoid had none
    be, sig = get_backend("numba"), Act.SIGMOID
    y = ref.bias_act(z.copy(), b, sig)
    for op, call in [
        ("bias_act", lambda: be.bias_act(z.copy(), b, sig)),
        ("activation", lambda: be.activation(z, sig)),
        ("act_backward_bias", lambda: be.act_backward_bias(y, dy, sig, 0.0, None, np.empty(16))),
        ("activation_backward", lambda: be.activation_backward(y, dy, sig)),
    ]:
        be.kernel_report.clear()
        got = call()  # (the reference: what ran is recorded as such)
        assert be.kernel_report[op] == "reference", (op, be.kernel_report)
        want = {"bias_act": y, "activation": ref.activation(z, sig)}.get(op)
        if want is not None:
            np.testing.assert_array_equal(got, want)
    X, labels = rng.standard_normal((64, 5)), np.arange(64) % 3
    model = fn.Sequential(
        [fn.Dense(8, "sigmoid"), fn.Dense(3)], backend=be, dtype="float64", seed=0
    )
    model.fit(X, labels, epochs=1, batch_size=16, verbose=0)
    assert "the numba kernels have no sigmoid" in model.step_description
    reference = fn.Sequential(
        [fn.Dense(8, "sigmoid"), fn.Dense(3)], backend="numpy", dtype="float64", seed=0
    )
    reference.fit(X, labels, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), rtol=1e-10)


@pytest.mark.parametrize("backend_name", ["numba"])
def test_a_nan_logit_is_each_backends_argmax_as_numpys(backend_name):
    """The first NaN of a row is its argmax, as NumPy's (numba's loop skipped NaNs past column
    0: a diverged batch's accuracy differed between backends), in labels and target rows."""
    from fastnet.backends import get_backend, probe

    if not probe(backend_name).available:
        pytest.skip(f"{backend_name} unavailable")
    be, ref = get_backend(backend_name), get_backend("numpy")
    nan = np.nan
    logits = np.array(
        [[0, nan, 1], [nan, 0, 2], [3, 1, nan], [nan, nan, 0], [1, 5, 5], [2, 1, 0]], np.float32
    )
    labels = np.array([1, 0, 2, 0, 1, 2])  # NaN rows: each is right where the NaN comes first
    targets = np.eye(3, dtype=np.float32)[labels]
    targets[5] = [0, nan, 1]  # a NaN target row's argmax is its first NaN (column 1): no hit
    for truth in (labels, targets):
        want, got = np.zeros(1), np.zeros(1)
        ref.count_correct(logits, truth, want)
        be.count_correct(logits, truth, got)
        assert got[0] == want[0] == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(0.1, weight_decay=0.05),
        lambda: Momentum(0.1, clip_value=1.0),
        lambda: AdamW(0.01),
    ],
)
def test_an_infinite_weight_an_update_does_not_decay_stays_infinite(backend, ref, make):
    """The fused updates added ``wd * p`` with wd 0 to undecayed elements: an infinite weight
    became NaN and NaN-poisoned its optimizer state (numba's and the CUDA kernel's), where the
    reference adds nothing."""
    results = []
    for be in (ref, backend):
        rule = make()
        group = Group(be, rule, be.asarray(np.array([1.0, np.inf])), 2, np.float64)
        group.step(be.asarray(np.array([0.5, 0.5])))  # (n_decay 1: the inf is not decayed)
        results.append([be.to_numpy(a) for a in (group.p, *group.slots)])
    for want, got in zip(*results):
        np.testing.assert_array_equal(got, want)
