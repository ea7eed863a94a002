"""The suites behind ``fastnet bench``: kernels (matmul, bias+activation, softmax-CE, optimizer
updates) and training (one step, one epoch) per backend, against the book-style NumPy loop, the
step's matmuls alone and PyTorch and JAX when installed. The kernel contestants' own results
(matmul, bias+ReLU and its backward, softmax-CE) are checked against the NumPy reference, and
predict_proba's against each other and onnxruntime, before they are timed; the optimizer
updates and training steps are checked by the test suite (tests/test_optimizer_rules.py, the
eager-equals-compiled step tests). Epoch contestants that return it report the mean training
loss of their last timed epoch (fastnet's, the book loop's, scikit-learn's, JAX's scan), so a
reader sees they did alike work (each from its own initial weights: alike, not equal)."""

from __future__ import annotations

import json
import os
import statistics
import textwrap
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastnet.bench.harness import (
    CPU_SETTLE_S,
    QUICK_SETTLE_S,
    Contestant,
    format_table,
    interleaved,
    machine_info,
)

from fastnet.backends import get_backend, probe

DEFAULT_SIZES = (784, 256, 128, 10)


def _elapsed(backend: Any):
    """The backend's own timer where it has one worth using (CUDA events on the GPU)."""
    return backend.elapsed if backend.name.startswith("cupy") else None


def _check(name: str, got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    got = np.asarray(got, dtype=np.float64)
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got - want))
        raise AssertionError(
            f"bench {name}: result differs from the NumPy reference (max {err:.3g})"
        )


def sgemm_ceiling(backend: Any, n: int) -> float:
    """Measured float32 GFLOP/s of an n x n x n matmul (median of 5 after warm-up)."""
    rng = np.random.default_rng(0)
    a = backend.asarray(rng.standard_normal((n, n)).astype(np.float32))
    b = backend.asarray(rng.standard_normal((n, n)).astype(np.float32))
    out = backend.empty((n, n), np.float32)
    res = interleaved(
        [Contestant("sgemm", lambda: backend.matmul(a, b, out), _elapsed(backend))], rounds=5
    )[0]
    return 2 * n**3 / res.median / 1e9


# ---------------------------------------------------------------------------- kernel suite
def kernel_groups(backends: list[Any], quick: bool) -> dict[str, list[Contestant]]:
    """Matmuls, bias+activation forward and backward, softmax-CE and Adam per backend."""
    rng = np.random.default_rng(0)
    groups = _matmul_groups(backends, quick, rng)
    groups.update(_bias_act_groups(backends, quick, rng))
    groups.update(_softmax_groups(backends, rng))
    groups.update(_adam_groups(backends, rng))
    return groups


def _matmul_groups(backends: list[Any], quick: bool, rng: Any) -> dict[str, list[Contestant]]:
    """float32 matmuls of the default model's shapes and of squares (numba: also the
    hand-written kernel)."""
    groups: dict[str, list[Contestant]] = {}
    mm_shapes = [(128, 784, 256), (128, 256, 128), (128, 128, 10), (16, 32, 16)]
    mm_shapes += (
        [(256, 256, 256)] if quick else [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)]
    )
    for n, k, m in mm_shapes:
        a = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal((k, m)).astype(np.float32)
        want, flops = a @ b, 2.0 * n * k * m
        cs = []
        for be in backends:
            da, db, out = be.asarray(a), be.asarray(b), be.empty((n, m), np.float32)
            be.matmul(da, db, out)
            _check(f"matmul {be.name}", be.to_numpy(out), want, 1e-3, 1e-2)
            cs.append(
                Contestant(
                    be.name,
                    lambda be=be, da=da, db=db, out=out: be.matmul(da, db, out),
                    _elapsed(be),
                    flops,
                )
            )
            if be.name == "numba":
                cs.append(_handwritten_matmul(a, b, out, want, flops))
        groups[f"matmul {n}x{k}x{m}"] = cs
    return groups


def _handwritten_matmul(a: Any, b: Any, out: Any, want: Any, flops: float) -> Contestant:
    from fastnet.bench.handwritten_matmul import matmul as hand

    hand(a, b, out)
    _check("numba hand-written matmul", out, want, 1e-3, 1e-2)
    return Contestant("numba-handwritten", lambda: hand(a, b, out), None, flops)


def _bias_act_groups(backends: list[Any], quick: bool, rng: Any) -> dict[str, list[Contestant]]:
    """The bias+ReLU pass alone (the matmul is benchmarked above) and its backward with the
    bias gradient."""
    groups: dict[str, list[Contestant]] = {}
    for n, m in [(128, 256)] if quick else [(128, 256), (4096, 1024)]:
        z0 = rng.standard_normal((n, m)).astype(np.float32)
        bias = rng.standard_normal(m).astype(np.float32)
        dy = rng.standard_normal((n, m)).astype(np.float32)
        want = np.maximum(z0 + bias, 0)
        want_dz = dy * (want > 0)
        fwd, bwd = [], []
        for be in backends:
            dz0, dbias, ddy = be.asarray(z0), be.asarray(bias), be.asarray(dy)
            out, dz, db = (
                be.empty((n, m), np.float32),
                be.empty((n, m), np.float32),
                be.empty((m,), np.float32),
            )
            forward, backward = (
                _bias_act_runner(be, out, dz0, dbias),
                _bwd_runner(be, out, ddy, dz, db),
            )
            forward()  # the timed kernels' own results, checked
            _check(f"bias+relu {be.name}", be.to_numpy(out), want)
            backward()
            _check(f"relu backward {be.name}", be.to_numpy(dz), want_dz)
            _check(f"bias grad {be.name}", be.to_numpy(db), want_dz.sum(0), 1e-4, 1e-3)
            fwd.append(Contestant(be.name, forward, _elapsed(be)))
            bwd.append(Contestant(be.name, backward, _elapsed(be)))
        groups[f"bias+relu forward {n}x{m}"] = fwd
        groups[f"relu backward + bias grad {n}x{m}"] = bwd
    return groups


