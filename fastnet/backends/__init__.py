"""Backend registry and selection.

Selection order: explicit argument > ``use_backend()`` context > ``set_backend()`` >
``FASTNET_BACKEND`` environment variable > ``"auto"`` (cupy if a GPU is usable, else numba if
installed, else numpy). An explicitly requested backend that is unavailable raises
``BackendUnavailableError`` with the reason; only ``"auto"`` may choose another. Optional
backends are imported lazily: ``import fastnet`` imports neither numba nor cupy.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastnet.backends import forks as _forks  # noqa: F401 (its fork handler)
from fastnet.backends.base import ACTIVATIONS, Act, Backend, activation_code
from fastnet.backends.report import record_kernels

__all__ = [
    "ACTIVATIONS",
    "Act",
    "Backend",
    "BackendUnavailableError",
    "BackendInfo",
    "activation_code",
    "available_backends",
    "backend_infos",
    "get_backend",
    "record_kernels",
    "set_backend",
    "use_backend",
]

KNOWN = ("numpy", "numba", "cupy")
AUTO_ORDER = ("cupy", "numba", "numpy")
_MODULES = {
    "numpy": ("fastnet.backends.numpy_backend", "NumpyBackend"),
    "numba": ("fastnet.backends.numba_backend", "NumbaBackend"),
    "cupy": ("fastnet.backends.cupy_backend", "CupyBackend"),
}

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastnet_backend", default=None
)
_global_default: str | None = None
_instances: dict[str, Backend] = {}
_probes: dict[str, BackendInfo] = {}
_warned_auto: set[str] = set()  # the backends 'auto' chose over an unusable one, said once
_lock = threading.Lock()


class BackendUnavailableError(RuntimeError):
    """A backend was requested by name but cannot run here; the message says why."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str
    version: str
    device: str


def _probe_numpy() -> BackendInfo:
    import numpy

    return BackendInfo("numpy", True, "", numpy.__version__, "CPU")


