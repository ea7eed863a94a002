"""Contestants that fastnet is measured against: a plain book-style NumPy MLP (Affine / ReLU /
SoftmaxWithLoss classes, as in the notebooks, with their bugs fixed), the step's matmuls alone
(the physical floor), and PyTorch when it is installed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Affine:
    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W, self.b = W, b

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class Relu:
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout[self.mask] = 0
        return dout


class SoftmaxWithLoss:
    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        self.t = t
        e = np.exp(x - x.max(axis=1, keepdims=True))
        self.y = e / e.sum(axis=1, keepdims=True)
        n = len(t)
        return float(-np.log(self.y[np.arange(n), t] + 1e-7).mean())

    def backward(self) -> np.ndarray:
        n = len(self.t)
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx / n


class BookMLP:
    """The notebooks' layered network with a book-style Adam, float32 throughout."""

    def __init__(self, sizes: Sequence[int], lr: float = 1e-3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.layers: list[Any] = []
        self.affines: list[Affine] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            W = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)).astype(np.float32)
            affine = Affine(W, np.zeros(fan_out, dtype=np.float32))
            self.affines.append(affine)
            self.layers.append(affine)
            if i < len(sizes) - 2:
                self.layers.append(Relu())
        self.last = SoftmaxWithLoss()
        self.lr, self.beta1, self.beta2, self.t = lr, 0.9, 0.999, 0
        self.m = [[np.zeros_like(a.W), np.zeros_like(a.b)] for a in self.affines]
        self.v = [[np.zeros_like(a.W), np.zeros_like(a.b)] for a in self.affines]

    def step(self, x: np.ndarray, t: np.ndarray) -> float:
        for layer in self.layers:
            x = layer.forward(x)
        loss = self.last.forward(x, t)
        dout = self.last.backward()
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        self.t += 1
        lr_t = self.lr * np.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)
        for a, m, v in zip(self.affines, self.m, self.v):
            for k, (p, g) in enumerate(((a.W, a.dW), (a.b, a.db))):
                m[k] += (1 - self.beta1) * (g - m[k])
                v[k] += (1 - self.beta2) * (g * g - v[k])
                p -= np.float32(lr_t) * m[k] / (np.sqrt(v[k]) + np.float32(1e-7))
        return loss

    def epoch(
        self, X: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator
    ) -> float:
        """One shuffled epoch; its mean training loss per row."""
        order, total = rng.permutation(len(X)), 0.0
        for lo in range(0, len(X), batch_size):
            idx = order[lo : lo + batch_size]
            total += self.step(X[idx], y[idx]) * len(idx)
        return total / len(X)


