"""Your own data's targets and features: labels mapped to classes as scikit-learn does (sorted
unique training labels -> class indices, mapped back on prediction), one-hot rows to indices, and
feature scaling fitted on the training rows. Both are saved with a model as plain JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastnet.data import DatasetError

TASKS = ("auto", "classification", "regression")
SCALES = ("none", "standard", "minmax")
#: the CLI's --loss choices and the task each is for
LOSS_CHOICES = {
    "cross-entropy": "classification",
    "squared-error": "regression",
    "poisson": "regression",
}


def label_array(y: Any) -> np.ndarray:
    """Labels as a NumPy array (a pandas Series's values: a categorical's as its categories)."""
    return np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)


def _one_hot_mask(y: np.ndarray) -> np.ndarray | None:
    """Which rows of 2-D numeric ``y`` (2+ columns) are one-hot; None for other ``y``."""
    if y.ndim != 2 or y.shape[1] < 2 or y.dtype.kind not in "biuf":
        return None
    return np.isin(y, (0, 1)).all(axis=1) & (y.sum(axis=1) == 1)


def _one_hot_rows(y: np.ndarray) -> bool:
    mask = _one_hot_mask(y)
    return mask is not None and bool(mask.all())


def check_one_hot_rows(y: np.ndarray, name: str) -> None:
    """Refuse (``DatasetError``) a row of 2-D ``y`` that is not one-hot (a row of zeros, two
    1s) where more than half of them are, naming it."""
    good = _one_hot_mask(y)
    if good is not None and len(y) and 0.5 < good.mean() < 1:
        row = int(np.argmin(good))
        raise DatasetError(
            f"{name}: row {row} (0-based) of these one-hot rows is {y[row].tolist()[:8]}"
            f"{' ...' if y.shape[1] > 8 else ''}: give it one class (one 1) or drop it; to "
            "predict the columns as numbers, task 'regression' (--task regression)"
        )


def infer_task(y: np.ndarray, name: str = "y") -> str:
    """Classification for strings, booleans, integers and one-hot rows; regression for
    non-integer numbers or several real-valued columns; mostly one-hot rows with another
    row refused (``check_one_hot_rows``)."""
    check_one_hot_rows(y, name)
    if y.dtype.kind in "USObiu" or _one_hot_rows(y):
        return "classification"
    if y.ndim == 1 and np.isfinite(y).all() and np.all(y == np.round(y)):
        return "classification"
    return "regression"


def as_labels(y: np.ndarray) -> np.ndarray:
    """Text labels that all hold numbers become numbers: integers when all are whole ("3" and
    "3.0" are one class; integer text exactly, as int64; past int64 as their decimal text),
    else floats (NaN and infinity stay floats); other text stays text, and so do whole-number
    codes with leading zeros ("007", "010": as numbers "007" and "7" were one class)."""
    if y.dtype.kind in "USO":
        text = y.astype(str)
        digits = np.char.lstrip(np.char.strip(text), "+-")
        if np.all(np.char.isdigit(digits)):
            if np.any(np.char.startswith(digits, "0") & (np.char.str_len(digits) > 1)):
                return text  # codes such as "007" keep their zeros (as numbers "007" is "7")
            try:  # IDs past 2**53 stay distinct (float64 would merge them)
                ints = [int(v) for v in text.ravel()]
                return np.array(ints, np.int64).reshape(y.shape)
            except OverflowError:  # past int64: as text ("+7" is "7"), still distinct
                return np.array([str(i) for i in ints]).reshape(y.shape)
            except ValueError:  # "²": as float() takes it
                pass
        try:
            numbers = y.astype(np.float64)
        except ValueError:
            return text
        whole = np.all((numbers == np.round(numbers)) & (np.abs(numbers) < 2**53))
        return numbers.astype(np.int64) if whole else numbers
    return y


def _decoded(y: np.ndarray, name: str) -> np.ndarray:
    """Labels of bytes as text, decoded as UTF-8 (NumPy's str() takes ASCII alone)."""
    if y.dtype.kind != "S":
        return y
    try:
        return np.char.decode(y, "utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{name} holds bytes that are not UTF-8 text ({exc.reason}): decode them first, "
            "e.g. np.char.decode(y, 'latin-1')"
        ) from None


def _padded_like(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Text labels as a model's classes spell them where those keep spaces a CSV put around
    them (read before CSV labels were stripped as header names are: " high"), one to one."""
    bare = np.char.strip(classes)
    if np.array_equal(bare, classes) or len(np.unique(bare)) != len(classes):
        return y
    spelled = dict(zip(bare.tolist(), classes.tolist()))
    return np.array([spelled.get(v.strip(), v) for v in y.tolist()], dtype=str)


class LabelEncoding:
    """The training labels' sorted unique values; ``encode`` maps labels to class indices,
    ``decode`` indices back to labels."""

    def __init__(self, classes: Any) -> None:
        self.classes = np.asarray(classes)

    @classmethod
    def fit(cls, y: np.ndarray, name: str = "y") -> tuple[LabelEncoding, np.ndarray]:
        """Classes from training labels ``y`` (an array, list or pandas Series); returns the
        encoding and ``y``'s indices."""
        y = _decoded(label_array(y), name)
        if _one_hot_rows(y):
            return cls(np.arange(y.shape[1])), y.argmax(axis=1)
        check_one_hot_rows(y, name)
        if y.ndim != 1:
            raise DatasetError(
                f"{name} has shape {y.shape}: class labels must be one column (or one-hot rows)"
            )
        y = as_labels(y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise DatasetError(f"{name} contains NaN or infinite labels")
        encoding = cls(np.unique(y))
        if len(encoding.classes) < 2:
            raise DatasetError(
                f"{name} holds a single class {encoding.classes.tolist()}: a "
                "classifier needs 2 or more"
            )
        return encoding, np.searchsorted(encoding.classes, y)

    def encode(self, y: np.ndarray, name: str = "y") -> np.ndarray:
        """Class indices of ``y``; labels the training data did not have are an error."""
        y = _decoded(label_array(y), name)
        if _one_hot_rows(y) and y.shape[1] == len(self.classes):
            return y.argmax(axis=1)
        y = np.asarray(y).reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else np.asarray(y)
        if y.ndim != 1:
            raise DatasetError(f"{name} has shape {y.shape}; expected one label per row")
        classes = self.classes
        y = y.astype(str) if classes.dtype.kind == "U" else as_labels(y)
        if classes.dtype.kind == "U" and y.dtype.kind == "U":
            y = _padded_like(y, classes)
        if y.dtype.kind == "U" and classes.dtype.kind == "b":  # a CSV's True/False, 1/0
            words = np.char.lower(np.char.strip(y))
            if np.isin(words, ("true", "false", "1", "0")).all():
                y = np.isin(words, ("true", "1"))
        if y.dtype.kind == "U" and classes.dtype.kind != "U":
            unknown = np.setdiff1d(np.unique(y), classes.astype(str)) if y.size else y
            unknown = unknown if unknown.size or not y.size else np.unique(y)
        else:
            unknown = np.setdiff1d(np.unique(y), classes)
        if unknown.size:
            raise DatasetError(
                f"{name}: label(s) {unknown[:5].tolist()} that the training "
                f"data lacks (classes: {classes[:10].tolist()})"
            )
        return np.searchsorted(classes, y)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.classes[np.asarray(indices)]

    def names(self) -> list[str]:
        return [str(c) for c in self.classes.tolist()]

    def to_json(self) -> list:
        return self.classes.tolist()


class Scaler:
    """Per-feature affine scaling fitted on training rows: ``standard`` (zero mean, unit
    variance) or ``minmax`` (to [0, 1]); constant features are only shifted."""

    def __init__(self, kind: str, offset: Any = None, scale: Any = None) -> None:
        if kind not in SCALES[1:]:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {kind!r}")
        self.kind = kind
        self.offset = None if offset is None else np.asarray(offset, np.float64)
        self.scale = None if scale is None else np.asarray(scale, np.float64)
        if self.offset is not None or self.scale is not None:
            o, s = (np.asarray(v, np.float64).ravel() for v in (offset, scale))  # None: NaN
            if o.shape != s.shape or not (np.isfinite(o).all() and np.isfinite(s).all()):
                raise ValueError("a scaling's offset and scale must be finite, one per feature")
            if not (s > 0).all():
                raise ValueError("a scaling's scale must be positive")

    def fit(self, X: np.ndarray, chunk: int = 8192) -> Scaler:
        """Statistics in float64, chunk by chunk (no float64 copy of ``X``); the variance
        from each chunk's squared deviations, merged (Chan et al.): a column of a large offset
        and a small spread (timestamps) keeps its spread, which ``E[x²] - E[x]²`` loses."""
        if self.kind == "standard":
            n, mean, m2 = 0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
            for lo in range(0, len(X), chunk):
                block = np.asarray(X[lo : lo + chunk], np.float64)
                k, block_mean = len(block), block.mean(0)
                delta = block_mean - mean
                m2 += ((block - block_mean) ** 2).sum(0) + delta**2 * n * k / (n + k)
                n, mean = n + k, mean + delta * k / (n + k)
            spread = np.sqrt(m2 / max(n, 1))
        else:
            mean = np.min(X, axis=0).astype(np.float64)
            spread = np.max(X, axis=0).astype(np.float64) - mean
        bad = np.flatnonzero(~np.isfinite(mean) | ~np.isfinite(spread))
        if len(bad):
            raise DatasetError(
                f"feature column(s) {bad[:5].tolist()} hold NaN or infinite values: scaling "
                f"needs finite features"
            )
        self.offset, self.scale = mean, np.where(spread > 0, spread, 1.0)
        return self

    def transform(self, X: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """A scaled copy of ``X`` in ``dtype``, computed in ``dtype`` as the model's
        ``Standardize`` layer computes it (the saved model sees what training saw)."""
        if self.offset is None or self.scale is None:
            raise RuntimeError("Scaler.fit first")
        if X.shape[1] != len(self.offset):
            raise DatasetError(
                f"features have {X.shape[1]} columns; the scaling was fitted on {len(self.offset)}"
            )
        out = np.array(X, dtype=dtype)
        out -= self.offset.astype(dtype)
        out /= self.scale.astype(dtype)
        return out

    def to_json(self) -> dict:
        assert self.offset is not None and self.scale is not None
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, data: Any) -> Scaler:
        if not isinstance(data, dict) or not {"kind", "offset", "scale"} <= set(data):
            raise ValueError("a scaling is a JSON object with kind, offset and scale")
        return cls(data["kind"], data["offset"], data["scale"])


__all__ = ["SCALES", "TASKS", "LabelEncoding", "Scaler", "as_labels", "infer_task"]
