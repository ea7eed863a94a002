"""JAX contestants: the same MLP (ReLU hidden layers, softmax cross-entropy, Adam with bias
correction, He-normal init) written as a JAX user would, at its strongest: ``jit`` over a
``lax.scan`` of the whole epoch (shuffle and batch gather inside the compiled loop), and ``jit``
per step for reference. Only full batches: a scan needs one static batch shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _setup(
    sizes: Sequence[int],
    seed: int,
    precision: str | None,
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
) -> tuple[Any, ...]:
    """The model, the Adam step, its initial state, the device data and full-batch count."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        W = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        params.append((jnp.asarray(W), jnp.zeros(b, jnp.float32)))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

    def loss_fn(params: Any, xb: Any, yb: Any) -> Any:
        h = xb
        for i, (W, b) in enumerate(params):
            h = jnp.matmul(h, W, precision=precision) + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.take_along_axis(logp, yb[:, None], axis=1).mean()

    def adam_step(state: Any, xb: Any, yb: Any, lr: float = 1e-3) -> tuple[Any, Any]:
        params, m, v, t = state
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        t = t + 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        step = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        eps_hat = eps * jnp.sqrt(1 - b2**t)
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - step * m / (jnp.sqrt(v) + eps_hat), params, m, v
        )
        return (params, m, v, t), loss

    state = (params, zeros, zeros, jnp.zeros((), jnp.float32))
    Xd, yd = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.int32)
    return jax, adam_step, state, Xd, yd, len(X) // batch


def jax_scan_epoch(
    sizes: Sequence[int],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    seed: int = 0,
    precision: str | None = None,
) -> Callable[[], Any]:
    """One epoch = one call of a jitted function that shuffles on the device and runs
    ``lax.scan`` over all full batches (gathering each batch inside the scan). The data are
    arguments, as a JAX user passes them (closed over, XLA would embed them as constants)."""
    jax, adam_step, state, Xd, yd, steps = _setup(sizes, seed, precision, X, y, batch)

    @jax.jit
    def epoch(state: Any, key: Any, Xd: Any, yd: Any) -> tuple[Any, Any]:
        order = jax.random.permutation(key, Xd.shape[0])[: steps * batch].reshape(steps, batch)

        def body(state: Any, idx: Any) -> tuple[Any, Any]:
            return adam_step(state, Xd[idx], yd[idx])

        state, losses = jax.lax.scan(body, state, order)
        return state, losses.mean()

    carry = {"state": state, "key": jax.random.PRNGKey(seed)}

    def run() -> float:
        carry["key"], sub = jax.random.split(carry["key"])
        carry["state"], loss = epoch(carry["state"], sub, Xd, yd)
        return float(loss.block_until_ready())

    return run


def jax_step_epoch(
    sizes: Sequence[int],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    seed: int = 0,
    precision: str | None = None,
) -> Callable[[], Any]:
    """One epoch as a Python loop over a jitted step (host shuffle, device gather)."""
    jax, adam_step, state, Xd, yd, steps = _setup(sizes, seed, precision, X, y, batch)
    step = jax.jit(lambda s, idx, Xd, yd: adam_step(s, Xd[idx], yd[idx]))  # data as arguments
    rng = np.random.default_rng(seed)
    carry = {"state": state}

    def run() -> float:
        """The epoch; its mean training loss (full batches: the mean of the steps' losses)."""
        order = jax.numpy.asarray(rng.permutation(len(X))[: steps * batch].reshape(steps, batch))
        losses = []
        for i in range(steps):
            carry["state"], loss = step(carry["state"], order[i], Xd, yd)
            losses.append(loss)
        return float(jax.numpy.stack(losses).mean()) if losses else float("nan")

    return run
