"""Regression on numba: the default model's layers (784-256-128) with 10 outputs and the mean
squared error (of the one-hot rows), Adam, batch 128, float32: eager against the fused step,
one process, alternating, 9 rounds.

    python bench/results/amd-epyc-2core/regression_fused.py
"""

import time

import numpy as np
from fastnet.bench.suites import load_training_data

import fastnet as fn


def runner(X: np.ndarray, T: np.ndarray, compiled: bool | str) -> tuple:
    layers = [fn.Dense(256, "relu"), fn.Dense(128, "relu"), fn.Dense(10)]
    model = fn.Sequential(layers, loss="mse", backend="numba", seed=0)
    return model, model.epoch_runner(X, T, 128, compiled=compiled)


def main() -> None:
    X, y, _ = load_training_data(False)
    T = np.eye(10, dtype=np.float32)[y]
    runs = {compiled: runner(X, T, compiled) for compiled in (False, "auto")}
    for _, run in runs.values():
        run()  # compile and warm up
    seconds: dict = {compiled: [] for compiled in runs}
    for _ in range(9):
        for compiled, (_, run) in runs.items():
            start = time.perf_counter()
            run()
            seconds[compiled].append(time.perf_counter() - start)
    for compiled, (model, _) in runs.items():
        print(compiled, model.step_description, round(float(np.median(seconds[compiled])), 3))
    ratio = np.median(np.array(seconds["auto"]) / np.array(seconds[False]))
    print("fused/eager per-round median", round(float(ratio), 3))
    losses = [model.evaluate(X[:5000], T[:5000])["loss"] for model, _ in runs.values()]
    print("loss after the rounds (eager, fused):", losses)


if __name__ == "__main__":
    main()
