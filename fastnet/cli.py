"""Command line: ``fastnet train | evaluate | backends | bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def _layers(spec: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in spec.split(",") if s.strip())
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


def _positive(kind, zero_ok: bool = False):  # noqa: ANN001, ANN202
    """An argparse type: a number of ``kind``, > 0 (or >= 0), with a message argparse prefixes
    with the option's name."""

    def parse(text: str):  # noqa: ANN202
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value < 0 or (value == 0 and not zero_ok):
            bound = "non-negative" if zero_ok else "> 0"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


OPTIMIZERS = ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"]
TRAIN_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--backend",), dict(help="numpy, numba, cupy, cupy:N or auto (default: "
                          "$FASTNET_BACKEND or auto)")),
    (("--layers",), dict(type=_layers, default=(256, 128), help="hidden sizes, e.g. 256,128")),
    (("--epochs",), dict(type=_positive(int), default=20, help="passes over the data")),
    (("--batch-size",), dict(type=_positive(int), default=128, help="rows per step (global)")),
    (("--optimizer",), dict(default="adam", choices=OPTIMIZERS, help="update rule")),
    (("--lr",), dict(type=_positive(float), default=1e-3, help="learning rate")),
    (("--weight-decay",), dict(type=float, default=0.0, help="L2 weight decay")),
    (("--schedule",), dict(default="cosine", choices=["cosine", "warmup-cosine", "constant"],
                           help="learning-rate schedule over the epochs (warmup-cosine: 1 "
                           "warmup epoch, per step)")),
    (("--label-smoothing",), dict(type=float, default=0.0, help="for the CE loss")),
    (("--preset",), dict(choices=sorted(PRESETS), help="a tuned configuration (flags given "
                         "explicitly still win): " + "; ".join(
                             f"{k}: {v['help']}" for k, v in PRESETS.items()))),
    (("--dropout",), dict(type=float, default=0.0, help="dropout rate after each hidden layer")),
    (("--dtype",), dict(default="float32", choices=DTYPES, help="precision (mixed_*: GPU only)")),
    (("--precision",), dict(default="fp32", choices=["fp32", "tf32"],
                            help="float32 matmuls: exact fp32, or TF32 tensor cores (cupy)")),
    (("--seed",), dict(type=_positive(int, zero_ok=True), default=0,
                       help="weights, shuffle, split")),
    (("--val-fraction",), dict(type=float, default=0.1, help="training rows held out")),
    (("--limit",), dict(type=_positive(int), help="use only the first N training rows")),
    (("--dataset",), dict(default="fashion-mnist", choices=DATASETS, help="built-in data set")),
    (("--data",), dict(help="your own training data instead: a .npz with X and y, a .npy of "
                       "features (memory-mapped and streamed; give --labels) or a .csv (give "
                       "--target)")),
    (("--labels",), dict(help="a .npy of labels for a .npy --data")),
    (("--target",), dict(help="the label column of a .csv --data")),
    (("--val",), dict(help="validation file in --data's format (default: the last --val-"
                      "fraction of --data); it is also the held-out set reported at the end")),
    (("--data-dir",), dict(help="folder with the IDX files (default: $FASTNET_DATA or the "
                           "Debian package's folder)")),
    (("--save",), dict(help="write a checkpoint (.npz) here")),
    (("--plot",), dict(help="write learning curves (PNG) here")),
    (("--patience",), dict(type=int, help="early stopping patience")),
    (("--json",), dict(help="write the history and results as JSON")),
    (("--compiled-step", "--cuda-graph"), dict(
        dest="cuda_graph", default="auto", choices=["auto", "on", "off"],
        help="the backend's compiled step: a CUDA graph replay on cupy, one fused JIT call on "
        "numba (auto: when the model qualifies; on: required; off: eager steps)")),
    (("--verbose",), dict(type=int, default=1, choices=[0, 1, 2],
                          help="0 silent, 1 progress bar and epoch lines, 2 epoch lines only")),
    (("--quiet",), dict(action="store_true", help="no progress or epoch lines (--verbose 0)")),
    (("--distributed",), dict(action="store_true", help="data-parallel over the ranks of "
                              "`mpirun -n K fastnet train --distributed` (rank 0 prints and "
                              "writes files)")),
    (("--comm",), dict(default="mpi", choices=["mpi", "nccl"],
                       help="collectives for --distributed: mpi (any backend) or nccl (cupy)")),
]


