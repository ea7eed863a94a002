"""Inference contestants: ``predict_proba`` of the default model on every fastnet backend
against onnxruntime running the model's own ONNX export (2 threads, not spinning; and 1 thread,
its lowest latency for one row) and the three matmuls alone, on 10,000 rows and on one row."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from fastnet.bench.harness import Contestant, wall_elapsed

#: one-row contestants time this many calls in a row (the per-call mean): a serving loop's
#: latency; a lone ~40 us call timed between other contestants' runs is mostly their caches
ROW_CALLS = 100


def _model(backend: Any, sizes: tuple[int, ...]) -> Any:
    from fastnet.builders import mlp

    return mlp(sizes[0], list(sizes[1:-1]), sizes[-1], backend=backend, seed=0)


def _onnxruntime(model: Any, threads: int = 2) -> Callable[[np.ndarray], Any] | None:
    """A session on ``model``'s ONNX export (None when onnx/onnxruntime are missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="fastnet-onnx-"), "model.onnx")
    model.to_onnx(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # ORT as its users run it (its workers spin between calls): the suite lets every
    # contestant's threads settle before the next one's timed run (harness.CPU_SETTLE_S)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name, outputs = session.get_inputs()[0].name, ["probabilities"]
    return lambda x: session.run(outputs, {name: x})[0]


def _check_same_outputs(models: dict[str, Any], ort: Any, x: np.ndarray) -> None:
    """Every contestant's probabilities equal (float32 rounding) before any is timed."""
    want = next(iter(models.values())).predict_proba(x)
    outputs = {name: m.predict_proba(x) for name, m in models.items()}
    outputs.update({"onnxruntime": ort(x)} if ort is not None else {})
    for name, got in outputs.items():
        if not np.allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6):
            raise AssertionError(f"bench predict_proba {name}: outputs differ from the others")


def _matmuls(model: Any) -> Callable[[np.ndarray], Any]:
    """The three matmuls of the forward pass alone, the arithmetic floor (through the numba
    kernels' GEMM when numba is installed, as the numba contestant's)."""
    weights = [np.asarray(layer.W.value) for layer in model.layers]
    try:
        from fastnet.kernels.numba_cpu import matmul
    except ImportError:
        return lambda x: [x := x @ w for w in weights]

    def run(x: np.ndarray) -> np.ndarray:
        for w in weights:
            out = np.empty((x.shape[0], w.shape[1]), np.float32)
            matmul(x, w, out)
            x = out
        return x

    return run


def _contestant(name: str, fn: Callable[[np.ndarray], Any], x: np.ndarray, calls: int) -> Any:
    """``fn(x)``, timed as the mean of ``calls`` calls in a row."""
    if calls == 1:
        return Contestant(name, lambda: fn(x))
    return Contestant(
        name, lambda: [fn(x) for _ in range(calls)], lambda run: wall_elapsed(run) / calls
    )


def inference_groups(
    backends: list[Any],
    quick: bool,
    sizes: tuple[int, ...] = (784, 256, 128, 10),
    calls: int = ROW_CALLS,
) -> tuple[dict[str, list[Contestant]], str]:
    """Groups "predict_proba N rows" for N in (10000, 1) (fewer with ``quick``); one row is
    timed as the mean of ``calls`` calls in a row."""
    rng = np.random.default_rng(0)
    X = rng.random((1000 if quick else 10000, sizes[0]), dtype=np.float32)
    models = {be.name: _model(be, sizes) for be in backends}
    reference = next(iter(models.values()))
    for m in models.values():  # one set of weights for every contestant
        m.set_state(reference.host_state())
    ort, ort1, matmuls = _onnxruntime(reference), _onnxruntime(reference, 1), _matmuls(reference)
    _check_same_outputs(models, ort, X[:256])
    arch = "" if sizes == (784, 256, 128, 10) else "-".join(map(str, sizes)) + ": "
    groups: dict[str, list[Contestant]] = {}
    for rows in (len(X), 1):
        x = np.ascontiguousarray(X[:rows])
        runs = {f"fastnet-{name}-predict-fp32": m.predict_proba for name, m in models.items()}
        if ort is not None:
            runs.update({"onnxruntime-cpu-fp32": ort, "onnxruntime-cpu-1thread-fp32": ort1})
        runs["matmul-only-fp32"] = matmuls
        cs = [_contestant(name, fn, x, 1 if rows > 1 else calls) for name, fn in runs.items()]
        groups[f"predict_proba {arch}{rows} row{'s' if rows > 1 else ''}"] = cs
    note = "onnxruntime " + (__import__("onnxruntime").__version__ if ort else "not installed")
    return groups, note
