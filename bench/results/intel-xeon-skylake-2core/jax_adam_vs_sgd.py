"""What Adam costs JAX over SGD inside a ``jit`` + ``lax.scan`` epoch of the default model
(Fashion-MNIST, batch 128), the two epochs alternating in one process.

    python bench/results/intel-xeon-skylake-2core/jax_adam_vs_sgd.py [rounds]
"""

import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from fastnet.bench.suites import DEFAULT_SIZES, load_training_data

tree_map = jax.tree_util.tree_map


def _loss(params: Any, xb: Any, yb: Any) -> Any:
    h = xb
    for i, (W, b) in enumerate(params):
        h = h @ W + b
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return -jnp.take_along_axis(jax.nn.log_softmax(h), yb[:, None], axis=1).mean()


def adam(state: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
    params, m, v, t = state
    loss, g = jax.value_and_grad(_loss)(params, xb, yb)
    t = t + 1
    m = tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
    v = tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
    step = 1e-3 * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    eps = 1e-8 * jnp.sqrt(1 - 0.999**t)
    params = tree_map(lambda p, m, v: p - step * m / (jnp.sqrt(v) + eps), params, m, v)
    return (params, m, v, t), loss


def sgd(state: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
    params, m, v, t = state
    loss, g = jax.value_and_grad(_loss)(params, xb, yb)
    return (tree_map(lambda p, g: p - 0.01 * g, params, g), m, v, t), loss


def scanned_epoch(step: Callable, X: Any, y: Any, batch: int) -> Callable[[], float]:
    rng = np.random.default_rng(0)
    params = [
        (
            jnp.asarray((rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)),
            jnp.zeros(b, jnp.float32),
        )
        for a, b in zip(DEFAULT_SIZES[:-1], DEFAULT_SIZES[1:])
    ]
    steps = X.shape[0] // batch

    @jax.jit
    def epoch(state: Any, key: Any) -> tuple[Any, Any]:
        order = jax.random.permutation(key, X.shape[0])[: steps * batch].reshape(steps, batch)
        state, losses = jax.lax.scan(lambda s, i: step(s, X[i], y[i]), state, order)
        return state, losses.mean()

    zeros = tree_map(jnp.zeros_like, params)
    carry = {"state": (params, zeros, zeros, jnp.float32(0)), "key": jax.random.PRNGKey(0)}

    def run() -> float:
        carry["key"], sub = jax.random.split(carry["key"])
        carry["state"], loss = epoch(carry["state"], sub)
        return float(loss)

    return run


def main(rounds: int = 12, batch: int = 128) -> None:
    X, y, _ = load_training_data(False)
    n = len(X) // batch * batch
    Xd, yd = jnp.asarray(X[:n], jnp.float32), jnp.asarray(y[:n], jnp.int32)
    runs = {"adam": scanned_epoch(adam, Xd, yd, batch), "sgd": scanned_epoch(sgd, Xd, yd, batch)}
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in list(runs.items())[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    extra = np.median([a - s for a, s in zip(times["adam"], times["sgd"])]) / (n // batch)
    medians = {name: round(float(np.median(t)), 3) for name, t in times.items()}
    print(f"s/epoch {medians}; Adam over SGD {extra * 1e6:.0f} us a step")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