def build_parser() -> argparse.ArgumentParser:
    from fastnet._version import __version__

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="fastnet", description=__doc__, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"fastnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train an MLP on Fashion-MNIST and report accuracy", formatter_class=fmt
    )
    parser.train_parser = train  # type: ignore[attr-defined]  # for --preset defaults
    for flags, options in TRAIN_OPTIONS:
        train.add_argument(*flags, **options)

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a checkpoint on the test set", formatter_class=fmt
    )
    evaluate.add_argument("checkpoint", help="a .npz or .safetensors checkpoint")
    evaluate.add_argument("--backend", help="backend to evaluate on")
    evaluate.add_argument("--dataset", choices=DATASETS, help="test set (default: the one "
                          "recorded in the checkpoint, else fashion-mnist)")
    evaluate.add_argument("--data-dir", help="folder with the IDX files")

    sub.add_parser("backends", help="list backends, availability, versions and devices")
    export = sub.add_parser("export", help="convert a checkpoint to ONNX", formatter_class=fmt)
    export.add_argument("checkpoint", help="a .npz or .safetensors checkpoint")
    export.add_argument("output", help="the .onnx file to write")

    bench = sub.add_parser(
        "bench", help="benchmark backends against each other and peers", formatter_class=fmt
    )
    bench.add_argument("--backends", help="comma list (default: all available)")
    bench.add_argument("--suite", default="all", choices=["kernels", "train", "floor", "all"],
                       help="kernels vs NumPy, training epochs vs peers, the CPU floor "
                       "breakdown, or all")
    bench.add_argument("--rounds", type=_positive(int), default=5, help="interleaved rounds")
    bench.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    bench.add_argument("--json", help="write results as JSON")
    bench.add_argument("--plot", help="write a bar chart (PNG)")
    return parser


def _load(dataset: str, data_dir: str | None):
    from fastnet.data import load_fashion_mnist, load_mnist
    from fastnet.datasets import load_cifar

    if dataset.startswith("cifar"):
        return load_cifar(dataset, data_dir)
    return (load_fashion_mnist if dataset == "fashion-mnist" else load_mnist)(data_dir)


def _splits(args: argparse.Namespace) -> tuple:
    """(train, validation, held-out test) and the data's name, from --data or --dataset."""
    from fastnet.data import train_val_split
    from fastnet.datasets import load_arrays

    if args.data is None:
        (X, y), test = _load(args.dataset, args.data_dir)
        if args.limit:
            X, y = X[: args.limit], y[: args.limit]
        train, val = train_val_split(X, y, args.val_fraction, seed=args.seed)
        return train, val, test, args.dataset, "test"
    X, y = load_arrays(args.data, args.labels, args.target)
    if args.limit:
        X, y = X[: args.limit], y[: args.limit]
    if args.val is not None:
        val = load_arrays(args.val, None, args.target)
        train = (X, y)
    elif isinstance(X, np.memmap):  # no shuffled copy of a memory-mapped file: its last rows
        cut = len(X) - max(1, int(round(len(X) * args.val_fraction)))
        train, val = (X[:cut], y[:cut]), (np.asarray(X[cut:]), y[cut:])
    else:
        train, val = train_val_split(X, y, args.val_fraction, seed=args.seed)
    return train, val, val, os.path.basename(args.data), "held-out"