def _import_failure(name: str, exc: Exception, install: str) -> BackendInfo:
    """A backend whose package is missing (how to install it) or fails to import (why)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == name:
        return BackendInfo(name, False, f"{name} is not installed; install it: {install}", "", "")
    return BackendInfo(name, False, f"{name} is installed but fails to import: {exc}", "", "")


def _probe_numba() -> BackendInfo:
    try:
        import numba
    except Exception as exc:  # not installed, a broken llvmlite, a bad NUMBA_* variable
        return _import_failure("numba", exc, "`pip install numba scipy`")
    try:  # the kernels' @njit(cache=True) need a writable cache folder as they are defined
        import fastnet.kernels.numba_cpu  # noqa: F401
    except Exception as exc:  # (and a BLAS that fails to load: numba cannot run either)
        reason = f"fastnet's numba kernels fail to load ({exc})"
        if "cannot cache" in str(exc):
            reason = (
                f"numba cannot write its compile cache ({exc}): set NUMBA_CACHE_DIR to a "
                "writable folder"
            )
        return BackendInfo("numba", False, reason, numba.__version__, "")
    return BackendInfo("numba", True, "", numba.__version__, "CPU")


def _probe_cupy(device: int = 0) -> BackendInfo:
    try:
        import cupy
    except Exception as exc:
        install = "`pip install cupy-cuda12x` or `cupy-cuda13x` (extras 'cuda12', 'cuda13')"
        return _import_failure("cupy", exc, install)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, or a broken CUDA install
        reason = f"no usable CUDA device ({exc}): check the NVIDIA driver (nvidia-smi)"
        return BackendInfo("cupy", False, reason, cupy.__version__, "")
    if count == 0:
        return BackendInfo("cupy", False, "no CUDA device", cupy.__version__, "")
    if device >= count:
        return BackendInfo(
            "cupy",
            False,
            f"CUDA device {device} requested but only {count} present",
            cupy.__version__,
            "",
        )
    try:
        props = cupy.cuda.runtime.getDeviceProperties(device)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as exc:
        return BackendInfo(
            "cupy", False, f"CUDA device {device} unusable ({exc})", cupy.__version__, ""
        )
    return BackendInfo("cupy", True, "", cupy.__version__, f"cuda:{device} {name}")


_PROBES: dict[str, Callable[..., BackendInfo]] = {
    "numpy": _probe_numpy,
    "numba": _probe_numba,
    "cupy": _probe_cupy,
}


def _split(spec: str) -> tuple[str, int]:
    """``"cupy:1"`` -> ``("cupy", 1)``; validates the name."""
    if not isinstance(spec, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(spec).__name__}")
    name, _, index = spec.strip().lower().partition(":")
    if name not in KNOWN and name != "auto":
        raise ValueError(f"unknown backend {spec!r}; known backends: {', '.join(KNOWN)}, auto")
    if index and name != "cupy":
        raise ValueError(f"bad backend spec {spec!r}: only cupy takes a device index, as 'cupy:1'")
    if index and not index.isdigit() or (not index and ":" in spec):
        raise ValueError(
            f"bad backend spec {spec!r}: a device index is an integer >= 0, as 'cupy:1'"
        )
    return name, int(index or 0)


def _key(name: str, device: int) -> str:
    return f"cupy:{device}" if name == "cupy" else name


def probe(spec: str) -> BackendInfo:
    """Availability of one backend, probed once per process (never at import)."""
    name, device = _split(spec)
    key = _key(name, device)
    with _lock:
        if key not in _probes:
            _probes[key] = _PROBES[name](device) if name == "cupy" else _PROBES[name]()
        return _probes[key]


def backend_infos() -> list[BackendInfo]:
    return [probe(name) for name in KNOWN]


def available_backends() -> list[str]:
    return [info.name for info in backend_infos() if info.available]


def outside_fastnet() -> int:
    """The ``stacklevel`` of the first caller outside fastnet (a user's line) for a warning
    issued by this module's caller."""
    frame, level = sys._getframe(2), 2
    while (
        frame.f_back is not None
        and frame.f_globals.get("__name__", "").partition(".")[0] == "fastnet"
    ):
        frame, level = frame.f_back, level + 1
    return level


_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def _launched_rank() -> int:
    """This process's rank under an MPI launcher (0 outside one): the job's other ranks
    choose as rank 0 does and leave the saying to it."""
    for variable in _RANK_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def _resolve_auto() -> str:
    """The first available of ``AUTO_ORDER``; passing over one that is installed but cannot
    run warns once per process, on rank 0 of an MPI job (a GPU machine's broken driver must
    not train on the CPU unsaid)."""
    passed_over: list[str] = []
    for name in AUTO_ORDER:
        info = probe(name)
        if info.available:
            if passed_over and name not in _warned_auto and _launched_rank() == 0:
                _warned_auto.add(name)
                skipped = "; ".join(passed_over)
                warnings.warn(
                    f"backend 'auto' chose {name}: {skipped}. Name it (backend={name!r} in "
                    f"Python, {name} for the CLI's --backend/--backends, or FASTNET_BACKEND="
                    f"{name}) to choose it without this warning",
                    RuntimeWarning,
                    stacklevel=outside_fastnet(),
                )
            return name
        if "is not installed" not in info.reason:
            passed_over.append(f"{name} is installed but unusable: {info.reason}")
    return "numpy"


def selected(spec: str | None = None) -> tuple[str, int | None]:
    """``(name, device index or None where none was named)`` of the backend ``spec`` selects
    (None: the current selection, ``use_backend`` > ``set_backend`` > ``FASTNET_BACKEND`` >
    auto), checked available. Raises ``BackendUnavailableError`` if it cannot run."""
    if spec is None:
        spec = _context.get() or _global_default
        if spec is None and os.environ.get("FASTNET_BACKEND"):
            env = os.environ["FASTNET_BACKEND"]
            try:
                _split(env)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"environment variable FASTNET_BACKEND={env!r}: {exc}") from None
            spec = env
        spec = spec or "auto"
    name, device = _split(spec)
    if name == "auto":
        name = _resolve_auto()
    key = _key(name, device)
    info = probe(key)
    if not info.available:
        raise BackendUnavailableError(f"backend {key!r} is unavailable: {info.reason}")
    return name, device if ":" in spec else None


def get_backend(spec: str | Backend | None = None) -> Backend:
    """Return the backend for ``spec`` (a name such as ``"numba"`` or ``"cupy:1"``, a Backend,
    or None for the current selection). Raises ``BackendUnavailableError`` if it cannot run."""
    if isinstance(spec, Backend):
        return spec
    name, index = selected(spec)
    device = index or 0
    key = _key(name, device)
    with _lock:
        if key not in _instances:
            module_name, class_name = _MODULES[name]
            cls = getattr(importlib.import_module(module_name), class_name)
            _instances[key] = cls(device) if name == "cupy" else cls()
        return _instances[key]


def set_backend(spec: str | None) -> None:
    """Set the process-wide default backend (None clears it). Validates the name now."""
    global _global_default
    if spec is not None:
        get_backend(spec)
    _global_default = spec


@contextlib.contextmanager
def use_backend(spec: str) -> Iterator[Backend]:
    """Context manager selecting the backend for models built inside it."""
    backend = get_backend(spec)
    token = _context.set(spec)
    try:
        yield backend
    finally:
        _context.reset(token)
