"""Reference implementation of every op, written once against ``self.xp``.

Subclasses (numba, cupy) override only the hot paths they speed up and call ``super()`` for
anything their kernels do not cover. Every op records which implementation ran
(``fastnet.backends.report``: ``record_kernels()`` blocks, and ``kernel_report``) so users and
benchmarks can see whether a fused kernel or the reference ran.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastnet.backends.fpmode import flush_to_zero
from fastnet.backends.report import note_kernel


class Act(enum.IntEnum):
    """Activation functions the fused kernels know (values are the kernels' codes)."""

    LINEAR = 0
    RELU = 1
    LEAKY_RELU = 2
    SIGMOID = 3
    TANH = 4


ACTIVATIONS = tuple(a.name.lower() for a in Act)
ACTIVATION_CODE = {a.name.lower(): a for a in Act}
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def contiguous_floats(*arrays: Any) -> bool:
    """All arrays are float32/float64 of one dtype and C-contiguous (what fused kernels take)."""
    dtype = arrays[0].dtype
    if dtype not in FLOAT_DTYPES:
        return False
    for a in arrays:
        if a.dtype != dtype or not a.flags.c_contiguous:
            return False
    return True


def binary_xent_elements(xp: Any, z: Any, t: Any, e: Any = None) -> Any:
    """``max(z, 0) - z t + log1p(exp(-|z|))`` of logits ``z`` and targets ``t`` (``e``:
    ``exp(-|z|)`` where the caller has it), as ``|z| u`` (``u``: ``1 - t`` where ``z >= 0``,
    else ``t``), 0 where ``u`` is: exact at ``z = +-inf``."""
    u = xp.where(z >= 0, 1 - t, t)
    e = xp.exp(-xp.abs(z)) if e is None else e
    with np.errstate(invalid="ignore"):  # (inf * 0: the branch where does not take)
        return xp.where(u != 0, xp.abs(z) * u, 0) + xp.log1p(e)


@dataclass
class ReluMask:
    """The ReLU bit-mask a Dense forward's GEMM may store beside its output (cuBLASLt's
    RELU_AUX_BIAS epilogue) for the layer above to apply the ReLU derivative inside its
    input-gradient GEMM; ``written``: whether this forward stored it."""

    bits: Any
    written: bool = False


@dataclass(frozen=True)
class ActGrad:
    """What a Dense layer's backward starts with, handed to the layer above to fuse into its
    input-gradient GEMM: ``dz = dx * act'(y)`` into ``dz`` and ``db = dz.sum(axis=0)`` (if
    ``db`` is not None); ``mask``, its forward's ReLU bit-mask, or None."""

    y: Any
    activation: Act
    alpha: float
    dz: Any
    db: Any
    mask: ReluMask | None = None


def activation_name(name: Any) -> Any:
    """``name`` as fastnet spells it: PyTorch's and the notebooks' capitals (``"ReLU"``,
    ``"Relu"``, ``"LeakyReLU"``) read as the lower-case names; anything else as it is."""
    if not isinstance(name, str) or name in ACTIVATION_CODE:
        return name
    key = name.lower().replace("-", "_").replace("leakyrelu", "leaky_relu")
    return key if key in ACTIVATION_CODE else name


def activation_code(name: str | None) -> Act:
    """Map an activation name (or None for linear) to its ``Act``."""
    key = "linear" if name is None else activation_name(name)
    if key not in ACTIVATION_CODE:
        hint = (
            " (the loss applies softmax: leave the last Dense linear)"
            if str(key).lower() == "softmax"
            else ""
        )
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}{hint}"
        )
    return ACTIVATION_CODE[key]


