"""Command line: fastnet train | predict | evaluate | export | backends | bench."""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastnet.backends import _launched_rank
from fastnet.optimizers import OPTIMIZERS as RULES
from fastnet.tabular import LOSS_CHOICES
from fastnet.training import RanksDifferError, TrainingDivergedError


def _layers(spec: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in spec.split(",")) if spec.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers must be comma-separated integers, got {spec!r}"
        ) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--layers needs positive sizes, got {spec!r}")
    return sizes


DATASETS = ["fashion-mnist", "mnist", "cifar10", "cifar100"]
DTYPES = ["float32", "float64", "mixed_bfloat16", "mixed_float16"]
PRESETS: dict[str, dict] = {
    "best": {
        "help": "MLP 2048-1024, dropout 0.3, AdamW (wd 0.05), warmup-cosine, label smoothing 0.1, "
        "30 epochs",
        "layers": (2048, 1024),
        "dropout": 0.3,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "schedule": "warmup-cosine",
        "label_smoothing": 0.1,
        "epochs": 30,
    },
}
GRAPH_CHOICES: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}
DATA_DIR_HELP = (
    "folder of the built-in data set's files (default: $FASTNET_DATA/<dataset>, for the MNISTs "
    "$FASTNET_DATA without that folder; no FASTNET_DATA: the Debian package's folder for "
    "fashion-mnist, else data/<dataset>)"
)
#: train options a checkpoint records, which ``--resume`` takes unless given again
RUN_SETTINGS = ("epochs", "batch_size", "schedule", "patience")
#: train options a checkpoint records as given, which a resumed run's --json reports
REPORTED_SETTINGS = ("loss", "scale")


def _positive(kind, zero_ok: bool = False):  # noqa: ANN001, ANN202
    """An argparse type: a finite number of ``kind``, > 0 (or >= 0), with a message argparse
    prefixes with the option's name."""
    return _number(kind, 0.0, math.inf, low_ok=zero_ok)


def _number(kind, low: float, high: float, low_ok: bool = True):  # noqa: ANN001, ANN202
    """An argparse type: a finite number of ``kind`` in ``[low, high)`` (``(low, high)``
    without ``low_ok``); NaN and infinity are refused."""

    def parse(text: str):  # noqa: ANN202
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or not (low < value or (low_ok and value == low))
            or (value >= high)
        ):
            lo = "[" if low_ok else "("
            span = f"in {lo}{low:g}, {high:g})"
            if high == math.inf:
                span = "non-negative" if low_ok and low == 0 else f"> {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text!r}")
        return value

    return parse


OPTIMIZERS = RULES.builtin()  # (a rule added to fastnet.optimizers is an --optimizer)
_BACKEND_DEFAULT = "(default: $FASTNET_BACKEND or auto)"
TRAIN_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--backend",),
        dict(help=f"numpy, numba, cupy, cupy:N or auto {_BACKEND_DEFAULT}"),
    ),
    (("--layers",), dict(type=_layers, default=(256, 128), help="hidden sizes (default: 256,128)")),
    (("--epochs",), dict(type=_positive(int), default=20, help="passes over the data")),
    (("--batch-size",), dict(type=_positive(int), default=128, help="rows per step (global)")),
    (("--optimizer",), dict(default="adam", choices=OPTIMIZERS, help="update rule")),
    (("--lr",), dict(type=_positive(float), default=1e-3, help="learning rate")),
    (
        ("--weight-decay",),
        dict(type=_positive(float, zero_ok=True), default=0.0, help="L2 weight decay"),
    ),
    (
        ("--schedule",),
        dict(
            default="cosine",
            choices=["cosine", "warmup-cosine", "constant"],
            help="learning-rate schedule over the epochs (warmup-cosine: 1 warmup epoch, per step)",
        ),
    ),
    (("--label-smoothing",), dict(type=_number(float, 0, 1), default=0.0, help="for the CE loss")),
    (
        ("--loss",),
        dict(
            default="auto",
            choices=["auto", *LOSS_CHOICES],
            help="auto: cross-entropy for classification, squared-error for regression; "
            "poisson: counts or rates >= 0 (predictions exp(outputs))",
        ),
    ),
    (
        ("--preset",),
        dict(
            choices=sorted(PRESETS),
            help="a tuned configuration (flags given "
            "explicitly still win): " + "; ".join(f"{k}: {v['help']}" for k, v in PRESETS.items()),
        ),
    ),
    (
        ("--dropout",),
        dict(type=_number(float, 0, 1), default=0.0, help="dropout rate after each hidden layer"),
    ),
    (("--dtype",), dict(default="float32", choices=DTYPES, help="precision (mixed_*: GPU only)")),
    (
        ("--precision",),
        dict(
            default="fp32",
            choices=["fp32", "tf32"],
            help="float32 matmuls: exact fp32, or TF32 tensor cores (cupy)",
        ),
    ),
    (
        ("--seed",),
        dict(type=_positive(int, zero_ok=True), default=0, help="weights, shuffle, split"),
    ),
    (
        ("--val-fraction",),
        dict(
            type=_number(float, 0, 1, low_ok=False),
            help="training rows held out (default 0.1; a seeded shuffle, stratified by class)",
        ),
    ),
    (("--limit",), dict(type=_positive(int), help="use only the first N training rows")),
    (
        ("--dataset",),
        dict(choices=DATASETS, help="built-in data set (default: fashion-mnist); not with --data"),
    ),
    (
        ("--data-dir",),
        dict(help=DATA_DIR_HELP),
    ),
    (
        ("--data",),
        dict(
            metavar="FILE",
            help="train on your own file instead of --dataset: a "
            ".npz with X and y, a .npy of features (memory-mapped; give --labels) "
            "or a .csv with a header (give --target)",
        ),
    ),
    (("--labels",), dict(metavar="FILE", help="a .npy of labels for a .npy --data")),
    (("--target",), dict(metavar="COLUMN", help="the label column of a .csv --data")),
    (
        ("--task",),
        dict(
            default="auto",
            choices=["auto", "classification", "regression"],
            help="auto: the task of a --loss given, else classification for text, integer "
            "or one-hot labels, regression for other numbers",
        ),
    ),
    (
        ("--scale",),
        dict(
            default="none",
            choices=["none", "standard", "minmax"],
            help="scale features with statistics of the training rows (saved with "
            "the model, applied by predict and evaluate)",
        ),
    ),
    (
        ("--val",),
        dict(
            metavar="FILE",
            help="validation file in --data's format (default: a "
            "--val-fraction split of --data); also the held-out set reported",
        ),
    ),
    (("--val-labels",), dict(metavar="FILE", help="a .npy of labels for a .npy --val")),
    (("--save",), dict(metavar="FILE", help="write a checkpoint here (.npz or .safetensors)")),
    (
        ("--resume",),
        dict(
            metavar="CHECKPOINT",
            help="train a saved model on from where it stopped (its own model, optimizer "
            "state, seed and scaling; the same data): --epochs counts from its first run's start",
        ),
    ),
    (("--plot",), dict(metavar="FILE", help="write learning curves (PNG) here")),
    (("--patience",), dict(type=_positive(int), help="early stopping patience")),
    (
        ("--json",),
        dict(metavar="FILE", help="write the history and results as JSON ('-': to stdout)"),
    ),
    (
        ("--compiled-step", "--cuda-graph"),
        dict(
            dest="cuda_graph",
            default="auto",
            choices=["auto", "on", "off"],
            help="the backend's compiled step: a CUDA graph replay on cupy, one fused JIT call on "
            "numba (auto: when the model qualifies; on: required; off: eager steps)",
        ),
    ),
    (
        ("--verbose",),
        dict(
            type=int,
            default=1,
            choices=[0, 1, 2],
            help="1 progress bar and epoch lines, 2 epoch lines only, 0 neither (the run's "
            "header, results and saved files are still said)",
        ),
    ),
    (("--quiet",), dict(action="store_true", help="no progress or epoch lines (--verbose 0)")),
    (
        ("--distributed",),
        dict(
            action="store_true",
            help="data-parallel over the ranks of "
            "`mpirun -n K fastnet train --distributed` (rank 0 prints and "
            "writes files)",
        ),
    ),
    (
        ("--comm",),
        dict(
            choices=["mpi", "nccl"],
            help="collectives for --distributed: mpi (any backend) or nccl (cupy); default: mpi",
        ),
    ),
]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once: not when the help names it already, nor None or False (by
    identity: a default of 0 or 0.0, equal to False, is shown)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action) or text


