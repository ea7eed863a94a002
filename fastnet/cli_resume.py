"""``fastnet train --resume CHECKPOINT``: a saved model trained on from where it stopped.

The checkpoint holds the model, its loss and optimizer (state and step counts), its seed and
its data order; the data are read again from the same place (its classes, feature columns and
width checked), scaled as the first run scaled them, and ``--epochs`` counts from the first
run's start (Keras's ``initial_epoch``): with the first run's other options, the two runs train
as one straight run does.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

#: train options the checkpoint decides: its model, loss, optimizer, scaling and seed
FROM_CHECKPOINT = (
    "layers optimizer lr weight_decay label_smoothing loss preset dropout dtype precision scale "
    "task seed"
).split()


def resumed(args: argparse.Namespace, defaults: dict, load: Any) -> tuple[Any, Any, dict]:
    """``(model, scaler or None, the checkpoint's extra)`` of ``args.resume`` (``load(path)``:
    the CLI's checked load), ``args`` set from it; options it decides, refused when given
    (``defaults``: the parser's)."""
    from fastnet.layers import Standardize
    from fastnet.tabular import Scaler

    given = [f"--{n.replace('_', '-')}" for n in FROM_CHECKPOINT if getattr(args, n) != defaults[n]]
    if given:
        raise ValueError(
            f"--resume trains the checkpoint's model with its loss, optimizer, scaling and seed: "
            f"drop {', '.join(given)}"
        )
    model, meta = load(args.resume)
    extra, done = meta["extra"], model.epochs_trained
    if done >= args.epochs:
        raise ValueError(
            f"{args.resume} has trained {done} epoch(s), and --epochs counts from its first "
            f"(Keras's initial_epoch): give more than {done}"
        )
    own = extra.get("dataset", "custom") == "custom"
    if own and args.data is None:
        raise ValueError(
            f"{args.resume} was trained on your own data ({extra.get('data', 'a file')}): "
            "give it again with --data"
        )
    if not own and (args.data is not None or args.dataset not in (None, extra["dataset"])):
        raise ValueError(f"{args.resume} was trained on --dataset {extra['dataset']}: give that")
    args.dataset = None if own else extra["dataset"]
    args.seed, args.dtype = model.seed, model.policy or np.dtype(model.dtype).name
    args.task = extra.get("task", "auto") if own else "auto"
    args.target = args.target or extra.get("target")
    dense = [layer.units for layer in model.layers if hasattr(layer, "units")]
    args.layers, args.optimizer = tuple(dense[:-1]), model.optimizer.name
    args.lr = model.optimizer.initial_lr or model.optimizer.lr
    scaler = None
    if isinstance(model.layers[0], Standardize):  # the first run's --scale: taken off, the
        first = model.layers[0]  # rows scaled beforehand as then (saved with it again)
        scaler = Scaler("standard", first.offset, first.scale)
        model = _without_first_layer(model)
    return model, scaler, extra


def check_same_data(args: argparse.Namespace, model: Any, extra: dict, data: Any) -> None:
    """The data read for ``--resume`` are the checkpoint's kind: its width, feature columns,
    task and classes in their order (a class missing or added would shift the outputs)."""
    width = data.train[0].shape[1]
    if width != model.input_dim:
        raise ValueError(
            f"the data have {width} feature columns; {args.resume}'s model takes {model.input_dim}"
        )
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
    state = {}
    for key, value in model.get_state().items():
        kind, layer, rest = (key.split("/", 2) + ["", ""])[:3]
        if layer.isdigit() and rest:  # kind/layer/rest: a layer's entry
            if layer == "0":
                continue
            key = f"{kind}/{int(layer) - 1}/{rest}"
        state[key] = value
    inner.set_state(state)
    inner.metadata = dict(model.metadata)
    return inner
