"""Data-parallel measurements (run under mpirun; rank 0 reports):

    mpirun -n 2 python -m fastnet.bench.distributed --json out.json
    mpirun -n 1 python -m fastnet.bench.distributed --json out.json   (the one-process baseline)
    mpirun -n 1 python -m fastnet.bench.distributed --backend cupy --comm nccl --compiled on

The all-reduce time of the default model's flat gradient arena (235,146 float32; on the model's
backend: GPU arrays staged through pinned memory with ``--comm mpi``, in place with ``nccl``;
each timed to the device's completion) and the epoch time of data-parallel fit (global batch
128) on Fashion-MNIST (random data if not installed), with the step that ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
from fastnet.bench.harness import machine_info

from fastnet import distributed as dist


def allreduce_times(buf: Any, repeats: int, comm: dist.Communicator, backend: Any) -> list[float]:
    """Seconds per in-place all-reduce of ``buf``, ranks started together (a barrier), each
    until the device finished it."""
    with backend.step_stream():  # the stream fit's steps reduce on
        for _ in range(10):
            comm.allreduce(buf)
        backend.synchronize()
        times = []
        for _ in range(repeats):
            comm.barrier()
            start = time.perf_counter()
            comm.allreduce(buf)
            backend.synchronize()
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--comm", choices=("mpi", "nccl"), default="mpi")
    parser.add_argument("--compiled", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be at least 1")
    from fastnet.bench.suites import DEFAULT_SIZES, _model, load_training_data

    gpu = args.backend.startswith("cupy")
    comm = dist.init(args.comm, backend=args.backend if gpu else None)  # a GPU per local rank
    model = _model(None if args.backend == "cupy" else args.backend, DEFAULT_SIZES)
    be = model.backend
    arena = sum(int(g.values.size) for g in model.arena.groups)
    reduce_s = allreduce_times(be.zeros((arena,), np.float32), args.repeats, comm, be)
    X, y, source = load_training_data(False)
    n = len(X) // 128 * 128
    compiled = {"auto": "auto", "on": True, "off": False}[args.compiled]
    model.fit(
        X[:n],
        y[:n],
        epochs=args.epochs,
        batch_size=128,
        verbose=0,
        distributed=True,
        comm=args.comm,
        compiled=compiled,
    )
    seconds = model.history["seconds"]
    timed = seconds[1:] or seconds  # the first epoch includes compilation
    report = {
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "precision": "float32",
        "ranks": comm.world_size,
        "backend": args.backend,
        "device": be.device_info(),
        "comm": args.comm,
        "step": model.step_description,
        "data": source,
        "arena_parameters": arena,
        "allreduce_ms_median": 1e3 * statistics.median(reduce_s),
        "allreduce_ms_p90": 1e3 * float(np.percentile(reduce_s, 90)),
        "epoch_s_median": statistics.median(timed),
        "step_ms_median": 1e3 * statistics.median(timed) / (n // 128),
        "epoch_s_all": seconds,
        "train_accuracy_last": model.history["accuracy"][-1],
    }
    if dist.is_main():
        print(json.dumps(report, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
