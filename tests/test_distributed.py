"""Data-parallel training under ``mpirun -n 2`` equals one process with the full batch; a rank
that dies or raises stops the job with its rank named; only rank 0 prints; clear errors
outside mpirun."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import backend_params

from fastnet import distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mpi_worker  # noqa: E402

try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
# The MPI launcher (Open MPI's mpirun, or the mpiexec of MPICH's and other wheels).
LAUNCHER = shutil.which("mpirun") or shutil.which("mpiexec") or "mpirun"
# In CI (.ci/run installs Open MPI and mpi4py) these tests must run, never skip.
needs_mpi = pytest.mark.skipif(
    (shutil.which(LAUNCHER) is None or not HAVE_MPI4PY) and not os.environ.get("CI"),
    reason="needs Open MPI (mpirun) and mpi4py: pip install mpi4py",
)
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",  # CI runs as root
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",  # 2 ranks on a 2-core machine is fine
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",  # no ptrace in containers
}


def _nccl_marks(comm):
    """Skip NCCL runs where CuPy finds no NCCL library (the workers would refuse them)."""
    if comm != "nccl":
        return []
    try:
        from cupy.cuda import nccl

        available = bool(nccl.available)
    except Exception:
        available = False
    return [pytest.mark.skipif(not available, reason="CuPy finds no NCCL library")]


def mpirun(*args, n=2, timeout=120):
    env = {**os.environ, **MPI_ENV, "PYTHONPATH": str(HERE)}
    cmd = [LAUNCHER, "-n", str(n), sys.executable, str(HERE / "mpi_worker.py"), *args]
    start = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return run, time.monotonic() - start


@needs_mpi
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize(
    "backend, comm, ranks",
    [
        pytest.param(
            name, comm, n, marks=[*param.marks, *_nccl_marks(comm)], id=f"{name}-{comm}-{n}ranks"
        )
        for name, comm, n in (
            ("numpy", "mpi", 2),
            ("numba", "mpi", 2),
            ("cupy", "mpi", 2),
            ("cupy", "nccl", 1),
        )  # fmt: skip
        for param in backend_params([name])
    ],
)
def test_ranks_with_shares_of_each_batch_equal_one_process(
    tmp_path, backend, comm, ranks, dtype, rtol
):
    """2 ranks over MPI (GPU arrays staged through pinned host memory on cupy) and 1 NCCL
    rank (its all-reduce inside the captured step) train as one process does."""
    out = tmp_path / "ranks.npz"
    run, _ = mpirun("train", backend, dtype, str(out), comm, n=ranks)
    assert run.returncode == 0, run.stderr[-3000:]
    X, y = mpi_worker.problem(dtype)
    single = mpi_worker.model(backend, dtype)
    h = single.fit(X, y, validation_data=mpi_worker.validation(X, y), verbose=0, **mpi_worker.FIT)
    got = np.load(out)
    for i, p in enumerate(single.parameters()):  # 15 Adam steps, a merged short last batch
        np.testing.assert_allclose(
            got[f"p{i}"], single.backend.to_numpy(p.value), rtol=rtol, atol=rtol
        )
    np.testing.assert_allclose(got["loss"], h["loss"], rtol=max(rtol, 1e-6))
    for key in ("val_loss", "val_accuracy", "val_f1"):  # over weighted validation rows
        np.testing.assert_allclose(got[key], h[key], rtol=max(rtol, 1e-6))


@needs_mpi
@pytest.mark.parametrize("backend", backend_params(["numpy", "numba"]))
def test_dropout_batchnorm_and_other_optimizers_train_identically_on_every_rank(backend):
    run, _ = mpirun("features", backend)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("features ok") == 2


@needs_mpi
@pytest.mark.parametrize(
    "ranks, rows, layers, replays, dtype",
    [
        (2, 290, "plain", 11, "float64"),
        (3, 290, "plain", 11, "float64"),
        (2, 258, "batchnorm", 8, "float64"),
        (2, 290, "plain", 11, "mixed_float16"),
    ],
)
def test_the_all_reduce_runs_inside_captured_steps(ranks, rows, layers, replays, dtype):
    """Data-parallel captured steps (CPU capture semantics, MPI on host arrays; a capture
    records the all-reduce without running it): the gradient all-reduce is in the graph, and
    the weights equal eager data-parallel training's on every rank. 290 rows in global batches
    of 64: 4 full ones a rank replays (after one eager warm-up: 11 replays in 3 epochs) and a
    partial one it runs eagerly. 258 rows with BatchNorm: the last 2 rows join the batch
    before them (66 rows, eager), 3 full batches replay (8 replays). mixed_float16: the
    scaled float32 gradients are summed, then unscaled; overflowing steps skip on every rank."""
    run, _ = mpirun("captured", str(rows), layers, dtype, n=ranks)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("captured ok") == ranks, run.stdout
    assert run.stdout.count(f"replays {replays}") == ranks, run.stdout


@needs_mpi
@pytest.mark.parametrize(
    "mode,signature",
    [
        ("kill", "rank 1"),
        ("raise", "rank 1 of 2 failed"),
        ("interrupt", "rank 1 of 2 failed in fit (KeyboardInterrupt"),
        ("exit", "rank 1 of 2 failed in fit (SystemExit: 3)"),
    ],
)
def test_a_failing_rank_stops_the_job(mode, signature):
    """Ctrl-C or sys.exit on one rank (caught, as the CLI catches Ctrl-C) left the other rank
    waiting in an all-reduce for ever; they abort the job as an error does."""
    run, seconds = mpirun(mode, timeout=90)
    assert run.returncode != 0
    assert seconds < 60
    assert signature in run.stdout + run.stderr, run.stderr[-3000:]


@needs_mpi
def test_only_rank_zero_prints():
    run, _ = mpirun("output")
    assert run.returncode == 0, run.stderr[-3000:]
    # mpirun interleaves the ranks' writes: count epoch lines, not lines starting with them
    assert len(re.findall(r"epoch +\d+/2 ", run.stdout)) == 2, run.stdout
    assert "done rank 0" in run.stdout and "done rank 1" in run.stdout


def test_outside_mpirun_says_what_to_run(monkeypatch):
    for variable in dist.LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(dist.DistributedError, match="mpirun -n K"):
        dist.init()
    X, y = mpi_worker.problem()
    model = mpi_worker.model()
    with pytest.raises(dist.DistributedError, match="mpirun"):
        model.fit(X, y, epochs=1, verbose=0, distributed=True)
    assert not model.built  # nothing changed
    with pytest.raises(ValueError, match="comm"):
        dist.init("gloo")


@needs_mpi
@pytest.mark.parametrize("args", [["--backend", "CUPY"], ["--comm", "nccl"]])
def test_distributed_cli_chooses_backends_as_the_rest_of_fastnet(args, tmp_path):
    """--distributed compared the backend name literally and asked CUDA for devices itself: a
    traceback and MPI_ABORT where cupy cannot run, 'needs backend=cupy' for CUPY or
    FASTNET_BACKEND=cupy. Now the one-line error (exit 2) of a fit without it."""
    from fastnet.backends import probe

    if probe("cupy").available:
        pytest.skip("cupy runs here: the error path is for machines without a GPU")
    env = {**os.environ, **MPI_ENV, "FASTNET_BACKEND": "cupy"}
    if "--backend" in args:  # the explicit name alone
        del env["FASTNET_BACKEND"]
    cmd = [LAUNCHER, "-n", "1", sys.executable, "-m", "fastnet", "train", "--distributed"]
    cmd += [*args, "--epochs", "1", "--limit", "500", "--data-dir", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert "fastnet train: error: backend 'cupy" in run.stderr, run.stderr[-2000:]
    assert "is unavailable" in run.stderr and "Traceback" not in run.stderr


def test_rank_slices_cover_each_batch_once():
    for n in (0, 1, 5, 64, 65):
        for parts in (1, 2, 3):
            pieces = [dist.rank_slice(10, 10 + n, r, parts) for r in range(parts)]
            assert pieces[0][0] == 10 and pieces[-1][1] == 10 + n
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
            sizes = [hi - lo for lo, hi in pieces]
            assert max(sizes) - min(sizes) <= 1
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()


def test_cli_refuses_distributed_outside_mpirun(monkeypatch, capsys):
    from fastnet.cli import main

    for variable in dist.LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert main(["train", "--distributed", "--epochs", "1"]) == 2
    assert "mpirun -n K" in capsys.readouterr().err
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # under mpirun, without --distributed
    main(["train", "--epochs", "1", "--data-dir", "/nonexistent"])
    assert (
        "fastnet train: warning: 2 processes under mpirun train separate" in capsys.readouterr().err
    )
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")  # said by rank 0 alone
    main(["train", "--epochs", "1", "--data-dir", "/nonexistent"])
    assert "under mpirun" not in capsys.readouterr().err


@needs_mpi
@pytest.mark.parametrize(
    "ranks, rows, batch, compiled",
    [(2, 300, 64, False), (3, 259, 64, False), (3, 40, 2, False), (2, 300, 64, True)]
    + [(3, 259, 64, True), (3, 40, 2, True)],
)
def test_synchronized_batchnorm_ranks_train_as_one_process(tmp_path, ranks, rows, batch, compiled):
    """Synchronized BatchNorm1d: statistics and their gradients over the global batch, so K
    ranks equal one process (float64), running statistics included. 259 rows over 3 ranks: the
    last batch has one row a rank (per-rank statistics would merge it into the one before).
    Batches of 2 over 3 ranks: one rank has no rows and joins the collectives with nothing to
    add. Captured: the all-reduces inside the graph (CPU capture semantics)."""
    out = tmp_path / "syncbn.npz"
    args = [str(rows), str(batch), str(out)] + (["compiled"] if compiled else [])
    run, _ = mpirun("syncbn", *args, n=ranks)
    assert run.returncode == 0, run.stderr[-3000:]
    X, y = mpi_worker.problem("float64")
    single = mpi_worker.bn_model(synchronized=False)
    h = single.fit(X[:rows], y[:rows], verbose=0, epochs=mpi_worker.FIT["epochs"], batch_size=batch)
    got = np.load(out)
    for key, value in single.host_state().items():  # float64, summed in another order
        np.testing.assert_allclose(got[key], value, rtol=1e-7, atol=1e-9, err_msg=key)
    np.testing.assert_allclose(got["loss"], h["loss"], rtol=1e-9)
    if ranks == 2 and not compiled:  # each rank's own statistics: not one process
        run, _ = mpirun("syncbn", str(rows), str(batch), str(out), "local", n=ranks)
        assert run.returncode == 0, run.stderr[-3000:]
        local = np.load(out)["param/0/W"]
        assert np.abs(local - single.host_state()["param/0/W"]).max() > 1e-4


class _RecordingMPI:
    """A stand-in MPI communicator: records which arrays reach it."""

    rank, world_size = 0, 2

    def __init__(self):
        self.calls = []

    def allreduce(self, buf):
        self.calls.append(("allreduce", buf))

    def broadcast(self, buf, root=0):
        self.calls.append(("broadcast", buf))


def _nccl_without_a_library(mpi):
    """An NCCLCommunicator over ``mpi`` whose NCCL names no data types (as a CuPy build may)."""
    comm = object.__new__(dist.NCCLCommunicator)
    comm.mpi, comm.nccl, comm.comm = mpi, type("nccl", (), {}), None
    return comm


def test_nccl_hands_host_arrays_to_mpi():
    """Validation sums are host arrays: NCCL takes device arrays only, so they go over MPI
    (before, a multi-GPU NCCL run with validation data failed at its first epoch's end)."""
    mpi = _RecordingMPI()
    comm = _nccl_without_a_library(mpi)
    sums = np.zeros(4)
    comm.allreduce(sums)
    comm.broadcast(sums)
    assert [(op, buf is sums) for op, buf in mpi.calls] == [
        ("allreduce", True),
        ("broadcast", True),
    ]


def test_nccl_data_types_include_half_floats():
    pytest.importorskip("cupy")
    from unittest import mock

    import cupy

    class DeviceArray:  # what _args reads of a cupy array
        def __init__(self, dtype):
            self.dtype, self.size = np.dtype(dtype), 3
            self.flags = type("flags", (), {"c_contiguous": True})
            self.data = type("data", (), {"ptr": 4096})

    comm = _nccl_without_a_library(_RecordingMPI())
    with mock.patch.object(cupy, "ndarray", DeviceArray):
        got = {dt: comm._args(DeviceArray(dt))[2] for dt in ("float16", "float32", "float64")}
        with pytest.raises(TypeError, match="int8"):
            comm._args(DeviceArray(np.int8))
    assert got == {"float16": 6, "float32": 7, "float64": 8}  # ncclDataType_t (nccl.h)


def test_nccl_refuses_two_ranks_on_one_gpu(monkeypatch):
    """NCCL would fail with "Duplicate GPU detected": the node's ranks compare their GPUs
    (not counts: a rank may see only its own GPU) and the error says what to do instead."""
    cupy = pytest.importorskip("cupy")

    class Device:
        def __init__(self, i):
            self.pci_bus_id = f"0000:{i:02x}:00.0"

    monkeypatch.setattr(cupy.cuda, "Device", Device)
    mpi = _RecordingMPI()
    mpi.local_allgather = lambda bus: [bus, "0000:01:00.0"]  # the other rank's GPU
    dist._check_one_gpu_per_rank(mpi, 0)
    with pytest.raises(dist.DistributedError, match="2 ranks on this node share 1 GPU.*'mpi'"):
        dist._check_one_gpu_per_rank(mpi, 1)


def test_mpi_staging_refuses_non_contiguous_arrays():
    """Staging copies a flat view back: a strided array would be written nowhere."""
    comm = object.__new__(dist.MPICommunicator)
    comm._staging = {}
    with pytest.raises(TypeError, match="C-contiguous"):
        comm._host(np.zeros((4, 4))[:, ::2])


@needs_mpi
def test_ranks_agree_on_folders_stops_statistics_and_data(tmp_path):
    """A ModelCheckpoint into folders that do not exist yet (rank 0 makes them; rank 1 failed
    its check first), a callback that stops on rank 0 only (rank 1 hung in the all-reduce),
    BatchNorm running statistics of each rank's rows (averaged: one model, the one validation
    scores) and different data on a rank (refused on every rank: it trained silently)."""
    run, _ = mpirun("agree", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("agree ok") == 2
    assert sorted(os.listdir(tmp_path / "new" / "deeper")) == ["b-1.npz", "b-2.npz"]


@needs_mpi
def test_ranks_refuse_other_models_settings_orders_and_weights():
    """A wider layer or other epochs on one rank (heap corruption and hangs in the
    all-reduce), 40 rows in another order (a sum sample missed it), a schedule on one rank
    (two models, silently); batch logs hold the ranks' running loss."""
    run, _ = mpirun("mismatch")
    assert run.stdout.count("mismatch ok") == 2, run.stdout + run.stderr[-3000:]
    assert run.returncode != 0 and "the ranks' weights differ after epoch 1" in run.stderr


def test_only_statistics_buffers_are_averaged_and_then_waited_for():
    """After an epoch, BatchNorm1d's running statistics are averaged over the ranks; other
    layers' buffers (an integer counter) are left alone, and the device is synchronized before
    validation or a checkpoint reads them."""
    import fastnet as fn
    from fastnet.layers import Layer

    class Counter(Layer):
        name = "test_counter"

        def state_buffers(self):
            return {"seen": self.seen}

        def build(self, input_dim, backend, dtype, rng):
            self.seen = np.array([7], np.int64)
            return super().build(input_dim, backend, dtype, rng)

    class Doubling:  # two ranks holding the same values: a sum doubles them
        world_size = 2

        def allreduce(self, buf):
            buf *= 2

    model = fn.Sequential([fn.Dense(4), fn.BatchNorm1d(), Counter(), fn.Dense(2)], seed=0)
    model.build(3)
    model.layers[1].running_mean[:] = 0.75
    synced = []
    model.backend.synchronize = lambda: synced.append(1)
    model._average_buffers(Doubling())
    assert (model.layers[1].running_mean == 0.75).all() and model.layers[2].seen[0] == 7
    assert synced == [1]


@needs_mpi
def test_errors_every_rank_raises_alike_are_raised_not_aborted():
    """A refused compiled step, a divergence with on_divergence="raise" and ranks whose
    weights differ after fit (EarlyStopping's restore on one rank only, which the per-epoch
    check missed) killed the job with MPI_Abort; each rank now raises them, catchable."""
    run, _ = mpirun("every-rank")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for rank in (0, 1):
        assert f"raised CompiledStepRefused rank {rank}: a compiled step was required" in run.stdout
        assert f"raised TrainingDivergedError rank {rank}" in run.stdout
        assert (
            f"raised RanksDifferError rank {rank}: distributed=True: the ranks' weights "
            "differ at the end of the fit" in run.stdout
        )


@needs_mpi
def test_a_capture_reason_of_one_rank_is_every_ranks():
    """A reason only rank 1 had (its GPU's cuBLASLt probe) made it refuse while rank 0 went
    into its captured step's all-reduce: a hang. The ranks agree: all refuse compiled=True,
    all run eager under "auto"."""
    run, _ = mpirun("refused-on-one-rank", timeout=90)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (
        "refused rank 0: a compiled step was required (compiled=True), but another rank"
        in run.stdout
    )
    assert (
        "refused rank 1: a compiled step was required (compiled=True), but rank 1's GPU"
        in run.stdout
    )
    assert run.stdout.count("trained rank") == 2 and run.stdout.count(": eager") == 2, run.stdout


@needs_mpi
def test_a_cli_error_of_one_rank_is_printed_and_ends_the_job(tmp_path):
    """A --data only rank 1 could not read: rank 1 returned silently and rank 0 waited in a
    collective for ever; now rank 1 says it (naming itself) and the job ends."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", X=rng.standard_normal((64, 4)), y=np.arange(64) % 2)
    common = ["-m", "fastnet", "train", "--epochs", "1", "--backend", "numpy", "--quiet"]
    good = [sys.executable, *common, "--data", str(tmp_path / "t.npz"), "--distributed"]
    bad = [sys.executable, *common, "--data", str(tmp_path / "none.npz"), "--distributed"]
    cmd = [LAUNCHER, "-n", "1", *good, ":", "-n", "1", *bad]
    env = {**os.environ, **MPI_ENV}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0
    assert "fastnet train: error: rank 1: data file" in run.stderr, run.stderr[-2000:]


def test_a_rank_exit_status_never_reads_as_success():
    """sys.exit(256) on one rank made MPI_Abort(256), and mpirun exited 0 (the low byte)."""
    from fastnet.training import _exit_status

    assert [_exit_status(SystemExit(c)) for c in (3, 256, 512, 0, None, "x", -1)] == [
        3, 1, 1, 1, 1, 1, -1,
    ]  # fmt: skip
    assert _exit_status(KeyboardInterrupt()) == 130 and _exit_status(ValueError("x")) == 1


@needs_mpi
def test_the_cli_says_once_that_the_ranks_weights_differ(tmp_path):
    """Ranks given other schedules train other weights: the CLI's error line, from rank 0
    alone, exit 2 (each rank printed a traceback and the job aborted)."""
    env = {**os.environ, **MPI_ENV, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "fastnet", "train", "--distributed", "--backend", "numpy"]
    train += ["--epochs", "2", "--limit", "600", "--layers", "8", "--quiet"]  # (epoch 2: lr)
    cmd = [LAUNCHER, "-n", "1", *train, ":", "-n", "1", *train, "--schedule", "constant"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = [x for x in run.stderr.splitlines() if "fastnet train: error:" in x]
    assert len(lines) == 1 and "the ranks' weights differ" in lines[0], run.stderr[-3000:]
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
