"""Checkpoint files: a JSON config plus named host arrays in one ``.npz``.

Written atomically (temp file in the same folder, fsync, rename; the usual umask permissions),
read with ``allow_pickle=False`` (loading never runs code), checked against a SHA-256 of their
contents and a format version. Every problem with a file is a ``CheckpointError`` naming it. This
module knows nothing of models: ``fastnet.model`` validates the arrays against the architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

FORMAT_VERSION = 1
META_KEY = "__fastnet_meta__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, tampered with or incompatible."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, what: str = "output") -> str:
    """Fail early (before hours of training) if ``path`` cannot be written as a file."""
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name)) or "."
    if os.path.isdir(name):
        raise ValueError(f"{what} path {name!r} is a directory; give a file name")
    if not os.path.isdir(folder):
        kind = "a file, not a folder" if os.path.exists(folder) else "missing"
        raise ValueError(f"{what} path {name!r}: its folder {folder!r} is {kind}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} path {name!r}: folder {folder!r} is not writable")
    return name


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that a crash at any moment leaves either the old file or
    the complete new one, never a partial file."""
    path = check_writable(path, "checkpoint")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastnet-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a saved model is a normal file
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # stubs reserve allow_pickle
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_checkpoint(
    path: str | os.PathLike,
    config: dict,
    arrays: dict[str, np.ndarray],
    backend: str = "",
    extra: dict | None = None,
) -> None:
    """Write ``config`` (JSON) and host ``arrays`` with their SHA-256, atomically."""
    from fastnet._version import __version__

    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "fastnet_version": __version__,
        "config": config,
        "backend": backend,
        "sha256": _digest(arrays),
        "extra": extra or {},
    }
    arrays[META_KEY] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a checkpoint; returns ``(meta, arrays)``. Raises ``FileNotFoundError``
    for a missing file and ``CheckpointError`` (naming the file) for anything else wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # zip, format, OS errors alike: the file is not usable
        raise CheckpointError(
            f"{path!r} is not a readable fastnet checkpoint (truncated or corrupted?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CheckpointError(
            f"{path!r} is a single .npy array, not a fastnet checkpoint (.npz with a config)"
        )
    key = META_KEY
    try:
        with data:
            if META_KEY not in data.files:
                raise CheckpointError(
                    f"{path!r} is an .npz but not a fastnet checkpoint (no {META_KEY} entry)"
                )
            raw = data[META_KEY]
            if raw.dtype.kind != "U" or raw.shape != ():
                raise CheckpointError(f"{path!r}: {META_KEY} is not a JSON string")
            meta = json.loads(str(raw))
            arrays = {}
            for key in data.files:
                if key != META_KEY:
                    arrays[key] = data[key]
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path!r} is not a readable fastnet checkpoint (entry {key!r} truncated or "
            f"corrupted?): {type(exc).__name__}: {exc}"
        ) from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path!r} has checkpoint format version {version!r}; this fastnet "
            f"reads version {FORMAT_VERSION}"
        )
    if meta.get("sha256") != _digest(arrays):
        raise CheckpointError(
            f"{path!r} failed its integrity check: the arrays do not match the "
            f"recorded SHA-256 (file modified or damaged)"
        )
    return meta, arrays
