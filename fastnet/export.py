"""ONNX export of a built ``Sequential`` (Dense, activations, Softmax, BatchNorm1d, Standardize
and Dropout in eval mode): ``model.to_onnx(path)`` or ``fastnet export model.npz model.onnx``.
Needs the ``onnx`` package (``pip install onnx``); the graph is checked before it is written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

OPSET = 17
#: the file format's version: 8, the first with opset 17, which onnxruntime 1.16 (the oldest
#: ``fastnet[onnx]`` takes) reads; onnx's newest (14 in onnx 1.23) it refuses
IR_VERSION = 8
_ACTIVATION_OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def onnx_outputs(model: Any) -> list[str]:
    """Names of the exported graph's outputs: logits, plus probabilities for classifiers;
    outputs, plus their predictions (``exp`` of them) for a Poisson model."""
    predictions = model.loss.planned_predictions()
    if predictions == "exp":
        return ["outputs", "predictions"]
    has_probabilities = predictions in ("softmax", "sigmoid")
    return ["logits", "probabilities"] if has_probabilities else ["outputs"]


class _Graph:
    """The nodes and initializers of the exported graph, added layer by layer."""

    def __init__(self, helper: Any, numpy_helper: Any, host: Any, float64: bool = False) -> None:
        self.helper, self.numpy_helper, self.host = helper, numpy_helper, host
        self.float64 = float64  # ops whose float32 attributes would round: as float64 tensors
        self.nodes: list[Any] = []
        self.weights: list[Any] = []

    def tensor(self, name: str, array: Any) -> str:
        self.weights.append(
            self.numpy_helper.from_array(np.ascontiguousarray(self.host(array)), name)
        )
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def activation(self, kind: str | None, x: str, name: str, alpha: float) -> str:
        if kind in (None, "linear"):
            return x
        if kind == "leaky_relu" and self.float64:  # (LeakyRelu's alpha attribute is a float32)
            zero = self.tensor(f"{name}_zero", np.zeros((), np.float64))
            slope = self.node(
                "Mul", [x, self.tensor(f"{name}_alpha", np.float64(alpha))], f"{name}_ax"
            )
            positive = self.node("Greater", [x, zero], f"{name}_pos")
            return self.node("Where", [positive, x, slope], name)
        if kind not in _ACTIVATION_OPS:
            raise NotImplementedError(f"{name}: the {kind} activation has no ONNX export")
        attrs = {"alpha": alpha} if kind == "leaky_relu" else {}
        return self.node(_ACTIVATION_OPS[kind], [x], name, **attrs)

    def layer(self, i: int, layer: Any, x: str) -> str:
        """Add layer ``i`` applied to ``x``; returns the name of its output. Only fastnet's
        own layer classes: a subclass (its own maths, or its parent's name) is refused."""
        from fastnet.layers import LAYERS
        from fastnet.registry import same_class

        kind = layer.name
        if not (
            type(layer).__module__.startswith("fastnet.")
            and same_class(LAYERS.get(kind), type(layer))
        ):
            raise ValueError(
                f"layer {i} ({type(layer).__name__}) has no ONNX export: fastnet exports its "
                f"own layer classes, not subclasses (whose maths may differ)"
            )
        if kind == "dense":
            inputs = [x, self.tensor(f"W{i}", layer.W.value)]
            if layer.b is not None:
                inputs.append(self.tensor(f"b{i}", layer.b.value))
            x = self.node("Gemm", inputs, f"dense{i}")
            return self.activation(layer.activation, x, f"act{i}", layer.alpha)
        if kind in _ACTIVATION_OPS:
            return self.activation(kind, x, f"act{i}", layer.alpha)
        if kind == "softmax":
            return self.node("Softmax", [x], f"softmax{i}", axis=-1)
        if kind == "batchnorm1d" and self.float64:  # fastnet's own ops: (x - mean) * inv * g + b
            inv = 1 / np.sqrt(self.host(layer.running_var) + layer.eps)  # (epsilon: a float32)
            x = self.node("Sub", [x, self.tensor(f"mean{i}", layer.running_mean)], f"bn{i}_c")
            x = self.node("Mul", [x, self.tensor(f"inv_std{i}", inv)], f"bn{i}_n")
            x = self.node("Mul", [x, self.tensor(f"gamma{i}", layer.gamma.value)], f"bn{i}_s")
            return self.node("Add", [x, self.tensor(f"beta{i}", layer.beta.value)], f"bn{i}")
        if kind == "batchnorm1d":
            params = [
                self.tensor(f"gamma{i}", layer.gamma.value),
                self.tensor(f"beta{i}", layer.beta.value),
                self.tensor(f"mean{i}", layer.running_mean),
                self.tensor(f"var{i}", layer.running_var),
            ]
            return self.node("BatchNormalization", [x, *params], f"bn{i}", epsilon=layer.eps)
        if kind in ("dropout", "activation"):
            return x  # identity at inference (Activation(): the linear one)
        if kind == "standardize":
            x = self.node("Sub", [x, self.tensor(f"offset{i}", layer.device_offset)], f"center{i}")
            return self.node("Div", [x, self.tensor(f"scale{i}", layer.device_scale)], f"scaled{i}")
        raise ValueError(f"layer {i} ({type(layer).__name__}) has no ONNX export")


def to_onnx(model: Any, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``model`` as an ONNX graph (input ``input`` of shape (batch, features));
    ``metadata``: the model's ``metadata_props`` (e.g. ``classes``, the labels of the class
    indices, as ``fastnet export`` writes them)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError(
            "ONNX export needs the onnx package: pip install onnx (extra 'onnx')"
        ) from None
    if not model.built:
        raise RuntimeError("cannot export an unbuilt model: fit() or build() it first")
    predictions = model.loss.planned_predictions()
    if predictions == "custom":
        raise ValueError(
            f"{type(model.loss).__name__} makes its predictions with its own predict_output, "
            "which has no ONNX form: the graph would give other values than predict_proba"
        )
    elem = TensorProto.FLOAT if model.dtype == np.float32 else TensorProto.DOUBLE
    g = _Graph(helper, numpy_helper, model.backend.to_numpy, model.dtype == np.float64)
    current = "input"
    for i, layer in enumerate(model.layers):
        current = g.layer(i, layer, current)
    names = onnx_outputs(model)
    g.node("Identity", [current], names[0])
    if names[1:]:
        op = {"softmax": "Softmax", "sigmoid": "Sigmoid", "exp": "Exp"}[predictions]
        g.node(op, [current], names[1], **({"axis": -1} if op == "Softmax" else {}))
    graph = helper.make_graph(
        g.nodes,
        "fastnet",
        [helper.make_tensor_value_info("input", elem, ["batch", model.input_dim])],
        [helper.make_tensor_value_info(n, elem, ["batch", model.output_dim]) for n in names],
        initializer=g.weights,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fastnet",
        ir_version=IR_VERSION,
    )
    metadata = {"producer": "fastnet", **(metadata or {})}
    if not all(isinstance(v, str) and isinstance(k, str) for k, v in metadata.items()):
        raise TypeError(f"metadata maps names to strings (e.g. json.dumps(...)), got {metadata!r}")
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    from fastnet.checkpoint import atomic_write

    atomic_write(path, lambda f: f.write(proto.SerializeToString()), "ONNX model")
