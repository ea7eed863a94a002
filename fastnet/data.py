"""Data: an IDX (MNIST format) reader, Fashion-MNIST/MNIST loaders, one-hot, splits, batches."""

from __future__ import annotations

import gzip
import math
import numbers
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastnet.backends.interop import host_array

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# Labels per class of the full data sets (train, test): they tell MNIST from Fashion-MNIST
_LABEL_COUNTS = {
    "mnist": (
        (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    ),
    "fashion-mnist": ((6000,) * 10, (1000,) * 10),
}
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


class DatasetError(ValueError):
    """An IDX file is malformed, or a dataset is missing or inconsistent."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) into an array of its declared dtype and shape; a
    ``.gz`` is decompressed no further than its header declares (no decompression bomb)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DatasetError(f"{path} is a directory, not an IDX file")
    try:
        with open(path, "rb") as file:
            packed = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            f: Any = gzip.GzipFile(fileobj=file) if packed else file
            head = f.read(4)
            shape, dtype = _idx_header(path, head + f.read(4 * head[3] if len(head) == 4 else 0))
            expected = math.prod(shape) * dtype.itemsize  # Python integers: no wrap-around
            raw = bytearray()  # one byte past the declared size tells it is too long
            while len(raw) <= expected and (chunk := f.read(min(expected + 1 - len(raw), 2**24))):
                raw += chunk
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DatasetError(
            f"{path}: cannot read or decompress ({type(exc).__name__}: {exc})"
        ) from None
    if len(raw) != expected:
        held = f"more than {expected}" if len(raw) > expected else len(raw)
        raise DatasetError(
            f"{path}: header declares shape {shape} ({expected} bytes of data) but "
            f"the file holds {held} bytes (truncated or corrupted)"
        )
    data = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _idx_header(path: str, head: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype that the IDX header ``head`` declares."""
    if len(head) < 4:
        raise DatasetError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", head[:4])
    if zero != 0 or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DatasetError(
            f"{path}: bad IDX magic {head[:4].hex()} (expected 0000 then a type code "
            f"in {sorted(hex(c) for c in _IDX_DTYPES)} and 1-4 dimensions)"
        )
    if len(head) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    dtype: np.dtype = np.dtype(_IDX_DTYPES[code])  # type: ignore[call-overload]
    return struct.unpack(f">{ndim}I", head[4:]), dtype


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    return None


def load_idx_pair(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    normalize: bool = True,
    flatten: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load an images/labels IDX pair; pixels scaled to [0, 1] float32 when ``normalize``."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3:
        raise DatasetError(f"{images}: expected images of shape (n, rows, cols), got {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{labels}: expected 1-D labels, got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if not len(x):
        raise DatasetError(f"{images} holds no images")
    if y.dtype.kind not in "iu" or y.min() < 0:
        low = f", the lowest {y.min()}" if y.dtype.kind in "iu" else ""
        raise DatasetError(f"{labels}: labels must be integers >= 0, got {y.dtype}{low}")
    if normalize and x.dtype != np.uint8:
        raise DatasetError(
            f"{images}: normalize divides by 255, for bytes (IDX type 0x08), got {x.dtype}: "
            "pass normalize=False"
        )
    if flatten:
        x = x.reshape(len(x), -1)
    if normalize:
        x = x.astype(np.float32) / np.float32(255.0)
    return x, y.astype(np.int64)


def data_dir_for(name: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$FASTNET_DATA/<name>`` when that folder exists, else
    ``$FASTNET_DATA``, else the default folder."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("FASTNET_DATA")
    if env:
        return Path(env) / name if (Path(env) / name).is_dir() else Path(env)
    return Path(FASHION_MNIST_DIR) if name == "fashion-mnist" else Path("data/mnist")


def _load_dataset(
    name: str,
    data_dir: str | os.PathLike | None,
    normalize: bool,
    flatten: bool,
    how_to_get: str,
    one_hot_label: bool = False,
    split: str | None = None,
) -> Any:
    splits = check_split(split)
    if not isinstance(data_dir, (str, os.PathLike, type(None))):  # (load_mnist(True): a flag)
        raise TypeError(
            f"data_dir must be a folder's path or None, got {data_dir!r} (the notebooks' "
            "load_mnist(normalize, flatten, one_hot_label) flags are keywords here)"
        )
    folder = data_dir_for(name, data_dir)
    out = []
    for part in splits:
        paths = [_find(folder, stem) for stem in _FILES[part]]
        missing = [stem for stem, p in zip(_FILES[part], paths) if p is None]
        if missing:
            raise FileNotFoundError(
                f"{name} not found: {folder} lacks {', '.join(missing)} (.gz or raw). {how_to_get}"
            )
        images, labels = paths
        assert images is not None and labels is not None
        x, y = load_idx_pair(images, labels, normalize=normalize, flatten=False)
        if x.shape[1:] != (28, 28):  # (train and test must fit one model)
            raise DatasetError(f"{images}: images of {x.shape[1:]}, not {_TITLES[name]}'s 28x28")
        out.append((x.reshape(len(x), -1) if flatten else x, y))
        if out[-1][1].max() > 9:  # (>= 0 checked): one bad label would make a wider model
            raise DatasetError(
                f"{labels}: label {out[-1][1].max()} is not one of {_TITLES[name]}'s classes (0-9)"
            )
    check_identity(name, folder, {part: y for part, (_, y) in zip(splits, out)})
    if one_hot_label:  # the notebooks' load_mnist(one_hot_label=True)
        out = [(x, one_hot(y, 10)) for x, y in out]
    return out[0] if split is not None else (out[0], out[1])


def check_split(split: str | None) -> tuple[str, ...]:
    """The splits ``split`` asks for: ``None`` both, ``"train"`` or ``"test"`` one."""
    if split is None:
        return ("train", "test")
    if split not in ("train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    return (split,)


def check_identity(name: str, folder: Path, labels: dict[str, np.ndarray]) -> None:
    """Full-size files (60,000 train, 10,000 test rows) must count their labels per class as
    ``name`` does, so one folder's files are never reported as another data set (a common
    mistake: ``FASTNET_DATA`` pointing at Fashion-MNIST while asking for MNIST). Subsets pass."""
    full = {"train": 60000, "test": 10000}
    if name not in _LABEL_COUNTS or any(len(y) != full[part] for part, y in labels.items()):
        return
    index = {"train": 0, "test": 1}
    counts = {part: tuple(np.bincount(y, minlength=10).tolist()) for part, y in labels.items()}

    def matches(data_set: str) -> bool:
        return all(_LABEL_COUNTS[data_set][index[p]] == c for p, c in counts.items())

    if matches(name):
        return
    other = next((k for k in _LABEL_COUNTS if matches(k)), None)
    per_class = counts.get("test", counts.get("train"))
    looks = f"{_TITLES[other]}'s" if other else f"no known data set's ({per_class} per class)"
    raise DatasetError(
        f"{folder} does not hold {_TITLES[name]}: its labels count like {looks}. Pass the "
        f"folder of {_TITLES[name]}'s IDX files with --data-dir (or data_dir=), or put them in "
        f"$FASTNET_DATA/{name}/"
    )


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    split: str | None = None,
):
    """Fashion-MNIST as ``(X_train, y_train), (X_test, y_test)``: 60k/10k 28x28 images,
    flattened to 784 float32 features in [0, 1]; labels one-hot with ``one_hot_label``.
    ``split="train"`` or ``"test"`` returns that ``(X, y)`` alone (only its two files needed).
    Looks in ``data_dir``, else ``$FASTNET_DATA``, else the Debian package's folder."""
    how = (
        f"Install it with `sudo apt-get install dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_DIR}), or give a folder holding the four IDX files: --data-dir DIR "
        f"on the command line, data_dir= in Python, or the environment variable FASTNET_DATA."
    )
    return _load_dataset("fashion-mnist", data_dir, normalize, flatten, how, one_hot_label, split)


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    split: str | None = None,
):
    """MNIST from the four standard IDX files in ``data_dir`` (or ``$FASTNET_DATA``), as
    ``load_fashion_mnist`` (``split="train"`` or ``"test"``: that part alone)."""
    how = (
        "Place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there, or give the folder "
        "holding them: --data-dir DIR on the command line, data_dir= in Python, or the "
        "environment variable FASTNET_DATA."
    )
    return _load_dataset("mnist", data_dir, normalize, flatten, how, one_hot_label, split)


def one_hot(labels: np.ndarray, n_classes: int | None = None, dtype=np.float32) -> np.ndarray:
    """Integer labels ``(n,)`` (or a column ``(n, 1)``) -> one-hot matrix ``(n, n_classes)``;
    whole-number floats (a CSV's ``3.0``) are taken as the integers, as ``fit`` and Keras's
    ``to_categorical`` do."""
    labels = np.asarray(labels)
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim == 1 and labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise ValueError(f"labels must be whole class indices, got {labels[row]} in row {row}")
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be 1-D integers, got shape {labels.shape} dtype {labels.dtype}"
        )
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    out = np.zeros((len(labels), n_classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


#: how ``train_val_split``'s errors name the fraction (the CLI names its own option instead)
FRACTION_NAMES = "val_fraction; validation_split in fit"


def train_val_split(
    X: Any,
    y: Any,
    val_fraction: float = 0.1,
    seed: int | None = 0,
    stratify: bool = True,
):
    """Seeded shuffled split: ``(X_train, y_train), (X_val, y_val)``, ``round(n *
    val_fraction)`` rows held out. With ``stratify`` each class (labels, or the argmax of
    one-hot rows) gives its share (largest remainders, as scikit-learn's stratified splits);
    real-valued targets are split without strata. Lists and pandas objects come back as NumPy
    arrays (rows by position), arrays as their own type."""
    real = isinstance(val_fraction, numbers.Real) and not isinstance(val_fraction, bool)
    if not (real and 0 < val_fraction < 1):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    X, y = _by_position(X, "X"), _by_position(y, "y")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    n, n_val = len(X), int(round(len(X) * val_fraction))
    if not 0 < n_val < n:
        fits = f"use one from {math.ceil(1000 / n) / 1000} to {math.floor(1000 - 1000 / n) / 1000}"
        raise ValueError(
            f"the validation fraction {val_fraction!r} ({FRACTION_NAMES}) "
            f"holds out {n_val} of {n} rows, leaving an empty "
            f"{'validation' if n_val == 0 else 'training'} set; "
            + (fits if n > 1 else "splitting needs 2 rows or more")
        )
    rng = np.random.default_rng(seed)
    strata = _strata(np.asarray(y)) if stratify else None
    if strata is not None:
        classes = [np.flatnonzero(strata == cls) for cls in np.unique(strata)]
        members = [rng.permutation(rows) for rows in classes]
        counts = _shares(np.array([len(m) for m in members]), val_fraction, n_val, rng)
        val = np.sort(np.concatenate([m[:k] for m, k in zip(members, counts)]))
    else:
        val = np.sort(rng.permutation(n)[:n_val])
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return (X[mask], y[mask]), (X[val], y[val])


def _shares(sizes: np.ndarray, fraction: float, total: int, rng: Any) -> np.ndarray:
    """Rows to hold out per class, ``total`` in all: each class's share rounded, then the
    classes rounded furthest from their share (ties drawn) give or take one row each."""
    share = sizes * fraction
    counts = np.array([int(round(s)) for s in share])
    excess = int(counts.sum()) - total
    if excess:  # largest remainders: the same counts as flooring and topping up
        gap = (share - counts) * np.sign(excess)  # the best to change first: lowest
        movable = counts > 0 if excess > 0 else counts < sizes
        order = np.lexsort((rng.random(len(sizes)), gap, ~movable))
        counts[order[: abs(excess)]] -= np.sign(excess)
    return counts


def _strata(y: np.ndarray) -> np.ndarray | None:
    """Class of each row for a stratified split, or None for real-valued targets."""
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(axis=1)
    y = y.reshape(len(y))
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.all(y == np.round(y))):
        return None
    return y


def _by_position(a: Any, name: str) -> Any:
    """``a`` indexable by row positions: lists and pandas objects as NumPy arrays (their
    index labels play no part), arrays (NumPy, CuPy, ...) as they are."""
    return host_array(a, name) if isinstance(a, (list, tuple)) or hasattr(a, "iloc") else a


def minibatches(
    X: Any,
    y: Any,
    batch_size: int = 128,
    seed: int | None = None,
    shuffle: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(X_batch, y_batch)`` pairs covering the data once (the last batch may be short);
    the arguments are checked at the call. Lists and pandas objects are batched as NumPy
    arrays, by row position."""
    integral = isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool)
    if not integral or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    X, y = _by_position(X, "X"), _by_position(y, "y")  # device arrays as they are
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    order = np.random.default_rng(seed).permutation(len(X)) if shuffle else np.arange(len(X))
    batches = (order[lo : lo + batch_size] for lo in range(0, len(X), int(batch_size)))
    return ((X[idx], y[idx]) for idx in batches)
