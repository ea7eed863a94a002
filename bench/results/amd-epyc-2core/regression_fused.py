"""Regression on numba: the default model's layers (784-256-128) with 10 outputs and the mean
squared error (of the one-hot rows), Adam, batch 128, float32: eager against the fused step,
one process, through the bench harness (rotating order, settled cores, warm-up excluded),
9 rounds.

    python bench/results/amd-epyc-2core/regression_fused.py
"""

import numpy as np
from fastnet.bench.harness import CPU_SETTLE_S, Contestant, format_table, interleaved
from fastnet.bench.suites import load_training_data

import fastnet as fn


def main() -> None:
    X, y, _ = load_training_data(False)
    T = np.eye(10, dtype=np.float32)[y]
    models, contestants = [], []
    for name, compiled in (("eager", False), ("fused", "auto")):
        layers = [fn.Dense(256, "relu"), fn.Dense(128, "relu"), fn.Dense(10)]
        model = fn.Sequential(layers, loss="mse", backend="numba", seed=0)
        models.append(model)
        run = model.epoch_runner(X, T, 128, compiled=compiled)
        contestants.append(Contestant(name, run, describe=lambda m=model: m.step_description))
    results = interleaved(contestants, 9, "eager", settle=CPU_SETTLE_S)
    print(format_table(results, "regression epoch (ratio = time / eager)"))
    for c in contestants:
        print(c.name, c.describe())
    print(
        "loss after the rounds (eager, fused):",
        [m.evaluate(X[:5000], T[:5000])["loss"] for m in models],
    )


if __name__ == "__main__":
    main()
