"""Checkpoints: architecture, weights, optimizer state and layer buffers in one ``.npz``.

Arrays are saved as host copies (the live model never moves), written atomically (temp file in
the same folder, fsync, rename), read with ``allow_pickle=False`` (loading never runs code),
checked against a SHA-256 of their contents and a format version, and loadable onto any backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any

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


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that a crash at any moment leaves either the old file or
    the complete new one, never a partial file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastnet-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
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


def save_model(model: Any, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Save a built ``Sequential`` (host copies; the model stays where it is)."""
    if not model.built:
        raise RuntimeError("cannot save an unbuilt model: fit() or build() it first")
    from fastnet import __version__

    arrays = {
        key: np.asarray(value) if isinstance(value, int) else model.backend.to_numpy(value)
        for key, value in model.get_state().items()
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "fastnet_version": __version__,
        "config": model.get_config(),
        "backend": model.backend.name,
        "sha256": _digest(arrays),
        "extra": extra or {},
    }
    arrays[META_KEY] = np.array(json.dumps(meta))
    atomic_savez(path, arrays)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a checkpoint; returns ``(meta, arrays)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if META_KEY not in data.files:
                raise CheckpointError(
                    f"{path!r} is an .npz but not a fastnet checkpoint (no {META_KEY} entry)"
                )
            meta = json.loads(str(data[META_KEY]))
            arrays = {k: data[k] for k in data.files if k != META_KEY}
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        ValueError,
        OSError,
        EOFError,
        KeyError,
        json.JSONDecodeError,
        UnicodeDecodeError,
    ) as exc:
        raise CheckpointError(
            f"{path!r} is not a readable fastnet checkpoint (truncated or "
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


def model_from_config(config: dict, backend: Any = None) -> Any:
    from fastnet.layers import layer_from_config
    from fastnet.model import Sequential
    from fastnet.optimizers import optimizer_from_config

    model = Sequential(
        [layer_from_config(c) for c in config["layers"]],
        loss=config["loss"],
        optimizer=optimizer_from_config(config["optimizer"]),
        backend=backend,
        dtype=config["dtype"],
        seed=config.get("seed"),
    )
    return model


def load_model(path: str | os.PathLike, backend: Any = None) -> Any:
    """Load a ``Sequential`` saved by ``save_model``/``Sequential.save`` onto ``backend``."""
    model, _ = load_model_with_meta(path, backend)
    return model


def load_model_with_meta(path: str | os.PathLike, backend: Any = None) -> tuple[Any, dict]:
    meta, arrays = read_checkpoint(path)
    try:
        model = model_from_config(meta["config"], backend=backend)
        model.build(meta["config"]["input_dim"])
        expected = model.get_state()
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{os.fspath(path)!r} has an invalid architecture: {exc}") from None
    for key, live in expected.items():
        if key.startswith(("param/", "buffer/")):
            if key not in arrays:
                raise CheckpointError(f"{os.fspath(path)!r} lacks array {key!r}")
            if tuple(arrays[key].shape) != tuple(live.shape):
                raise CheckpointError(
                    f"{os.fspath(path)!r}: {key} has shape {arrays[key].shape}, "
                    f"the architecture needs {tuple(live.shape)}"
                )
    model.set_state(arrays)
    return model, meta