def _softmax_groups(backends: list[Any], rng: Any) -> dict[str, list[Contestant]]:
    """Fused softmax cross-entropy forward and backward."""
    ref = get_backend("numpy")
    groups: dict[str, list[Contestant]] = {}
    for n, m in [(128, 10), (512, 10), (4096, 1000)]:
        logits = (rng.standard_normal((n, m)) * 3).astype(np.float32)
        labels = rng.integers(0, m, n)
        _, want = ref.softmax_xent(logits, labels)
        cs = []
        for be in backends:
            dl, dlab, dout = be.asarray(logits), be.asarray(labels), be.empty((n, m), np.float32)
            _, got = be.softmax_xent(dl, dlab, dout)
            _check(f"softmax-CE {be.name}", be.to_numpy(got), want, 1e-5, 1e-6)
            cs.append(
                Contestant(
                    be.name,
                    lambda be=be, dl=dl, dlab=dlab, dout=dout: be.softmax_xent(dl, dlab, dout),
                    _elapsed(be),
                )
            )
        groups[f"softmax-CE fwd+bwd {n}x{m}"] = cs
    return groups


def adam_update_runner(
    be: Any, n: int, subnormal: float = 0.0, seed: int = 0
) -> tuple[Callable, Callable]:
    """One fused Adam update over ``n`` float32 parameters, as ``fit`` runs it (device
    scalars advanced first), with a fraction ``subnormal`` of the first-moment slot seeded
    subnormal and zero gradients there (what always-zero input pixels produce); returns
    ``(reset, run)``: ``reset`` (untimed) copies the seeded slots back, device to device."""
    from fastnet.optimizers import Adam
    from fastnet.parameter import LR

    rng = np.random.default_rng(seed)
    g0 = rng.standard_normal(n).astype(np.float32)
    m0 = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    v0 = (rng.random(n) * 1e-6).astype(np.float32)
    dead = rng.random(n) < subnormal
    g0[dead], m0[dead], v0[dead] = 0, np.float32(1e-39), np.float32(1e-40)
    rule = Adam(1e-3)
    p, g = be.asarray(rng.standard_normal(n).astype(np.float32)), be.asarray(g0)
    seeded = be.asarray(m0), be.asarray(v0)  # (kept: the slots flush theirs)
    m, v = be.asarray(m0.copy()), be.asarray(v0.copy())
    s, norm_sq = be.zeros((8,), np.float64), be.zeros((2,), np.float64)
    be.fill(s[LR : LR + 1], 1e-3)

    def reset() -> None:  # every round starts from the seeded slots
        m[...], v[...] = seeded

    def run() -> None:
        be.advance_scalars(s, norm_sq, rule.scalar_constants())
        be.update(rule, p, g, (m, v), s, rule.constants(), n, 0.0, None)

    return reset, run


SUBNORMAL = " 20% subnormal"


def _adam_groups(backends: list, rng: Any) -> dict[str, list[Contestant]]:
    """Adam over the default model's first layer with normal slots and with 20% subnormal ones
    (denormals: slow on Intel cores unless the update flushes them, as fastnet's do), in one
    interleaved group so each round pairs the two cases; numba also with explicit selects."""
    fast = [(be.name, be) for be in backends]
    fast += [("numba-selects", _explicit_selects(be)) for be in backends if be.name == "numba"]
    group = []
    for name, be in fast:
        for case, frac in (("", 0.0), (SUBNORMAL, 0.2)):
            reset, run = adam_update_runner(be, 784 * 256, frac)
            group.append(Contestant(name + case, run, _elapsed(be), prepare=reset))
    return {"adam update 784x256, normal and 20% subnormal slots": group}


def _print_subnormal_summary(report: dict[str, Any]) -> None:
    """Per contestant: the update with 20% subnormal slots over the normal one, per round."""
    for title, group in report["groups"].items():
        rows = {r["name"]: r for r in group["results"]}
        for name, slow in rows.items():
            normal = rows.get(name.removesuffix(SUBNORMAL))
            if not name.endswith(SUBNORMAL) or normal is None:
                continue
            ratio = statistics.median(a / b for a, b in zip(slow["times"], normal["times"]))
            print(f"  {title}: {name} / normal slots {ratio:.2f}x (median per round)")


def _explicit_selects(numba: Any) -> Any:
    """A numba backend flushing subnormal state with explicit selects instead of the CPU's
    flush-to-zero mode (what the mode saves)."""
    backend = type(numba)()
    backend.flush_mode = False
    return backend


