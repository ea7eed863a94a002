"""The NumPy backend's optimizer updates in the CPU's flush-to-zero mode (fastnet.backends.fpmode):
scoped to the update, the same results as flushing the state explicitly, subnormal state zero."""

import numpy as np
import pytest
from test_kernels import UPDATES, Group

from fastnet.backends import Backend
from fastnet.backends.fpmode import FlushToZero, flush_to_zero

needs_mode = pytest.mark.skipif(
    not flush_to_zero.available, reason="no flush-to-zero mode here (x86-64 glibc only)"
)


def subnormal_product() -> float:
    return float((np.array([1e-30], np.float32) * np.float32(1e-10))[0])


@needs_mode
def test_the_mode_holds_for_the_call_only_even_when_it_raises():
    assert flush_to_zero.run(subnormal_product) == 0.0
    assert subnormal_product() != 0.0  # user code still computes subnormals

    def failing():
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        flush_to_zero.run(failing)
    assert subnormal_product() != 0.0
    with np.errstate(under="raise"):  # NumPy's error handling sees the mode's underflow
        with pytest.raises(FloatingPointError):
            flush_to_zero.run(subnormal_product)


@needs_mode
def test_the_first_use_check_keeps_a_users_seterr_and_sets_the_mode_once_verified():
    """``np.seterr(all="raise")`` (hunting NaNs): the check's own underflow raised
    FloatingPointError from the first optimizer update, and the mode was left unverified."""
    fresh = FlushToZero()
    with np.errstate(all="raise"):
        assert fresh.available
        with pytest.raises(FloatingPointError):
            subnormal_product()  # (the user's setting stands)
    assert fresh.run(subnormal_product) == 0.0


def test_without_the_mode_the_call_runs_as_it_is(monkeypatch):
    import fastnet.backends.fpmode as fpmode

    monkeypatch.setattr(fpmode, "_glibc_mode_calls", lambda: (None, None))
    unavailable = FlushToZero()
    assert not unavailable.available
    assert unavailable.run(subnormal_product) != 0.0