def cmd_train(args: argparse.Namespace) -> int:
    from fastnet.callbacks import EarlyStopping
    from fastnet.checkpoint import check_writable
    from fastnet.layers import Dense, Dropout
    from fastnet.losses import SoftmaxCrossEntropy
    from fastnet.model import Sequential
    from fastnet.optimizers import get_optimizer
    from fastnet.schedules import CosineDecay, WarmupCosine

    for flag in ("save", "plot", "json"):  # fail now, not after training
        if getattr(args, flag):
            check_writable(getattr(args, flag), f"--{flag}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError(
                "--plot needs matplotlib: pip install matplotlib (extra 'plot')"
            ) from None
    backend, main_rank = args.backend, True
    if args.distributed:
        from fastnet import distributed as dist

        dist.init(args.comm, backend=args.backend)  # one GPU per local rank on cupy
        main_rank = dist.is_main()
        if args.backend and args.backend.startswith("cupy"):
            backend = None  # the rank's GPU, chosen by init
    say = print if main_rank else _silent
    (X_tr, y_tr), (X_val, y_val), (X_test, y_test), data_name, held = _splits(args)
    X, y = X_tr, np.concatenate([np.asarray(y_tr), np.asarray(y_val)])
    layers: list = []
    for units in args.layers:
        layers.append(Dense(units, "relu"))
        if args.dropout:
            layers.append(Dropout(args.dropout))
    layers.append(Dense(int(y.max()) + 1))
    opt_kwargs = {"lr": args.lr, "weight_decay": args.weight_decay}
    loss = SoftmaxCrossEntropy(label_smoothing=args.label_smoothing)
    optimizer = get_optimizer(args.optimizer, **opt_kwargs)
    model = Sequential(layers, loss, optimizer, backend=backend, dtype=args.dtype, seed=args.seed,
                       precision=args.precision)
    arch = "-".join(str(s) for s in (X.shape[1], *args.layers, int(y.max()) + 1))
    say(
        f"fastnet train: {data_name} {len(X_tr)} train / {len(X_val)} val / {len(X_test)} "
        f"test, MLP {arch}, {args.optimizer} lr={args.lr} ({args.schedule}), "
        f"batch {args.batch_size}, backend {model.backend.name} "
        f"({model.backend.device_info()}), {args.dtype} ({args.precision} matmuls)",
        flush=True,
    )
    callbacks: list = []
    if args.schedule == "cosine":
        callbacks.append(CosineDecay(args.epochs))
    elif args.schedule == "warmup-cosine":
        callbacks.append(WarmupCosine(min(1, args.epochs - 1), args.epochs))
    if args.patience is not None:
        callbacks.append(EarlyStopping("val_loss", args.patience))
    interrupted = False
    start = time.perf_counter()
    try:
        model.fit(X_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size,
                  validation_data=(X_val, y_val), callbacks=callbacks, verbose=_verbosity(args),
                  compiled=GRAPH_CHOICES[args.cuda_graph], distributed=args.distributed,
                  comm=args.comm)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: {model.stop_reason}", file=sys.stderr)
    total = time.perf_counter() - start
    if model.stop_reason and not interrupted:
        say(model.stop_reason)
    seconds = model.history.get("seconds", [])
    trained = bool(model.history.get("loss"))
    nan = float("nan")
    test = model.evaluate(X_test, y_test) if trained else {"accuracy": nan, "loss": nan}
    per_epoch = float(np.median(seconds)) if seconds else nan
    summary = (
        f"{held} accuracy {test['accuracy']:.4f}  {held} loss {test['loss']:.4f}  "
        f"epochs {len(seconds)}  {per_epoch:.2f} s/epoch (median)  total {total:.1f}s  "
        f"backend {model.backend.name}"
    )
    summary += f"  step {model.step_description}"
    peak = model.backend.peak_memory()
    if peak is not None:
        summary += f"  peak device memory {peak / 2**20:.1f} MiB"
    say(summary, flush=True)
    cm = model.confusion_matrix(X_test, y_test) if trained else None
    if cm is not None:
        say(f"{held} confusion matrix (rows: true class, columns: predicted)")
        say(format_confusion(cm))
        say(
            f"{held} macro precision {test['precision']:.4f}  recall {test['recall']:.4f}  "
            f"f1 {test['f1']:.4f}"
            + (f"  top-5 accuracy {test['top5_accuracy']:.4f}" if "top5_accuracy" in test else "")
        )
    if not main_rank:
        return 130 if interrupted else 0
    if args.save:
        model.save(args.save, extra={"dataset": data_name if args.data is None else "custom"})
        print(f"saved checkpoint to {args.save}")
    if args.plot:
        from fastnet.plot import plot_history

        plot_history(
            model.history, args.plot, title=f"{data_name} MLP {arch} ({model.backend.name})"
        )
        print(f"wrote learning curves to {args.plot}")
        if cm is not None:
            from fastnet.plot import confusion_path, plot_confusion

            plot_confusion(cm, confusion_path(args.plot), title=f"{data_name} {held} set")
            print(f"wrote the confusion matrix to {confusion_path(args.plot)}")
    if args.json:
        with open(args.json, "w") as f:
            results = {"history": model.history, "test": test, "backend": model.backend.name,
                       "s_per_epoch": per_epoch, "step": model.step_description,
                       "confusion_matrix": cm.tolist() if cm is not None else None,
                       "args": {k: v for k, v in vars(args).items() if k != "func"}}
            json.dump(results, f, indent=1)
    return 130 if interrupted else 0


