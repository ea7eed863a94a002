"""bench/cpu_run.sh in its quick mode: every result file of a machine's directory comes out, the
JSON parses, and the trainings report their accuracy and backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastnet.backends import probe
from fastnet.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
HAVE_FASHION = (
    Path(os.environ.get("FASTNET_DATA") or FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz"
).exists()
SUITES = ("bench-train-jax", "bench-kernels", "floor-breakdown", "bench-inference")


@pytest.mark.slow
@pytest.mark.skipif(not probe("numba").available, reason="numba unavailable")
@pytest.mark.skipif(
    not HAVE_FASHION and not os.environ.get("CI"), reason="dataset-fashion-mnist is not installed"
)
def test_quick_run_writes_every_result_file(tmp_path):
    out = tmp_path / "amd-epyc-2core"
    env = {**os.environ, "QUICK": "1", "VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.run(
        ["bash", "bench/cpu_run.sh", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in SUITES:
        report = json.loads((out / f"{name}.json").read_text())
        assert report["rounds"] == 2 and report["groups"], name
        assert "wrote" in (out / f"{name}.log").read_text()
    assert (out / "lscpu.txt").read_text()
    pairing = (out / "pair-jax.log").read_text()
    assert pairing.startswith("# python -m fastnet.bench.pair_jax 2")
    assert "fastnet-numba-fused-fp32 median" in pairing or "JAX is not installed" in pairing
    for backend in ("numba", "numpy"):
        log = (out / f"train-{backend}.log").read_text()
        assert "test accuracy" in log and f"backend {backend}" in log, log[-1000:]
        assert json.loads((out / f"train-{backend}.json").read_text())


def test_a_quick_run_writes_nothing_under_bench_results(tmp_path):
    """A smoke test's files (2 rounds, 2,000 rows) were written where results live."""
    env = {**os.environ, "QUICK": "1", "VENV": str(Path(sys.executable).parent.parent)}
    for out in ("bench/results/smoke", str(ROOT / "bench" / "results" / "x" / "..")):
        proc = subprocess.run(
            ["bash", "bench/cpu_run.sh", out], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 2 and "QUICK=1 writes no results" in proc.stderr, proc.stderr
    assert not (ROOT / "bench" / "results" / "smoke").exists()
