"""Data-parallel training across processes, nodes and GPUs, the way Horovod and ChainerMN do it:
MPI (``mpi4py``) for processes and CPU collectives, NCCL (``cupy.cuda.nccl``, its unique id
broadcast over MPI) for GPU collectives.

Launch with ``mpirun -n K python script.py`` (or ``mpirun -n K fastnet train --distributed``);
in the script call ``fastnet.distributed.init()`` (``fit(..., distributed=True)`` does it) and
train as usual: rank 0's initial weights are broadcast, every rank shuffles with the same seed and
takes its own slice of each global batch, and the flat gradient arena is averaged with one
all-reduce per parameter group and step. An uncaught exception on any rank aborts the whole job
with a message naming that rank, so no rank waits forever in a collective; one every rank raises
at the same point (``every_rank``: a refused compiled step, a divergence) is raised instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

LAUNCHER_VARIABLES = (
    "OMPI_COMM_WORLD_SIZE",  # Open MPI
    "PMI_SIZE",  # MPICH, Intel MPI, srun --mpi=pmi2
    "PMIX_RANK",  # PMIx launchers (srun --mpi=pmix, prterun)
    "MV2_COMM_WORLD_SIZE",  # MVAPICH2
)


class DistributedError(RuntimeError):
    """Distributed training cannot start here; the message says what to do."""


class Communicator:
    """Collectives over the ranks of one job. Arrays are reduced and broadcast in place."""

    name = "communicator"
    rank = 0
    world_size = 1

    def capture_reason(self, backend: Any) -> str:
        """Why this communicator's all-reduce cannot run inside a captured graph on
        ``backend`` ("" if it can)."""
        return f"the {self.name} communicator cannot run inside a captured graph"

    def allreduce(self, buf: Any) -> None:
        """Sum ``buf`` over all ranks, in place."""
        raise NotImplementedError

    def broadcast(self, buf: Any, root: int = 0) -> None:
        """Copy ``buf`` of rank ``root`` into ``buf`` on every rank."""
        raise NotImplementedError

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        raise NotImplementedError

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some rank (every rank calls it, and all get the same)."""
        votes = np.array([1.0 if flag else 0.0])
        self.allreduce(votes)  # (host values: over MPI, also for NCCL)
        return bool(votes[0] > 0)

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        raise NotImplementedError