def _verbosity(args: argparse.Namespace) -> int:
    """--quiet wins; TQDM_DISABLE (tqdm's own switch) keeps epoch lines but no bar."""
    if args.quiet:
        return 0
    if args.verbose == 1 and os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return 2
    return int(args.verbose)


def format_confusion(cm: np.ndarray) -> str:
    """A confusion matrix as an aligned text table with class indices."""
    width = max(4, len(str(int(cm.max()))) + 1)
    head = "true\\pred" + "".join(f"{j:>{width}}" for j in range(cm.shape[1]))
    rows = [f"{i:>9}" + "".join(f"{int(v):>{width}}" for v in row) for i, row in enumerate(cm)]
    return "\n".join([head, *rows])


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` on ranks other than 0."""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fastnet.model import load_model_with_meta

    model, meta = load_model_with_meta(args.checkpoint, backend=args.backend)
    dataset = args.dataset or meta.get("extra", {}).get("dataset") or "fashion-mnist"
    if dataset not in DATASETS:
        raise ValueError(f"{args.checkpoint} was trained on {dataset!r} data; pass --dataset")
    _, (X_test, y_test) = _load(dataset, args.data_dir)
    result = model.evaluate(X_test, y_test)
    print(
        f"{args.checkpoint}: {dataset} test accuracy {result['accuracy']:.4f}  "
        f"loss {result['loss']:.4f}  backend {model.backend.name}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fastnet.checkpoint import check_writable
    from fastnet.model import load_model

    check_writable(args.output, "output")
    model = load_model(args.checkpoint, backend="numpy")
    model.to_onnx(args.output)
    print(f"wrote {args.output} (inputs 'input', outputs {', '.join(model.onnx_outputs())})")
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

    return run_bench(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):  # the preset's values become defaults: explicit flags win
        preset = {k: v for k, v in PRESETS[args.preset].items() if k != "help"}
        parser.train_parser.set_defaults(**preset)  # type: ignore[attr-defined]
        args = parser.parse_args(argv)
    from fastnet.backends import BackendUnavailableError
    from fastnet.checkpoint import CheckpointError
    from fastnet.data import DatasetError
    from fastnet.distributed import DistributedError

    handlers = {
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "backends": cmd_backends,
        "bench": cmd_bench,
        "export": cmd_export,
    }
    try:
        return handlers[args.command](args)
    except (
        BackendUnavailableError,
        CheckpointError,
        DatasetError,
        DistributedError,
        FileNotFoundError,
        OSError,
        ValueError,
        TypeError,
    ) as exc:
        print(f"fastnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
