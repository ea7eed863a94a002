"""The CuPy backend: arrays on an NVIDIA GPU, cuBLAS matmuls, fused CUDA kernels.

Kernels live in ``fastnet.kernels.cupy_gpu`` (compiled lazily, memoized). Data given as NumPy is
copied to the device once; ``to_numpy`` copies results back. Timings use CUDA events.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fastnet.backends.base import (
    FLOAT_DTYPES,
    Act,
    ActGrad,
    Backend,
    ReluMask,
    contiguous_floats,
)
from fastnet.backends.counter_rng import check_draw_size
from fastnet.backends.graph_step import CaptureObstacleError


class CupyBackend(Backend):
    """GPU backend on device ``device`` (``"cupy:N"``)."""

    name = "cupy"
    #: training steps per CUDA-graph replay, batch gathers inside (``GraphedStep``)
    steps_per_graph = 32

    def __init__(self, device: int = 0) -> None:
        super().__init__()
        import cupy

        from fastnet.kernels import cublaslt, cupy_gpu

        self.xp = cupy
        self.k = cupy_gpu
        self.lt = cublaslt
        self.device_id = device
        self.device = cupy.cuda.Device(device)
        self.device.use()
        self.name = "cupy" if device == 0 else f"cupy:{device}"
        self._stream: Any = None
        self._lt_reason = ""
        self._relu_nan: dict[tuple[Any, bool], bool] = {}  # the epilogue's NaN, asked once
        self._gradients_ok: dict[tuple, bool] = {}  # the gradient epilogues' probe
        self._kernel_mask_ok: dict[tuple, bool] = {}  # the ReLU kernel's mask read by DRELU
        self._cublas_path = ""
        try:
            self._gemm = cupy_gpu.cublas_gemm()
            self._gemm_name = "cublas-direct"
            self._cublas_path = self._gemm.path
        except (OSError, AttributeError, RuntimeError) as exc:  # keep cupy.matmul, say why
            self._gemm = None
            self._gemm_name = f"cupy.matmul (direct cuBLAS unavailable: {exc})"
            self._lt_reason = self._gemm_name

    # ------------------------------------------------------------------ arrays
    def is_native(self, x: Any) -> bool:
        return isinstance(x, self.xp.ndarray)

    def dlpack_device(self) -> tuple[int, int]:
        return (2, self.device_id)

    def device_scope(self) -> contextlib.AbstractContextManager:
        return self.device  # (cupy:N's kernels launch on GPU N whichever is current)

    def from_dlpack(self, x: Any) -> Any:
        with self.device:
            return self.xp.from_dlpack(x)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        with self.device:
            return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def empty(self, shape: Any, dtype: Any) -> Any:
        with self.device:
            return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        with self.device:
            return self.xp.zeros(shape, dtype=dtype)

    def rng(self, seed: int | None) -> Any:
        """cuRAND's counter-based Philox generator: a new seed (each epoch's order) sets a key,
        with no per-thread state to set up as XORWOW, the default, has."""
        with self.device:
            philox = self.xp.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
            return self.xp.random.RandomState(seed, method=philox)

    def reseeded(self, rng: Any, seed: int) -> Any:
        if rng is None:
            return self.rng(seed)
        with self.device:
            rng.seed(seed)  # the generator kept (no cuRAND generator made per epoch)
        return rng

    def permutation(self, rng: Any, n: int) -> Any:
        return rng.permutation(n)

    def uniform(self, rng: Any, shape: Any, dtype: Any) -> Any:
        return rng.random_sample(shape, dtype=dtype)

    #: datasets larger than this (or than half the free device memory) are streamed from the host
    device_data_limit_bytes: int | None = None

    def fits_on_device(self, nbytes: int) -> bool:
        free, _ = self.xp.cuda.runtime.memGetInfo()
        limit = (
            free // 2
            if self.device_data_limit_bytes is None
            else min(free // 2, self.device_data_limit_bytes)
        )
        return nbytes <= limit

    def pinned_empty(self, shape: Any, dtype: Any) -> np.ndarray:
        """A page-locked host array (fast, asynchronous host-to-device copies)."""
        import cupyx

        return cupyx.empty_pinned(shape, dtype=dtype)

    def take_rows_at(self, x: Any, order: Any, position: Any, offset: int, out: Any) -> Any:
        """One gather kernel reading the position on the device (capturable)."""
        arrays = (x, order, position, out)
        if not all(a.flags.c_contiguous for a in arrays) or order.dtype != np.int64:
            raise ValueError("take_rows_at needs C-contiguous arrays and an int64 order")
        if x.dtype != out.dtype or x.shape[1:] != out.shape[1:]:
            raise ValueError(f"take_rows_at: rows of {x.shape} {x.dtype} into {out.shape}")
        self.k.take_rows_at(x, order, position, offset, out)
        self.record_kernel("take_rows_at", "cuda")
        return out

    def advance_counter(self, counter: Any, by: int) -> None:
        self.k.advance_counter(counter, by)

    def copy_from_host(self, dst: Any, src: np.ndarray) -> Any:
        """An asynchronous copy on the current stream (pinned ``src``); the returned event
        is recorded after it."""
        dst.set(src)
        return self.xp.cuda.get_current_stream().record()

    def check_policy(self, policy: str) -> Any:
        """float16 for "mixed_float16"; ml_dtypes' bfloat16 for "mixed_bfloat16" where CuPy
        has bfloat16 arrays (CuPy >= 14). Half kernels and cuBLASLt GEMMs; captured where
        ``plan_capture_reason`` allows."""
        if policy == "mixed_float16":
            return np.dtype(np.float16)
        from fastnet.mixed import bfloat16

        cuda_errors = (self.xp.cuda.runtime.CUDARuntimeError, self.xp.cuda.memory.OutOfMemoryError)
        try:
            with self.device:
                dtype = bfloat16()
                self.xp.zeros(1, dtype) + 1  # CuPy < 14: no bfloat16 arrays
        except cuda_errors:
            raise  # the device's own trouble, not a missing feature
        except Exception as exc:  # no bfloat16 arrays, or their kernels do not compile here
            raise NotImplementedError(
                f"dtype={policy!r} on cupy needs CuPy >= 14 with ml_dtypes (bfloat16 arrays): "
                f"{exc}; 'mixed_float16' runs here"
            ) from None
        return dtype

    def plan_capture_reason(self, plan: Any) -> str:
        if plan.compute_dtype != plan.dtype and (reason := self._mixed_capture_reason(plan)):
            return reason
        if any(getattr(layer, "collective", False) for layer in plan.layers):
            return "a synchronized BatchNorm1d runs eagerly on cupy (reference ops)"
        for name, kernel in plan.optimizers:
            if kernel not in self.k.UPDATE_RULES:  # the reference update allocates
                return f"the optimizer {name} has no CUDA update kernel (eager steps run it)"
        return super().plan_capture_reason(plan)

    def _note_half_fallback(self, op: str) -> None:
        """The float32 reference of a half GEMM allocates: inside a capture it would hand the
        graph pool memory; fail clearly instead. Outside one it is counted as an obstacle (a
        compiled step's warm-up that meets it stays eager)."""
        if not self.xp.cuda.get_current_stream().is_capturing():
            self.obstacles_seen += 1
            self.last_obstacle = (
                f"cuBLASLt has no algorithm for a half {op} of this model "
                f"({self._lt_reason or 'no heuristic result'}): its float32 fallback allocates"
            )
        else:
            raise RuntimeError(
                f"mixed precision: cuBLASLt has no algorithm for this half {op} inside a CUDA "
                f"graph capture ({self._lt_reason or 'no heuristic result'}); fit with "
                "compiled=False"
            )

    def _mixed_capture_reason(self, plan: Any) -> str:
        """Mixed precision is captured where every op has a half kernel: Dense, activation,
        Dropout and BatchNorm1d layers, their GEMMs through cuBLASLt (the float32 fallback
        allocates)."""
        from fastnet.backends.plan import ActivationPlan, DensePlan, DropoutPlan, OpsPlan

        kernels = (DensePlan, ActivationPlan, DropoutPlan, OpsPlan)
        others = sorted(
            {
                getattr(p, "name", type(p).__name__)
                for p in plan.layers
                if not isinstance(p, kernels)
            }
        )
        if others:
            return f"mixed precision captures Dense, activation, Dropout, BatchNorm1d, not {others}"
        if not self.use_cublaslt or self._lt_reason:
            return f"mixed precision is captured with cuBLASLt only ({self._lt_reason or 'off'})"
        return ""

    def graph_capture_reason(self) -> str:
        """Why training steps cannot be captured in CUDA graphs here ("" if they can)."""
        return "" if self._gemm is not None else f"no direct cuBLAS calls: {self._gemm_name}"

    def synchronize(self) -> None:
        self.device.synchronize()

    def device_info(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"cuda:{self.device_id} {name}"

    def precision_reason(self, precision: str) -> str:
        if precision == "tf32" and self._gemm is None:
            return f"precision='tf32' needs direct cuBLAS calls: {self._gemm_name}"
        return "" if precision == "tf32" else super().precision_reason(precision)

    def peak_memory(self) -> int | None:
        """Bytes held by CuPy's memory pool: its high-water mark, since the pool keeps blocks."""
        return int(self.xp.get_default_memory_pool().total_bytes())

    def elapsed(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn`` takes on the GPU, measured with CUDA events."""
        start, end = self.xp.cuda.Event(), self.xp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return self.xp.cuda.get_elapsed_time(start, end) / 1e3

    # ------------------------------------------------------------------ matmul and dense layer
    #: matmuls through cuBLASLt (algorithm timed per shape; Dense forwards with a bias and a
    #: linear or ReLU activation as one call, bias and ReLU in the epilogue); off, or where
    #: cuBLASLt fails, cuBLAS and the bias kernel
    use_cublaslt = True
    #: pick each GEMM shape's cuBLASLt algorithm by timing its candidates once (as PyTorch's
    #: ``cudnn.benchmark``): maybe faster, but processes may pick, and round, differently;
    #: off: the heuristic's choice, the same in every run
    gemm_autotune = False

    def _cublaslt(
        self, x: Any, w: Any, out: Any, precision: str, bias: Any = None, relu: bool = False
    ) -> bool:
        """``out = x @ w`` (+ bias, ReLU) through cuBLASLt; False where it does not apply."""
        return self._lt_gemm(x, w, out, precision, self.lt.Epilogue.of(bias, relu))

    def _lt_gemm(self, x: Any, w: Any, out: Any, precision: str, epi: Any) -> bool:
        """``out = x @ w`` with the cuBLASLt epilogue ``epi``; False where it does not apply."""
        if not self.lt.LtGemm.supports(x, w, out, epi.vector, epi.mask):
            return False
        tf32, timed = precision == "tf32", self.gemm_autotune
        return bool(self._lt_call(lambda lt: lt.gemm(x, w, out, tf32, epi, timed)))

    def _lt_call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(cuBLASLt of this device and thread)``; False where cuBLASLt is off or fails (a
        failure turns it off for this backend, with the reason)."""
        if not self.use_cublaslt or self._lt_reason:
            return False
        try:
            with self.device:  # the handle and workspace of this device and thread
                return fn(self.lt.lt_gemm(self._cublas_path))
        except (self.xp.cuda.runtime.CUDARuntimeError, self.xp.cuda.driver.CUDADriverError):
            raise  # the device's own trouble (an earlier kernel's), not cuBLASLt's
        except CaptureObstacleError:
            raise  # (an allocation in a capture: the step's to handle)
        except (OSError, AttributeError, RuntimeError) as exc:
            self._lt_reason = f"cuBLASLt unavailable: {exc}"  # cuBLAS from now on
            return False

    def _relu_epilogue_keeps_nan(self, dtype: Any, tf32: bool) -> bool:
        """``LtGemm.relu_keeps_nan``, remembered here (an eager step asks per ReLU layer)."""
        return self._asked(self._relu_nan, lambda lt: lt.relu_keeps_nan(dtype, tf32), dtype, tf32)

    def _gradient_epilogues_work(self, dtype: Any, tf32: bool, which: str) -> bool:
        """``LtGemm.gradient_epilogues_work``, remembered here (asked per layer and step)."""
        probe = lambda lt: lt.gradient_epilogues_work(dtype, tf32, which)  # noqa: E731
        return self._asked(self._gradients_ok, probe, dtype, tf32, which)

    def _asked(self, answers: dict, question: Callable, *key: Any) -> bool:
        """A cuBLASLt probe's answer for ``key`` (dtype, TF32, ...), asked once (again after
        a capture, where probes cannot run)."""
        if key not in answers:
            answer = self._lt_call(question) is True
            if not self.use_cublaslt or self.xp.cuda.get_current_stream().is_capturing():
                return answer  # not probed (switched off, in a capture): ask again later
            answers[key] = answer
        return answers[key]

    #: Dense layers' backward through cuBLASLt's gradient epilogues where they work (probed):
    #: a ReLU layer's forward stores its bit-mask (RELU_AUX_BIAS), the layer above's
    #: input-gradient GEMM applies the ReLU derivative and sums the bias gradient (DRELU_BGRAD),
    #: the output layer's weight-gradient GEMM sums its bias gradient (BGRADA); off: kernels
    fuse_gradients = True

    def relu_mask(self, rows: int, units: int, dtype: Any, precision: str) -> int:
        dtype = np.dtype(dtype)
        ok = self.fuse_gradients and (dtype in FLOAT_DTYPES or dtype.name in self.lt.HALF_NAMES)
        if not ok or rows < 2 or self._mask_writer(dtype, precision == "tf32") is None:
            return 0  # a batch of one: DRELU_BGRAD is not asked (``as_probed``)
        return int(self.lt.mask_bytes(rows, units))

    def _mask_writer(self, dtype: Any, tf32: bool) -> str | None:
        """What stores a ReLU layer's bit-mask, as the probes say: "epilogue" (RELU_AUX_BIAS,
        where the ReLU epilogue keeps NaN), "kernel" (the ReLU kernel after the bias epilogue,
        writing the mask as DRELU_BGRAD reads it), or None."""
        if self._relu_epilogue_keeps_nan(dtype, tf32):
            if self._gradient_epilogues_work(dtype, tf32, "relu_mask"):
                return "epilogue"
        probe = lambda lt: lt.kernel_mask_works(dtype, tf32, self.k.relu_mask)  # noqa: E731
        return "kernel" if self._asked(self._kernel_mask_ok, probe, dtype, tf32) else None

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
        """``act(x @ w + b)``: one cuBLASLt GEMM with the bias (+ ReLU) epilogue where it
        applies (ReLU only where that epilogue keeps NaN: else the bias in the epilogue and the
        ReLU kernel; with ``mask``, storing the ReLU bit-mask too), else a GEMM and the fused
        bias/activation kernel."""
        if out is None:
            out = self.xp.empty((x.shape[0], w.shape[1]), dtype=x.dtype)
        relu = b is not None and activation == Act.RELU
        relu = relu and self._relu_epilogue_keeps_nan(x.dtype, precision == "tf32")
        if mask is not None and b is not None and activation == Act.RELU:
            writer = self._mask_writer(x.dtype, precision == "tf32")
            if writer == "epilogue":
                epi = self.lt.Epilogue(self.lt.EPILOGUE_RELU_AUX_BIAS, b, mask.bits)
                mask.written = self._lt_gemm(x, w, out, precision, epi)
            elif writer == "kernel" and self._cublaslt(x, w, out, precision, b):
                self.k.relu_mask(out, mask.bits)  # ReLU, NaN kept, and the mask
                mask.written = True
            if mask.written:
                self.record_kernel("linear", f"cublaslt-relu-mask-{writer}")
                return out
        fused = b is not None and (activation == Act.LINEAR or relu)
        if fused and self._cublaslt(x, w, out, precision, b, relu):
            self.record_kernel("linear", "cublaslt-epilogue")
            return out
        if b is not None and activation == Act.RELU and self._cublaslt(x, w, out, precision, b):
            self.record_kernel("linear", "cublaslt-bias-epilogue")
            return self.activation(out, activation, alpha, out)  # ReLU is exact: one rounding
        if _half(x, out):
            if self._cublaslt(x, w, out, precision, b):  # the bias in the epilogue
                return self.activation(out, activation, alpha, out)  # rounded twice: not ReLU
            if (b is None or _half(b)) and self._cublaslt(x, w, out, precision):
                return self.bias_act(out, b, activation, alpha)  # a bias cuBLASLt cannot take
            self._note_half_fallback("linear")
        return super().linear(x, w, b, activation, alpha, out, precision)

    def matmul(self, a: Any, b: Any, out: Any = None, precision: str = "fp32") -> Any:
        """A cuBLASLt GEMM (algorithm per shape), else cuBLAS called directly (both
        capturable in CUDA graphs; TF32 tensor cores for float32 at ``precision="tf32"``), else
        ``cupy.matmul`` (fp32)."""
        if out is None:
            out = self.xp.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        if self._cublaslt(a, b, out, precision):  # float16 too: float32 accumulation
            self.record_kernel("matmul", "cublaslt")
            return out
        if a.dtype.itemsize == 2 or b.dtype.itemsize == 2:  # half: the float32 reference
            self._note_half_fallback("matmul")
            return super().matmul(a, b, out, precision)
        if self._gemm is not None and out.flags.c_contiguous and self._gemm.supports(a, b, out):
            self.record_kernel("matmul", self._gemm_name)
            with self.device:  # the handle and workspace of this device and thread
                return self.k.cublas_gemm()(a, b, out, precision == "tf32")
        self.record_kernel("matmul", "cupy.matmul")
        return self.xp.matmul(a, b, out=out)

    def bias_in_weight_gemm(self, x: Any, dz: Any, dw: Any, db: Any, precision: str) -> bool:
        """BGRADA, where the probe says it works (half ``dz``: into float32 gradients)."""
        tf32 = precision == "tf32"
        grads = db.dtype == dw.dtype == self.lt.grad_dtype(dz.dtype)  # as probed
        if not (
            self.fuse_gradients and grads and self.lt.as_probed(x.T, dz, self.lt.EPILOGUE_BGRADA)
        ):
            return False
        if not self._gradient_epilogues_work(dz.dtype, tf32, "bgrada"):
            return False
        if not self._lt_gemm(x.T, dz, dw, precision, self.lt.Epilogue(self.lt.EPILOGUE_BGRADA, db)):
            return False
        self.record_kernel("weight_gradients", "cublaslt-bgrad-epilogue")
        return True

    def input_gradient(
        self, dz: Any, w: Any, dx: Any, precision: str = "fp32", below: ActGrad | None = None
    ) -> Any:
        """With ``below`` a ReLU layer whose forward stored its mask: one GEMM whose epilogue
        applies the derivative and sums the bias gradient (DRELU_BGRAD)."""
        if (
            below is not None
            and below.mask is not None
            and below.db is not None
            and below.db.dtype == self.lt.grad_dtype(dz.dtype)  # as probed
            and self.lt.as_probed(dz, w.T, self.lt.EPILOGUE_DRELU_BGRAD)
        ):
            epi = self.lt.Epilogue(self.lt.EPILOGUE_DRELU_BGRAD, below.db, below.mask.bits)
            if self._lt_gemm(dz, w.T, below.dz, precision, epi):
                self.record_kernel("input_gradient", "cublaslt-drelu-bgrad-epilogue")
                return below.dz
        return super().input_gradient(dz, w, dx, precision, below)

    def bias_act(self, z: Any, b: Any, activation: Act, alpha: float = 0.01) -> Any:
        if _half(z) and z.ndim == 2 and (b is None or _half(z, b) and b.shape == (z.shape[1],)):
            if b is None:
                return self.activation(z, activation, alpha, z)
            self.k.bias_act_half(z, b, int(activation), alpha)
            self.record_kernel("bias_act", "cuda-half")
            return z
        if b is None and activation == Act.LINEAR:
            return z
        if b is None and contiguous_floats(z):  # (the reference would allocate temporaries)
            return self.activation(z, activation, alpha, z)
        if b is None or z.ndim != 2 or b.shape != (z.shape[1],) or not contiguous_floats(z, b):
            return super().bias_act(z, b, activation, alpha)
        self.k.bias_act(z, b, int(activation), alpha)
        self.record_kernel("bias_act", "cuda-fused")
        return z

    def act_backward_bias(
        self, y: Any, dy: Any, activation: Act, alpha: float, dz: Any = None, db: Any = None
    ) -> Any:
        if dz is None:
            dz = self.xp.empty_like(dy)
        if (
            db is None
            or y.ndim != 2
            or not y.shape == dy.shape == dz.shape
            or db.shape != (y.shape[1],)
            or not (contiguous_floats(y, dy, dz, db) or _half(y, dy, dz) and _f32(db))
        ):
            return super().act_backward_bias(y, dy, activation, alpha, dz, db)
        self.k.act_backward_bias(y, dy, int(activation), alpha, dz, db)
        self.record_kernel("act_backward_bias", "cuda-fused")
        return dz

    def activation(self, x: Any, activation: Act, alpha: float = 0.01, out: Any = None) -> Any:
        if out is None:
            out = self.xp.empty_like(x)
        if _half(x, out) and x.shape == out.shape:
            self.k.activation_half(x, int(activation), alpha, out)
            self.record_kernel("activation", "cuda-half")
            return out
        if not contiguous_floats(x, out):
            return super().activation(x, activation, alpha, out)
        self.k.activation(x, int(activation), alpha, out)
        self.record_kernel("activation", "cuda-fused")
        return out

    def activation_backward(
        self, y: Any, dy: Any, activation: Act, alpha: float = 0.01, out: Any = None
    ) -> Any:
        if out is None:
            out = self.xp.empty_like(dy)
        if _half(y, dy, out) and y.shape == dy.shape == out.shape:
            self.k.activation_backward_half(y, dy, int(activation), alpha, out)
            self.record_kernel("activation_backward", "cuda-half")
            return out
        if not contiguous_floats(y, dy, out):
            return super().activation_backward(y, dy, activation, alpha, out)
        self.k.activation_backward(y, dy, int(activation), alpha, out)
        self.record_kernel("activation_backward", "cuda-fused")
        return out

    # ------------------------------------------------------------------ dropout and batch norm
    def dropout(
        self, x: Any, stream: Any, threshold: int, scale: float, out: Any, mask: Any
    ) -> Any:
        """One kernel: SplitMix64 bits per element from the device stream, mask and output."""
        same = x.shape == out.shape == mask.shape
        if not (same and (contiguous_floats(x, out, mask) or _half(x, out, mask))):
            return super().dropout(x, stream, threshold, scale, out, mask)
        check_draw_size(x.size)
        self.k.dropout(x, stream, threshold, scale, out, mask)
        self.record_kernel("dropout", "cuda-fused")
        return out

    def dropout_backward(self, dy: Any, mask: Any, out: Any) -> Any:
        if not (contiguous_floats(dy, mask, out) or _half(dy, mask, out)):
            return super().dropout_backward(dy, mask, out)
        return self.k.dropout_backward(dy, mask, out)

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
        """One kernel (a thread per feature): statistics, running averages, normalization."""
        args = (x, gamma, beta, *running, *out)
        vectors = (gamma, beta, *running, out[2])
        mixed = _half(x, gamma, beta, out[0], out[1]) and all(map(_f32, (*running, out[2])))
        if (
            comm is not None
            or x.ndim != 2
            or not x.shape == out[0].shape == out[1].shape
            or any(v.shape != (x.shape[1],) for v in vectors)
            or not (contiguous_floats(*args) or mixed)
        ):
            return super().batchnorm(x, gamma, beta, running, momentum, eps, training, out, comm)
        self.k.batchnorm(x, gamma, beta, running, momentum, eps, training, out)
        self.record_kernel("batchnorm", "cuda-fused")
        return out[0]

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
        arrays = (dy, xhat, inv_std, gamma, *grads) + (() if dx is None else (dx,))
        halves = (dy, xhat, gamma) + (() if dx is None else (dx,))
        mixed = _half(*halves) and all(map(_f32, (inv_std, *grads)))
        if (
            comm is not None
            or dy.ndim != 2
            or dy.shape != xhat.shape
            or (dx is not None and dx.shape != dy.shape)
            or any(v.shape != (dy.shape[1],) for v in (inv_std, gamma, *grads))
            or not (contiguous_floats(*arrays) or mixed)
        ):
            return super().batchnorm_backward(dy, xhat, inv_std, gamma, grads, training, dx, comm)
        self.k.batchnorm_backward(dy, xhat, inv_std, gamma, grads, training, dx)
        return dx

    # ------------------------------------------------------------------ loss
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
        """As the reference (``loss_out`` accumulates ``loss_scale * sum(row losses)``); one
        fused kernel for integer labels or one-hot/soft targets, weights and smoothing, which
        also adds the correct count into ``hits`` (float64) when given.
        Nothing allocates when ``dlogits`` and a float64 ``loss_out`` are given."""
        xp = self.xp
        n = logits.shape[0] if logits.ndim == 2 else -1
        dense = labels.ndim == 2 and labels.shape == logits.shape
        if (
            logits.ndim != 2
            or logits.dtype not in FLOAT_DTYPES
            or not (dense or (labels.ndim == 1 and labels.dtype.kind in "iu"))
            or labels.shape[0] != n
            or (weights is not None and weights.shape != (n,))
            or (loss_out is not None and loss_out.dtype != np.float64)
            or (hits is not None and (hits.dtype != np.float64 or hits.size != 1))
        ):
            return super().softmax_xent(
                logits, labels, dlogits, loss_out, loss_scale, weights, label_smoothing, hits
            )
        logits = xp.ascontiguousarray(logits)
        if dense:
            labels, targets = None, xp.ascontiguousarray(labels, dtype=logits.dtype)
        else:
            labels, targets = xp.ascontiguousarray(labels, dtype=np.int64), None
        if weights is not None:
            weights = xp.ascontiguousarray(weights, dtype=logits.dtype)
        if (
            dlogits is None
            or dlogits.shape != logits.shape
            or not contiguous_floats(logits, dlogits)
        ):
            dlogits = xp.empty_like(logits)
        out = xp.zeros((1,), np.float64) if loss_out is None else loss_out
        scale = 1.0 / n if loss_scale is None else loss_scale
        self.k.softmax_xent(
            logits, labels, targets, weights, dlogits, out, scale, label_smoothing, hits
        )
        self.record_kernel("softmax_xent", "cuda-fused")
        if loss_out is None:
            return out[0].astype(logits.dtype), dlogits
        return loss_out, dlogits

    def sigmoid_bce(
        self, logits: Any, targets: Any, weights: Any, totals: Any, dlogits: Any = None
    ) -> Any:
        """As the reference, in one CUDA kernel (nothing allocates given a C-contiguous
        ``dlogits`` of the logits' shape and dtype, C-contiguous inputs of that dtype and a
        C-contiguous float64 ``totals``)."""
        args = self.loss_kernel_arguments(logits, targets, weights, totals, dlogits)
        if args is None:
            return super().sigmoid_bce(logits, targets, weights, totals, dlogits)
        self.k.sigmoid_bce(*args, totals)
        self.record_kernel("sigmoid_bce", "cuda-fused")
        return args[3]

    def squared_error(
        self,
        outputs: Any,
        targets: Any,
        weights: Any,
        totals: Any,
        scale: float = 1.0,
        dout: Any = None,
    ) -> Any:
        """As the reference, in one CUDA kernel (nothing allocates given what
        ``sigmoid_bce`` needs)."""
        args = self.loss_kernel_arguments(outputs, targets, weights, totals, dout)
        if args is None:
            return super().squared_error(outputs, targets, weights, totals, scale, dout)
        self.k.squared_error(*args, scale, totals)
        self.record_kernel("squared_error", "cuda-fused")
        return args[3]

    def count_correct(self, logits: Any, labels: Any, out: Any = None) -> Any:
        dense = labels.ndim == 2 and labels.shape == logits.shape
        if (
            logits.ndim != 2
            or logits.dtype not in FLOAT_DTYPES
            or not (dense or (labels.ndim == 1 and labels.shape[0] == logits.shape[0]))
            or (out is not None and (out.dtype != np.float64 or out.size != 1))
        ):
            return super().count_correct(logits, labels, out)
        xp = self.xp
        hits = xp.zeros((1,), np.float64) if out is None else out
        if dense:
            pair = (None, xp.ascontiguousarray(labels, dtype=logits.dtype))
        else:
            pair = (xp.ascontiguousarray(labels, dtype=np.int64), None)
        self.k.count_correct(xp.ascontiguousarray(logits), *pair, hits)
        return hits[0] if out is None else out

    # ------------------------------------------------------------------ optimizer updates
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
        """One ElementwiseKernel launch over a flat arena group (``kernels.cupy_gpu``'s
        ``UPDATE_RULES``), reading the step's scalars from the device array ``s``, writing the
        half copy ``compute`` too (mixed precision); the reference for rules without a
        kernel."""
        arrays = (p, g, *slots)
        half = compute is not None and _f32(p) and _half(compute) and compute.shape == p.shape
        if (
            rule.kernel not in self.k.UPDATE_RULES
            or not contiguous_floats(*arrays)
            or (compute is not None and not half)
        ):
            args = (rule, p, g, slots, s, constants, n_decay, wd, clip_value, compute)
            return super().update(*args)
        t = p.dtype.type
        clip = np.inf if clip_value is None else clip_value
        kernel = self.k.update_kernel(rule.kernel)
        outputs = (p, *slots)
        if half:
            kernel = self.k.update_kernel_half(rule.kernel, compute.dtype.name)
            outputs += (compute,)
        scalars = (t(wd), np.int64(n_decay), t(clip), t(np.finfo(p.dtype).tiny))
        derived = rule.derived_constants(constants)  # 1 - beta: float64 here, rounded once
        kernel(g, *map(t, constants), *map(t, derived), s, *scalars, *outputs)
        self.record_kernel(f"update_{rule.kernel or type(rule).__name__}", "cuda-fused")

    def advance_scalars(self, s: Any, checks: Any, constants: tuple) -> None:
        self.k.advance_scalars(s, checks, constants)
        self.record_kernel("advance_scalars", "cuda")

    # ------------------------------------------------------------------ mixed precision
    def cast(self, src: Any, out: Any, scale: Any = None) -> Any:
        """One kernel between float32 and a half dtype (times the device ``scale``)."""
        to_half = _f32(src) and _half(out)
        from_half = _half(src) and _f32(out) and scale is None
        if src.shape != out.shape or not (to_half or from_half):
            return super().cast(src, out, scale)
        self.k.cast(src, out, scale)
        self.record_kernel("cast", "cuda-half")
        return out

    def unscale(self, g: Any, state: Any, checks: Any) -> None:
        if not contiguous_floats(g):
            return super().unscale(g, state, checks)
        self.k.unscale(g, state, checks)
        self.record_kernel("unscale", "cuda")

    def update_loss_scale(
        self, state: Any, checks: Any, growth_interval: int, growth: float, backoff: float
    ) -> None:
        self.k.update_loss_scale(state, checks, growth_interval, growth, backoff)
        self.record_kernel("update_loss_scale", "cuda")

    def sum_squares(self, g: Any, out: Any) -> None:
        if not contiguous_floats(g) or out.dtype != np.float64:
            return super().sum_squares(g, out)
        self.k.sum_squares(g.reshape(-1), out)

    # ------------------------------------------------------------------ compiled steps
    def step_stream(self) -> contextlib.AbstractContextManager:
        """This device and its step stream (non-blocking), current for the whole loop: the
        permutation, gathers, learning-rate writes, steps and graph replays run in order, after
        what the caller's stream was given before (weights built or loaded there)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.device)
        if self._stream is None:
            self._stream = self.xp.cuda.Stream(non_blocking=True)
        before = self.xp.cuda.get_current_stream()
        if before != self._stream and not before.is_capturing():  # non-blocking: no implicit wait
            self._stream.wait_event(before.record())
        stack.enter_context(self._stream)
        return stack

    def training(self) -> contextlib.AbstractContextManager:
        """A whole fit on this GPU, one thread at a time: the threads of a process share its
        step stream, and a capture would record another thread's kernels."""
        return self._one_thread_training()

    @contextlib.contextmanager
    def _one_thread_training(self) -> Iterator[None]:
        lock = self.__dict__.setdefault("_fit_lock", threading.RLock())  # (emulated: no init)
        if not lock.acquire(blocking=False):
            raise RuntimeError(
                f"another thread is training on {self.name}: one fit at a time per GPU in a "
                "process (its step stream and CUDA graph captures are shared)"
            )
        try:
            yield
        finally:
            lock.release()

    def capture(self, fn: Callable[[], Any]) -> Any:
        """A CUDA graph of ``fn``'s work on the current (step) stream."""
        stream = self.xp.cuda.get_current_stream()
        if stream.ptr == 0:
            raise RuntimeError("CUDA graphs are captured on a non-default stream (step_stream)")
        stream.begin_capture()
        try:
            with _no_allocations(self.xp):
                fn()
        except BaseException as exc:
            try:  # end the capture; its own error (an invalidated capture) must not hide fn's
                stream.end_capture()
            except Exception:
                pass
            if _refused_by_capture(exc):
                raise CaptureObstacleError(f"{type(exc).__name__}: {exc}") from exc
            raise
        try:  # (CUDA may say only here that the capture was invalidated: eager steps then)
            graph = stream.end_capture()
        except Exception as exc:
            if _refused_by_capture(exc):
                raise CaptureObstacleError(f"{type(exc).__name__}: {exc}") from exc
            raise
        return _CudaGraph(graph, self.xp)


def _refused_by_capture(exc: BaseException) -> bool:
    """What CUDA or CuPy refuse while a stream captures (a sync or copy to the host:
    CuPy's RuntimeError "the current stream is capturing"; CuPy's own cuBLAS calls:
    NotImplementedError; CUDA's cudaErrorStreamCapture*), besides the allocation guard's."""
    return (
        isinstance(exc, RuntimeError | NotImplementedError)
        and not isinstance(exc, CaptureObstacleError)
        and "captur" in str(exc).lower()
    )


@functools.cache
def _allocation_guard(hook: type) -> type:
    """A CuPy memory hook refusing allocations from the pool (``hook``: ``MemoryHook``)."""

    class NoAllocation(hook):  # type: ignore[misc, valid-type]
        name = "fastnet-capture"

        def malloc_preprocess(self, **kwargs: Any) -> None:
            if kwargs.get("size"):
                raise CaptureObstacleError(
                    f"an allocation of {kwargs['size']} bytes inside the CUDA graph capture "
                    "(the graph would keep writing memory the pool hands out again)"
                )

    return NoAllocation


def _no_allocations(xp: Any) -> Any:
    """Inside a capture: CuPy's pool refuses allocations (CuPy captures them silently)."""
    return _allocation_guard(xp.cuda.MemoryHook)()


class _CudaGraph:
    """A captured CUDA graph replayed on the current stream."""

    def __init__(self, graph: Any, xp: Any) -> None:
        self.graph, self.xp = graph, xp

    def replay(self) -> None:
        self.graph.launch(self.xp.cuda.get_current_stream())


def _half(*arrays: Any) -> bool:
    """All C-contiguous, of one half dtype (float16, or ml_dtypes' bfloat16)."""
    dtype = arrays[0].dtype
    return dtype.name in ("float16", "bfloat16") and all(
        a.dtype == dtype and a.flags.c_contiguous for a in arrays
    )


def _f32(a: Any) -> bool:
    return a.dtype == np.float32 and a.flags.c_contiguous
