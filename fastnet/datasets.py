"""Data beyond the IDX datasets: CIFAR-10/100 in their binary format, and the user's own files
(``.npz`` with ``X`` and ``y``, ``.npy`` features with a ``.npy`` of labels, or ``.csv`` with a
target column). ``.npy`` features are opened memory-mapped, so ``fit`` streams them from disk
in chunks and a data set larger than memory trains."""

from __future__ import annotations

import collections
import csv
import itertools
import math
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastnet.backends import outside_fastnet
from fastnet.data import DatasetError, check_split
from fastnet.tabular import as_labels

_CIFAR = {  # training files, test files, label bytes, classes
    "cifar10": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 10),
    "cifar100": (["train.bin"], ["test.bin"], 2, 100),
}
_PIXELS = 3 * 32 * 32


def _read_cifar(path: Path, label_bytes: int, label_index: int, n_classes: int) -> tuple:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DatasetError(
            f"{path}: {raw.size} bytes is not a whole number of {record}-byte "
            f"CIFAR records (truncated or not the binary version?)"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, label_index].astype(np.int64)
    if labels.max() >= n_classes:
        raise DatasetError(f"{path}: label {labels.max()} out of range for {n_classes} classes")
    return rows[:, label_bytes:], labels


def load_cifar(
    name: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    label: str = "fine",
    normalize: bool = True,
    split: str | None = None,
) -> Any:
    """CIFAR-10 or CIFAR-100 from the binary version's files (``data_batch_1.bin`` ...
    ``test_batch.bin``; ``train.bin``/``test.bin`` for CIFAR-100, ``label="fine"`` (100 classes)
    or ``"coarse"`` (20)) as ``(X_train, y_train), (X_test, y_test)``, or with
    ``split="train"``/``"test"`` that ``(X, y)`` alone. Images come flat, channel-major (3072
    values), in [0, 1] with ``normalize``. ``data_dir`` defaults to ``$FASTNET_DATA/<name>``."""
    if name not in _CIFAR:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    if label == "coarse" and name == "cifar10":
        raise ValueError(
            "label='coarse' is CIFAR-100's 20 superclasses: cifar10 has no such labels"
        )
    folder = Path(data_dir or Path(os.environ.get("FASTNET_DATA", "data")) / name)
    train_files, test_files, label_bytes, classes = _CIFAR[name]
    index = 1 if name == "cifar100" and label == "fine" else 0
    if name == "cifar100" and label == "coarse":
        classes = 20
    parts = []
    splits = check_split(split)
    for files in [{"train": train_files, "test": test_files}[part] for part in splits]:
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{name} not found: {folder} lacks {', '.join(missing)}; download the binary "
                f"version of {name.upper()} and give its folder: --data-dir DIR on the command "
                "line, data_dir= in Python, or the environment variable FASTNET_DATA"
            )
        images, labels = zip(*(_read_cifar(folder / f, label_bytes, index, classes) for f in files))
        X = np.concatenate(images)
        parts.append(
            ((X / np.float32(255)).astype(np.float32) if normalize else X, np.concatenate(labels))
        )
    return parts[0] if split is not None else (parts[0], parts[1])