def _sub(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, formatter_class=_HelpFormatter, allow_abbrev=False
    )


def _data_options(parser: argparse.ArgumentParser, labels: bool) -> None:
    parser.add_argument(
        "--data",
        metavar="FILE",
        required=not labels,
        help=".csv with a header, .npy of features or .npz with X (and y)",
    )
    if labels:
        parser.add_argument("--labels", metavar="FILE", help="a .npy of labels for a .npy --data")
        parser.add_argument(
            "--target",
            metavar="COLUMN",
            help="a .csv's label column (default: the one the model was trained with)",
        )


def build_parser() -> argparse.ArgumentParser:
    from fastnet._version import __version__

    parser = argparse.ArgumentParser(
        prog="fastnet", description=__doc__, allow_abbrev=False, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fastnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = _sub(sub, "train", "train an MLP on a built-in data set or your own file")
    parser.commands = sub.choices  # type: ignore[attr-defined]  # (their errors, presets)
    for flags, options in TRAIN_OPTIONS:
        train.add_argument(*flags, **options)
    predict = _sub(sub, "predict", "predict labels (or probabilities) for a file's rows")
    predict.add_argument("checkpoint", help="a .npz or .safetensors checkpoint")
    _data_options(predict, labels=False)
    predict.add_argument(
        "--proba",
        action="store_true",
        help="class probabilities, one column per class, instead of labels",
    )
    predict.add_argument("--output", metavar="FILE", help="the CSV to write (default: stdout)")
    predict.add_argument("--backend", help=f"backend to predict on {_BACKEND_DEFAULT}")
    evaluate = _sub(sub, "evaluate", "evaluate a checkpoint on a test set or your own file")
    evaluate.add_argument("checkpoint", help="a .npz or .safetensors checkpoint")
    evaluate.add_argument("--backend", help=f"backend to evaluate on {_BACKEND_DEFAULT}")
    evaluate.add_argument(
        "--dataset",
        choices=DATASETS,
        help="built-in test set (default: the one recorded in the checkpoint, else fashion-mnist)",
    )
    evaluate.add_argument("--data-dir", help=DATA_DIR_HELP)
    _data_options(evaluate, labels=True)
    export = _sub(sub, "export", "convert a checkpoint to ONNX")
    export.add_argument("checkpoint", help="a .npz or .safetensors checkpoint")
    export.add_argument("output", help="the .onnx file to write")
    _sub(sub, "backends", "list backends, availability, versions and devices")
    bench = _sub(sub, "bench", "benchmark backends against each other and peers")
    bench.add_argument(
        "--backends", help="comma list of numpy, numba, cupy (default: all available)"
    )
    bench.add_argument(
        "--suite",
        default="all",
        choices=["kernels", "train", "floor", "inference", "all"],
        help="kernels vs NumPy, training epochs vs peers, the CPU floor "
        "breakdown, predict vs onnxruntime, or all",
    )
    bench.add_argument("--rounds", type=_positive(int), default=5, help="interleaved rounds")
    bench.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    bench.add_argument(
        "--layers",
        type=_layers,
        help="the train, floor and inference suites' hidden widths (default 256,128)",
    )
    bench.add_argument(
        "--batch-size", type=_positive(int), default=128, help="the train and floor suites' batch"
    )
    bench.add_argument("--json", help="write results as JSON")
    bench.add_argument("--plot", help="write a bar chart (PNG)")
    return parser


def _load(dataset: str, data_dir: str | None, split: str | None = None):
    from fastnet.data import load_fashion_mnist, load_mnist
    from fastnet.datasets import load_cifar

    if dataset.startswith("cifar"):
        return load_cifar(dataset, data_dir, split=split)
    loader = load_fashion_mnist if dataset == "fashion-mnist" else load_mnist
    return loader(data_dir, split=split)


@dataclass
class Prepared:
    """Training, validation and held-out data with what a model must remember about them."""

    train: tuple
    val: tuple
    test: tuple
    name: str
    held: str
    task: str = "classification"
    encoding: Any = None  # a LabelEncoding for your own class labels
    scaler: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        if self.encoding is not None:
            return len(self.encoding.classes)
        ys = [np.asarray(y) for y in (self.train[1], self.val[1], self.test[1])]
        if self.task == "regression":
            return ys[0].shape[1]
        return int(max(y.max() for y in ys if y.size)) + 1


def _prepare(args: argparse.Namespace, scaler: Any = None) -> Prepared:
    """(train, validation, held-out) from --dataset or --data, labels encoded, scaled (by
    ``scaler``, a resumed checkpoint's, else by one --scale fits)."""
    from fastnet.tabular import Scaler

    kinds = [os.path.splitext(p)[1].lower() for p in (args.data, args.val) if p]
    if len(kinds) == 2 and ".csv" in kinds and kinds[0] != kinds[1]:  # (--target: both's)
        raise ValueError(f"--val {args.val} and --data {args.data}: give both as .csv, or neither")
    _refuse_unused(args.data, "--data", args.labels, "--labels", args.target)
    _refuse_unused(args.val, "--val", args.val_labels, "--val-labels")
    if args.val is not None and args.val_fraction is not None:
        raise ValueError("--val (a validation file) replaces --val-fraction: give one")
    args.val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
    prepared = _builtin(args) if args.data is None else _custom(args)
    rows = len(prepared.train[0]) + (0 if args.val else len(prepared.val[0]))
    prepared.extra["split"] = {  # (what --resume repeats: the same rows validate)
        "val_fraction": None if args.val else args.val_fraction,
        "val": os.path.basename(args.val) if args.val else None,
        "limit": args.limit,
        "rows": rows,
    }
    prepared.extra["run"] = {k: getattr(args, k) for k in RUN_SETTINGS}
    prepared.extra["settings"] = {k: getattr(args, k) for k in REPORTED_SETTINGS}
    if args.scale != "none" or scaler is not None:
        X = prepared.train[0]
        if isinstance(X, np.memmap):
            raise ValueError(
                "--scale needs the features in memory; a .npy --data is memory-"
                "mapped and streamed: scale the file beforehand, or use .npz"
            )
        scaler = scaler or Scaler(args.scale).fit(X)
        dtype = np.float64 if args.dtype == "float64" else np.float32
        prepared.train, prepared.val, prepared.test = (
            (scaler.transform(x, dtype), y)
            for x, y in (prepared.train, prepared.val, prepared.test)
        )
        prepared.scaler = scaler  # saved as the model's first layer (Standardize)
    return prepared


def _refuse_unused(path: Any, option: str, labels: Any, flag: str, target: Any = None) -> None:
    """Labels (``flag``) go with a .npy ``option`` and --target with a .csv: refused elsewhere."""
    kind, of = os.path.splitext(path or "")[1].lower(), f", not to {path}" if path else ""
    for given, name, wanted in ((labels, flag, ".npy"), (target, "--target", ".csv")):
        if given is not None and kind != wanted:
            raise ValueError(f"{name} applies only to a {wanted} {option}{of}")


def _builtin(args: argparse.Namespace) -> Prepared:
    from fastnet.data import train_val_split

    for given, option in ((args.val is not None, "--val"), (args.task != "auto", "--task")):
        if given:  # (the built-in data sets are classification, with a test set)
            raise ValueError(f"{option} applies only to your own --data, not to a built-in set")
    if LOSS_CHOICES.get(args.loss, "classification") != "classification":
        raise ValueError(f"--loss {args.loss} is a regression loss: the built-in sets are classes")
    dataset = args.dataset or "fashion-mnist"
    (X, y), test = _load(dataset, args.data_dir)
    if args.limit:
        X, y = X[: args.limit], y[: args.limit]
    train, val = train_val_split(X, y, args.val_fraction, seed=args.seed)
    classes = list(range(int(max(np.max(y), np.max(test[1]))) + 1))  # (as your own data's:
    extra = {"dataset": dataset, "task": "classification", "classes": classes}  # for export)
    extra["inputs"] = [0.0, 1.0]  # (pixels / 255: evaluate and predict refuse others)
    return Prepared(train, val, test, dataset, "test", extra=extra)


def _refuse_features_as_labels(args: argparse.Namespace) -> None:
    """--labels naming the features' own .npy (a regression of X on X), refused."""
    for data, labels, flag in (  # (evaluate and predict have no --val)
        (args.data, getattr(args, "labels", None), "--labels"),
        (getattr(args, "val", None), getattr(args, "val_labels", None), "--val-labels"),
    ):
        if data and labels and _same_file(data, labels):
            raise ValueError(f"{flag} {labels!r} is the features' file: give the labels' .npy")


def _refuse_fractional_classes(y: np.ndarray, task: str, args: argparse.Namespace) -> None:
    """Classification of a target whose rows are mostly fractional classes of their own: a
    quantity, refused naming what chose classification and what trains a regression."""
    distinct = len(np.unique(y)) if task == "classification" and y.dtype.kind == "f" else 0
    if distinct > len(y) // 2 and not np.all(y == np.round(y)):
        chosen, instead = ("--task classification", "--task regression")
        if args.task == "auto" and args.loss in LOSS_CHOICES:
            chosen, instead = f"--loss {args.loss}", "--loss squared-error (or poisson)"
        raise ValueError(
            f"{chosen} trains a classifier, but the target of {args.labels or args.data} holds "
            f"fractional numbers, {distinct} distinct in {len(y)} rows: {instead} for a quantity"
        )


def _custom(args: argparse.Namespace) -> Prepared:
    """Your own file: labels mapped to the training data's classes (or regression targets),
    split by a seeded (stratified) shuffle unless --val is given."""
    from fastnet.tabular import LabelEncoding, infer_task

    if args.dataset or args.data_dir:
        raise ValueError("--data (your own file) replaces --dataset/--data-dir: give one")
    dtype = np.float64 if args.dtype == "float64" else np.float32
    _refuse_features_as_labels(args)
    X, y, names = _read_table(args.data, args.labels, args.target, dtype)
    assert y is not None
    if args.limit:
        X, y = X[: args.limit], y[: args.limit]
    task = (
        args.task
        if args.task != "auto"
        else LOSS_CHOICES.get(args.loss)
        or infer_task(y, f"the labels of {args.labels or args.data}")
    )
    _refuse_fractional_classes(y, task, args)
    encoding = None
    if task == "classification":
        encoding, y = LabelEncoding.fit(y, f"the labels of {args.labels or args.data}")
        classes = len(encoding.classes)
        numeric = encoding.classes.dtype.kind in "iuf"
        if args.task == "auto" and classes > 20 and (numeric or classes * 4 > len(y)):
            warnings.warn(  # (text too: under 4 rows a class on average)
                f"the target holds {classes} distinct {'whole numbers' if numeric else 'labels'} "
                f"over {len(y)} rows: training a {classes}-class classifier"
                + ("; --task regression if it is a quantity" if numeric else ""),
                stacklevel=2,
            )
    else:
        y = _targets(y, args.labels or args.data, None, task)
    if args.val is not None:
        Xv, yv, _ = _read_table(args.val, args.val_labels, args.target, dtype, columns=names)
        assert yv is not None
        if Xv.shape[1] != X.shape[1]:  # (before a model is built for --data's width)
            raise ValueError(
                f"--val {args.val} holds {Xv.shape[1]} feature columns, --data {args.data} "
                f"{X.shape[1]}"
            )
        yv = _targets(yv, args.val_labels or args.val, encoding, task)
        train, val = (X, y), (np.asarray(Xv), yv)
    else:
        train, val = _split_rows(X, y, args, task == "classification")
    extra = {
        "dataset": "custom",
        "data": os.path.basename(args.data),
        "task": task,
        "classes": encoding.to_json() if encoding else None,
        "target": args.target,
        "features": names,
    }
    return Prepared(
        train, val, val, os.path.basename(args.data), "held-out", task, encoding, extra=extra
    )


def _read_table(
    path: str, labels: Any, target: Any, dtype: Any, need_target: bool = True, **options: Any
) -> tuple:
    """``load_table``, a .csv's features in float64 for a float64 model (float32 rounds
    timestamps near 1.7e9 to 128 s)."""
    from fastnet.datasets import load_table

    wide = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return load_table(path, labels, target, need_target=need_target, dtype=wide, **options)


def _targets(y: np.ndarray, path: str, encoding: Any, task: str) -> np.ndarray:
    """Labels as ``encoding``'s class indices (as stored without one), or regression targets
    as float64 columns (the model casts them to its dtype)."""
    if task == "classification":
        return encoding.encode(y, f"the labels of {path}") if encoding else np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{path}: regression targets must be numbers, got {y.dtype}")
    return np.asarray(y, np.float64).reshape(len(y), -1)


def _split_rows(X: Any, y: np.ndarray, args: argparse.Namespace, classify: bool) -> tuple:
    """A seeded shuffle split (stratified by class); a memory-mapped file too large to copy
    into memory validates on its last rows, with a warning, if every class trains."""
    from fastnet.data import FRACTION_NAMES, train_val_split
    from fastnet.datasets import physical_memory

    if not (isinstance(X, np.memmap) and X.nbytes > physical_memory() // 4):
        try:
            return train_val_split(X, y, args.val_fraction, seed=args.seed, stratify=classify)
        except ValueError as exc:  # (the option, not the Python argument, named)
            raise ValueError(str(exc).replace(FRACTION_NAMES, "--val-fraction")) from None
    cut = len(X) - max(1, int(round(len(X) * args.val_fraction)))
    if classify and np.setdiff1d(y[cut:], y[:cut]).size:
        raise ValueError(
            f"{args.data} is too large to shuffle in memory and its last rows "
            "hold classes the rest lacks: give a validation file (--val)"
        )
    warnings.warn(
        f"validating on the last {len(X) - cut} rows of {args.data} (too large to "
        "shuffle in memory); give --val to choose them",
        stacklevel=2,
    )
    return (X[:cut], y[:cut]), (np.asarray(X[cut:]), y[cut:])


def _build_model(args: argparse.Namespace, data: Prepared, backend: Any) -> Any:
    from fastnet.builders import mlp
    from fastnet.losses import MeanSquaredError, Poisson, SoftmaxCrossEntropy
    from fastnet.optimizers import get_optimizer

    preset = PRESETS.get(getattr(args, "preset", None) or "", {}).get("label_smoothing")
    if data.task != "classification" and args.label_smoothing not in (0, preset):  # typed
        raise ValueError("--label-smoothing smooths class labels: the target is a regression's")
    chosen = getattr(args, "loss", "auto")
    if chosen != "auto" and LOSS_CHOICES[chosen] != data.task:
        raise ValueError(
            f"--loss {chosen} is a {LOSS_CHOICES[chosen]} loss: the task is {data.task}"
        )
    if chosen == "poisson":
        loss: Any = Poisson()
        for y, rows in ((data.train[1], "training"), (data.val[1], "validation")):
            if loss.invalid_targets(np.asarray(y)):  # (named before a model is built)
                raise ValueError(
                    f"--loss poisson needs counts or rates >= 0: the {rows} targets "
                    f"hold {float(np.min(y)):g}"
                )
    elif data.task == "classification":
        loss = SoftmaxCrossEntropy(label_smoothing=args.label_smoothing)
    else:
        loss = MeanSquaredError()
    optimizer = get_optimizer(args.optimizer, lr=args.lr, weight_decay=args.weight_decay)
    return mlp(
        None,
        args.layers,
        data.n_outputs,
        "relu",
        dropout=args.dropout,
        loss=loss,
        optimizer=optimizer,
        backend=backend,
        dtype=args.dtype,
        seed=args.seed,
        precision=args.precision,
    )


def _callbacks(args: argparse.Namespace, carried: dict | None = None, say: Any = None) -> list:
    """The schedule and early stopping the options ask for; ``carried``: a resumed
    checkpoint's early-stopping progress (its best val_loss and the epochs waited since go on,
    said by ``say``)."""
    from fastnet.callbacks import EarlyStopping
    from fastnet.schedules import CosineDecay, WarmupCosine

    callbacks: list = []
    if args.schedule == "cosine":
        callbacks.append(CosineDecay(args.epochs))
    elif args.schedule == "warmup-cosine":
        callbacks.append(WarmupCosine(min(1, args.epochs - 1), args.epochs))
    if args.patience is not None:
        callbacks.append(EarlyStopping("val_loss", args.patience))
        if carried is not None:
            try:
                callbacks[-1].continue_from(carried)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ValueError(
                    f"{args.resume}: its early-stopping record is damaged ({exc})"
                ) from None
            (say or _silent)(
                f"early stopping goes on: best val_loss {float(carried['best']):.4f}, "
                f"{int(carried['wait'])} epoch(s) without improvement since "
                f"(patience {args.patience})"
            )
    return callbacks


def _early_stopping_progress(callbacks: list, extra: dict) -> Any:
    """Record in the checkpoint's ``extra`` where early stopping left off (for --resume);
    returns the best epoch's state where the model is not at it (saved beside), else None."""
    from fastnet.callbacks import EarlyStopping

    stopper = next((cb for cb in callbacks if isinstance(cb, EarlyStopping)), None)
    extra.pop("early_stopping", None)
    if stopper is None or not hasattr(stopper, "wait") or not math.isfinite(stopper.best):
        return None
    progress = stopper.progress()
    extra["early_stopping"] = {k: v for k, v in progress.items() if k != "state"}
    return progress["state"]


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail now, not after training: an option that would do nothing, an output that would
    overwrite an input, a path that cannot be written, a missing matplotlib."""
    from fastnet.checkpoint import check_checkpoint_path, check_writable

    if args.comm is not None and not args.distributed:
        raise ValueError(
            f"--comm {args.comm} chooses the collectives of --distributed training: "
            "add --distributed, or drop --comm"
        )
    args.comm = args.comm or "mpi"
    from fastnet.plot import check_chart_path, confusion_path

    inputs = ("--data", "--labels", "--val", "--val-labels", "--resume")
    chart = args.plot and confusion_path(args.plot)
    plot = {"--plot": args.plot, "--plot's confusion matrix": chart}
    outputs = {"--save": args.save, **plot, "--json": args.json}
    if args.resume and args.save and _same_file(args.save, args.resume):
        del outputs["--save"]  # (the resumed checkpoint saved over: the way to continue it)
    _refuse_overwrites(
        {flag: getattr(args, flag[2:].replace("-", "_")) for flag in inputs}, outputs
    )
    if args.save:
        check_checkpoint_path(args.save, "--save")
    for flag in ("plot", "json"):
        if getattr(args, flag) and (flag, getattr(args, flag)) != ("json", "-"):
            check_writable(getattr(args, flag), f"--{flag}")
    if args.plot:  # (a kind matplotlib cannot write failed after training, the JSON unwritten)
        check_chart_path(args.plot, "--plot")


def _same_file(path: str, other: str) -> bool:
    """Whether two paths name one file: the same file where both exist (hard and symbolic
    links too), else the same resolved path."""
    try:
        return os.path.samefile(path, other)
    except OSError:  # one is not there (yet)
        return os.path.realpath(path) == os.path.realpath(other)


def _refuse_overwrites(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Refuse, before any work, an output path that names the file of an input (or of an
    earlier output): writing it would replace that file. Keys are the options' names."""
    given = [(name, os.fspath(path)) for name, path in (*inputs.items(), *outputs.items()) if path]
    for i, (name, path) in enumerate(given):
        for other, earlier in given[:i] if name in outputs else ():
            if _same_file(path, earlier):
                raise ValueError(
                    f"{name} {path!r} is the same file as {other} {earlier!r}: writing it would "
                    f"overwrite {other}; give {name} another path"
                )


def _train_header(args: argparse.Namespace, data: Prepared, model: Any, arch: str) -> str:
    """The first line train prints: the data, the model, the optimizer, the backend."""
    held = "the held-out set reported" if data.held == "held-out" else None
    sets = f"{len(data.val[0])} val" + (f" ({held})" if held else f" / {len(data.test[0])} test")
    resumed = f", resumed at epoch {model.epochs_trained + 1}" if args.resume else ""
    return (
        f"fastnet train: {data.name} {len(data.train[0])} train / {sets}, MLP {arch}{resumed}, "
        f"{args.optimizer} lr={args.lr} ({args.schedule}), "
        f"batch {args.batch_size}, backend {model.backend.name} "
        f"({model.backend.device_info()}), {args.dtype}"
        + ("" if args.dtype == "float64" else f" ({args.precision} matmuls)")
    )


def _resumed(args: argparse.Namespace, backend: Any) -> tuple:
    """``cli_resume.resumed`` with the train options the command line gives."""
    from fastnet.cli_resume import resumed

    return resumed(args, args._given, lambda path: _load_checkpoint(path, backend))


def _given_options(argv: Sequence[str] | None) -> set[str]:
    """The options (their ``dest``) ``argv``'s command gives, whatever their values."""
    parser = build_parser()
    for command in parser.commands.values():  # type: ignore[attr-defined]
        for action in command._actions:
            action.default = argparse.SUPPRESS
    return set(vars(_parse(parser, argv))) - {"command"}


def cmd_train(args: argparse.Namespace) -> int:
    _check_outputs(args)
    backend, main_rank = args.backend, True
    if not args.distributed:
        _warn_separate_models()
    if args.distributed:
        from fastnet import distributed as dist

        dist.init(args.comm, backend=args.backend)  # one GPU per local rank on cupy
        main_rank = dist.is_main()
        if (args.backend or "").strip().lower() in ("cupy", "auto"):
            backend = None  # the rank's GPU, chosen by init ("cupy:N" stays on GPU N)
    say = print if main_rank else _silent
    resume = _resumed(args, backend) if args.resume else None
    data = _prepare(args, resume and resume[1])
    model = _build_model(args, data, backend) if resume is None else resume[0]
    if resume is not None:
        from fastnet.cli_resume import check_same_data

        check_same_data(args, model, resume[2], data)
    (X_tr, y_tr), (X_val, y_val) = data.train, data.val
    arch = "-".join(str(s) for s in (X_tr.shape[1], *args.layers, data.n_outputs))
    say(_train_header(args, data, model, arch), flush=True)
    callbacks = _callbacks(args, resume[2].get("early_stopping") if resume else None, say)
    interrupted, start, first_epoch = False, time.perf_counter(), model.epochs_trained + 1
    try:
        model.fit(
            X_tr,
            y_tr,
            epochs=args.epochs,
            initial_epoch=model.epochs_trained,  # (a resumed checkpoint's)
            batch_size=args.batch_size,
            validation_data=(X_val, y_val),
            callbacks=callbacks,
            verbose=_verbosity(args),
            compiled=GRAPH_CHOICES[args.cuda_graph],
            distributed=args.distributed,
            comm=args.comm,
        )
    except KeyboardInterrupt:
        interrupted = True
        print(f"\n{model.stop_reason or 'interrupted'}", file=sys.stderr)
    except ValueError as exc:  # fit's "X contains ...": the file it came from named
        held = args.val or args.data
        files = {"X": args.data, "y": args.labels, "X_val": held, "y_val": args.val_labels or held}
        raise ValueError(_with_file(str(exc), files)) from None
    if model.stop_reason and not interrupted and not model.diverged:  # (a divergence: warned)
        say(model.stop_reason)
    best = _early_stopping_progress(callbacks, data.extra)
    results = _train_report(model, data, time.perf_counter() - start, say)
    results["first_epoch"] = first_epoch  # (history's first entry: a resumed run's is later)
    if main_rank:
        _write_outputs(args, model, data, results, arch, best)
    return 130 if interrupted else 0


def _warn_separate_models() -> None:
    """Warn (once, from rank 0) where a launcher started several non-distributed trainings."""
    sizes = [os.environ.get(v, "1") for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")]
    ranks = max(int(s) if s.isdigit() else 1 for s in sizes)  # a launcher's world
    if ranks > 1 and _launched_rank() == 0:
        warnings.warn(
            f"{ranks} processes under mpirun train separate models: "
            "--distributed trains one data-parallel model",
            stacklevel=3,
        )


def _with_file(message: str, files: dict[str, str | None]) -> str:
    """``fit``'s or ``evaluate``'s message about its argument X, y, X_val or y_val, led by
    the file (``files``) that holds it (a memory-mapped .npy is checked as it trains; a --val
    file's width against the model)."""
    source = files.get(message.split(" ", 1)[0])
    return f"{source}: {message}" if source else message


def _train_report(model: Any, data: Prepared, total: float, say: Any) -> dict:
    """The held-out metrics (as ``evaluate`` prints them) and the timing line."""
    seconds = model.history.get("seconds", [])
    steady = seconds[1:] or seconds  # the first epoch compiles (JIT, graphs): not its pace
    per_epoch = float(np.median(steady)) if steady else float("nan")
    results: dict = {"test": {}, "confusion_matrix": None, "s_per_epoch": per_epoch}
    results |= {"stop_reason": model.stop_reason, "diverged": bool(model.diverged)}
    if model.built and (model.history.get("loss") or model.epochs_trained):  # (resumed: its)
        X, y = data.test
        results = {**results, **_report(model, X, y, data.held, data.encoding, say)}
    else:
        say(f"{data.held}: not trained")
    first = f" after a first of {seconds[0]:.2f}s" if len(seconds) > 1 else ""
    compiles = len(seconds) > 1 and model.backend.name != "numpy" and seconds[0] > 1.5 * per_epoch
    first += " (compiles)" if first and compiles else ""
    pace = f"{per_epoch:.2f} s/epoch (median{first})" if seconds else "(none finished)"
    timing = (
        f"epochs {len(seconds)}  {pace}  total {total:.1f}s  "
        f"backend {model.backend.name}  step {model.step_description}"
    )
    peak = model.backend.peak_memory()
    if peak is not None:
        timing += f"  peak device memory {peak / 2**20:.1f} MiB"
    say(timing, flush=True)
    return results


def _report(
    model: Any, X: Any, y: Any, held: str, encoding: Any, say: Any, prefix: str = ""
) -> dict:
    """Print the metrics ``fit`` reports on (X, y): loss and accuracy (R2 for regression),
    macro precision / recall / F1 and top-5 accuracy (softmax) and the confusion matrix by
    class name (softmax, or a sigmoid's one output; a multi-label model has none)."""
    metrics, loss = model.evaluate(X, y), model.loss
    if not loss.counts_correct:  # regression: evaluate reports MAE, RMSE and R2
        say(
            f"{prefix}{held} loss ({'MSE' if loss.name == 'mean_squared_error' else loss.name}) "
            f"{metrics['loss']:.4f}  {held} R2 {metrics['r2']:.4f}  "
            f"MAE {metrics['mae']:.4f}  RMSE {metrics['rmse']:.4f}"
        )
        return {"test": metrics, "confusion_matrix": None}
    multilabel = not loss.multiclass and model.output_dim > 1  # a 0/1 label per output
    share = " (per output)" if multilabel else ""
    accuracy, value = f"{held} accuracy {metrics['accuracy']:.4f}{share}", metrics["loss"]
    say(f"{prefix}{accuracy}  {held} loss {value:.4f}")
    if multilabel or not loss.classification:
        return {"test": metrics, "confusion_matrix": None}
    cm = model.confusion_matrix(X, y)
    say(f"{held} confusion matrix (rows: true class, columns: predicted)")
    say(format_confusion(cm, encoding.names() if encoding is not None else None))
    if "precision" in metrics:  # softmax's macro scores (a sigmoid's one output: accuracy)
        top5 = metrics.get("top5_accuracy")
        say(
            f"{held} macro precision {metrics['precision']:.4f}  recall "
            f"{metrics['recall']:.4f}  f1 {metrics['f1']:.4f}"
            + (f"  top-5 accuracy {top5:.4f}" if top5 is not None else "")
        )
    return {"test": metrics, "confusion_matrix": cm.tolist()}


def _write_outputs(
    args: argparse.Namespace, model: Any, data: Prepared, results: dict, arch: str, best: Any
) -> None:
    """The checkpoint (``best``: early stopping's best epoch's state, saved beside where the
    model is not at it), the learning curves and the JSON report the options ask for."""
    if args.save and not model.built:
        print(f"no epoch finished: nothing saved to {args.save}", file=sys.stderr)
    if args.save and model.built:
        from fastnet.layers import Standardize
        from fastnet.state import shift_layers

        scaler = data.scaler  # trained on scaled rows: saved to take raw ones
        saved = model.prepend(Standardize(scaler.offset, scaler.scale)) if scaler else model
        best = shift_layers(best, 1) if scaler and best else best
        saved.save(args.save, extra=data.extra, best_state=best)
        print(f"saved checkpoint to {args.save}")
    cm = results["confusion_matrix"]
    if args.plot and not model.history.get("loss"):
        print(f"no epoch finished: no learning curves to write to {args.plot}", file=sys.stderr)
    elif args.plot:
        from fastnet.plot import plot_history

        title = f"{data.name} MLP {arch} ({model.backend.name})"
        plot_history(model.history, args.plot, title)
        print(f"wrote learning curves to {args.plot}")
        if cm is not None:
            from fastnet.plot import confusion_path, plot_confusion

            path = confusion_path(args.plot)
            names = data.encoding.names() if data.encoding else None
            plot_confusion(np.asarray(cm), path, f"{data.name} {data.held} set", names)
            print(f"wrote the confusion matrix to {path}")
    if args.json:
        run = {"history": model.history, "backend": model.backend.name}
        given = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        run.update(step=model.step_description, **results, args=given)
        from fastnet.checkpoint import atomic_write

        null = json.loads(json.dumps(run), parse_constant=lambda _: None)  # (NaN: strict
        text = json.dumps(null, indent=1, allow_nan=False)  # parsers refuse it; null)
        if args.json == "-":
            print(text, file=args._json_out)
        elif os.path.exists(args.json) and not os.path.isfile(args.json):  # /dev/stdout, a FIFO
            with open(args.json, "w") as f:
                f.write(text)
        else:
            atomic_write(args.json, lambda f: f.write(text.encode()), "--json")


def _verbosity(args: argparse.Namespace) -> int:
    """--quiet wins; TQDM_DISABLE (tqdm's own switch) keeps epoch lines but no bar."""
    if args.quiet:
        return 0
    if args.verbose == 1 and os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return 2
    return int(args.verbose)


def format_confusion(cm: np.ndarray, names: Sequence[str] | None = None) -> str:
    """A confusion matrix as an aligned text table headed by class names (or indices)."""
    full = [str(n) for n in (names if names is not None else range(cm.shape[1]))]
    cut = 12  # (longer where names would read alike cut there)
    while len({n[:cut] for n in full}) < len(set(full)) and cut < max(map(len, full)):
        cut += 1
    labels = [n[:cut] for n in full]
    width = max(4, len(str(int(cm.max()))) + 1, *(len(n) + 1 for n in labels))
    first = max(9, *(len(n) for n in labels))
    corner = "true\\pred"
    head = f"{corner:>{first}}" + "".join(f"{n:>{width}}" for n in labels)
    rows = [f"{n:>{first}}" + "".join(f"{int(v):>{width}}" for v in r) for n, r in zip(labels, cm)]
    return "\n".join([head, *rows])


def _in_option_words(message: str) -> str:
    """The Python API's words in a message as the command line's options: ``precision='tf32'``
    is ``--precision tf32``, ``dtype='float32'`` ``--dtype float32``, ``compiled=True``
    ``--compiled-step on``."""
    message = re.sub(r"\b(precision|dtype)='([\w.-]+)'", r"--\1 \2", message)
    return message.replace("compiled=True", "--compiled-step on")


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` on ranks other than 0."""


def _load_checkpoint(path: str, backend: str | None) -> tuple[Any, dict]:
    """``load_model_with_meta`` with the metadata the CLI wrote (``extra``: classes, features,
    target, task, a scaling) checked against the model: a CheckpointError naming the key."""
    from fastnet.backends import get_backend
    from fastnet.checkpoint import CheckpointError
    from fastnet.model import load_model_with_meta
    from fastnet.tabular import TASKS, Scaler

    try:  # a bad backend name is the option's fault, not the file's
        get_backend(backend)
    except ValueError as exc:
        raise (ValueError(f"--backend: {exc}") if backend else exc) from None
    model, meta = load_model_with_meta(path, backend=backend)
    extra = meta["extra"] = meta.get("extra") or {}
    try:
        if not isinstance(extra, dict):
            raise ValueError("is not a JSON object")
        classes, features = extra.get("classes"), extra.get("features")
        want = 2 if model.output_dim == 1 else model.output_dim
        kinds = {type(c) for c in classes} if isinstance(classes, list) else {None}
        one_kind = any(kinds <= k for k in ({str}, {bool}, {int, float}))
        if classes is not None and (
            not isinstance(classes, list)
            or len(classes) != want
            or not one_kind
            or list(np.unique(classes)) != classes
        ):
            raise ValueError(
                f"'classes' must list the model's {want} labels (strings, numbers or booleans), "
                "sorted and unique"
            )
        if features is not None and (
            not isinstance(features, list)
            or len(features) != model.input_dim
            or not all(isinstance(f, str) for f in features)
            or len(set(features)) != len(features)
        ):
            raise ValueError(
                f"'features' must name the model's {model.input_dim} input columns, each once"
            )
        if not isinstance(extra.get("target") or "", str) or extra.get("task", "auto") not in TASKS:
            raise ValueError("'target' must be a column name and 'task' one of " + str(TASKS))
        if (
            extra.get("scale")
            and np.asarray(Scaler.from_json(extra["scale"]).scale).size != model.input_dim
        ):
            raise ValueError(f"'scale' must scale the model's {model.input_dim} features")
    except ValueError as exc:
        raise CheckpointError(f"{path!r}: its metadata (extra) {exc}") from None
    return model, meta


def _model_data(args: argparse.Namespace, model: Any, meta: dict, need_target: bool) -> tuple:
    """Rows of --data as the model saw them in training: its feature columns (in float64 for
    a float64 model), scaled as then; labels mapped to its classes (a multi-label model's
    classes name its outputs). Returns ``(X, y or None, LabelEncoding or None)``."""
    from fastnet.tabular import LabelEncoding, Scaler

    extra, target = meta["extra"], getattr(args, "target", None)
    if target is not None and target in (extra.get("features") or ()):
        raise ValueError(
            f"--target {target!r} was a feature column when {args.checkpoint} was trained; its "
            f"target column was {extra.get('target')!r}"
        )
    labels, columns = getattr(args, "labels", None), extra.get("features")
    _refuse_features_as_labels(args)
    target = target or extra.get("target")
    X, y, _ = _read_table(args.data, labels, target, model.dtype, need_target, columns=columns)
    if X.ndim == 2 and X.shape[1] != model.input_dim:
        raise ValueError(
            f"--data {args.data} has {X.shape[1]} feature columns; the model in "
            f"{args.checkpoint} takes {model.input_dim}"
        )
    if extra.get("inputs") and X.size:  # a built-in set's pixels, scaled
        lo, hi = float(np.min(X)), float(np.max(X))
        if lo < extra["inputs"][0] or hi > extra["inputs"][1] + 1e-6:
            raise ValueError(
                f"--data {args.data} holds values from {lo:g} to {hi:g}; {args.checkpoint} was "
                f"trained on {extra.get('dataset')} pixels scaled to [0, 1]: divide them by 255"
            )
    encoding = LabelEncoding(extra["classes"]) if extra.get("classes") is not None else None
    multilabel = not model.loss.multiclass and model.output_dim > 1
    if y is not None:
        task = extra.get("task", "classification")
        y = _targets(y, labels or args.data, None if multilabel else encoding, task)
    if extra.get("scale"):  # a checkpoint of before the Standardize layer
        X = Scaler.from_json(extra["scale"]).transform(X, model.dtype)
    return X, y, encoding


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, meta = _load_checkpoint(args.checkpoint, args.backend)
    extra = meta["extra"]
    _refuse_unused(args.data, "--data", args.labels, "--labels", args.target)
    if args.data is not None:
        if args.dataset or args.data_dir:
            raise ValueError("--data (your own file) replaces --dataset/--data-dir: give one")
        X, y, encoding = _model_data(args, model, meta, need_target=True)
        name, held = os.path.basename(args.data), "held-out"
    else:
        dataset = args.dataset or extra.get("dataset") or "fashion-mnist"
        if dataset not in DATASETS:
            raise ValueError(
                f"{args.checkpoint} was trained on your own data "
                f"({extra.get('data', dataset)}): pass it a file with --data"
            )
        X, y = _load(dataset, args.data_dir, split="test")  # the test files alone
        if extra.get("scale"):
            from fastnet.tabular import Scaler

            X = Scaler.from_json(extra["scale"]).transform(X, model.dtype)
        name, held, encoding = dataset, "test", None
    try:
        _report(model, X, y, held, encoding, print, prefix=f"{args.checkpoint}: {name} ")
    except ValueError as exc:  # evaluate's "y contains label 14 ...": whose, named
        source = args.data or f"--dataset {name}"
        raise ValueError(_with_file(str(exc), {"X": source, "y": args.labels or source})) from None
    print(f"backend {model.backend.name}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Labels (mapped back to the training data's class names), probabilities or regression
    outputs for every row of --data, as CSV."""
    from fastnet.checkpoint import check_writable

    args.output = None if args.output == "-" else args.output  # (stdout, as --json -)
    inputs = {"the checkpoint": args.checkpoint, "--data": args.data}
    _refuse_overwrites(inputs, {"--output": args.output})
    if args.output:
        check_writable(args.output, "--output")
    model, meta = _load_checkpoint(args.checkpoint, args.backend)
    X, _, encoding = _model_data(args, model, meta, need_target=False)
    if args.proba and not model.loss.classification:
        raise ValueError(f"--proba needs a classifier; {args.checkpoint} is a regression model")
    try:
        header, rows = _predictions(model, X, encoding, args.proba)
    except ValueError as exc:  # (a memory-mapped .npy's NaN: found as it is read)
        raise ValueError(_with_file(str(exc), {"X": args.data})) from None
    with open(args.output, "w", newline="") if args.output else _stdout() as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])  # (lines as grep reads)
    return 0


def _predictions(model: Any, X: Any, encoding: Any, proba: bool) -> tuple[list, list]:
    """predict's header and rows, as ``model.predict`` (or ``predict_proba``) gives them: a
    label column (class names where the checkpoint has them), a 0/1 label_<name> column per
    output of a multi-label model, a probability column per class or output headed by its
    name (a sigmoid's one output: the positive class's), or regression outputs."""
    k = model.output_dim
    names = encoding.names() if encoding else [str(i) for i in range(max(k, 2))]
    if proba:  # one output: the second class's probability
        return names[len(names) - k :], model.predict_proba(X).tolist()
    out = model.predict(X)
    if out.ndim == 1:  # class indices (softmax) or 0/1 (a sigmoid's one output)
        return ["label"], [[v] for v in (encoding.decode(out) if encoding else out).tolist()]
    if model.loss.classification:  # a 0/1 label per output
        return [f"label_{n}" for n in names[len(names) - k :]], out.tolist()
    return [f"prediction_{i}" for i in range(k)] if k > 1 else ["prediction"], out.tolist()


class _stdout:  # noqa: N801
    """``sys.stdout`` as a context manager that does not close it."""

    def __enter__(self) -> Any:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()


def cmd_export(args: argparse.Namespace) -> int:
    from fastnet.checkpoint import check_writable
    from fastnet.layers import Standardize
    from fastnet.tabular import Scaler

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError(
            "writing ONNX needs the onnx package: pip install onnx, or fastnet's extra 'onnx' "
            "(pip install '.[onnx]' in a fastnet checkout)"
        ) from None
    _refuse_overwrites({"the checkpoint": args.checkpoint}, {"the output": args.output})
    if not args.output.lower().endswith(".onnx"):  # (as --save refuses unknown extensions)
        raise ValueError(f"the output {args.output!r} must end in .onnx (an ONNX model)")
    check_writable(args.output, "output")
    model, meta = _load_checkpoint(args.checkpoint, "numpy")
    extra = meta["extra"]
    if extra.get("scale"):  # a checkpoint of before the Standardize layer: it takes raw rows
        scaler = Scaler.from_json(extra["scale"])
        model = model.prepend(Standardize(scaler.offset, scaler.scale))
    model.to_onnx(args.output)  # with the checkpoint's classes, features, target, task
    print(f"wrote {args.output} (inputs 'input', outputs {', '.join(model.onnx_outputs())})")
    classes = extra.get("classes")
    if classes is not None and model.output_dim == 1 and len(classes) == 2:  # one sigmoid
        print(f"its metadata 'classes' names the labels: the output is P({classes[1]!r})")
    elif classes is not None:
        print(f"its metadata 'classes' maps output columns to labels: {classes[:10]}")
    if extra.get("inputs") and not extra.get("scale"):
        low, high = extra["inputs"]
        print(f"its inputs are scaled to [{low:g}, {high:g}] (metadata 'inputs'): pixels / 255")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from fastnet.backends import backend_infos

    for info in backend_infos():
        status = "available" if info.available else "unavailable"
        detail = f"{info.version} {info.device}".strip() if info.available else info.reason
        print(f"{info.name:<6} {status:<12} {detail}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fastnet.bench.suites import run_bench

    _refuse_overwrites({}, {"--json": args.json, "--plot": args.plot})
    return run_bench(args)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with options the command does not know reported by the
    command's parser (``fastnet train: error: ...``, its usage), not the top level's."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = parser.commands[args.command]  # type: ignore[attr-defined]
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _one_line_warning(command: str, message: Any, *args: Any, **kwargs: Any) -> None:
    from fastnet.distributed import is_main

    if is_main():  # (a data-parallel job's ranks all see it: rank 0 says it)
        print(f"fastnet {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)


class _PipeSafeOutput(io.TextIOBase):
    """``fastnet train``'s stdout or stderr: once its reader stops (``| head``, ``2>&1 |
    head``), the rest of its output is dropped and training goes on to save its model and
    JSON, saying so (``notice``) on stderr."""

    def __init__(self, stream: Any, notice: str = "") -> None:
        self.stream, self.notice, self.closed_early = stream, notice, False

    def write(self, text: str) -> int:
        return self._guarded(self.stream.write, text) or len(text)

    def isatty(self) -> bool:  # (a progress bar draws as the terminal's width allows)
        return not self.closed_early and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, call: Any, *args: Any) -> Any:
        if self.closed_early:
            return None
        try:
            return call(*args)
        except BrokenPipeError:
            self.closed_early = True
            with contextlib.suppress(OSError, ValueError):  # (exit flushes it again)
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            if self.notice:  # (sys.stderr: guarded too, dropped if it is the same pipe)
                print(self.notice, file=sys.stderr)
            return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if getattr(args, "preset", None):  # the preset's values become defaults: explicit flags win
        preset = {k: v for k, v in PRESETS[args.preset].items() if k != "help"}
        parser.commands["train"].set_defaults(**preset)  # type: ignore[attr-defined]
        args = _parse(parser, argv)
    if getattr(args, "target", None):  # (a CSV's names are read stripped)
        args.target = args.target.strip()
    if getattr(args, "resume", None):  # (what it gives, not its defaults, sets the run)
        args._given = _given_options(argv)
    from fastnet.backends import BackendUnavailableError
    from fastnet.distributed import DistributedError

    out, err = sys.stdout, sys.stderr
    if args.command == "train":
        out = _PipeSafeOutput(out, "fastnet train: stdout closed early: the run goes on")
        err = _PipeSafeOutput(err)
    if getattr(args, "json", None) == "-":  # the JSON alone on stdout, the rest on stderr
        args._json_out, out = out, err
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.showwarning = functools.partial(_one_line_warning, args.command)
            return globals()[f"cmd_{args.command}"](args)  # cmd_train, cmd_predict, ...
    except BrokenPipeError:  # `fastnet predict | head` stopped reading: quiet, as Unix tools are
        if argv is None:  # the command line's process: its exit flushes stdout again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # a shell's status for a tool that SIGPIPE ended
    except (  # DatasetError and CheckpointError are ValueErrors, FileNotFoundError an OSError
        BackendUnavailableError,
        DistributedError,
        OSError,
        ValueError,
        TypeError,
        NotImplementedError,
        MemoryError,
        RanksDifferError,  # (every rank's: rank 0 says it)
        TrainingDivergedError,
    ) as exc:
        from fastnet import distributed as dist

        message = _in_option_words(" ".join(str(exc).split()) or type(exc).__name__)
        message = f"out of memory: {message}" if isinstance(exc, MemoryError) else message
        alike = getattr(exc, "every_rank", False)  # (every rank has it: rank 0 says it)
        if dist.is_main() or not alike:
            rank = "" if dist.is_main() else f"rank {dist.rank()}: "
            print(f"fastnet {args.command}: error: {rank}{message}", file=err)
        job = dist.current()
        if job is not None and job.world_size > 1 and not alike:
            job.abort(2)  # (its own error: the other ranks would wait for it)
        return 2


if __name__ == "__main__":
    sys.exit(main())