def _kernels(be: Any) -> Any:
    """The kernel module of a fast backend (``fastnet.kernels.numba_cpu`` or ``cupy_gpu``)."""
    import importlib

    return importlib.import_module(
        "fastnet.kernels." + ("numba_cpu" if be.name == "numba" else "cupy_gpu")
    )


def _bias_act_runner(be: Any, out: Any, z0: Any, bias: Any):
    if be.name == "numpy":

        def run() -> None:
            out[...] = z0
            np.add(out, bias, out=out)
            np.maximum(out, 0, out=out)
    elif be.name == "numba":
        kernel = _kernels(be).bias_act

        def run() -> None:
            out[...] = z0
            kernel(out, bias, 1, np.float32(0))
    else:

        def run() -> None:
            out[...] = z0
            _kernels(be).bias_act(out, bias, 1, 0.0)

    return run


def _bwd_runner(be: Any, y: Any, dy: Any, dz: Any, db: Any):
    if be.name == "numpy":

        def run() -> None:
            np.multiply(dy, y > 0, out=dz)
            dz.sum(axis=0, out=db)
    else:
        kernel = _kernels(be).act_backward_bias

        def run() -> None:
            kernel(y, dy, 1, y.dtype.type(0) if be.name == "numba" else 0.0, dz, db)

    return run