def load_arrays(
    path: str | os.PathLike, labels: str | os.PathLike | None = None, target: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from ``path``: a ``.npz`` with arrays ``X`` and ``y``; a ``.npy`` of features
    (memory-mapped) with ``labels`` a ``.npy`` of targets; or a ``.csv`` with a header row and
    the ``target`` column. Labels come as stored (strings stay strings): map them to classes
    with the training data's classes (``fastnet.tabular.LabelEncoding``)."""
    suffix = Path(path).suffix.lower()
    for given, name, wanted in ((labels, "labels", ".npy"), (target, "target", ".csv")):
        if given is not None and suffix != wanted:
            raise ValueError(f"{name}= applies only to a {wanted} file, not to {os.fspath(path)}")
    X, y, _ = load_table(path, labels, target, need_target=True)
    assert y is not None
    return X, y


def load_table(
    path: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    target: str | None = None,
    *,
    need_target: bool = True,
    columns: list[str] | None = None,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """``(X, y, feature column names)`` like ``load_arrays``; without ``need_target`` labels are
    not read (``y`` None: features to predict). ``columns`` picks a CSV's feature columns by
    name (the ones a model was trained on); ``dtype``: a CSV's features' (float64 for a
    float64 model: float32 rounds timestamps near 1.7e9 to 128 s)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"data file {str(path)!r} {what}")
    suffix, names, y = path.suffix.lower(), None, None
    try:
        if suffix == ".npz":
            _check_fits_memory(path)
            with np.load(path, allow_pickle=False) as data:
                needed = {"X", "y"} if need_target else {"X"}
                missing = needed - set(data.files)
                if missing:
                    raise DatasetError(
                        f"{path} lacks array(s) {sorted(missing)}: it holds {data.files[:8]} "
                        f"(np.savez(path, {', '.join(f'{n}=...' for n in sorted(needed))}))"
                    )
                X, y = data["X"], data["y"] if need_target else None
        elif suffix == ".npy":
            if labels is None and need_target:
                raise DatasetError(
                    f"{path} holds features only: pass its labels' .npy file (labels= in "
                    "Python; --labels, or --val-labels for --val, on the command line)"
                )
            X = np.load(path, mmap_mode="r", allow_pickle=False)
            y = None if labels is None else _labels_npy(labels)
        elif suffix == ".csv":
            if target is None and need_target:
                raise DatasetError(
                    f"{path}: name the target column (target= in Python, --target COLUMN on "
                    "the command line)"
                )
            X, y, names = read_csv(path, target, need_target, columns, dtype=dtype)
        else:
            raise DatasetError(f"{path}: expected a .npz, .npy or .csv file")
    except Exception as exc:  # zip, header, OS errors alike (np.load's are many): unusable
        if isinstance(exc, DatasetError | FileNotFoundError | MemoryError):
            raise
        raise DatasetError(f"{path} is not a readable data file: {_hint(exc)}") from None
    where = os.fspath(labels) if suffix == ".npy" and labels is not None else path
    _check_table(path, X, y, names, where)
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # one column of targets: as a vector
    return X, y, names


def physical_memory() -> int:
    """Bytes of physical memory (``sys.maxsize`` where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # (no sysconf, or no such name)
        return sys.maxsize


def _check_fits_memory(path: Path) -> None:
    """A (compressed) .npz whose arrays would not fit in memory twice is refused before it is
    read (a few MB of zeros may expand to gigabytes)."""
    if not zipfile.is_zipfile(path):  # (np.load reports it; a cut archive's file left open)
        with open(path, "rb") as f:
            if f.read(2) == b"PK":
                raise zipfile.BadZipFile("it starts as a zip archive but has no complete one")
        return
    with zipfile.ZipFile(path) as archive:
        size = sum(info.file_size for info in archive.infolist())
    memory = physical_memory()
    if size > memory // 2:  # (training copies them once: a split, a cast)
        raise DatasetError(
            f"{path} expands to {size / 2**30:.1f} GiB, over half this machine's memory "
            f"({memory / 2**30:.1f} GiB): save the features as a .npy, which is memory-mapped "
            "(--data X.npy --labels y.npy)"
        )


def _check_table(path: Path, X: Any, y: Any, names: Any, where: Any) -> None:
    """A file's features and labels (from ``where``) as a kernel can take them: refused with
    a DatasetError naming the file."""
    if X.ndim != 2 or (y is not None and (y.ndim == 0 or len(X) != len(y))):
        raise DatasetError(
            f"{path}: need 2-D features (rows, columns)"
            + (f", got X {X.shape}" if y is None else f" and one label per row, got X {X.shape}")
            + ("" if y is None else f" and y {y.shape}")
            + (": flatten images first, X.reshape(len(X), -1)" if X.ndim > 2 else "")
        )
    if not len(X):
        raise DatasetError(f"{path} holds no data rows")
    if X.dtype.kind not in "biuf" or not X.shape[1]:
        raise DatasetError(
            f"{path}: features must be one or more columns of numbers, got {X.dtype} {X.shape}"
        )
    if y is not None and y.dtype.kind not in "biufSU":
        raise DatasetError(
            f"{where}: labels must be integers, floats, bools or strings, got {y.dtype}"
        )
    if y is not None and y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DatasetError(
            f"{where}: labels hold {np.count_nonzero(~np.isfinite(y))} NaN or infinite value(s)"
        )
    if not isinstance(X, np.memmap) and X.dtype.kind == "f":  # (a memory map: at training)
        check_finite_features(path, X, names)


def _labels_npy(labels: str | os.PathLike) -> np.ndarray:
    """The labels of a .npy of features: a .npy array too."""
    name = os.fspath(labels)
    if Path(name).suffix.lower() != ".npy":
        raise DatasetError(f"labels file {name!r}: the labels of a .npy of features are a .npy")
    try:
        return np.load(name, allow_pickle=False)
    except Exception as exc:  # as load_table's
        raise DatasetError(f"labels file {name!r} is not a readable .npy: {_hint(exc)}") from None


def _hint(exc: Exception) -> str:
    """NumPy's error, with the way out where it is an object (pickled) array."""
    if str(exc).startswith("This file contains pickled"):  # np.load's guess without a header
        return "neither a .npy nor a .npz (zip) file"
    if "pickle" in str(exc) or "Python objects" in str(exc):  # (np.load's, or memmap's)
        return "it holds Python objects (strings? save them with .astype(str)), never unpickled"
    if isinstance(exc, EOFError) or "No data left" in str(exc):
        return "it is empty or cut short"
    return str(exc) if isinstance(exc, OSError | ValueError) else f"{type(exc).__name__}: {exc}"


#: target cells that are no value (signs: Python's float() reads them all)
MISSING = {s + w for s in ("", "+", "-") for w in ("nan", "inf", "infinity")} | {""}
#: pandas's and R's markers of a missing value: no value in a column of numbers otherwise
NA_MARKERS = {"na", "n/a", "#n/a", "#na", "<na>", "null", "none", "nan", "-nan", "?"}


def read_csv(
    path: str | os.PathLike,
    target: str | None,
    need_target: bool = True,
    columns: list[str] | None = None,
    chunk_rows: int = 4096,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Stream a CSV with a header into a ``dtype`` array (about the array's size in memory:
    one pass counts rows and keeps the target column, a second parses features in chunks).
    Returns ``(X, the target column or None, feature column names)``: numbers when every
    target cell holds one (``as_labels``), else text; an empty or NaN target is an error."""
    path = Path(path)
    target = target.strip() if isinstance(target, str) else target  # (names are stripped)
    columns = None if columns is None else [str(c).strip() for c in columns]
    with open(path, newline="", encoding="utf-8-sig") as f:  # (Excel's BOM dropped)
        reader = csv.reader(f)
        records = _records(reader, path)
        header = _checked_header(path, next(records, []), target if need_target else None, columns)
        column = header.index(target) if target in header and need_target else None
        values, row_lines, missing, rows, line = [], [], [], 0, reader.line_num
        multiline = line > 1  # (a quoted line break in the header)
        for row in records:
            multiline |= reader.line_num > line + 1 and bool(row)  # a quoted line break
            line = reader.line_num
            if not row or (len(row) == 1 < len(header) and not row[0].strip()):  # (spaces;
                continue  # one column's: an empty cell)
            if len(row) != len(header):
                raise DatasetError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header "
                    f"{len(header)}"
                )
            if column is not None:  # (stripped below as the header's names: "a, b"'s " b")
                values.append(row[column])
                row_lines.append(reader.line_num)
                if row[column].strip().lower() in MISSING:
                    missing.append(reader.line_num)
            rows += 1
    missing = missing or _markers_among_numbers(values, row_lines)
    if missing:
        at = f"{missing[:5]} and {len(missing) - 5} more" if len(missing) > 5 else missing
        raise DatasetError(
            f"{path}: the target column {target!r} is empty, NaN, infinite or a missing-value "
            f"marker (NA, null, ...) on line(s) {at}: drop or fill those rows"
        )
    skip = header.index(target) if target in header else None
    names = [h for i, h in enumerate(header) if i != skip]
    use = list(range(len(header)))
    if columns is not None:
        absent = [c for c in columns if c not in names]
        if absent:
            raise DatasetError(
                f"{path} lacks the feature column(s) {absent[:5]} the model was trained on"
            )
        use, names = [header.index(c) for c in columns], list(columns)
    X = _csv_features(path, [i for i in use if i != skip], rows, chunk_rows, multiline, dtype)
    return X, _labels(path, target, values) if column is not None else None, names


def _labels(path: Path, target: Any, cells: list[str]) -> np.ndarray:
    """The target column's ``cells`` as labels (``as_labels``), stripped of surrounding
    spaces: in a text column, labels that differ only in them are one class (" yes" and
    "yes": a space after each comma is the usual cause; pandas keeps them apart), said."""
    values = [cell.strip() for cell in cells]
    labels = as_labels(np.array(values, dtype=str))
    if labels.dtype.kind != "U" or values == cells:  # (numbers: " 3" is 3; nothing stripped)
        return labels
    padded = collections.Counter(c for c, v in zip(cells, values) if c != v)
    spellings: dict[str, set[str]] = {}
    for cell in padded:
        spellings.setdefault(cell.strip(), set()).add(cell)
    counts = collections.Counter(v for v in values if v in spellings)
    merged = {
        label: sorted(cells | ({label} if counts[label] > sum(padded[c] for c in cells) else set()))
        for label, cells in spellings.items()
    }
    merged = {label: cells for label, cells in merged.items() if len(cells) > 1}
    if merged:
        shown = "; ".join(f"{cells} as {label!r}" for label, cells in list(merged.items())[:3])
        warnings.warn(
            f"{path}: the target column {target!r} spells labels with and without surrounding "
            f"spaces, read as one class each (spaces stripped): {shown}",
            stacklevel=outside_fastnet(),
        )
    return labels


def _markers_among_numbers(values: list[str], lines: list[int]) -> list[int]:
    """The lines of missing-value markers (``NA_MARKERS``) in a column whose other cells are
    all numbers ([] where any other is text: "None" may be a class name)."""
    marked = [i for i, v in enumerate(values) if v.strip().lower() in NA_MARKERS]
    if not marked or len(marked) == len(values):
        return []
    skip = set(marked)
    for i, v in enumerate(values):
        if i not in skip:
            try:
                float(v)
            except ValueError:
                return []
    return [lines[i] for i in marked]


def _checked_header(
    path: Path, header: list[str], target: str | None, columns: Any = None
) -> list[str]:
    """``header``, refused where a column has no name or a repeated one, or lacks ``target``
    (named as another separator's columns where the header is one column they split), or
    where it holds numbers alone (a row of data: unless ``target`` or the ``columns`` a model
    takes name them)."""
    header = [h.strip() for h in header]  # ("a, b, label": a, b, label)
    if not header and not path.stat().st_size:
        raise DatasetError(f"{path} is empty")
    if not any(header) or header[0].lower().startswith("sep="):  # (names are stripped)
        what = "is Excel's sep= line" if any(header) else "is blank"
        raise DatasetError(f"{path}: its first line {what}: delete it (the header row comes first)")
    named = target in header or (columns is not None and set(columns) <= set(header))
    if not named and _all_numbers(header) and header != [*map(str, range(len(header)))]:
        raise DatasetError(  # (pandas' own default names, 0 1 2 ..., are a header)
            f"{path}: the first line, {header[:4]}{' ...' if len(header) > 4 else ''}, holds "
            "numbers, not column names: fastnet's CSV files start with a header row (pandas: "
            "to_csv(path, index=False); NumPy: np.savetxt(path, a, delimiter=',', header="
            "'x1,x2,...,label', comments=''))"
        )
    counts = collections.Counter(header)
    if counts[""]:
        raise DatasetError(
            f"{path}: {counts['']} column(s) of the header have no name ("
            + ("pandas: to_csv(index=False) leaves out the index)" if header[0] == "" else
               "a comma at the end of the line?)")
        )  # fmt: skip
    repeated = sorted(h for h, n in counts.items() if n > 1)
    if repeated:
        raise DatasetError(f"{path}: the header repeats the column name(s) {repeated}")
    other = [s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]]
    if other and not named and (target is not None or columns is not None):
        raise DatasetError(
            f"{path}: the header is one column, {header[0]!r}, separated by {other[0]!r}: "
            "fastnet reads comma-separated files (pandas: pd.read_csv(path, sep="
            f"{other[0]!r}).to_csv(new_path, index=False))"
        )
    if target is not None and target not in header:
        data = " (if that line is a row of data, the file lacks its header row: pandas: "
        data = f"{data}to_csv(path, index=False))" if _data_row(header) else ""
        raise DatasetError(f"{path}: no column {target!r} in the header {header}{data}")
    return header


def _all_numbers(cells: list[str]) -> bool:
    try:
        return all(math.isfinite(float(c)) for c in cells)
    except ValueError:
        return False


def _data_row(header: list[str]) -> bool:
    """Whether a first line may be a row of data with a class label: two or more numbers and
    one other cell ("0.1,0.7,dog"; "1990,2000,pop" is a header of that shape too)."""
    numbers = sum(_all_numbers([c]) for c in header)
    return numbers >= 2 and numbers == len(header) - 1


def _records(reader: Any, path: Path) -> Iterator[list[str]]:
    """``reader``'s records; its errors (a field past ``csv.field_size_limit()``: no number or
    class name is that long) a DatasetError naming the file and line."""
    try:
        yield from reader
    except csv.Error as exc:
        raise DatasetError(f"{path}: line {reader.line_num}: {exc}") from None


def _csv_features(
    path: Path, use: list[int], rows: int, chunk: int, multiline: bool, dtype: Any
) -> np.ndarray:
    """Columns ``use`` of a CSV's rows as ``dtype``, parsed ``chunk`` rows at a time: lines go
    to NumPy's parser as they are (no comment character: a ``#`` is data) unless a quoted
    field spans lines (``multiline``), then records split by ``csv`` (slower)."""
    X = np.empty((rows, len(use)), dtype=np.dtype(dtype))
    with open(path, newline="", encoding="utf-8-sig") as f:
        if multiline:
            records = (  # (quoted again: a cell "1,5" stays one cell, refused)
                ",".join('"' + row[i].replace('"', '""') + '"' for i in use)
                for row in itertools.islice(csv.reader(f), 1, None)
                if row and (len(row) > 1 or row[0].strip())
            )
            kept = list(range(len(use)))
        else:
            records = (line for i, line in enumerate(f) if i and line.strip())
            kept = use
        for lo in range(0, rows, chunk):
            want = min(chunk, rows - lo)
            block = itertools.islice(records, want)
            try:
                parsed = np.loadtxt(
                    block,
                    delimiter=",",
                    dtype=dtype,
                    usecols=kept,
                    ndmin=2,
                    quotechar='"',
                    comments=None,
                )
            except ValueError as exc:
                raise DatasetError(f"{path}: {_first_bad_cell(path, use) or exc}") from None
            if parsed.shape[0] != want:  # never broadcast one row over a block
                where = f"data rows {lo}-{lo + want - 1} (0-based) do not parse as {want} rows"
                raise DatasetError(f"{path}: {_first_bad_cell(path, use) or where}")
            X[lo : lo + want] = parsed
    return X


def _first_bad_cell(path: Path, use: list[int]) -> str:
    """Where a CSV's features first fail to parse (data row, column name, cell), "" if not
    found: read again record by record, only once parsing failed."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        kept = (r for r in reader if r and (len(r) > 1 or len(header) == 1 or r[0].strip()))
        for row, record in enumerate(kept):  # (the rows read_csv keeps)
            for i in use:
                try:
                    float(record[i])
                except ValueError:
                    where = (
                        f"data row {row} (0-based; line {reader.line_num}), column {header[i]!r}"
                    )
                    if not record[i].strip():  # pandas writes NaN so
                        return f"the feature in {where} is empty: fill or drop missing values"
                    return f"feature columns must be numbers: {where} holds {record[i]!r}"
    return ""


def check_finite_features(path: Any, X: np.ndarray, names: list[str] | None = None) -> None:
    """A NaN or infinite feature is an error naming the file, the row and the column."""
    bad = np.argwhere(~np.isfinite(X))
    if len(bad):
        row, col = bad[0]
        name = repr(names[col]) if names else str(col)
        raise DatasetError(
            f"{path}: features hold {len(bad)} NaN or infinite value(s) (as {X.dtype}: or "
            f"beyond +-{np.finfo(X.dtype).max:.4g}), the first in data row {row} (0-based), "
            f"column {name}: fill or drop them first"
        )
