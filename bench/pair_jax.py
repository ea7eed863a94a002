"""fastnet's numba fused step against JAX jit + lax.scan alone, alternating whole epochs in one
process (default model, batch 128, Adam, float32); median of the per-round ratios.

    python -m fastnet.bench.pair_jax [rounds] [--quick]   (OMP_NUM_THREADS: the cores)

``--quick``: the bench's small data set (a smoke test).
"""

import argparse

import numpy as np
from fastnet.bench.harness import (
    CPU_SETTLE_S,
    QUICK_SETTLE_S,
    Contestant,
    interleaved,
    machine_info,
)
from fastnet.bench.jax_peer import jax_scan_epoch
from fastnet.bench.suites import DEFAULT_SIZES, _model, load_training_data

from fastnet.backends import get_backend


def main(rounds: int, quick: bool = False, batch: int = 128, settle: float | None = None) -> None:
    X, y, _ = load_training_data(quick)
    n = len(X) // batch * batch
    X, y = X[:n], y[:n]
    be = get_backend("numba")
    fused = _model(be, DEFAULT_SIZES).epoch_runner(X, y, batch, compiled=True)
    jax = jax_scan_epoch(DEFAULT_SIZES, X, y, batch, precision="highest")
    contestants = [
        Contestant("fastnet-numba-fused-fp32", fused, None, 1.0),
        Contestant("jax-scan-fp32", jax, None, 1.0),
    ]
    settle = (QUICK_SETTLE_S if quick else CPU_SETTLE_S) if settle is None else settle
    for r in interleaved(contestants, rounds=rounds, reference="jax-scan-fp32", settle=settle):
        ratios = " ".join(f"{x:.2f}" for x in r.ratios)
        print(
            f"{r.name} median {np.median(r.times):.3f} s, ratio median "
            f"{np.median(r.ratios):.3f}, per round {ratios}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fastnet.bench.pair_jax", description=__doc__)
    parser.add_argument("rounds", type=int, nargs="?", default=9)
    parser.add_argument("--quick", action="store_true", help="2,048 rows: a smoke test")
    args = parser.parse_args()
    print(f"# {machine_info()['cpu']}, {'quick: 2,048 rows' if args.quick else 'all rows'}")
    main(args.rounds, args.quick)
