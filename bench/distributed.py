"""Data-parallel measurements (run under mpirun; rank 0 reports):

    mpirun -n 2 python -m fastnet.bench.distributed --json out.json
    mpirun -n 1 python -m fastnet.bench.distributed --json out.json   (the one-process baseline)

All-reduce time of the default model's flat gradient arena (235,146 float32) and the epoch time
of data-parallel fit (global batch 128) on Fashion-MNIST (random data if not installed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from fastnet import distributed as dist


def allreduce_times(size: int, repeats: int, comm: dist.Communicator) -> list[float]:
    buf = np.ones(size, np.float32)
    for _ in range(10):
        comm.allreduce(buf)
    times = []
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce(buf)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    comm = dist.init("mpi")
    from fastnet.bench.suites import DEFAULT_SIZES, _model, load_training_data

    model = _model(args.backend, DEFAULT_SIZES)
    arena = sum(int(g.values.size) for g in model.arena.groups)
    reduce_s = allreduce_times(arena, 300, comm)
    X, y, source = load_training_data(False)
    n = len(X) // 128 * 128
    model.fit(X[:n], y[:n], epochs=args.epochs, batch_size=128, verbose=0, distributed=True)
    seconds = model.history["seconds"][1:]  # the first epoch includes compilation
    report = {
        "ranks": comm.world_size,
        "backend": args.backend,
        "data": source,
        "arena_parameters": arena,
        "allreduce_ms_median": 1e3 * statistics.median(reduce_s),
        "allreduce_ms_p90": 1e3 * float(np.percentile(reduce_s, 90)),
        "epoch_s_median": statistics.median(seconds),
        "step_ms_median": 1e3 * statistics.median(seconds) / (n // 128),
        "epoch_s_all": seconds,
    }
    if dist.is_main():
        print(json.dumps(report, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
