"""bench/gpu_run.sh as a CPU dry run: every stage runs on numba/numpy with tiny sizes (or says why
it skipped), the summary has one line per stage, nothing fails, and at most 8 files come out."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastnet.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
HAVE_FASHION = (
    Path(os.environ.get("FASTNET_DATA") or FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz"
).exists()
STAGES = {
    "gpu",
    "setup",
    "pytest-cupy",
    "graph-check",
    "train-eager-fp32",
    "train-graph-fp32",
    "train-graph-tf32",
    "train-mixed_float16",
    "train-mixed_bfloat16",
    "preset-best",
    "distributed-mpi",
    "distributed-nccl",
    "bench-kernels",
}
GPU_ONLY = {
    "gpu",
    "train-graph-tf32",
    "train-mixed_float16",
    "train-mixed_bfloat16",
    "distributed-nccl",
}


def dry_run(out: Path, total_s: int, *groups: str) -> subprocess.CompletedProcess:
    """bench/gpu_run.sh OUT --dry-run [GROUPS] within ``total_s`` seconds of stages."""
    env = {**os.environ, "PYTHON": sys.executable, "TOTAL_S": str(total_s)}
    return subprocess.run(
        ["bash", "bench/gpu_run.sh", str(out), "--dry-run", *groups],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=total_s + 60,
    )


def stage_results(summary: str) -> dict[str, str]:
    rows = [line.split() for line in summary.splitlines()]
    return {row[1]: row[0] for row in rows if row and row[0] in ("PASS", "FAIL", "SKIP")}


def test_stage_results_reads_the_summary_lines():
    summary = "PASS  setup   (1s)\nSKIP  gpu   (no GPU)\n      train-x  test accuracy 0.5\n"
    assert stage_results(summary) == {"setup": "PASS", "gpu": "SKIP"}


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_FASHION and not os.environ.get("CI"), reason="dataset-fashion-mnist is not installed"
)
def test_dry_run_passes_every_stage_it_can_run(tmp_path):
    out = tmp_path / "out"
    proc = dry_run(out, 240)
    summary = (out / "summary.txt").read_text()
    results = stage_results(summary)
    assert set(results) == STAGES, summary
    assert "FAIL" not in results.values(), summary + proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(results[s] == "SKIP" for s in GPU_ONLY), summary
    assert "SKIP  gpu                  (no GPU)" in summary
    assert {results[s] for s in STAGES - GPU_ONLY - {"distributed-mpi"}} == {"PASS"}, summary
    assert len(list(out.iterdir())) <= 8
    report = json.loads((out / "graph-check.json").read_text())
    assert report["pass"] and report["backend"] == "numba" and len(report["results"]) == 24


@pytest.mark.slow
def test_the_speed_group_runs_only_when_asked_for(tmp_path):
    """`speed` (the train suite against the peers) is a call of its own, not part of `all`."""
    out = tmp_path / "out"
    proc = dry_run(out, 120, "speed")
    results = stage_results((out / "summary.txt").read_text())
    assert results == {"gpu": "SKIP", "setup": "PASS", "bench-train": "PASS"}, proc.stdout[-3000:]
    report = json.loads((out / "bench-train.json").read_text())
    assert any(name.startswith("fastnet-numpy-eager") for name in json.dumps(report).split('"'))


def test_gpu_facts_names_what_it_cannot_read_and_still_succeeds(capsys, monkeypatch):
    """The setup stage's facts: CuPy and fastnet versions, then every other fact or why it is
    unavailable (here: no GPU); only a missing CuPy or fastnet fails the stage."""
    pytest.importorskip("cupy")
    from fastnet.bench import gpu_facts

    def broken():
        raise RuntimeError("no device")

    monkeypatch.setattr(gpu_facts, "_device", broken)
    assert gpu_facts.main() == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert {"cupy", "fastnet", "device", "nccl", "cublas", "mpirun"} <= set(lines)
    assert "unavailable (RuntimeError: no device)" in lines["device"]


@pytest.mark.slow
def test_a_stage_left_out_of_time_fails_the_run(tmp_path):
    """Stages skipped for want of time were listed as SKIP and the run exited 0: a device
    session would have read a pass with the distributed and kernel stages never run."""
    out = tmp_path / "out"
    proc = dry_run(out, 25)
    summary = (out / "summary.txt").read_text()
    assert "out of time" in summary, summary
    assert proc.returncode != 0, summary
