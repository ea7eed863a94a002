"""``fastnet train --resume CHECKPOINT``: a saved model trained on from where it stopped.

The checkpoint holds the model, its loss and optimizer (state and step counts), its seed and
its data order; the data are read again from the same place (its classes, feature columns and
width checked), scaled as the first run scaled them, and ``--epochs`` counts from the first
run's start (Keras's ``initial_epoch``): with the first run's other options, the two runs train
as one straight run does.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import numpy as np

from fastnet.state import shift_layers

#: train options the checkpoint decides: its model, loss, optimizer, scaling and seed
FROM_CHECKPOINT = (
    "layers optimizer lr weight_decay label_smoothing loss preset dropout dtype precision scale "
    "task seed"
).split()


def resumed(args: argparse.Namespace, given: set[str], load: Any) -> tuple[Any, Any, dict]:
    """``(model, scaler or None, the checkpoint's extra)`` of ``args.resume`` (``load(path)``:
    the CLI's checked load), ``args`` set from it; options it decides, refused when ``given``
    (the command line's, whatever their values)."""
    from fastnet.layers import Standardize
    from fastnet.tabular import LOSS_CHOICES, SCALES, Scaler

    if args.preset:  # (its values are the parser's defaults now: named alone)
        raise ValueError("--resume trains the checkpoint's model with its settings: drop --preset")
    refused = [f"--{n.replace('_', '-')}" for n in FROM_CHECKPOINT if n in given]
    if refused:
        raise ValueError(
            f"--resume trains the checkpoint's model with its loss, optimizer, scaling and seed: "
            f"drop {', '.join(refused)}"
        )
    model, meta = load(args.resume)
    extra = meta["extra"]
    _same_run(args, given, extra, model.epochs_trained)
    _same_source(args, extra)
    args.seed, args.dtype = model.seed, model.policy or np.dtype(model.dtype).name
    dense = [layer.units for layer in model.layers if hasattr(layer, "units")]
    args.layers, args.optimizer = tuple(dense[:-1]), model.optimizer.name
    args.lr = model.optimizer.initial_lr or model.optimizer.lr
    if args.schedule == "constant":  # (after a schedule: its base, not its last value)
        model.optimizer.lr = args.lr
    args.weight_decay = model.optimizer.weight_decay  # (as --json records them)
    args.label_smoothing = getattr(model.loss, "label_smoothing", 0.0)
    args.precision = getattr(model, "precision", args.precision)
    args.dropout = next((layer.rate for layer in model.layers if layer.name == "dropout"), 0.0)
    settings = extra.get("settings") if isinstance(extra.get("settings"), dict) else {}
    for key, known in (("loss", ("auto", *LOSS_CHOICES)), ("scale", SCALES)):
        if settings.get(key) in known:  # (as the first run was given them: its --json's)
            setattr(args, key, settings[key])
    scaler = Scaler.from_json(extra["scale"]) if extra.get("scale") else None  # (older files)
    best = meta.get("best_state")  # (early stopping's best epoch, where not the last)
    if isinstance(model.layers[0], Standardize):  # the first run's --scale: taken off, the
        first = model.layers[0]  # rows scaled beforehand as then (saved with it again)
        scaler = Scaler("standard", first.offset, first.scale)
        model = _without_first_layer(model)
        best = best and shift_layers(best, -1)
    record = extra.get("early_stopping")
    if isinstance(record, dict) and not best and record.get("at_best") is False:
        warnings.warn(  # (a copy saved by model.save: the record without the best weights)
            f"{args.resume} records early stopping's progress but not its best epoch's "
            "weights (a copy saved without them): early stopping starts afresh",
            stacklevel=2,
        )
        extra = {k: v for k, v in extra.items() if k != "early_stopping"}
    elif best and isinstance(record, dict):
        extra = {**extra, "early_stopping": {**record, "state": best}}
    return model, scaler, extra


def _same_run(args: argparse.Namespace, given: set[str], extra: dict, done: int) -> None:
    """The first run's epochs, batch size, schedule and patience where not given; its
    validation rows (fraction, file, --limit) the same, refused where given otherwise."""
    for key, value in (extra.get("run") or {}).items():
        if key not in given:
            setattr(args, key, value)
    if done >= args.epochs:
        raise ValueError(
            f"{args.resume} has trained {done} epoch(s), and --epochs counts from its first "
            f"(Keras's initial_epoch): give more than {done}"
        )
    split = extra.get("split")
    if split is None:  # (a checkpoint of before 2026-12-03, or Python's: unchecked)
        return
    if bool(split["val"]) != bool(args.val):
        was = f"--val {split['val']}" if split["val"] else "a --val-fraction split"
        raise ValueError(f"{args.resume} validated on {was}: resume with the same")
    for key, option in (("val_fraction", "--val-fraction"), ("limit", "--limit")):
        if getattr(args, key) is None:
            setattr(args, key, split[key])
        elif getattr(args, key) != split[key]:
            raise ValueError(
                f"{args.resume} was trained with {option} {split[key]}: a resumed run validates "
                "on the same rows (another split would train on some of them)"
            )


def _same_source(args: argparse.Namespace, extra: dict) -> None:
    """The checkpoint's data set, or your own file given again (its task and target)."""
    own = extra.get("dataset", "custom") == "custom"
    if own and args.data is None:
        raise ValueError(
            f"{args.resume} was trained on your own data ({extra.get('data', 'a file')}): "
            "give it again with --data"
        )
    if not own and (args.data is not None or args.dataset not in (None, extra["dataset"])):
        raise ValueError(f"{args.resume} was trained on --dataset {extra['dataset']}: give that")
    args.dataset = None if own else extra["dataset"]
    args.task = extra.get("task", "auto") if own else "auto"
    if own and str(args.data).lower().endswith(".csv"):
        args.target = args.target or extra.get("target")


def check_same_data(args: argparse.Namespace, model: Any, extra: dict, data: Any) -> None:
    """The data read for ``--resume`` are the checkpoint's: its rows, width, feature columns,
    task, outputs and classes in their order (a class missing or added shifts the outputs)."""
    width, rows = data.train[0].shape[1], (extra.get("split") or {}).get("rows")
    if width != model.input_dim:
        raise ValueError(
            f"the data have {width} feature columns; {args.resume}'s model takes {model.input_dim}"
        )
    got_rows = len(data.train[0]) + (0 if args.val else len(data.val[0]))
    if rows is not None and rows != got_rows:
        raise ValueError(
            f"the data hold {got_rows} rows; {args.resume} was trained on {rows} (resume on the "
            "same data: other rows would move the validation split)"
        )
    classes = data.extra.get("classes") if data.task == "classification" else None
    outputs = 1 if model.output_dim == 1 and len(classes or ()) == 2 else data.n_outputs
    if model.output_dim != outputs:  # (one sigmoid output: two classes)
        raise ValueError(
            f"the data's targets make {data.n_outputs} outputs; {args.resume}'s model has "
            f"{model.output_dim}"
        )
    if classes is not None and extra.get("classes") is None and classes != [*range(outputs)]:
        raise ValueError(
            f"{args.resume} names no classes: its outputs are the labels 0..{outputs - 1}, "
            f"and the data's labels are {classes[:10]}"
        )
    want, got = extra.get("classes"), data.extra.get("classes")
    if isinstance(want, list) and got == [str(c).strip() for c in want] and want != got:
        data.extra["classes"] = want  # (a CSV's " high", read before labels were stripped)
    for key in ("task", "features", "classes"):
        want, got = extra.get(key), data.extra.get(key)
        if want is not None and got is not None and want != got:
            raise ValueError(
                f"the data's {key} are not those {args.resume} was trained with: {got!r} "
                f"against {want!r} (resume on the same data)"
            )


def _without_first_layer(model: Any) -> Any:
    """A copy of ``model`` without its first layer (one without parameters), the state of the
    others moved down one place: ``Sequential.prepend`` undone."""
    config = model.get_config()
    config["layers"] = config["layers"][1:]
    inner = type(model).from_config(config, model.backend)
    inner.set_state(shift_layers(model.get_state(), -1))
    inner.metadata = dict(model.metadata)
    return inner
