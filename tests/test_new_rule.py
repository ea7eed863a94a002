"""Adding an update rule touches the rule (optimizers.py style), one numba kernel and one CUDA
kernel, nothing else. Here Lion (Chen et al. 2023) is written in this file alone and trains on
numpy (its NumPy reference) and numba (its reference, then its own numba kernel)."""

import numpy as np
import pytest

import fastnet as fn
from fastnet.backends import probe
from fastnet.optimizers import Optimizer


class Lion(Optimizer):
    """``c = b1 m + (1 - b1) g; p -= lr sign(c); m = b2 m + (1 - b2) g``, decoupled decay."""

    name = kernel = "lion"
    slots = ("m",)
    decoupled = True

    def __init__(self, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, **clipping):
        super().__init__(lr, weight_decay, **clipping)
        self.beta1, self.beta2 = beta1, beta2

    def constants(self):
        return (self.beta1, self.beta2)

    def reference(self, xp, p, g, slots, step, eps, constants):
        (m,), (beta1, beta2) = slots, constants
        p -= step * xp.sign(beta1 * m + (1 - beta1) * g)
        m *= beta2
        m += (1 - beta2) * g


def _lion_kernels():
    """What the rule's numba kernel in kernels/numba_cpu.py would be."""
    from numba import njit, prange

    @njit(cache=False)
    def lion_update(p, g, m, s, beta1, beta2, wd, n_decay, clip, tiny):
        t = p.dtype.type
        step, shrink, gscale = t(s[2]), t(s[4]), t(s[5])
        one = t(1)
        for i in prange(p.shape[0]):
            gi = g[i] * gscale
            gi = clip if gi > clip else (-clip if gi < -clip else gi)
            c = beta1 * m[i] + (one - beta1) * gi
            pi = p[i] * (shrink if i < n_decay else one)
            p[i] = pi - step * (one if c > 0 else (-one if c < 0 else c - c))
            mi = beta2 * m[i] + (one - beta2) * gi
            m[i] = mi if abs(mi) >= tiny else mi - mi

    return lion_update, lion_update


def _train(backend):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((120, 6)), rng.integers(0, 3, 120)
    model = fn.Sequential(
        [fn.Dense(8, "relu"), fn.Dense(3)],
        optimizer=Lion(1e-2, weight_decay=0.1),
        backend=backend,
        dtype="float64",
        seed=1,
    )
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    return model


def test_a_rule_written_elsewhere_trains_on_numpy_and_numba(monkeypatch):
    if not probe("numba").available:
        pytest.skip("numba unavailable")
    from fastnet.kernels import numba_cpu

    reference = _train("numpy")
    assert reference.backend.kernel_report["update_lion"] == "reference"
    numba_ref = _train("numba")  # no numba kernel yet: the reference runs
    assert numba_ref.backend.kernel_report["update_lion"] == "reference"
    serial, parallel = _lion_kernels()
    monkeypatch.setattr(numba_cpu, "lion_update", serial, raising=False)
    monkeypatch.setattr(numba_cpu, "lion_update_parallel", parallel, raising=False)
    fused = _train("numba")
    assert fused.backend.kernel_report["update_lion"] == "numba-fused"
    for model in (numba_ref, fused):
        for a, b in zip(model.arena.groups, reference.arena.groups):
            np.testing.assert_allclose(a.values, b.values, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(a.slots["m"], b.slots["m"], rtol=1e-10, atol=1e-12)
    assert reference.history["loss"][-1] < reference.history["loss"][0]