@needs_mode
@pytest.mark.parametrize("rule", sorted(UPDATES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_updates_in_the_mode_equal_explicit_flushing(rule, dtype, rng, monkeypatch):
    """Subnormal-seeded slots and zero gradients (blank pixels' weights): parameters and state
    bit for bit as with the explicit flush, the seeded state zero; built-in rules with state
    ran in the mode, none flushed explicitly."""
    n, tiny = 3000, np.finfo(dtype).tiny
    p0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    for g in grads:
        g[-100:] = 0  # (undecayed: Group decays the first half)
    runs = []
    monkeypatch.setattr(
        flush_to_zero, "run", lambda fn, *a, run=flush_to_zero.run: runs.append(1) or run(fn, *a)
    )
    flushed = []
    explicit = Backend._flush_subnormal
    monkeypatch.setattr(
        Backend, "_flush_subnormal", lambda self, *a: flushed.append(1) or explicit(self, *a)
    )
    groups = []
    for mode in (True, False):
        runs.clear()
        flushed.clear()
        be = Backend()
        be.flush_mode = mode
        group = Group(be, UPDATES[rule](), p0.copy(), n, dtype)
        for slot in group.slots:
            slot[-100:] = tiny / 8
        for g in grads:
            group.step(g)
        stateful = mode and bool(UPDATES[rule]().slots)  # (SGD: no state, no mode, as numba)
        assert (len(runs), len(flushed)) == ((3, 0) if stateful else (0, 3)), (runs, flushed)
        groups.append(group)
    on, off = groups
    np.testing.assert_array_equal(on.p, off.p)
    for a, b in zip(on.slots, off.slots, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[-100:], 0)
    assert subnormal_product() != 0.0


@needs_mode
def test_a_rule_of_ones_own_is_flushed_explicitly(monkeypatch):
    """A rule without a built-in kernel runs its own NumPy code as written (not in the mode:
    its arithmetic is the user's); its state is flushed after it."""
    from fastnet.optimizers import Momentum

    class Heavy(Momentum):
        def reference(self, xp, p, g, slots, step, eps, constants):
            (v,) = slots
            v *= 0.5
            v += g
            p -= step * v

    assert Heavy().kernel == ""
    runs = []
    monkeypatch.setattr(flush_to_zero, "run", lambda fn, *a: runs.append(1))
    be = Backend()
    group = Group(be, Heavy(0.1), np.ones(8), 8, np.float64)
    group.slots[0][:] = np.finfo(np.float64).tiny / 4
    group.step(np.zeros(8))
    assert not runs
    np.testing.assert_array_equal(group.slots[0], 0)


@pytest.mark.parametrize("rule", ["adam", "adamw", "momentum", "rmsprop", "adagrad"])
def test_a_subnormal_clip_scale_is_no_zero_in_the_mode(rule):
    """float32 gradients of global norm 2e38 under clip_norm=1 scale by 5e-39, a subnormal:
    numba's serial update in the CPU's flush-to-zero mode read the scale as 0 and left the
    weights where they were; such a call flushes explicitly, as NumPy's scales first."""
    import fastnet as fn
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    made = {
        "adam": lambda: fn.Adam(0.01, clip_norm=1.0),
        "adamw": lambda: fn.AdamW(0.01, clip_norm=1.0),
        "momentum": lambda: fn.Momentum(0.1, clip_norm=1.0),
        "rmsprop": lambda: fn.RMSProp(0.01, clip_norm=1.0),
        "adagrad": lambda: fn.AdaGrad(0.1, clip_norm=1.0),
    }
    g = np.full(4, 1e38, np.float32)
    results = []
    for name in ("numpy", "numba"):
        backend, opt = get_backend(name), made[rule]()
        p = np.ones(4, np.float32)
        slots = tuple(np.zeros_like(p) for _ in opt.slots)
        s, checks = np.zeros(8), np.zeros(2)
        s[0] = opt.lr
        backend.sum_squares(g, checks[:1])
        backend.advance_scalars(s, checks, opt.scalar_constants())
        assert 0 < np.float32(s[5]) < np.finfo(np.float32).tiny
        backend.update(opt, p, g, slots, s, opt.constants(), 4, 0.0, opt.clip_value)
        results.append(p)
    assert (results[1] < 1).all()  # (it moved)
    np.testing.assert_array_equal(results[1], results[0])


def test_an_infinite_weight_undecayed_stays_and_float32_loss_sums_do_not_overflow():
    """numba's update added ``wd * p`` with wd 0 to undecayed elements: an infinite weight
    became NaN and NaN-poisoned its optimizer state. NumPy's softmax cross-entropy summed
    float32 row losses in float32: four rows of 2e38 overflowed to inf (numba's mean: 2e38)."""
    import fastnet as fn
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    made = [(fn.SGD(0.1, weight_decay=0.05), 1), (fn.Momentum(0.1, clip_value=1.0), 2)]
    for rule, n_decay in [*made, (fn.AdamW(0.01), 2)]:
        results = []
        for name in ("numpy", "numba"):
            backend = get_backend(name)
            p, g = np.array([1.0, np.inf]), np.array([0.5, 0.5])
            slots = tuple(np.zeros(2) for _ in rule.slots)
            s, checks = np.zeros(8), np.zeros(2)
            s[0] = rule.lr
            backend.advance_scalars(s, checks, rule.scalar_constants())
            wd = 0.0 if rule.decoupled else rule.weight_decay
            backend.update(rule, p, g, slots, s, rule.constants(), n_decay, wd, rule.clip_value)
            results.append((p, *slots))
        for want, got in zip(*results):
            np.testing.assert_array_equal(got, want, err_msg=type(rule).__name__)
        assert not any(np.isnan(a).any() for a in results[1]), type(rule).__name__
    logits, labels = np.array([[1e38, -1e38]] * 4, np.float32), np.ones(4, np.int64)
    for name in ("numpy", "numba"):
        loss = get_backend(name).softmax_xent(logits, labels)[0]
        assert float(loss) == pytest.approx(2e38, rel=1e-6) and loss.dtype == np.float32, name