# ---------------------------------------------------------------------------- training suite
def load_training_data(quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from fastnet.data import load_fashion_mnist

        (X, y), _ = load_fashion_mnist()
        source = "Fashion-MNIST"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        X = rng.random((60000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60000)
        source = "random data shaped like Fashion-MNIST (dataset not installed)"
        print(f"warning: timing {source}: apt-get install dataset-fashion-mnist", flush=True)
    if quick:
        X, y = X[:2048], y[:2048]
    return X, y, source


def _model(
    backend: Any,
    sizes: tuple[int, ...],
    optimizer: str = "adam",
    precision: str = "fp32",
    dtype: str = "float32",
):
    from fastnet.builders import mlp
    from fastnet.optimizers import SGD, Adam

    opt = Adam(1e-3) if optimizer == "adam" else SGD(0.01)
    return mlp(
        sizes[0],
        sizes[1:-1],
        sizes[-1],
        "relu",
        optimizer=opt,
        backend=backend,
        seed=0,
        precision=precision,
        dtype=dtype,
    )


def step_flops(sizes: tuple[int, ...], batch: int) -> float:
    """Matmul FLOPs of one training step: forward, weight grads, input grads but the first."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return 2.0 * batch * (2 * sum(a * b for a, b in pairs) + sum(a * b for a, b in pairs[1:]))


def train_groups(
    backends: list[Any], quick: bool, sizes: tuple[int, ...] = DEFAULT_SIZES, batch: int = 128
) -> tuple[dict[str, list[Contestant]], dict[str, Any]]:
    """One training epoch (and one step) of ``sizes`` at ``batch``: every fastnet backend with
    each of its steps, the matmul floors and the peers. Contestants are named
    ``<framework>-<variant>-<precision>`` (``fastnet-cupy-graph-tf32``, ``jax-scan-fp32``)."""
    X, y, source = load_training_data(quick)
    n = len(X) // batch * batch  # full batches only, as a scanned JAX epoch needs
    X, y = X[:n], y[:n]
    epoch_flops = step_flops(sizes, batch) * (n // batch)
    epoch: list[Contestant] = []
    step: list[Contestant] = []
    for be in backends:
        _fastnet_contestants(be, epoch, step, sizes, X, y, batch, epoch_flops)
    notes: dict[str, Any] = {"data": source, "samples": n, "batch": batch, "sizes": list(sizes)}
    gpu = bool(backends) and all(be.name.startswith("cupy") for be in backends)
    notes.update(_peer_contestants(epoch, sizes, X, y, batch, epoch_flops, gpu))
    return {
        f"train epoch {'-'.join(map(str, sizes))} batch {batch}": epoch,
        f"train step {'-'.join(map(str, sizes))} batch {batch}": step,
    }, notes


def _graph_variants(be: Any, sizes: tuple, Xd: Any, yd: Any, batch: int) -> list[tuple]:
    """fp32 graphed epochs that show what a feature gives: one step per replay ("1step"),
    cuBLAS + the bias kernel instead of cuBLASLt ("cublas"), cuBLASLt's algorithms timed per
    shape instead of its heuristic's ("autotune"), the backward's activation-gradient and
    bias-gradient kernels instead of cuBLASLt's gradient epilogues ("kernelbackward")."""
    models = [_model(be, sizes) for _ in range(4)]
    default, be.steps_per_graph = be.steps_per_graph, 1
    try:
        single = models[0].epoch_runner(Xd, yd, batch, compiled=True)
    finally:
        be.steps_per_graph = default
    plain = models[1].epoch_runner(Xd, yd, batch, compiled=True)
    tuned = models[2].epoch_runner(Xd, yd, batch, compiled=True)
    unfused = models[3].epoch_runner(Xd, yd, batch, compiled=True)
    return [
        ("1step", single, models[0]),
        ("cublas", _with_setting(be, "use_cublaslt", False, plain), models[1]),
        ("autotune", _with_setting(be, "gemm_autotune", True, tuned), models[2]),
        ("kernelbackward", _with_setting(be, "fuse_gradients", False, unfused), models[3]),
    ]


def _step_of(model: Any) -> Callable[[], str]:
    """What a fastnet contestant ran, read after timing (a warm-up may have stayed eager)."""
    return lambda: str(model.step_description)


def _graphed(be: Any, run: Callable[[], Any], name: str) -> Callable[[], Any]:
    """``run``'s GPU work (e.g. a floor's GEMMs) captured once in a graph, after one eager
    call, and replayed on the step stream until done: the work without Python's launch
    overhead. ``run`` itself where the capture fails (said)."""
    try:
        with be.step_stream():
            run()  # plans and workspaces exist before the capture
            graph = be.capture(run)
    except Exception as exc:
        print(f"{name}: not captured ({type(exc).__name__}: {exc}); timed as launched")
        return run

    def replay() -> None:
        with be.step_stream():
            graph.replay()
        be.synchronize()

    return replay


def _with_setting(be: Any, name: str, value: Any, run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` with the backend attribute ``name`` set to ``value`` while it runs."""

    def call(*args: Any, **kwargs: Any) -> Any:
        before = getattr(be, name)
        setattr(be, name, value)
        try:
            return run(*args, **kwargs)
        finally:
            setattr(be, name, before)

    return call


def _mean_loss(rows: int) -> Callable[[Any], float]:
    """An epoch runner's (summed loss, correct) as the mean loss per row."""
    return lambda summed: float(summed[0]) / rows


def _fastnet_contestants(
    be: Any,
    epoch: list[Contestant],
    step: list[Contestant],
    sizes: tuple[int, ...],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    epoch_flops: float,
) -> None:
    """``be``'s eager epoch and step, its compiled epochs (numba fused; cupy graph at fp32 and
    tf32) and the matmul-only floor of each, appended to ``epoch`` and ``step``."""
    from fastnet.bench.peers import matmul_only_epoch

    n = len(X)
    Xd, yd = be.asarray(X), be.asarray(y)
    timer = _elapsed(be)
    model = _model(be, sizes)
    eager = model.epoch_runner(Xd, yd, batch, compiled=False)
    mean = _mean_loss(n)
    epoch.append(Contestant(f"fastnet-{be.name}-eager-fp32", eager, timer, epoch_flops, loss=mean))
    xb, yb = Xd[:batch], yd[:batch]
    step.append(
        Contestant(
            f"fastnet-{be.name}-eager-fp32",
            lambda m=model, xb=xb, yb=yb: m.train_step(xb, yb),
            timer,
            step_flops(sizes, batch),
        )
    )
    if be.name == "numba":
        fused = _model(be, sizes).epoch_runner(Xd, yd, batch, compiled=True)
        epoch.append(Contestant("fastnet-numba-fused-fp32", fused, None, epoch_flops, loss=mean))
        floor = matmul_only_epoch(np, sizes, n, batch, np.float32, matmul=_kernels(be).matmul)
        epoch.append(Contestant("matmul-only-numba-fp32", floor, None, epoch_flops))
    if be.name.startswith("cupy"):
        for precision in ("fp32", "tf32") if not be.precision_reason("tf32") else ("fp32",):
            graph_model = _model(be, sizes, precision=precision)
            graphed = graph_model.epoch_runner(Xd, yd, batch, compiled=True)
            name = f"fastnet-{be.name}-graph-{precision}"
            epoch.append(
                Contestant(name, graphed, timer, epoch_flops, _step_of(graph_model), loss=mean)
            )
            if precision == "fp32":
                for variant, run, m in _graph_variants(be, sizes, Xd, yd, batch):
                    variant_name = f"{name[:-5]}{variant}-fp32"
                    epoch.append(Contestant(variant_name, run, timer, epoch_flops, _step_of(m)))
            floor = matmul_only_epoch(
                be.xp,
                sizes,
                n,
                batch,
                np.float32,
                matmul=lambda a, b, out, p=precision, be=be: be.matmul(a, b, out, p),
            )
            floor_name = f"matmul-only-{be.name}-{precision}"
            floor = _graphed(be, floor, floor_name)
            epoch.append(Contestant(floor_name, floor, timer, epoch_flops))
        epoch += _mixed_graphs(be, sizes, Xd, yd, batch, timer, epoch_flops)


def _mixed_graphs(
    be: Any, sizes: tuple, Xd: Any, yd: Any, batch: int, timer: Any, flops: float
) -> list[Contestant]:
    """The graphed epoch in mixed float16 and bfloat16 (``fastnet-cupy-graph-fp16``/``-bf16``),
    where the backend computes the policy."""
    contestants = []
    for policy, short in (("mixed_float16", "fp16"), ("mixed_bfloat16", "bf16")):
        try:
            model = _model(be, sizes, dtype=policy)
            run = model.epoch_runner(Xd, yd, batch, compiled=True)
        except (ValueError, NotImplementedError) as exc:  # no such policy or no capture here
            print(f"fastnet-{be.name}-graph-{short} skipped: {exc}")
            continue
        name = f"fastnet-{be.name}-graph-{short}"
        contestants.append(Contestant(name, run, timer, flops, _step_of(model)))
    return contestants


def _peer_contestants(
    epoch: list[Contestant],
    sizes: tuple[int, ...],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    flops: float,
    gpu: bool = False,
) -> dict[str, str]:
    """The book-style NumPy loop, NumPy's matmul floor, then PyTorch, scikit-learn and JAX
    where installed; returns the peers' versions (or why they were skipped). ``gpu`` (only GPU
    backends benchmarked): the GPU peers alone (PyTorch and JAX on the GPU)."""
    from fastnet.bench.peers import BookMLP, matmul_only_epoch, sklearn_mlp_epoch

    if gpu:
        torch_note = _torch_contestants(epoch, sizes, X, y, batch, flops, cpu=False)
        return {"torch": torch_note, "jax": _jax_contestants(epoch, sizes, X, y, batch, flops, gpu)}
    book = BookMLP(sizes)
    book_rng = np.random.default_rng(0)
    epoch.append(
        Contestant(
            "book-numpy-fp32", lambda: book.epoch(X, y, batch, book_rng), None, flops, loss=float
        )
    )
    floor = matmul_only_epoch(np, sizes, len(X), batch, np.float32)
    epoch.append(Contestant("matmul-only-numpy-fp32", floor, None, flops))
    notes = {"torch": _torch_contestants(epoch, sizes, X, y, batch, flops)}
    try:
        import sklearn

        epoch.append(
            Contestant(
                "sklearn-adam-fp32", sklearn_mlp_epoch(sizes, X, y, batch), None, flops, loss=float
            )
        )
        notes["sklearn"] = sklearn.__version__
    except ImportError:
        notes["sklearn"] = "not installed (peer skipped)"
    notes["jax"] = _jax_contestants(epoch, sizes, X, y, batch, flops)
    return notes


def _torch_contestants(
    epoch: list[Contestant],
    sizes: tuple[int, ...],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    flops: float,
    cpu: bool = True,
) -> str:
    """PyTorch eager on the CPU (``cpu``); on a GPU eager and a whole-step CUDA graph, at fp32
    and tf32."""
    try:
        import torch
    except ImportError:
        return "not installed (peer skipped)"
    from fastnet.bench.peers import torch_graph_epoch, torch_mlp_epoch

    if cpu:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        run = torch_mlp_epoch(sizes, X, y, batch)
        epoch.append(Contestant("torch-cpu-eager-fp32", run, None, flops, loss=float))
    if torch.cuda.is_available():
        for precision in ("fp32", "tf32"):
            run = torch_mlp_epoch(sizes, X, y, batch, "cuda", precision=precision)
            name = f"torch-cuda-eager-{precision}"
            epoch.append(Contestant(name, run, None, flops, loss=float))
            try:
                run = torch_graph_epoch(sizes, X, y, batch, precision=precision)
            except Exception as exc:  # a peer that cannot capture is reported, not fatal
                print(f"torch-cuda-graph-{precision} skipped: {type(exc).__name__}: {exc}")
                continue
            epoch.append(Contestant(f"torch-cuda-graph-{precision}", run, None, flops))
    return str(torch.__version__)


def _jax_contestants(
    epoch: list[Contestant],
    sizes: tuple[int, ...],
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    flops: float,
    gpu: bool = False,
) -> str:
    """JAX jit + lax.scan and jit-per-step epochs at fp32 (and TF32 on a GPU) when installed,
    named by JAX's device where a GPU is in play: ``jax-<variant>-gpu-<precision>`` on a GPU,
    ``-cpu-`` in a GPU run whose JAX has none (neither the reference of the other device's
    contestants); plain ``jax-<variant>-<precision>`` on a CPU machine."""
    try:
        import jax
    except ImportError:
        return "not installed (peer skipped)"
    from fastnet.bench.jax_peer import jax_scan_epoch, jax_step_epoch

    device = jax.devices()[0]
    precisions = {"fp32": "highest"}
    if device.platform == "gpu":
        precisions["tf32"] = "default"  # XLA's default float32 matmul precision on GPUs
    where = "-gpu" if device.platform == "gpu" else ("-cpu" if gpu else "")
    for label, precision in precisions.items():
        for variant, make in (("scan", jax_scan_epoch), ("jit", jax_step_epoch)):
            run = make(sizes, X, y, batch, precision=precision)
            epoch.append(Contestant(f"jax-{variant}{where}-{label}", run, None, flops, loss=float))
    note = f"{jax.__version__} on {device.platform} ({device.device_kind})"
    return note + (": no GPU for JAX here (its CUDA plugin?)" if where else "")


def big_gpu_groups(backends: list[Any], quick: bool) -> dict[str, list[Contestant]]:
    """MLP 784-4096-4096-10 at batch 4096 on the GPU: step time vs its matmuls alone, at fp32
    and (per model) tf32."""
    from fastnet.bench.peers import matmul_only_epoch

    sizes, batch = (784, 4096, 4096, 10), 4096
    groups: dict[str, list[Contestant]] = {}
    for be in backends:
        if not be.name.startswith("cupy"):
            continue
        rng = np.random.default_rng(0)
        xb = be.asarray(rng.random((batch, 784), dtype=np.float32))
        yb = be.asarray(rng.integers(0, 10, batch))
        contestants = []
        for precision in ("fp32", "tf32") if not be.precision_reason("tf32") else ("fp32",):
            model = _model(be, sizes, precision=precision)
            contestants.append(
                Contestant(
                    f"fastnet-{be.name}-eager-{precision}",
                    lambda m=model, xb=xb, yb=yb: m.train_step(xb, yb),
                    _elapsed(be),
                    step_flops(sizes, batch),
                )
            )
            floor = matmul_only_epoch(
                be.xp,
                sizes,
                batch,
                batch,
                np.float32,
                matmul=lambda a, b, out, p=precision, be=be: be.matmul(a, b, out, p),
            )
            floor_name = f"matmul-only-{be.name}-{precision}"
            contestants.append(
                Contestant(
                    floor_name,
                    _graphed(be, floor, floor_name),
                    _elapsed(be),
                    step_flops(sizes, batch),
                )
            )
        contestants += _bf16_contestants(be, sizes, batch, xb, yb)
        groups[f"big step {'-'.join(map(str, sizes))} batch {batch}"] = contestants
    return groups


def _bf16_contestants(be: Any, sizes: tuple, batch: int, xb: Any, yb: Any) -> list[Contestant]:
    """The big step in mixed bfloat16 (fastnet's eager step, its matmuls alone in bf16, and
    PyTorch autocast bf16 with fused Adam) where the backend has bfloat16 (CuPy >= 14)."""
    from fastnet.bench.peers import matmul_only_epoch, torch_autocast_step

    from fastnet.builders import mlp
    from fastnet.optimizers import Adam

    try:
        bf16 = be.check_policy("mixed_bfloat16")
    except (ValueError, NotImplementedError) as exc:
        print(f"bf16 contestants skipped: {exc}")
        return []
    flops, timer = step_flops(sizes, batch), _elapsed(be)
    hidden, out = sizes[1:-1], sizes[-1]
    model = mlp(sizes[0], hidden, out, optimizer=Adam(1e-3), backend=be, dtype="mixed_bfloat16")
    floor = matmul_only_epoch(be.xp, sizes, batch, batch, bf16, matmul=be.matmul)
    contestants = [
        Contestant(f"fastnet-{be.name}-eager-bf16", lambda: model.train_step(xb, yb), timer, flops),
        Contestant(
            f"matmul-only-{be.name}-bf16", _graphed(be, floor, "matmul-only-bf16"), timer, flops
        ),
    ]
    try:
        torch_step = torch_autocast_step(sizes, batch)
        contestants.append(Contestant("torch-autocast-bf16", torch_step, timer, flops))
    except Exception as exc:  # a missing or CPU-only PyTorch is reported, not fatal
        print(f"torch-autocast-bf16 skipped: {type(exc).__name__}: {exc}")
    return contestants


# ---------------------------------------------------------------------------- cold start
_COLD_START = """
import time
t0 = time.perf_counter()
import numpy as np
import fastnet as fn
t_import = time.perf_counter() - t0
be = fn.get_backend({name!r})
m = fn.mlp(784, (256, 128), 10, backend=be)
xb = be.asarray(np.random.default_rng(0).random((128, 784), dtype=np.float32))
yb = be.asarray(np.arange(128) % 10)
t1 = time.perf_counter(); m.train_step(xb, yb); be.synchronize(); first = time.perf_counter() - t1
t2 = time.perf_counter(); m.train_step(xb, yb); be.synchronize(); second = time.perf_counter() - t2
print(t_import, first, second)
"""


def cold_start(name: str) -> dict[str, float]:
    """A fresh process's import time and first training step (kernel loading from the on-disk
    cache, or compilation when the cache is cold) against its second step."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _COLD_START.format(name=name)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    t_import, first, second = map(float, out[-3:])
    return {
        "import_s": t_import,
        "first_step_s": first,
        "second_step_s": second,
        "kernel_loading_s": first - second,
    }


# ---------------------------------------------------------------------------- driver
def resolve_backends(spec: str | None) -> list[Any]:
    if spec is not None and not spec.strip():
        raise ValueError("--backends is empty: name them (numpy,numba,cupy) or leave it out")
    names = (
        [s.strip() for s in spec.split(",")]
        if spec
        else [n for n in ("numpy", "numba", "cupy") if probe(n).available]
    )
    return list(dict.fromkeys(get_backend(n) for n in names))  # each once ("auto,numba")


def run_suites(
    backend_spec: str | None,
    suite: str,
    rounds: int,
    quick: bool,
    json_path: str | None = None,
    model: tuple[tuple[int, ...], int] = (DEFAULT_SIZES, 128),
) -> dict[str, Any]:
    """Run ``suite``'s groups, each interleaved; with ``json_path`` the report is rewritten
    there after every group (a run cut short keeps the groups it finished). ``model``: the
    layer sizes and batch of the train and floor suites (the sizes also inference's)."""
    backends = resolve_backends(backend_spec)
    report = _new_report(backends, suite, rounds, quick)
    for be in backends:
        try:
            if not quick:  # (quick: one cold start, compiling if the cache is cold)
                cold_start(be.name)  # fills the kernel cache if it is cold
            report["cold_start"][be.name] = cs = cold_start(be.name)
        except Exception as exc:  # reported; the timed groups still run
            report["cold_start"][be.name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"cold start {be.name} failed: {exc}", flush=True)
            continue
        print(
            f"cold start {be.name}: import {cs['import_s']:.3f}s, first step "
            f"{cs['first_step_s']:.3f}s (kernel loading {cs['kernel_loading_s']:.3f}s), "
            f"second step {cs['second_step_s'] * 1e3:.2f}ms",
            flush=True,
        )
    groups = _suite_groups(backends, suite, quick, report, model)
    for title, contestants in groups.items():
        reference = _reference(title, [c.name for c in contestants])
        failed: dict[str, str] = {}
        # a graphed epoch captures its shorter last graph in its second run: warm-up twice
        warmup = 2 if any("-graph" in c.name for c in contestants) else 1
        settle = _settle(title, backends, quick)
        results = interleaved(contestants, rounds, reference, warmup, failed, settle)
        described = {c.name: c.describe() for c in contestants if c.describe is not None}
        report["groups"][title] = {
            "reference": reference,
            "results": [
                {**r.to_dict(), **({"step": described[r.name]} if r.name in described else {})}
                for r in results
            ],
            **({"failed": failed} if failed else {}),
        }
        print(format_table(results, f"\n== {title} (ratio = time / {reference})"), flush=True)
        if json_path:
            _write_json(report, json_path)
    _print_floor_summary(report)
    _print_subnormal_summary(report)
    return report


def _new_report(backends: list[Any], suite: str, rounds: int, quick: bool) -> dict[str, Any]:
    """The report's header (machine, date, settings, sgemm ceilings), also printed."""
    machine, date = machine_info(), time.strftime("%Y-%m-%d %H:%M")
    print(
        f"fastnet {machine['fastnet']} bench --suite {suite}: {machine_title(machine)}, "
        f"{rounds} rounds{', --quick (small sizes: not a result)' if quick else ''}, {date}",
        flush=True,
    )
    ceiling = lambda be: 512 if quick else (8192 if be.name.startswith("cupy") else 2048)  # noqa: E731
    return {
        "machine": machine,
        "date": date,
        "suite": suite,
        "quick": quick,
        "rounds": rounds,
        "groups": {},
        "ceilings_gflops": {be.name: sgemm_ceiling(be, ceiling(be)) for be in backends},
        "cold_start": {},
    }


def _suite_groups(
    backends: list[Any],
    suite: str,
    quick: bool,
    report: dict[str, Any],
    model: tuple[tuple[int, ...], int] = (DEFAULT_SIZES, 128),
) -> dict[str, list[Contestant]]:
    """The contestant groups of ``suite`` ("all" for every suite); notes go into ``report``."""
    groups: dict[str, list[Contestant]] = {}
    if suite in ("kernels", "all"):
        groups.update(kernel_groups(backends, quick))
    if suite in ("train", "all"):
        train, notes = train_groups(backends, quick, *model)
        groups.update(train)
        groups.update(big_gpu_groups(backends, quick))
        report["train_notes"] = notes
    if suite in ("inference", "all"):
        from fastnet.bench.inference import inference_groups

        predict, report["inference_notes"] = inference_groups(backends, quick, model[0])
        groups.update(predict)
    if suite in ("floor", "all") and any(be.name == "numba" for be in backends):
        from fastnet.bench.floor import floor_groups

        sizes, batch = model
        X, y, _ = load_training_data(quick)
        n = len(X) // batch * batch  # full batches only: every contestant runs the same steps
        numba = get_backend("numba")
        groups.update(
            floor_groups(X[:n], y[:n], sizes, batch, lambda opt: _model(numba, sizes, opt))
        )
    return groups


def _settle(title: str, backends: list[Any], quick: bool = False) -> float:
    """Epochs and batch predictions on the CPU start on quiet cores; not single rows
    (microseconds: the pools' wake-up after a settle would be what is timed), nor GPU runs;
    ``quick`` (a smoke test, no result) settles briefly."""
    heavy = title.startswith(("train epoch", "floor breakdown", "predict_proba"))
    gpu = any(be.name.startswith("cupy") for be in backends)
    if not heavy or gpu or title.endswith(" 1 row"):
        return 0.0
    return QUICK_SETTLE_S if quick else CPU_SETTLE_S


def _reference(title: str, names: list[str]) -> str | None:
    """A group's reference: the strongest peer present (JAX's scanned epoch, else PyTorch's
    CUDA graph, else the book loop; onnxruntime), else the plain NumPy contestant, else (not
    for epochs, whose other contestants may be peers on another device) the group's first."""
    candidates: tuple[str, ...] = ("numpy", "fastnet-numpy-eager-fp32", "matmul-only-cupy-fp32")
    if title.startswith("train epoch"):
        candidates = (
            "jax-scan-gpu-fp32",
            "torch-cuda-graph-fp32",
            "jax-scan-fp32",
            "book-numpy-fp32",
        )
    if title.startswith("floor breakdown"):
        candidates = ("matmul-only-numba-fp32",)
    if title.startswith("predict_proba"):  # one row: one ORT thread answers fastest
        one = title.endswith(" 1 row")
        candidates = ("onnxruntime-cpu-1thread-fp32",) * one + (
            "onnxruntime-cpu-fp32",
            "matmul-only-fp32",
        )
    first = names[0] if names and not title.startswith("train epoch") else None  # not a peer
    return next((r for r in candidates if r in names), first)


def _print_floor_summary(report: dict[str, Any]) -> None:
    for title, group in report["groups"].items():
        if not title.startswith(("train epoch", "big step")):
            continue
        rows = {r["name"]: r for r in group["results"]}
        for name, r in rows.items():
            if not name.startswith("fastnet-"):
                continue
            parts = name.removeprefix("fastnet-").split(" ")[0].split("-")
            backend, precision = parts[0], parts[-1]  # fastnet-<backend>-<variant>-<precision>
            floor = rows.get(f"matmul-only-{backend}-{precision}")
            if floor is None and not backend.startswith("cupy"):  # CPUs: NumPy's floor
                floor = rows.get("matmul-only-numpy-fp32")
            # the sgemm ceiling is float32's: tf32 and half GEMMs run above it
            ceiling = report["ceilings_gflops"].get(backend) if precision == "fp32" else None
            parts = [f"{title}: {name} {r['median']:.4f}s"]
            if floor:
                ratio = statistics.median(a / b for a, b in zip(r["times"], floor["times"]))
                parts.append(f"{ratio:.2f}x its matmuls alone (median per round)")
            if ceiling and r.get("gflops"):
                parts.append(
                    f"{100 * r['gflops'] / ceiling:.1f}% of the measured sgemm ceiling "
                    f"({ceiling:.0f} GFLOP/s)"
                )
            print("  " + ", ".join(parts))


def machine_title(machine: dict[str, Any]) -> str:
    """ "AMD EPYC, 2 cores, openblas 0.3.31 + cuda:0 NVIDIA H100" from ``machine_info``."""
    title = f"{machine.get('cpu', 'CPU')}, {machine.get('cores', '?')} cores"
    if machine.get("blas") not in (None, "unknown"):
        title += f", {machine['blas']}"
    gpu = str(machine.get("backend_cupy", ""))
    if gpu and not gpu.startswith("unavailable"):
        title += f" + {gpu.split(' ', 1)[-1]}"
    return title


def _bar_color(name: str, reference: str) -> str:
    """fastnet's contestants orange (backend names in the kernel groups), the reference black,
    peers gray."""
    if name == reference:
        return "black"
    ours = name.startswith(("fastnet", "numba", "cupy")) or name.split("-")[0] in ("numba", "cupy")
    return "tab:orange" if ours else "tab:gray"


def plot_report(report: dict[str, Any], path: str) -> None:
    """One panel per group, each on its own scale: time relative to the group's reference
    (bars; 1.0 marked), whiskers for the min-max spread, the median time written on the bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = {t: g for t, g in report["groups"].items() if g["results"]}  # (all failed: none)
    if not groups:
        print(f"no results to plot: {path} not written")
        return
    heights = [1.0 + 0.3 * len(g["results"]) for g in groups.values()]
    fig = FigureCanvasAgg(Figure(figsize=(9, sum(heights) + 0.8))).figure  # no pyplot backend
    axes = fig.subplots(len(groups), 1, gridspec_kw={"height_ratios": heights})
    for ax, (title, group) in zip(np.atleast_1d(axes), groups.items()):
        res = sorted(group["results"], key=lambda r: r["median"])
        ref = next((r for r in res if r["name"] == group["reference"]), res[0])
        names = [r["name"] for r in res]
        # the table's ratios: the median of per-round ratios, whiskers their min and max
        per_round = [r.get("ratios") or [r["median"] / ref["median"]] for r in res]
        ratio = np.array([r.get("ratio") or float(np.median(p)) for r, p in zip(res, per_round)])
        lo = np.maximum(ratio - np.array([min(p) for p in per_round]), 0)
        hi = np.maximum(np.array([max(p) for p in per_round]) - ratio, 0)
        colors = [_bar_color(n, ref["name"]) for n in names]
        ax.barh(names, ratio, xerr=[lo, hi], color=colors, alpha=0.85, capsize=2)
        ax.axvline(1.0, color="black", lw=0.8)
        for y, (r, end) in enumerate(zip(res, ratio + hi)):
            label = f"{r['median'] * 1e3:.3g} ms" if r["median"] < 1 else f"{r['median']:.3g} s"
            ax.text(end, y, f"  {label}", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(ratio + hi) * 1.25)
        ax.set_title(f"{title}  (time / {ref['name']}, lower is faster)", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    when = f"{report.get('date', '')[:10]}, {report.get('rounds', '?')} rounds"
    when += ", --quick: not a result" if report.get("quick") else ""
    title = f"fastnet bench on {machine_title(report['machine'])} ({when})"
    fig.suptitle(textwrap.fill(title, 100), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)


def _write_json(report: dict[str, Any], path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def run_bench(args: Any) -> int:
    from fastnet.checkpoint import check_writable

    for path, option in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            check_writable(path, option)  # before minutes of timing
    if args.plot:
        from fastnet.plot import check_chart_path

        check_chart_path(args.plot, "--plot")
    rows = 2048 if args.quick else 60000  # (load_training_data's)
    if args.suite in ("train", "floor", "all") and getattr(args, "batch_size", 128) > rows:
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {rows} training rows")
    if args.suite == "floor" and "numba" not in [be.name for be in resolve_backends(args.backends)]:
        raise ValueError(
            "--suite floor breaks down the numba fused step: include numba in --backends"
        )
    hidden = tuple(getattr(args, "layers", None) or DEFAULT_SIZES[1:-1])
    model = ((DEFAULT_SIZES[0], *hidden, DEFAULT_SIZES[-1]), getattr(args, "batch_size", 128))
    if args.rounds < 3:
        print(f"warning: {args.rounds} round(s): a median of so few is no result (default 5)")
    report = run_suites(args.backends, args.suite, args.rounds, args.quick, args.json, model)
    if args.json:
        _write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot_report(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


__all__ = ["run_bench", "run_suites"]
