"""ONNX export of a built ``Sequential`` (Dense, activations, Softmax, BatchNorm1d and Dropout in
eval mode): ``model.to_onnx(path)`` or ``fastnet export model.npz model.onnx``. Needs the
``onnx`` package (``pip install onnx``); the graph is checked before it is written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

OPSET = 17
_ACTIVATION_OPS = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def onnx_outputs(model: Any) -> list[str]:
    """Names of the exported graph's outputs: logits, plus probabilities for classifiers."""
    has_probabilities = model.loss.classification
    return ["logits", "probabilities"] if has_probabilities else ["outputs"]


def to_onnx(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` as an ONNX graph (input ``input`` of shape (batch, features))."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError(
            "ONNX export needs the onnx package: pip install onnx (extra 'onnx')"
        ) from None
    if not model.built:
        raise RuntimeError("cannot export an unbuilt model: fit() or build() it first")
    elem = TensorProto.FLOAT if model.dtype == np.float32 else TensorProto.DOUBLE
    nodes: list[Any] = []
    weights: list[Any] = []
    current = "input"

    def tensor(name: str, array: Any) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def activation(kind: str | None, x: str, name: str, alpha: float) -> str:
        if kind in (None, "linear"):
            return x
        attrs = {"alpha": alpha} if kind == "leaky_relu" else {}
        return node(_ACTIVATION_OPS[kind], [x], name, **attrs)

    host = model.backend.to_numpy
    for i, layer in enumerate(model.layers):
        kind = layer.name
        if kind == "dense":
            inputs = [current, tensor(f"W{i}", host(layer.W.value))]
            if layer.b is not None:
                inputs.append(tensor(f"b{i}", host(layer.b.value)))
            current = node("Gemm", inputs, f"dense{i}")
            current = activation(layer.activation, current, f"act{i}", layer.alpha)
        elif kind in _ACTIVATION_OPS:
            current = activation(kind, current, f"act{i}", layer.alpha)
        elif kind == "softmax":
            current = node("Softmax", [current], f"softmax{i}", axis=-1)
        elif kind == "batchnorm1d":
            params = [
                tensor(f"gamma{i}", host(layer.gamma.value)),
                tensor(f"beta{i}", host(layer.beta.value)),
                tensor(f"mean{i}", host(layer.running_mean)),
                tensor(f"var{i}", host(layer.running_var)),
            ]
            current = node("BatchNormalization", [current, *params], f"bn{i}", epsilon=layer.eps)
        elif kind == "dropout":
            continue  # identity at inference
        else:
            raise ValueError(f"layer {i} ({type(layer).__name__}) has no ONNX export")
    names = onnx_outputs(model)
    node("Identity", [current], names[0])
    if names[1:]:
        op = "Softmax" if model.loss.multiclass else "Sigmoid"
        node(op, [current], names[1], **({"axis": -1} if op == "Softmax" else {}))
    graph = helper.make_graph(
        nodes,
        "fastnet",
        [helper.make_tensor_value_info("input", elem, ["batch", model.input_dim])],
        [helper.make_tensor_value_info(n, elem, ["batch", model.output_dim]) for n in names],
        initializer=weights,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fastnet"
    )
    onnx.checker.check_model(proto)
    from fastnet.checkpoint import atomic_write

    atomic_write(path, lambda f: f.write(proto.SerializeToString()), "ONNX model")
