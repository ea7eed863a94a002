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