class MPICommunicator(Communicator):
    """MPI collectives; device (CuPy) arrays are staged through pinned host buffers."""

    def capture_reason(self, backend: Any) -> str:
        # host arrays (in practice the tests' capture-semantics backend): an ordinary op
        if backend.dlpack_device()[0] == 1:
            return ""
        return "MPI stages GPU arrays through host memory (comm='nccl' captures the all-reduce)"

    name = "mpi"

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self._staging: dict[tuple[int, str], np.ndarray] = {}

    def _host(self, buf: Any) -> np.ndarray:
        if not buf.flags.c_contiguous:  # reshape(-1) would copy: set() would write nowhere
            raise TypeError("the mpi communicator reduces C-contiguous arrays only")
        key = (int(buf.size), str(buf.dtype))
        if key not in self._staging:
            import cupyx

            self._staging[key] = cupyx.empty_pinned(buf.size, dtype=buf.dtype)
        host = self._staging[key]
        buf.reshape(-1).get(out=host)
        return host

    def allreduce(self, buf: Any) -> None:
        if isinstance(buf, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return
        host = self._host(buf)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        buf.reshape(-1).set(host)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        if isinstance(buf, np.ndarray):
            self.comm.Bcast(buf, root=root)
            return
        host = self._host(buf)
        self.comm.Bcast(host, root=root)
        buf.reshape(-1).set(host)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def local_rank(self) -> int:
        """Rank among the processes on this node (for picking a GPU)."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return int(local.Get_rank())
        finally:
            local.Free()

    def local_allgather(self, obj: Any) -> list:
        """``obj`` of every process of this job on this node, in local rank order."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return list(local.allgather(obj))
        finally:
            local.Free()


class NCCLCommunicator(Communicator):
    """NCCL all-reduce and broadcast of CuPy arrays on the current stream (capturable in CUDA
    graphs); MPI carries the NCCL unique id, objects and barriers."""

    name = "nccl"

    def capture_reason(self, backend: Any) -> str:
        """NCCL collectives are stream operations a CUDA graph captures (NCCL 2.9.6 on)."""
        version = self.nccl.get_version()
        return "" if version >= 20906 else f"NCCL {version} cannot be captured (2.9.6 can)"

    # ncclDataType_t values (nccl.h: a stable ABI; not every CuPy build names them all)
    _DTYPES = {"int64": 4, "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}

    def __init__(self, mpi: MPICommunicator) -> None:
        from cupy.cuda import nccl

        if not nccl.available:
            raise DistributedError(
                "the nccl communicator needs the NCCL library (pip install nvidia-nccl-cu12 "
                "or -cu13, matching CuPy); comm='mpi' works without it"
            )
        self.mpi, self.nccl = mpi, nccl
        self.rank, self.world_size = mpi.rank, mpi.world_size
        uid = nccl.get_unique_id() if mpi.rank == 0 else None
        uid = mpi.broadcast_object(uid)
        self.comm = nccl.NcclCommunicator(self.world_size, uid, self.rank)

    def _args(self, buf: Any) -> tuple[int, int, int]:
        import cupy

        if not isinstance(buf, cupy.ndarray) or not buf.flags.c_contiguous:
            raise TypeError("the nccl communicator reduces C-contiguous cupy arrays only")
        if str(buf.dtype) not in self._DTYPES:
            raise TypeError(f"the nccl communicator has no {buf.dtype} arrays")
        return buf.data.ptr, int(buf.size), self._DTYPES[str(buf.dtype)]

    def allreduce(self, buf: Any) -> None:
        import cupy

        if isinstance(buf, np.ndarray):  # host values (e.g. validation sums): over MPI
            self.mpi.allreduce(buf)
            return
        ptr, count, dtype = self._args(buf)
        stream = cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(ptr, ptr, count, dtype, self.nccl.NCCL_SUM, stream)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        import cupy

        if isinstance(buf, np.ndarray):
            self.mpi.broadcast(buf, root)
            return
        ptr, count, dtype = self._args(buf)
        self.comm.bcast(ptr, count, dtype, root, cupy.cuda.get_current_stream().ptr)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.mpi.broadcast_object(obj, root)

    def barrier(self) -> None:
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        self.mpi.abort(code)


_current: Communicator | None = None


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def init(comm: str = "mpi", backend: str | None = None) -> Communicator:
    """Join the MPI job this process belongs to and return its communicator (idempotent).

    ``comm``: "mpi" (any arrays; GPU arrays staged through pinned host memory) or "nccl" (GPU
    arrays). ``backend`` is chosen as a model's (a name, "auto", ``FASTNET_BACKEND``; an
    unavailable one raises ``BackendUnavailableError`` before the job is joined): where that is
    cupy without a device index, each process is given GPU ``local_rank % n_gpus`` and that
    becomes the default backend of the process."""
    global _current
    if comm not in ("mpi", "nccl"):
        raise ValueError(f"comm must be 'mpi' or 'nccl', got {comm!r}")
    if _current is not None:
        if _current.name != comm:
            raise DistributedError(f"already initialised with the {_current.name} communicator")
        return _current
    if not launched_by_mpi():
        raise DistributedError(
            "distributed training needs an MPI launcher: run `mpirun -n K python your_script.py` "
            "or `mpirun -n K fastnet train --distributed` (K processes)"
        )
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise DistributedError(
            "distributed training needs mpi4py and an MPI library: "
            "pip install mpi4py (extra 'distributed') "
            "(and e.g. apt install openmpi-bin libopenmpi-dev)"
        ) from None
    from fastnet.backends import KNOWN, selected, set_backend

    name, device = backend or "", None  # (a backend class of the user's own: as it is)
    if backend is None or backend.partition(":")[0].strip().lower() in (*KNOWN, "auto"):
        name, device = selected(backend)  # as a model would choose it (auto, env, ...)
    if comm == "nccl" and name != "cupy":
        raise DistributedError(f"the nccl communicator needs backend='cupy', not {name!r}")
    mpi = MPICommunicator()
    _install_abort_hook(mpi)
    if name == "cupy" and device is None:  # no device named: one per local rank
        import cupy

        device = mpi.local_rank() % max(1, cupy.cuda.runtime.getDeviceCount())
        set_backend(f"cupy:{device}")
    if comm != "nccl":
        _current = mpi
        return _current
    assert device is not None  # (nccl: cupy, its device named or given above)
    _check_one_gpu_per_rank(mpi, device)
    import cupy

    with cupy.cuda.Device(device):  # NCCL binds to the current device
        _current = NCCLCommunicator(mpi)
    return _current


def _check_one_gpu_per_rank(mpi: MPICommunicator, device: int) -> None:
    """NCCL refuses two ranks of one communicator on one GPU ("Duplicate GPU detected"):
    the node's ranks compare their GPUs' PCI addresses and all say so before it does."""
    import cupy

    buses = mpi.local_allgather(cupy.cuda.Device(device).pci_bus_id)
    if len(set(buses)) < len(buses):
        raise DistributedError(
            f"comm='nccl' needs one GPU per rank: {len(buses)} ranks on this node share "
            f"{len(set(buses))} GPU(s); build the model after "
            "fastnet.distributed.init('nccl', backend='cupy') (a GPU per local rank), use "
            "comm='mpi' (GPU arrays staged through host memory) or fewer ranks"
        )


def _install_abort_hook(mpi: MPICommunicator) -> None:
    """An uncaught exception on one rank aborts the job (naming the rank) instead of leaving
    the other ranks blocked in a collective."""
    previous = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        previous(kind, value, tb)
        if kind is not KeyboardInterrupt or mpi.world_size > 1:
            print(
                f"fastnet: rank {mpi.rank} of {mpi.world_size} failed ({kind.__name__}: "
                f"{value}); aborting the job",
                file=sys.stderr,
                flush=True,
            )
            mpi.abort(1)

    sys.excepthook = hook


def current() -> Communicator | None:
    """The communicator of this process, if ``init`` was called."""
    return _current


def rank() -> int:
    return _current.rank if _current is not None else 0


def world_size() -> int:
    return _current.world_size if _current is not None else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain, non-distributed process): the rank that prints and
    writes files."""
    return rank() == 0


def allreduce(buf: Any) -> None:
    """Sum ``buf`` over all ranks in place (a no-op without ``init``)."""
    if _current is not None:
        _current.allreduce(buf)


def broadcast(buf: Any, root: int = 0) -> None:
    """Copy rank ``root``'s ``buf`` to every rank in place (a no-op without ``init``)."""
    if _current is not None:
        _current.broadcast(buf, root)


def barrier() -> None:
    if _current is not None:
        _current.barrier()


def rank_slice(lo: int, hi: int, part: int, parts: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` split into ``parts`` nearly equal runs (the first ones one longer, as
    ``numpy.array_split``); returns run ``part``."""
    n = hi - lo
    base, extra = divmod(n, parts)
    start = lo + part * base + min(part, extra)
    return start, start + base + (1 if part < extra else 0)


__all__ = [
    "Communicator",
    "DistributedError",
    "MPICommunicator",
    "NCCLCommunicator",
    "allreduce",
    "barrier",
    "broadcast",
    "current",
    "init",
    "is_main",
    "launched_by_mpi",
    "rank",
    "rank_slice",
    "world_size",
]
