"""Finite-difference gradient checks for layers and losses, in float64 only: float32 rounds
the ``eps`` steps (a relative error near 0.2 for a correct gradient), so every helper here
refuses it rather than upcast (the values are perturbed in place, in the model's own arrays)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastnet.callbacks import _accepts
from fastnet.validation import check_number, is_real


@dataclass
class GradcheckResult:
    """Worst relative error per checked quantity (``"input"``, parameter names, ``"logits"``)."""

    errors: dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(math.isfinite(err) and err <= self.tolerance for err in self.errors.values())

    def __str__(self) -> str:
        items = ", ".join(f"{k}={v:.2e}" for k, v in self.errors.items())
        return f"gradcheck {'passed' if self.ok else 'FAILED'} (tol {self.tolerance:.0e}): {items}"


def _require_float64(name: str, x: Any) -> None:
    if x.dtype != np.float64:
        raise ValueError(f"{name} is {x.dtype}: gradient checks need float64 (dtype='float64')")


def _check_tolerance(tolerance: Any, eps: Any) -> float:
    """``tolerance``, a number >= 0 (0: an exact match; inf: every finite error passes), after
    checking ``eps`` (> 0)."""
    check_number(eps, "eps", 0, opened="low")
    if is_real(tolerance) and tolerance == math.inf:
        return math.inf
    return check_number(tolerance, "tolerance", 0)


def numerical_gradient(f: Callable[..., float], x: Any, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of scalar ``f()`` w.r.t. float64 array ``x``, perturbed in
    place; an ``f`` that needs one argument is called ``f(x)``, as the notebooks' (``lambda W:
    net.loss(x, t)``). ``f`` must be deterministic: with Dropout in training mode, rewind its
    random stream (``layer.random_streams()``) before each forward, as ``check_layer`` does."""
    _require_float64("x", x)
    eps = check_number(eps, "eps", 0, opened="low")
    if not _accepts(f, 0) and _accepts(f, 1):
        f = functools.partial(f, x)
    first = f()
    if isinstance(first, tuple) or np.ndim(first) != 0:  # (model.loss: (loss, dout))
        raise TypeError(
            f"f must return one number, got {type(first).__name__}"
            + (": model.loss returns (loss, dout), take [0]" if isinstance(first, tuple) else "")
        )
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in np.ndindex(*x.shape):
        orig = float(x[idx])
        x[idx] = orig + eps
        f_plus = f()
        x[idx] = orig - eps
        f_minus = f()
        x[idx] = orig
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(analytic: Any, numeric: np.ndarray, floor: float = 0.0) -> float:
    """``||a - n|| / max(||a|| + ||n||, floor)``: 0 for equal gradients, 1 for unrelated ones.
    A gradient that is truly 0 (a bias right before BatchNorm) reads about 1 against its
    finite differences' rounding noise (~1e-10): pass ``floor``, the size of a gradient that
    matters (e.g. the norm of the others), to measure such noise against it instead. A NaN
    or infinite entry in either gradient reads ``inf`` (a check that fails)."""
    a = np.asarray(analytic, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(numeric).all()):
        return math.inf
    denom = max(float(np.linalg.norm(a) + np.linalg.norm(numeric)), floor)
    return float(np.linalg.norm(a - numeric) / denom) if denom > 0 else 0.0


def check_layer(
    layer: Any,
    x: Any,
    *,
    training: bool = True,
    eps: float = 1e-6,
    tolerance: float = 1e-6,
    seed: int | None = 0,
) -> GradcheckResult:
    """Compare ``layer.backward`` with finite differences of ``sum(forward(x) * R)``.

    ``layer`` must be built in float64 on some backend; ``x`` must live on that backend. Its
    random streams are rewound before each forward: Dropout keeps one mask for the check; they
    and its state buffers (BatchNorm's running statistics) are as they were after the check.
    ``R`` is standard normal from ``seed``'s own stream (not ``default_rng(seed)``'s: an input
    drawn from that would make ``R`` a function of it, failing BatchNorm's check).
    """
    from fastnet.layer_stack import check_initialised

    check_initialised(layer)
    _ = layer.backend  # (raises if not built)
    _require_float64("layer", layer)
    tolerance = _check_tolerance(tolerance, eps)
    saved = [(stream, stream.copy()) for stream in layer.random_streams().values()]
    buffers = [(buffer, buffer.copy()) for buffer in layer.state_buffers().values()]
    try:
        return _checked_layer(layer, x, training, eps, tolerance, seed, saved)
    finally:  # (every forward in training moved the running statistics)
        for array, start in saved + buffers:
            array[...] = start


def _checked_layer(
    layer: Any, x: Any, training: bool, eps: float, tolerance: float, seed: Any, saved: list
) -> GradcheckResult:
    backend = layer.backend
    out = layer.forward(x, training)
    stream = None if seed is None else [seed, 0xC4EC]  # (None: a fresh R each check)
    r = backend.asarray(np.random.default_rng(stream).standard_normal(out.shape))

    def f() -> float:
        for stream, start in saved:
            stream[...] = start
        return float((layer.forward(x, training) * r).sum())

    f()  # the forward that backward differentiates
    dx = backend.to_numpy(layer.backward(r, need_dx=True)).copy()
    grads = {p.name: backend.to_numpy(p.grad).copy() for p in layer.parameters()}
    errors = {"input": relative_error(dx, numerical_gradient(f, x, eps))}
    for p in layer.parameters():
        errors[p.name] = relative_error(grads[p.name], numerical_gradient(f, p.value, eps))
    return GradcheckResult(errors, tolerance)


def check_loss(
    loss: Any, logits: Any, targets: Any, *, eps: float = 1e-6, tolerance: float = 1e-6
) -> GradcheckResult:
    """Compare a loss's returned gradient with finite differences of its value."""
    _require_float64("logits", logits)
    tolerance = _check_tolerance(tolerance, eps)
    value = loss(logits, targets)  # (a loss used on its own builds itself here)
    grad = loss.backend.to_numpy(value[1]).copy()

    def f() -> float:
        return float(loss(logits, targets)[0])

    errors = {"logits": relative_error(grad, numerical_gradient(f, logits, eps))}
    return GradcheckResult(errors, tolerance)
