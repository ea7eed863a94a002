"""The README example model (784-256-Dropout(0.1)-128-10, Adam, batch 128, float32) on numba:
eager against the fused step with dropout inside it, one process, alternating, 9 rounds.

    python bench/results/amd-epyc-2core/dropout_fused.py
"""

import time

import numpy as np
from fastnet.bench.suites import load_training_data

import fastnet as fn


def runner(X: np.ndarray, y: np.ndarray, compiled: bool | str) -> tuple:
    layers = [fn.Dense(256, "relu"), fn.Dropout(0.1), fn.Dense(128, "relu"), fn.Dense(10)]
    model = fn.Sequential(layers, backend="numba", seed=0)
    return model, model.epoch_runner(X, y, 128, compiled=compiled)


def main() -> None:
    X, y, _ = load_training_data(False)
    runs = {compiled: runner(X, y, compiled) for compiled in (False, "auto")}
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


if __name__ == "__main__":
    main()