def matmul_only_epoch(
    xp: Any,
    sizes: Sequence[int],
    n: int,
    batch_size: int,
    dtype: Any,
    seed: int = 0,
    matmul: Any = None,
) -> Any:
    """A function doing exactly the matmuls of one training epoch (forward, weight gradients,
    input gradients except the first layer's) into preallocated buffers: the floor.
    ``matmul(a, b, out)`` defaults to ``xp.matmul``; the numba floor passes the numba backend's
    (``numba_blas.gemm``: NumPy's OpenBLAS, called from compiled code)."""
    if matmul is None:

        def matmul(a: Any, b: Any, out: Any) -> None:
            xp.matmul(a, b, out=out)

    rng = np.random.default_rng(seed)
    Ws = [
        xp.asarray(rng.standard_normal((a, b)).astype(dtype)) for a, b in zip(sizes[:-1], sizes[1:])
    ]
    x = xp.asarray(rng.standard_normal((batch_size, sizes[0])).astype(dtype))
    hs = [xp.empty((batch_size, s), dtype=dtype) for s in sizes[1:]]
    dWs = [xp.empty_like(W) for W in Ws]
    dxs = [xp.empty((batch_size, s), dtype=dtype) for s in sizes[:-1]]
    steps = -(-n // batch_size)

    def run() -> None:
        for _ in range(steps):
            inp = x
            for W, h in zip(Ws, hs):
                matmul(inp, W, h)
                inp = h
            for i in range(len(Ws) - 1, -1, -1):
                a = x if i == 0 else hs[i - 1]
                matmul(a.T, hs[i], dWs[i])
                if i > 0:
                    matmul(hs[i], Ws[i].T, dxs[i])

    return run


def torch_mlp_epoch(
    sizes: Sequence[int],
    X: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    device: str = "cpu",
    lr: float = 1e-3,
    seed: int = 0,
    precision: str = "fp32",
) -> Any:
    """One-epoch closure for the same MLP in PyTorch eager (tensor-indexed batches, Adam);
    ``precision="tf32"`` lets CUDA matmuls use TF32 while the epoch runs."""
    import torch

    model, opt, loss_fn, Xt, yt, gen = _torch_setup(sizes, X, y, device, lr, seed, False)

    def run() -> float:
        """The epoch; its mean training loss per row (summed on the device, read once)."""
        with _torch_precision(precision):
            order = torch.randperm(len(Xt), device=device, generator=gen)
            sums = []
            for lo in range(0, len(Xt), batch_size):
                idx = order[lo : lo + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sums.append(loss.detach() * len(idx))
            total = float(torch.stack(sums).sum()) / len(Xt)  # (synchronizes the device)
        return total

    return run


def _torch_setup(
    sizes: Sequence[int],
    X: np.ndarray,
    y: np.ndarray,
    device: str,
    lr: float,
    seed: int,
    capturable: bool,
) -> tuple:
    import torch

    torch.manual_seed(seed)
    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=capturable)
    Xt, yt = torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    return model, opt, torch.nn.CrossEntropyLoss(), Xt, yt, gen


class _torch_precision:
    """Sets ``torch.backends.cuda.matmul.allow_tf32`` for a block and restores it."""

    def __init__(self, precision: str) -> None:
        self.tf32 = precision == "tf32"

    def __enter__(self) -> None:
        import torch

        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = self.saved


def torch_autocast_step(sizes: Sequence[int], batch_size: int, lr: float = 1e-3) -> Any:
    """PyTorch's mixed-precision recipe for one training step on a fixed batch: bf16
    ``torch.autocast`` (float32 weights, bf16 matmuls) and the fused Adam kernel."""
    import torch

    rng = np.random.default_rng(0)
    X = rng.random((batch_size, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch_size)
    model, _, loss_fn, Xt, yt, _ = _torch_setup(sizes, X, y, "cuda", lr, 0, False)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()

    return run


def torch_graph_epoch(
    sizes: Sequence[int],
    X: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    precision: str = "fp32",
) -> Any:
    """PyTorch's strongest GPU recipe for a small MLP: the whole step (forward, loss, backward,
    capturable Adam) captured once in a CUDA graph (``torch.cuda.graph``, after warm-up on a
    side stream) and replayed per full batch; each batch is gathered into the static input
    tensors by ``index_select`` before the replay."""
    import torch

    model, opt, loss_fn, Xt, yt, gen = _torch_setup(sizes, X, y, "cuda", lr, seed, True)
    static_x = Xt[:batch_size].clone()
    static_y = yt[:batch_size].clone()
    graph = torch.cuda.CUDAGraph()
    with _torch_precision(precision):  # the captured GEMMs keep the precision of capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(static_x), static_y).backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss_fn(model(static_x), static_y).backward()
            opt.step()

    def run() -> None:
        order = torch.randperm(len(Xt), device="cuda", generator=gen)
        for lo in range(0, len(Xt) - batch_size + 1, batch_size):
            idx = order[lo : lo + batch_size]
            torch.index_select(Xt, 0, idx, out=static_x)
            torch.index_select(yt, 0, idx, out=static_y)
            graph.replay()
        torch.cuda.synchronize()

    return run


def sklearn_mlp_epoch(
    sizes: Sequence[int],
    X: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
) -> Any:
    """One-epoch closure for scikit-learn's MLPClassifier (Adam, same layers and batch size)."""
    import warnings

    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=tuple(sizes[1:-1]),
        solver="adam",
        learning_rate_init=lr,
        batch_size=batch_size,
        max_iter=1,
        shuffle=True,
        random_state=seed,
        alpha=0.0,
    )
    classes = np.arange(sizes[-1])

    def run() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(X, y, classes=classes)
        return float(clf.loss_)  # (the epoch's mean loss, its L2 term 0 with alpha=0)

    return run
