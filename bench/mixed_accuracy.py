"""Test accuracy of the default model (784-256-128-10, Adam 1e-3, batch 128) on Fashion-MNIST
after N epochs at float32, mixed_float16 and mixed_bfloat16, one after the other, per seed.

    python -m fastnet.bench.mixed_accuracy [--backend cupy|numpy] [--epochs 20] [--seeds 3]
                                           [--out F.json]

On ``numpy`` the policies run emulated (``NumpyBackend.emulate_mixed``: float16 / bfloat16
arrays, float32 accumulation), which checks their numerics on a CPU, not their speed.
"""

from __future__ import annotations

import argparse
import json
import time

import fastnet as fn
from fastnet.backends import get_backend
from fastnet.backends.numpy_backend import NumpyBackend
from fastnet.builders import mlp

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def run(backend_name: str, policy: str, epochs: int, data: tuple, seed: int = 0) -> dict:
    (X, y), (Xt, yt) = data
    backend = get_backend(backend_name)
    if backend_name == "numpy":
        backend = NumpyBackend()
        backend.emulate_mixed = True
    model = mlp(
        784, (256, 128), 10, optimizer=fn.Adam(1e-3), backend=backend, dtype=policy, seed=seed
    )
    start = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=128, verbose=0)
    seconds = time.perf_counter() - start
    steps = epochs * -(-len(X) // 128)
    scaler = model.loss_scaler
    return {
        "policy": policy,
        "backend": backend_name,
        "epochs": epochs,
        "test_accuracy": model.evaluate(Xt, yt)["accuracy"],
        "train_loss": model.history["loss"][-1],
        "skipped_steps": steps - model.arena.groups[0].step,
        "loss_scale": None if scaler is None else scaler.scale,
        "seconds_per_epoch": seconds / epochs,
        "step": model.step_description,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cupy")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per policy")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    data = fn.load_fashion_mnist()
    results = []
    for seed in range(args.seeds):
        for policy in args.policies.split(","):
            try:
                result = {"seed": seed, **run(args.backend, policy, args.epochs, data, seed)}
            except (ValueError, NotImplementedError) as exc:  # e.g. bf16 on cupy: not built
                result = {"policy": policy, "backend": args.backend, "skipped": str(exc)}
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