class Backend:
    """Array backend: array creation, transfers and the fused ops layers are written against.

    The base class is the NumPy reference. All ops keep the input dtype (float32 or float64).
    """

    name = "numpy"
    xp: Any = np
    #: built-in optimizer updates with state run in the CPU's flush-to-zero mode on the host
    #: (x86-64, restored after each update); False flushes the state after the update.
    #: Same results either way, except where an intermediate value would be subnormal (it
    #: is zero in this mode).
    flush_mode = True

    def __init__(self) -> None:
        self._kernel_report: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<fastnet backend {self.name!r}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickled, copied and cloned (scikit-learn's ``clone``, joblib) as its name where
        ``get_backend`` gives this class for it (the process's one instance; its modules do
        not pickle); a backend class of one's own as any object."""
        get_backend = sys.modules["fastnet.backends"].get_backend  # (the package)
        try:
            named = get_backend(self.name)
        except (ValueError, RuntimeError):  # not a name it knows, or not available here
            named = None
        if type(named) is type(self):
            return (get_backend, (self.name,))
        return object.__reduce_ex__(self, protocol)

    # ------------------------------------------------------------------ kernel reports
    @property
    def kernel_report(self) -> dict[str, str]:
        """``{op: implementation}`` of the latest ``record_kernels(backend)`` block (``fit``,
        ``evaluate``) and of what ran since outside any block."""
        return self._kernel_report

    def record_kernel(self, op: str, impl: str = "reference") -> None:
        """Note that ``impl`` ran ``op``: in ``kernel_report`` and in every ``record_kernels``
        block open in this context."""
        note_kernel(self._kernel_report, op, impl)

    # ------------------------------------------------------------------ arrays and transfers

    def is_native(self, x: Any) -> bool:
        """True if ``x`` is an array that lives where this backend computes."""
        return isinstance(x, np.ndarray)

    def dlpack_device(self) -> tuple[int, int]:
        """The DLPack ``(device_type, device_id)`` of this backend's arrays (1 = host)."""
        return (1, 0)

    def from_dlpack(self, x: Any) -> Any:
        """Adopt an array on this backend's device without copying (DLPack)."""
        return self.xp.from_dlpack(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if dtype is None or getattr(x, "dtype", None) == dtype:
            return self.xp.ascontiguousarray(x)
        with np.errstate(over="ignore"):  # (beyond the dtype's range: inf, which checks name)
            return self.xp.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    def rng(self, seed: int | None) -> Any:
        return np.random.default_rng(seed)

    def reseeded(self, rng: Any, seed: int) -> Any:
        """A generator drawing from ``seed`` (``rng``, reseeded, where that is cheaper than a
        new one; None: none yet)."""
        return self.rng(seed)

    def permutation(self, rng: Any, n: int) -> Any:
        return rng.permutation(n)

    def uniform(self, rng: Any, shape: Any, dtype: Any) -> Any:
        return rng.random(shape, dtype=dtype)

    def take_rows(self, x: Any, idx: Any, out: Any = None) -> Any:
        """Rows ``idx`` of ``x`` (into ``out``). Indices must be in range (a permutation):
        NumPy's default bounds mode would copy through a temporary buffer first."""
        if out is not None and self.xp is np:
            return x.take(idx, axis=0, out=out, mode="wrap")
        return self.xp.take(x, idx, axis=0, out=out)

    def take_rows_at(self, x: Any, order: Any, position: Any, offset: int, out: Any) -> Any:
        """``out[:] = x[order[p:p + len(out)]]`` with ``p = position[0] + offset``: a batch
        gather whose place in the epoch is read when the op runs (a 1-element int64 device
        array), so one captured graph serves every group of steps. This reference reads it
        on the host (NumPy: the device is the host); cupy reads it in its kernel."""
        start = int(position[0]) + offset
        return self.take_rows(x, order[start : start + out.shape[0]], out)

    def scale(self, a: Any, factor: float) -> None:
        """``a *= factor`` in place (capturable)."""
        self.xp.multiply(a, a.dtype.type(factor), out=a)

    def standardize(self, x: Any, offset: Any, scale: Any, out: Any) -> Any:
        """``(x - offset) / scale`` into ``out`` (``Standardize``; capturable: no allocation)."""
        xp = self.xp
        return xp.divide(xp.subtract(x, offset, out=out), scale, out=out)

    def standardize_backward(self, dy: Any, scale: Any, out: Any) -> Any:
        """``dy / scale`` into ``out``: the input gradient of ``standardize``."""
        return self.xp.divide(dy, scale, out=out)

    def allreduce(self, comm: Any, buf: Any) -> None:
        """Sum ``buf`` over the ranks of ``comm`` in place (an op, so a captured step holds it:
        NCCL on the GPU)."""
        comm.allreduce(buf)

    def cast(self, src: Any, out: Any, scale: Any = None) -> Any:
        """``out[...] = src`` in ``out``'s dtype, times ``scale[0]`` (a device scalar: the loss
        scale on the loss gradient) when given, rounded once (capturable)."""
        self.record_kernel("cast")
        out[...] = src if scale is None else src * scale[0:1]
        return out

    def unscale(self, g: Any, state: Any, checks: Any) -> None:
        """Mixed precision: ``g /= state[0]`` (the loss scale: a power of two, exact, unless
        set otherwise) and the
        count of non-finite elements of ``g`` added into ``checks[1]`` (capturable)."""
        self.record_kernel("unscale")
        xp = self.xp
        xp.multiply(g, (1.0 / state[0:1]).astype(g.dtype), out=g)
        checks[1:2] += (~xp.isfinite(g)).sum()

    def update_loss_scale(
        self, state: Any, checks: Any, growth_interval: int, growth: float, backoff: float
    ) -> None:
        """Dynamic loss scaling after a step, on the device: ``state = [scale, clean steps]``;
        a step with non-finite gradients (``checks[1] > 0``) multiplies the scale by
        ``backoff`` and restarts the count, ``growth_interval`` clean steps in a row multiply
        it by ``growth``."""
        self.record_kernel("update_loss_scale")
        xp = self.xp
        overflow = checks[1:2] > 0
        clean = xp.where(overflow, 0.0, state[1:2] + 1)
        grow = clean >= growth_interval
        factor = xp.where(overflow, backoff, xp.where(grow, growth, 1.0))
        state[0:1] *= factor
        state[1:2] = xp.where(grow, 0.0, clean)

    def advance_counter(self, counter: Any, by: int) -> None:
        """``counter[0] += by`` for a 1-element int64 device array (capturable): the epoch's
        gather position, a random stream's step."""
        counter += by

    def copy_from_host(self, dst: Any, src: np.ndarray) -> Any:
        """Copy host array ``src`` into the device array ``dst`` of the same shape; returns a
        handle whose ``synchronize()`` waits until ``src`` may be written again (None: now)."""
        dst[...] = src
        return None

    def pinned_empty(self, shape: Any, dtype: Any) -> np.ndarray:
        """A host staging array (page-locked on GPU backends)."""
        return np.empty(shape, dtype=dtype)

    def fits_on_device(self, nbytes: int) -> bool:
        """Whether a dataset of ``nbytes`` should be made resident where this backend computes."""
        return True

    def synchronize(self) -> None:
        """Block until all queued work is done (no-op on CPU backends)."""

    def device_info(self) -> str:
        return "CPU"

    def peak_memory(self) -> int | None:
        """Bytes of device memory held at the high-water mark (None where not tracked)."""
        return None

    def elapsed(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn`` takes where this backend computes (GPU backends time with events)."""
        start = time.perf_counter()
        fn()
        self.synchronize()
        return time.perf_counter() - start

    def precision_reason(self, precision: str) -> str:
        """Why float32 matmuls cannot run at ``precision`` here ("" if they can): "fp32" (IEEE
        float32, every backend) or "tf32" (TF32 tensor cores, ~1e-3 relative error: cupy)."""
        if precision == "fp32":
            return ""
        return f"precision={precision!r} needs the cupy backend; {self.name} computes in full fp32"

    def check_policy(self, policy: str) -> Any:
        """The dtype layers compute in under the precision ``policy`` ("mixed_bfloat16"/
        "mixed_float16": half-precision compute, float32 master weights, ``fastnet.mixed``),
        or an error saying why this backend cannot."""
        raise ValueError(
            f"dtype={policy!r} needs the cupy backend: {self.name} has no half-"
            "precision kernels faster than float32 (use dtype='float32')"
        )

    #: training steps per graph replay (backends with graphs): a replay runs this many
    #: steps, batch gathers included, with no host work between them
    steps_per_graph: int = 1
    #: whether the compiled step takes batches streamed from host memory (a memory-mapped
    #: .npy): a host backend's does; a captured graph reads the data resident on the device
    compiled_takes_streamed: bool = False

    def graph_capture_reason(self) -> str:
        """Why training steps cannot be captured in graphs here ("" if they can)."""
        return f"{self.name} has no compiled step (cupy: CUDA graphs; numba: one fused JIT call)"

    # ------------------------------------------------------------------ matmul and dense layers
    def matmul(self, a: Any, b: Any, out: Any = None, precision: str = "fp32") -> Any:
        """``a @ b`` (into ``out``); ``precision="tf32"`` lets a GPU use TF32 tensor cores for
        float32 (models check ``precision_reason`` first; CPU backends always compute fp32)."""
        self.record_kernel("matmul", "blas")
        if a.dtype.itemsize == 2 or b.dtype.itemsize == 2:  # half operands (mixed precision)
            return self._matmul_f32(a, b, out)
        return self.xp.matmul(a, b, out=out)

    def _matmul_f32(self, a: Any, b: Any, out: Any) -> Any:
        """``a @ b`` of half operands as cuBLAS computes it with ``CUBLAS_COMPUTE_32F``: float32
        products and sums, one rounding into ``out`` (half activations or float32 gradients)."""
        f32 = np.float32
        product = self.xp.matmul(a.astype(f32), b.astype(f32))
        if out is None:
            return product.astype(a.dtype)
        out[...] = product
        return out

    def linear(
        self,
        x: Any,
        w: Any,
        b: Any,
        activation: Act,
        alpha: float = 0.01,
        out: Any = None,
        precision: str = "fp32",
        mask: ReluMask | None = None,
    ) -> Any:
        """``act(x @ w + b)`` into ``out``; ``b`` may be None. Half operands (mixed
        precision): bias and activation on the float32 product, rounded once into ``out``,
        as cuBLASLt's epilogue does. ``mask``: where a backend's GEMM can, it stores the ReLU
        bit-mask there too (``relu_mask``; this one never does)."""
        if x.dtype.itemsize != 2 or out is None:
            return self.bias_act(self.matmul(x, w, out, precision), b, activation, alpha)
        self.record_kernel("matmul", "blas")
        z = self.xp.matmul(x.astype(np.float32), w.astype(np.float32))
        out[...] = self.bias_act(z, None if b is None else b.astype(np.float32), activation, alpha)
        return out

    def bias_act(self, z: Any, b: Any, activation: Act, alpha: float = 0.01) -> Any:
        """In place ``z = act(z + b)`` (fused hot path in subclasses)."""
        self.record_kernel("bias_act")
        if b is not None:
            z += b
        return self._activate_inplace(z, activation, alpha)

    def linear_backward(
        self,
        x: Any,
        w: Any,
        y: Any,
        dy: Any,
        activation: Act,
        alpha: float,
        dw: Any,
        db: Any,
        dx: Any = None,
        need_dx: bool = True,
        dz: Any = None,
        precision: str = "fp32",
        below: ActGrad | None = None,
    ) -> Any:
        """Gradients of ``y = act(x @ w + b)``: writes ``dw``, ``db`` (if not None), returns dx,
        or with ``below`` (the Dense layer under this one) its ``dz`` (and writes its ``db``).
        ``dz`` is an optional scratch buffer shaped like ``dy``."""
        dz = self.weight_gradients(x, y, dy, activation, alpha, dw, db, dz, precision)
        if not need_dx:
            return None
        return self.input_gradient(dz, w, dx, precision, below)

    def weight_gradients(
        self,
        x: Any,
        y: Any,
        dy: Any,
        activation: Act,
        alpha: float,
        dw: Any,
        db: Any,
        dz: Any = None,
        precision: str = "fp32",
    ) -> Any:
        """``dz = dy * act'(y)``, ``db`` (if not None) and ``dw = x.T @ dz``; returns dz (``dy``
        itself where there is nothing to compute: linear, no bias)."""
        if activation == Act.LINEAR and db is not None:
            if self.bias_in_weight_gemm(x, dy, dw, db, precision):
                return dy  # dw and db from one GEMM
        if activation == Act.LINEAR and db is None:
            dz = dy
        else:
            dz = self.act_backward_bias(y, dy, activation, alpha, dz, db)
        self.matmul(x.T, dz, dw, precision)
        return dz

    def bias_in_weight_gemm(self, x: Any, dz: Any, dw: Any, db: Any, precision: str) -> bool:
        """``dw = x.T @ dz`` and ``db = dz.sum(axis=0)`` in one GEMM (its epilogue); False:
        nothing done, this backend has no such GEMM here."""
        return False

    def input_gradient(
        self, dz: Any, w: Any, dx: Any, precision: str = "fp32", below: ActGrad | None = None
    ) -> Any:
        """``dx = dz @ w.T``; with ``below``, carried on through the lower layer's activation
        derivative and bias gradient (``below.dz``, returned)."""
        dx = self.matmul(dz, w.T, dx, precision)
        if below is None:
            return dx
        return self.act_backward_bias(
            below.y, dx, below.activation, below.alpha, below.dz, below.db
        )

    def relu_mask(self, rows: int, units: int, dtype: Any, precision: str) -> int:
        """Bytes of the ReLU bit-mask (``ReluMask``) a Dense forward of ``rows`` x ``units``
        should store for the layer above's input-gradient GEMM; 0: this backend has no such
        GEMM (the derivative is computed from the output)."""
        return 0

    def act_backward_bias(
        self, y: Any, dy: Any, activation: Act, alpha: float, dz: Any = None, db: Any = None
    ) -> Any:
        """``dz = dy * act'(y)`` and, if ``db`` is given, ``db = dz.sum(axis=0)``; returns dz."""
        self.record_kernel("act_backward_bias")
        if activation == Act.RELU and db is not None and self.xp is np:
            dz, on = self._relu_times_mask(y, dy, dz)
            dz.sum(axis=0, dtype=db.dtype, out=db)
            if not np.isfinite(db).all():  # (the mask's inf * 0 = NaN, the select's 0 wanted)
                np.copyto(dz, 0, where=~on)
                dz.sum(axis=0, dtype=db.dtype, out=db)
            return dz
        dz = self.activation_backward(y, dy, activation, alpha, out=dz)
        if db is not None:  # in db's dtype: float32 for half dz (mixed precision)
            dz.sum(axis=0, dtype=db.dtype, out=db)
        return dz

    def _relu_times_mask(self, y: Any, dy: Any, out: Any) -> tuple[Any, Any]:
        """``(dy * (y > 0), y > 0)``: ReLU's gradient where ``dy`` is finite (one pass; the
        select's ``copyto(..., where=)`` takes 10x its time on NumPy)."""
        on = y > 0
        return self.xp.multiply(dy, on, out=out), on

    # ------------------------------------------------------------------ activations
    def _activate_inplace(self, z: Any, activation: Act, alpha: float) -> Any:
        xp = self.xp
        if activation == Act.LINEAR:
            return z
        if activation == Act.RELU:
            return xp.maximum(z, 0, out=z)
        if activation == Act.LEAKY_RELU:
            return xp.multiply(z, xp.where(z > 0, 1, alpha).astype(z.dtype), out=z)
        if activation == Act.SIGMOID:
            e = xp.exp(-xp.abs(z))
            numerator = xp.where(z >= 0, 1, e).astype(z.dtype)
            return xp.divide(numerator, 1 + e, out=z)
        if activation == Act.TANH:
            return xp.tanh(z, out=z)
        raise ValueError(f"unknown activation code {activation}")

    def activation(self, x: Any, activation: Act, alpha: float = 0.01, out: Any = None) -> Any:
        self.record_kernel("activation")
        if out is None:
            out = self.xp.empty_like(x)
        out[...] = x
        return self._activate_inplace(out, activation, alpha)

    def activation_backward(
        self, y: Any, dy: Any, activation: Act, alpha: float = 0.01, out: Any = None
    ) -> Any:
        """Upstream gradient times the activation derivative, computed from the output ``y``;
        ReLU's a select (0 where the unit is off, for an infinite or NaN ``dy`` too: cuBLASLt's
        DRELU epilogue, PyTorch's and JAX's gradient; ``dy * mask`` would give NaN there)."""
        self.record_kernel("activation_backward")
        xp = self.xp
        if activation == Act.RELU:
            out, on = self._relu_times_mask(y, dy, out)
            if xp is not np or out.size and np.isnan(np.minimum.reduce(out, axis=None)):  # (inf*0
                xp.copyto(out, 0, where=~on)  # or NaN * 0: NaN; a device's: always, no sync)
            return out
        if activation == Act.LINEAR:
            deriv = None
        elif activation == Act.LEAKY_RELU:
            deriv = xp.where(y > 0, 1, alpha).astype(y.dtype)
        elif activation == Act.SIGMOID:
            deriv = y * (1 - y)
        elif activation == Act.TANH:
            deriv = 1 - y * y
        else:
            raise ValueError(f"unknown activation code {activation}")
        if deriv is None:
            if out is None:
                return dy
            out[...] = dy
            return out
        return xp.multiply(dy, deriv, out=out)

    def all_finite(self, x: Any) -> bool:
        """Whether no element of ``x`` is NaN or infinite (input checks; one reduction)."""
        return bool(self.xp.isfinite(x).all())

    def training(self) -> contextlib.AbstractContextManager:
        """A whole ``fit`` on this backend (a GPU's: one thread at a time; a CPU's: any)."""
        return contextlib.nullcontext()

    def device_scope(self) -> contextlib.AbstractContextManager:
        """This backend's device made current for a block (a model's fit, evaluation and
        predictions: kernels launch on the current GPU; nothing to do on a CPU)."""
        return contextlib.nullcontext()

    @property
    def fuses_inference(self) -> bool:
        """Whether ``infer`` computes any plan (else predictions always run layer by layer)."""
        return type(self).infer is not Backend.infer

    #: rows per chunk of fused inference by default (0: as layer by layer): a backend whose
    #: ``infer`` computes large chunks in bounded blocks (numba's) says how many
    infer_rows = 0

    def infer(
        self, plan: Any, x: Any, probabilities: bool, validate: Callable[[], None] | None = None
    ) -> Any:
        """Outputs of a model's ``StepPlan`` on ``x`` (with ``probabilities``, the loss's
        predictions of them: ``plan.loss.predictions``) in a new array, or None where this
        backend has no fused inference for the plan (the layers and the loss's
        ``predict_output`` then run one by one; nothing called). ``validate``, which raises
        on bad input, is called where the first layer's products ``x @ W`` are not all
        finite: a NaN or infinite input makes its row's products so, and the inputs are
        checked without a pass over them (the caller checks them itself where None)."""
        return None

    def softmax(self, x: Any) -> Any:
        self.record_kernel("softmax")
        xp = self.xp
        e = xp.exp(x - x.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e

    # ------------------------------------------------------------------ dropout and batch norm
    def dropout(
        self, x: Any, stream: Any, threshold: int, scale: float, out: Any, mask: Any
    ) -> Any:
        """Inverted dropout drawn from the counter-based ``stream`` (the int64 device array
        ``[key, step]``, ``fastnet.backends.counter_rng``): element ``j`` (C order) is kept iff
        its random bits are ``>= threshold``; ``mask`` gets ``scale`` or 0, ``out = x * mask``.
        The step is read on the device; the caller advances it (``advance_counter``)."""
        from fastnet.backends.counter_rng import numpy_stream_bits, stream_bits

        xp = self.xp
        bits = numpy_stream_bits(stream, x.size) if xp is np else stream_bits(xp, stream, x.size)
        keep = bits.reshape(x.shape) >= threshold
        xp.multiply(keep, x.dtype.type(scale), out=mask)
        return xp.multiply(x, mask, out=out)

    def dropout_backward(self, dy: Any, mask: Any, out: Any) -> Any:
        """``out = dy * mask`` (the mask ``dropout`` wrote)."""
        return self.xp.multiply(dy, mask, out=out)

    def batchnorm(
        self,
        x: Any,
        gamma: Any,
        beta: Any,
        running: tuple[Any, Any],
        momentum: float,
        eps: float,
        training: bool,
        out: tuple[Any, Any, Any],
        comm: Any = None,
    ) -> Any:
        """Batch normalization of ``x`` (rows: samples) into ``out = (y, xhat, inv_std)``:
        in training the batch statistics, which also update ``running = (mean, var)`` in place
        (``momentum``; unbiased variance); else the running statistics. With ``comm`` (a
        synchronized BatchNorm in data-parallel training) the statistics are the global
        batch's: every rank's rows, summed over the ranks (two all-reduces)."""
        xp = self.xp
        y, xhat, inv_std = out
        running_mean, running_var = running
        x = x.astype(np.float32) if x.dtype.itemsize == 2 else x  # half: statistics in fp32
        if training:
            if comm is None:
                n, mean, var = x.shape[0], x.mean(axis=0), x.var(axis=0)
            else:
                n, mean, var = self._global_moments(x, comm)
            running_mean *= momentum
            running_mean += (1 - momentum) * mean
            running_var *= momentum
            running_var += (1 - momentum) * var * (n / (n - 1))
        else:
            mean, var = running_mean, running_var
        xp.divide(1, xp.sqrt(var + eps), out=inv_std)
        if xhat.dtype.itemsize == 2:  # half: float32 math, one rounding each (the kernel: an FMA)
            h = (x - mean) * inv_std
            xhat[...] = h
            y[...] = h * gamma.astype(np.float32) + beta.astype(np.float32)
            return y
        xp.multiply(xp.subtract(x, mean, out=xhat), inv_std, out=xhat)
        return xp.add(xp.multiply(xhat, gamma, out=y), beta, out=y)

    def _global_moments(self, x: Any, comm: Any) -> tuple[Any, Any, Any]:
        """Rows, mean and (biased) variance of the rows of ``x`` on every rank of ``comm``
        (float64 sums; the variance from the global mean: two all-reduces)."""
        xp, d = self.xp, x.shape[1]
        sums = xp.zeros((d + 1,), np.float64)
        x.sum(axis=0, dtype=np.float64, out=sums[:d])
        sums[d] = x.shape[0]
        self.allreduce(comm, sums)
        n = sums[d:]
        mean = sums[:d] / xp.maximum(n, 1)
        squares = ((x - mean) ** 2).sum(axis=0, dtype=np.float64)
        self.allreduce(comm, squares)
        return n, mean.astype(x.dtype), (squares / xp.maximum(n, 1)).astype(x.dtype)

    def batchnorm_backward(
        self,
        dy: Any,
        xhat: Any,
        inv_std: Any,
        gamma: Any,
        grads: tuple[Any, Any],
        training: bool,
        dx: Any = None,
        comm: Any = None,
    ) -> Any:
        """Gradients of ``batchnorm``: ``grads = (dgamma, dbeta)`` written (this rank's rows:
        data parallelism all-reduces them with the other gradients), and ``dx`` (when given)
        for batch statistics (``training``) or fixed running ones. With ``comm`` the batch
        statistics were the global batch's: one all-reduce (run with or without ``dx``, so
        that every rank takes part) sums what ``dx`` needs over the ranks."""
        xp = self.xp
        dgamma, dbeta = grads
        if dy.dtype.itemsize == 2:  # half (mixed precision): reduce and combine in float32
            dy, xhat, gamma = (a.astype(np.float32) for a in (dy, xhat, gamma))
        dy.sum(axis=0, out=dbeta)
        (dy * xhat).sum(axis=0, out=dgamma)
        if comm is not None and training:
            return self._global_dx(dy * gamma, xhat, inv_std, comm, dx)
        if dx is None:
            return None
        if not training:  # eval mode: a fixed affine map of x
            return xp.multiply(dy, gamma * inv_std, out=dx)
        n = dy.shape[0]
        dxhat = dy * gamma
        total = n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)
        return xp.multiply(inv_std / n, total, out=dx)

    def _global_dx(self, dxhat: Any, xhat: Any, inv_std: Any, comm: Any, dx: Any) -> Any:
        """``dx`` of a synchronized batch norm on this rank's ``n`` rows. Each rank's ``dy`` is
        the gradient of the mean loss over its own rows, ``N/n`` times the global one there;
        with ``U``, ``V`` the sums over the ranks of ``n * sum(dxhat)`` and
        ``n * sum(dxhat * xhat)``: ``dx = inv_std * (dxhat - (U + xhat * V) / (N * n))``
        (one process: the usual formula)."""
        xp, n, d = self.xp, dxhat.shape[0], dxhat.shape[1]
        sums = xp.zeros((2 * d + 1,), np.float64)
        dxhat.sum(axis=0, dtype=np.float64, out=sums[:d])
        (dxhat * xhat).sum(axis=0, dtype=np.float64, out=sums[d : 2 * d])
        sums[:-1] *= n
        sums[-1] = n
        self.allreduce(comm, sums)
        if dx is None or n == 0:
            return dx
        scale = sums[-1:] * n  # combined in dxhat's dtype (float32 for half), rounded once
        u, v = (sums[:d] / scale).astype(dxhat.dtype), (sums[d : 2 * d] / scale).astype(dxhat.dtype)
        return xp.multiply(inv_std, dxhat - u - xhat * v, out=dx)

    # ------------------------------------------------------------------ losses
    def softmax_xent(
        self,
        logits: Any,
        labels: Any,
        dlogits: Any = None,
        loss_out: Any = None,
        loss_scale: float | None = None,
        weights: Any = None,
        label_smoothing: float = 0.0,
        hits: Any = None,
    ) -> tuple[Any, Any]:
        """Mean softmax cross-entropy and its exact gradient w.r.t. the logits, stable.

        ``labels`` are integer class indices (shape ``(n,)``) or non-negative targets (shape
        ``(n, k)``, one-hot or soft; rows need not sum to 1: the gradient is
        ``softmax * sum(t) - t``). ``label_smoothing`` ``e`` mixes each target with the uniform
        distribution: ``(1 - e) t + e sum(t) / k``. ``weights`` (shape ``(n,)``) weight each
        row's loss and gradient; the mean stays over ``n`` rows (Keras's normalisation).
        Returns ``(loss, dlogits)`` with the loss on the device. With ``loss_out`` (a 0-d
        device array), ``loss_scale`` (default ``1/n``) times the summed row losses is added
        into it and it is returned instead: an accumulator needing no host sync. With ``hits``
        (a 1-element float64 device array) the correct count is added into it as
        ``count_correct`` does (the CUDA kernel does both in one launch).
        """
        if hits is not None:
            self.count_correct(logits, labels, hits)
        self.record_kernel("softmax_xent")
        xp, (n, k) = self.xp, logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        if dlogits is None or dlogits.shape != logits.shape:
            dlogits = xp.empty_like(logits)
        xp.divide(e, s, out=dlogits)
        log_s = xp.log(s)
        eps = float(label_smoothing)
        if labels.ndim == 1:
            rows = xp.arange(n)
            row_loss = log_s[:, 0] - shifted[rows, labels]
            if eps:
                row_loss = (1 - eps) * row_loss + eps * (log_s[:, 0] - shifted.mean(axis=1))
                dlogits -= eps / k
            dlogits[rows, labels] -= 1 - eps
        else:
            targets = labels.astype(logits.dtype, copy=False)
            if eps:
                targets = (1 - eps) * targets + eps / k * targets.sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore"):  # (0 * -inf: the branch where does not take)
                row_loss = -xp.where(targets != 0, targets * (shifted - log_s), 0).sum(axis=1)
            dlogits *= targets.sum(axis=1, keepdims=True)
            dlogits -= targets
        if weights is not None:
            row_loss = row_loss * weights
            dlogits *= weights.reshape(-1, 1).astype(logits.dtype, copy=False)
        dlogits /= n
        total = row_loss.sum(dtype=xp.float64)  # (as numba's and the other losses' sums)
        if loss_out is None:
            return (total / n).astype(logits.dtype), dlogits
        loss_out += (1.0 / n if loss_scale is None else loss_scale) * total
        return loss_out, dlogits

    def sigmoid_bce(
        self, logits: Any, targets: Any, weights: Any, totals: Any, dlogits: Any = None
    ) -> Any:
        """Sigmoid binary cross-entropy of ``logits`` (n, k) and ``targets`` in [0, 1] of their
        shape ((n,) for one column), rows weighted by ``weights`` (n,) or None, as the training
        step accumulates it: the gradient of the element mean, ``(sigmoid(z) - t) w / (n k)``,
        written into ``dlogits`` (allocated when None or of another shape) and returned; the
        rows' weighted mean losses ``w mean_k(max(z, 0) - z t + log1p(exp(-|z|)))`` added into
        ``totals[0]`` and the outputs with ``z > 0`` as ``t > 0.5``, over k, into ``totals[1]``
        (``totals``: a float64 device array; nothing leaves the device)."""
        self.record_kernel("sigmoid_bce")
        xp = self.xp
        t = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        t = t.astype(logits.dtype, copy=False)
        e = xp.exp(-xp.abs(logits))
        elements = binary_xent_elements(xp, logits, t, e)
        if dlogits is None or dlogits.shape != logits.shape or dlogits.dtype != logits.dtype:
            dlogits = xp.empty_like(logits)
        xp.subtract(xp.where(logits >= 0, 1 / (1 + e), e / (1 + e)), t, out=dlogits)
        dlogits /= logits.size
        if weights is not None:
            w = weights.reshape(-1, 1).astype(logits.dtype, copy=False)
            elements = elements * w
            dlogits *= w
        k = logits.shape[1]
        totals[0:1] += elements.sum(dtype=np.float64) / k
        totals[1:2] += ((logits > 0) == (t > 0.5)).sum() / k
        return dlogits

    def loss_kernel_arguments(
        self, outputs: Any, targets: Any, weights: Any, totals: Any, grad: Any
    ) -> tuple[Any, Any, Any, Any] | None:
        """``(outputs, targets, weights or None, grad)`` as the fused elementwise loss kernels
        (sigmoid BCE, squared error) take them: C-contiguous, in the outputs' float dtype,
        targets of their shape (one column may come flat), ``grad`` reused where it fits;
        None where they cannot (then the reference runs): other shapes or dtypes, ``totals``
        not a C-contiguous float64 pair."""
        xp = self.xp
        t = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        dtype = outputs.dtype
        if not (
            outputs.ndim == 2
            and dtype in FLOAT_DTYPES
            and t.shape == outputs.shape
            and (weights is None or weights.shape == outputs.shape[:1])
            and totals.dtype == np.float64
            and totals.size >= 2
            and totals.flags.c_contiguous
        ):
            return None
        outputs, t = xp.ascontiguousarray(outputs), xp.ascontiguousarray(t, dtype=dtype)
        if weights is not None:
            weights = xp.ascontiguousarray(weights, dtype=dtype)
        if not (
            grad is not None and grad.shape == outputs.shape and contiguous_floats(outputs, grad)
        ):
            grad = xp.empty(outputs.shape, dtype)
        return outputs, t, weights, grad

    def squared_error(
        self,
        outputs: Any,
        targets: Any,
        weights: Any,
        totals: Any,
        scale: float = 1.0,
        dout: Any = None,
    ) -> Any:
        """``scale`` times the squared error of ``outputs`` (n, k) and ``targets`` of their shape
        ((n,) for one column), rows weighted by ``weights`` (n,) or None, as the training step
        accumulates it: the gradient of the element mean, ``2 scale (y - t) w / (n k)``, written
        into ``dout`` (allocated when None or of another shape) and returned; the rows' summed
        ``scale w mean_k((y - t)**2)`` added into ``totals[0]`` (a float64 device array)."""
        self.record_kernel("squared_error")
        xp = self.xp
        t = targets.reshape(outputs.shape) if targets.ndim == 1 else targets
        diff = outputs - t.astype(outputs.dtype, copy=False)
        if dout is None or dout.shape != outputs.shape or dout.dtype != outputs.dtype:
            dout = xp.empty_like(outputs)
        xp.multiply(diff, 2.0 * scale / diff.size, out=dout)
        squares = diff * diff
        if weights is not None:
            w = weights.reshape(-1, 1).astype(outputs.dtype, copy=False)
            squares = squares * w
            dout *= w
        totals[0:1] += squares.sum(dtype=np.float64) * (scale / outputs.shape[1])
        return dout

    def count_correct(self, logits: Any, labels: Any, out: Any = None) -> Any:
        """Number of rows whose argmax equals the label (integer labels, or the argmax of
        one-hot/soft target rows); stays on the device, added into ``out`` (a 1-element
        device accumulator) when given."""
        if labels.ndim == 2:
            labels = labels.argmax(axis=1)
        hits = (logits.argmax(axis=1) == labels).sum()
        if out is None:
            return hits
        out += hits
        return out

    # ------------------------------------------------------------------ optimizer updates
    def fill(self, a: Any, value: float) -> None:
        """``a[...] = value`` on the device (capturable)."""
        a.fill(value)

    def sum_squares(self, g: Any, out: Any) -> None:
        """Add ``sum(g**2)`` (in float64) into the 1-element device array ``out``."""
        out += (g.astype(self.xp.float64) ** 2).sum()

    def advance_scalars(self, s: Any, checks: Any, constants: tuple) -> None:
        """Advance a parameter group's device scalars (``fastnet.parameter``: ``LR``, ``T``,
        ``STEP``, ``EPS``, ``SHRINK``, ``GSCALE``, ``SKIP``) for the next update, on the
        device: ``t += 1``; the step size and eps (Adam's bias correction, Kingma & Ba sec. 2,
        when ``bias_correction``); the decoupled-decay shrink ``1 - lr * wd``; the global-norm
        clip scale ``min(1, clip_norm / (sqrt(checks[0]) + 1e-6))``. ``checks`` is the arena's
        ``[squared global gradient norm, non-finite gradient count]``: a count above 0 (mixed
        precision's overflow) sets ``SKIP`` and changes nothing else, and ``update`` then
        changes nothing. ``constants`` = ``(eps, beta1, beta2, bias_correction, decoupled_wd,
        clip_norm)`` (0 for what does not apply)."""
        self.record_kernel("advance_scalars")
        xp = self.xp
        eps, beta1, beta2, bias_correction, decoupled_wd, clip_norm = constants
        before = s.copy()
        s[1:2] += 1
        t, lr = s[1:2], s[0:1]
        if bias_correction:
            correction = xp.sqrt(1 - beta2**t)
            s[2:3] = lr * correction / (1 - beta1**t)
            s[3:4] = eps if bias_correction == 2 else eps * correction  # 2: eps hat
        else:
            s[2:3] = lr
            s[3:4] = eps
        s[4:5] = 1 - lr * decoupled_wd
        s[5:6] = xp.minimum(1.0, clip_norm / (xp.sqrt(checks[0:1]) + 1e-6)) if clip_norm else 1.0
        skip = checks[1:2] > 0
        s[...] = xp.where(skip, before, s)
        s[6:7] = skip

    def update(
        self,
        rule: Any,
        p: Any,
        g: Any,
        slots: tuple,
        s: Any,
        constants: tuple,
        n_decay: int,
        wd: float,
        clip_value: float | None,
        compute: Any = None,
    ) -> None:
        """One step of update ``rule`` over a flat parameter group ``p`` and its state
        ``slots``, in place. The gradient is first multiplied by the device clip scale,
        clipped to ``[-clip_value, clip_value]``, and gets L2 decay ``wd * p`` on the leading
        ``n_decay`` elements, which are also shrunk by the device ``SHRINK`` (decoupled decay).
        Step size and eps come from the device scalars ``s``; ``constants`` are the rule's
        (``rule.constants()``). ``compute`` (mixed precision: the group's half copy) gets the
        new parameters, rounded, in the same pass. Nothing changes when ``s[SKIP]`` is set
        (``advance_scalars``: a mixed-precision step whose gradients overflowed). Slot values
        below the dtype's smallest normal number are stored as zero (subnormal state makes
        every later update slow on x86 CPUs: 25x for 20% subnormal Adam slots on an Intel
        Xeon): on the host, built-in rules with state run in the CPU's flush-to-zero mode
        (``fpmode``); other rules and devices flush their slots after the update.
        Backends with fused kernels override this and fall back here for what they lack."""
        self.record_kernel(f"update_{rule.kernel or type(rule).__name__}")
        xp = self.xp
        if xp is np and s[6]:  # SKIP (the host's memory: read it)
            return
        kept = None if xp is np else [a.copy() for a in (p, *slots)]  # restored on a device SKIP
        sc = s.astype(p.dtype)  # the step's scalars in the parameters' dtype
        step, eps, shrink, gscale = sc[2], sc[3], sc[4], sc[5]
        nd = min(int(n_decay), p.shape[0])
        grads = g
        if rule.clip_norm:  # the clip scale is exactly 1 without clip_norm
            g = g * gscale
        if clip_value is not None:
            g = xp.clip(g, -clip_value, clip_value)
        if wd:
            g = g.copy() if g is grads else g
            g[:nd] += wd * p[:nd]
        if rule.decoupled and rule.weight_decay:  # the shrink is exactly 1 otherwise
            p[:nd] *= shrink
        fpmode = rule.kernel and rule.slots and self.flush_mode  # (SGD: no state, as numba's)
        if fpmode and xp is np and flush_to_zero.available:
            flush_to_zero.run(rule.reference, xp, p, g, slots, step, eps, constants)
        else:
            rule.reference(xp, p, g, slots, step, eps, constants)
            self._flush_subnormal(slots, np.finfo(p.dtype).tiny)
        if kept is not None:
            for a, before in zip((p, *slots), kept, strict=True):
                xp.copyto(a, before, where=s[6:7] != 0)
        if compute is not None:
            self.cast(p, compute)

    def _flush_subnormal(self, arrays: tuple, tiny: float) -> None:
        """Set elements with magnitude below ``tiny`` (the smallest normal number) to zero;
        NaN and infinities stay. NumPy multiplies by the mask ``|a| >= tiny``: no branch per
        hit; a negative subnormal becomes -0.0, as under the CPU's flush-to-zero mode (numba's
        explicit selects store +0.0: only the sign of a zero can differ).
        Default model, Fashion-MNIST, AMD EPYC: 0.08 s an epoch, against 0.16 s for a masked
        ``copyto`` and 0.22 s for ``putmask`` (7% of Adam's first moment is zero)."""
        xp = self.xp
        for a in arrays:
            if xp is np:
                np.multiply(a, abs(a) >= tiny, out=a)
            else:  # no host read of device values
                xp.putmask(a, abs(a) < tiny, 0)

    # ------------------------------------------------------------------ compiled steps
    #: things eager steps met that a captured step could not do (cupy: a half GEMM without a
    #: cuBLASLt algorithm), counted, the last one named: a compiled step checks the count
    #: around its eager warm-up and stays eager, saying why, if it grew
    obstacles_seen = 0
    last_obstacle = ""

    def step_stream(self) -> contextlib.AbstractContextManager:
        """Context in which a training loop issues all its work (permutation, batch gathers,
        learning-rate writes, steps and replays) on one stream, in order. CPU: no streams."""
        return contextlib.nullcontext()

    def capture(self, fn: Callable[[], Any]) -> Any:
        """Capture the device work of ``fn()`` (which must not allocate or read values back)
        into a graph whose ``replay()`` re-issues it: arrays by address, host values as they
        were at capture. Only backends whose ``graph_capture_reason()`` is "" implement it."""
        raise NotImplementedError(self.graph_capture_reason())

    def plan_capture_reason(self, plan: Any) -> str:
        """Why a step with this ``StepPlan`` cannot be captured here ("" if it can): this
        backend's graphs, then the plan's layers and loss (every captured step asks this)."""
        return self.graph_capture_reason() or plan.capture_reason()

    def compile_step(self, model: Any, batch_size: int, spec: Any) -> tuple[Any, str]:
        """A compiled training step for ``model`` at ``batch_size`` with batches described by
        ``spec`` (``fastnet.training.BatchSpec``), or ``(None, reason)``.
        The default captures the model's own step function in a graph (``capture``) when this
        backend has graphs and the model's step plan is capturable; numba overrides it."""
        reason = self.plan_capture_reason(model.step_plan())
        if reason:
            return None, reason
        from fastnet.backends.graph_step import GraphedStep

        step = GraphedStep(model, batch_size, spec, self.steps_per_graph)
        return step, step.description
