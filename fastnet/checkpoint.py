"""Checkpoint files: a JSON config plus named host arrays in one ``.npz``.

Written atomically (temp file in the same folder, fsync, rename; the usual umask permissions),
read with ``allow_pickle=False`` (loading never runs code), checked against a SHA-256 of their
contents and a format version. Every problem with a file is a ``CheckpointError`` naming it. This
module knows nothing of models: ``fastnet.model`` validates the arrays against the architecture.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from typing import IO, Any

import numpy as np

#: 2 covers the config (and extra) as well as the arrays; version 1 files (arrays only) still
#: load; 3 may hold the data order (``data/order``) and an optimizer's ``initial_lr``, which
#: fastnet before 3 cannot read (it says so by the version instead of an unknown key)
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
META_KEY = "__fastnet_meta__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, tampered with or incompatible."""


def _digest(arrays: dict[str, np.ndarray], signed: Any = None) -> str:
    """SHA-256 of the arrays (names, dtypes, shapes, bytes) and, from format version 2, of the
    JSON-able ``signed`` metadata (config and extra)."""
    h = hashlib.sha256()
    if signed is not None:
        h.update(json.dumps(signed, sort_keys=True).encode())
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
    """Fail early (before hours of training) if ``path`` cannot be written as a file. Raises
    the ``OSError`` that writing would (``IsADirectoryError``, ``NotADirectoryError``,
    ``FileNotFoundError``, ``PermissionError``) with a message naming ``what``."""
    name = os.fspath(path)
    try:
        os.stat(name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{what} path {name!r} is a loop of symbolic links") from None
    target = os.path.realpath(name)  # (a symbolic link's target is what is written)
    shown = f"{name!r} (a link to {target!r})" if os.path.islink(name) else repr(name)
    folder = os.path.dirname(target) or "."
    if os.path.isdir(name):
        raise IsADirectoryError(f"{what} path {name!r} is a directory; give a file name")
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(
                f"{what} path {shown}: its folder {folder!r} is a file, not a folder"
            )
        raise FileNotFoundError(f"{what} path {shown}: its folder {folder!r} is missing")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{what} path {shown}: folder {folder!r} is not writable")
    return name


CHECKPOINT_SUFFIXES = (".npz", ".safetensors")


def check_checkpoint_path(path: str | os.PathLike, what: str = "checkpoint") -> str:
    """A writable path whose extension names a checkpoint format (.npz or .safetensors)."""
    name = check_writable(path, what)
    suffix = os.path.splitext(name)[1]
    if suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{what} path {name!r}: unknown checkpoint extension {suffix!r}; "
            "use .npz or .safetensors"
        )
    return name


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], Any], what: str = "checkpoint"
) -> None:
    """Run ``write(file)`` so that a crash at any moment leaves either the old file at
    ``path`` or the complete new one, never a partial file. A symbolic link's target is
    written (the link stays); a file written again keeps its permissions, a new one gets a
    normal file's (``0o666`` less the umask)."""
    path = os.path.realpath(check_writable(path, what))
    folder = os.path.dirname(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # (mkstemp makes 0600)
    fd, tmp = tempfile.mkstemp(prefix=".fastnet-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` through ``atomic_write``."""
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- safetensors
# https://huggingface.co/docs/safetensors: u64 little-endian header size, JSON header
# {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the raw bytes.
_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_CODES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_ST_MAX_HEADER = 100 * 2**20


def _safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> list[bytes]:
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(arrays):
        arr = np.asarray(arrays[name], order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        if arr.dtype not in _ST_CODES:
            raise ValueError(f"safetensors cannot hold {name!r} of dtype {arr.dtype}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little"), text, *blobs]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _read_safetensors(path: str, raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and check a safetensors file; every inconsistency is a CheckpointError."""
    size = int.from_bytes(raw[:8], "little")
    if len(raw) > 8 and raw[8:9] == b"{" and len(raw) - 8 < size <= _ST_MAX_HEADER:
        raise CheckpointError(
            f"{path!r} is a truncated safetensors file: its header says {size} bytes, the "
            f"file holds {len(raw) - 8} after the size"
        )
    if len(raw) < 8 or raw[8:9] != b"{" or size > min(_ST_MAX_HEADER, len(raw) - 8):
        raise CheckpointError(
            f"{path!r} is not a fastnet checkpoint: neither an .npz archive nor a safetensors "
            f"file ({len(raw)} bytes starting {raw[:16]!r})"
        )
    try:
        header = json.loads(raw[8 : 8 + size])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path!r}: safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path!r}: safetensors header is not an object")
    metadata = header.pop("__metadata__", {})
    data = memoryview(raw)[8 + size :]
    arrays, spans = {}, []
    for name, entry in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
            shape, (lo, hi) = tuple(entry["shape"]), entry["data_offsets"]
            if not all(_is_count(v) for v in (*shape, lo, hi)) or len(shape) > 32:
                raise ValueError  # (the spec's integers >= 0; NumPy holds 64 dimensions)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path!r}: safetensors entry {name!r} is malformed") from None
        count = math.prod(shape)  # Python integers: no wrap-around
        if not lo <= hi <= len(data):
            raise CheckpointError(f"{path!r}: safetensors entry {name!r} is out of bounds")
        if hi - lo != count * dtype.itemsize:
            raise CheckpointError(f"{path!r}: safetensors entry {name!r} has the wrong size")
        spans.append((lo, hi, name))
        arrays[name] = np.frombuffer(data[lo:hi], dtype=dtype.newbyteorder("<")).astype(dtype)
        arrays[name] = arrays[name].reshape(shape)
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise CheckpointError(f"{path!r}: safetensors entries {a!r} and {b!r} overlap")
    if not isinstance(metadata, dict) or metadata.get("format") != "fastnet":
        raise CheckpointError(f"{path!r} is a safetensors file but not a fastnet checkpoint")
    try:
        meta = {
            "format_version": int(metadata["format_version"]),  # checked by _verified
            "fastnet_version": metadata.get("fastnet_version", ""),
            "config": json.loads(metadata["config"]),
            "backend": metadata.get("backend", ""),
            "sha256": metadata["sha256"],
            "extra": json.loads(metadata.get("extra", "{}")),
        }
    except (KeyError, TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{path!r}: fastnet metadata is malformed") from None
    return meta, arrays


def write_checkpoint(
    path: str | os.PathLike,
    config: dict,
    arrays: dict[str, np.ndarray],
    backend: str = "",
    extra: dict | None = None,
) -> None:
    """Write ``config`` (JSON) and host ``arrays`` with their SHA-256, atomically: ``.npz``,
    or safetensors when ``path`` ends in ``.safetensors``."""
    from fastnet._version import __version__

    check_checkpoint_path(path)
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    if os.fspath(path).lower().endswith(".safetensors"):
        metadata = {
            "format": "fastnet",
            "format_version": str(FORMAT_VERSION),
            "fastnet_version": __version__,
            "config": json.dumps(config),
            "backend": backend,
            "sha256": _digest(arrays, [config, extra or {}]),
            "extra": json.dumps(extra or {}),
        }
        chunks = _safetensors_bytes(arrays, metadata)
        atomic_write(path, lambda f: [f.write(c) for c in chunks])
        return
    meta = {
        "format_version": FORMAT_VERSION,
        "fastnet_version": __version__,
        "config": config,
        "backend": backend,
        "sha256": _digest(arrays, [config, extra or {}]),
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
    with open(path, "rb") as f:
        head, regular = f.read(16), stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    if not regular or head[:6] == b"\x93NUMPY":  # (/dev/zero, a .npy: never read whole)
        what = "a single .npy array, not a fastnet checkpoint (.npz with a config)"
        raise CheckpointError(f"{path!r} is {what if regular else 'not a regular file'}")
    if head[:2] != b"PK" and head[:6] != b"\x93NUMPY":  # neither .npz nor .npy: safetensors?
        if head[8:9] != b"{" or int.from_bytes(head[:8], "little") > _ST_MAX_HEADER:
            raise CheckpointError(  # (before reading what may be gigabytes of something else)
                f"{path!r} is not a fastnet checkpoint: neither an .npz archive nor a "
                f"safetensors file ({os.path.getsize(path)} bytes starting {head!r})"
            )
        with open(path, "rb") as f:
            meta, arrays = _read_safetensors(path, f.read())
        return _verified(path, meta, arrays)
    try:
        _check_expansion(path)
        data = np.load(path, allow_pickle=False)
    except CheckpointError:
        raise
    except Exception as exc:  # zip, format, OS errors alike: the file is not usable
        raise CheckpointError(
            f"{path!r} is not a readable fastnet checkpoint (truncated or corrupted?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    assert isinstance(data, np.lib.npyio.NpzFile)  # (a .npy: refused by its first bytes)
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
    return _verified(path, meta, arrays)


def _check_expansion(path: str, most: int = 64) -> None:
    """A compressed .npz may not expand ``most``-fold (fastnet writes them uncompressed):
    a small file must not fill the memory before its checks run."""
    if not zipfile.is_zipfile(path):  # (np.load would leave its file open)
        raise CheckpointError(
            f"{path!r} is not a readable fastnet checkpoint (truncated or corrupted?): "
            "it starts as a zip archive (.npz) but has no complete one"
        )
    with zipfile.ZipFile(path) as archive:
        size = sum(info.file_size for info in archive.infolist())
    if size > most * os.path.getsize(path) + 2**20:
        raise CheckpointError(
            f"{path!r} expands to {size} bytes from {os.path.getsize(path)}: not a fastnet "
            "checkpoint (those are stored uncompressed)"
        )


def _verified(path: str, meta: Any, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise CheckpointError(
            f"{path!r} has checkpoint format version {version!r}; this fastnet "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    signed = None if version == 1 else [meta.get("config"), meta.get("extra", {})]
    if meta.get("sha256") != _digest(arrays, signed):
        raise CheckpointError(
            f"{path!r} failed its integrity check: the arrays or config do not match the "
            f"recorded SHA-256 (file modified or damaged)"
        )
    return meta, arrays


def plain_json(data: Any, what: str) -> Any:
    """``data`` as plain JSON values (NumPy arrays and scalars as lists and numbers)."""

    def listed(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{what} holds a {type(value).__name__}: only JSON values are saved")

    return None if data is None else json.loads(json.dumps(data, default=listed))
