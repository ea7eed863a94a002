"""Eager steps against the compiled step on real data, for every optimizer and lr schedule:

    python -m fastnet.bench.graph_check --backend cupy --out graph-check.json

For each optimizer and schedule two models with the same seed train on the first ``--rows`` rows of
Fashion-MNIST, one with ``fit(..., compiled=False)`` and one with ``compiled=True`` (a CUDA
graph on cupy, the fused JIT step on numba; True fails rather than fall back to eager steps). The
check records the largest relative weight difference, ``max |a - b| / max |a|`` over the weight
arrays, and passes when it is at most ``--tol`` (1e-6, float32). Exit status 1 when any fails.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastnet.callbacks import Callback, ReduceLROnPlateau
from fastnet.data import load_fashion_mnist
from fastnet.layers import Dense
from fastnet.losses import SoftmaxCrossEntropy
from fastnet.model import Sequential
from fastnet.optimizers import get_optimizer
from fastnet.schedules import CosineDecay, WarmupCosine

OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.05},
    "momentum": {"lr": 0.02},
    "adagrad": {"lr": 0.01},
    "rmsprop": {"lr": 1e-3},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 0.01},
}
# Plateau: min_delta larger than any gain, so the lr halves after every epoch from the second on.
SCHEDULES: dict[str, Callable[[int], list[Callback]]] = {
    "none": lambda epochs: [],
    "cosine": lambda epochs: [CosineDecay(epochs)],
    "warmup-cosine": lambda epochs: [WarmupCosine(min(1.0, epochs / 2), epochs)],
    "plateau": lambda epochs: [ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10.0)],
}


def train(
    backend: str, optimizer: str, schedule: str, data: tuple, epochs: int, compiled: bool
) -> Sequential:
    X, y = data
    model = Sequential(
        [Dense(128, "relu"), Dense(64, "relu"), Dense(10)],
        SoftmaxCrossEntropy(),
        get_optimizer(optimizer, **OPTIMIZERS[optimizer]),
        backend=backend,
        seed=0,
    )
    model.fit(
        X,
        y,
        epochs=epochs,
        batch_size=128,
        callbacks=SCHEDULES[schedule](epochs),
        verbose=0,
        compiled=compiled,
    )
    return model


def max_relative_difference(a: Sequential, b: Sequential) -> float:
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        va, vb = a.backend.to_numpy(pa.value), b.backend.to_numpy(pb.value)
        scale = float(np.max(np.abs(va))) or 1.0
        worst = max(worst, float(np.max(np.abs(va - vb))) / scale)
    return worst


def compare(
    backend: str, optimizer: str, schedule: str, data: tuple, epochs: int, tol: float
) -> dict[str, Any]:
    start = time.perf_counter()
    eager = train(backend, optimizer, schedule, data, epochs, compiled=False)
    graph = train(backend, optimizer, schedule, data, epochs, compiled=True)
    diff = max_relative_difference(eager, graph)
    return {
        "optimizer": optimizer,
        "schedule": schedule,
        "max_rel_diff": diff,
        "pass": diff <= tol,
        "loss_eager": eager.history["loss"],
        "loss_compiled": graph.history["loss"],
        "step_eager": eager.step_description,
        "step_compiled": graph.step_description,
        "seconds": round(time.perf_counter() - start, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    (X, y), _ = load_fashion_mnist(args.data_dir)
    data = (X[: args.rows], y[: args.rows])
    results = []
    for optimizer in args.optimizers.split(","):
        for schedule in args.schedules.split(","):
            try:
                row = compare(args.backend, optimizer, schedule, data, args.epochs, args.tol)
            except Exception as exc:  # a FAIL row; the other comparisons still run
                row = {"optimizer": optimizer, "schedule": schedule, "pass": False}
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"FAIL {optimizer:9s} {schedule:14s} {row['error']}", flush=True)
                results.append(row)
                continue
            print(
                f"{'PASS' if row['pass'] else 'FAIL'} {optimizer:9s} {schedule:14s} "
                f"max rel diff {row['max_rel_diff']:.2e}  {row['seconds']:.1f}s  "
                f"({row['step_compiled']})",
                flush=True,
            )
            results.append(row)
    return {
        "backend": args.backend,
        "rows": len(data[0]),
        "epochs": args.epochs,
        "tol": args.tol,
        "pass": all(r["pass"] for r in results),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cupy", help="cupy, numba, ...")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--rows", type=int, default=10_000, help="training rows used")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tol", type=float, default=1e-6, help="largest relative difference")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    report = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(
        f"{'PASS' if report['pass'] else 'FAIL'}: {len(report['results'])} comparisons on "
        f"{args.backend}, tolerance {args.tol:g}"
    )
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
