"""The Numba backend: BLAS matmuls plus fused JIT kernels for every elementwise hot path.

Kernels live in ``fastnet.kernels.numba_cpu``. This class overrides only the hot paths and falls
back to the NumPy reference (``super()``) for dtypes and layouts its kernels do not cover.
Size thresholds below were measured with ``bench/`` on the 2-core CI-class machine.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fastnet.backends.base import FLOAT_DTYPES, Act, Backend, contiguous_floats
from fastnet.backends.forks import forked_after_numba_launch


def _blas_ready(a: Any, b: Any, out: Any) -> bool:
    """What ``numba_blas.gemm(a, b, out)`` takes: 2-D operands of matching shapes and one float
    dtype, ``a`` and ``b`` C- or F-contiguous (transposed views), ``out`` C-contiguous."""
    if out is None or not (a.ndim == b.ndim == out.ndim == 2):
        return False
    operands = all(
        x.dtype == out.dtype and (x.flags.c_contiguous or x.flags.f_contiguous) for x in (a, b)
    )
    return (
        operands
        and out.dtype in FLOAT_DTYPES
        and out.flags.c_contiguous
        and a.shape[1] == b.shape[0]
        and out.shape == (a.shape[0], b.shape[1])
    )


def _parallel_min_updates() -> int:
    """Size from which optimizer updates run on numba's threads (1M elements, so not for the
    default model). Measured right after a GEMM, Adam over 235k float32 parameters: on the
    AMD EPYC two threads were slower (202 against 152 us); on the Intel Xeon (Skylake-SP) they
    were faster alone (373 against 479 us) but not in the epoch (16 alternating epochs:
    1.008x the serial time). ``FASTNET_NUMBA_PARALLEL_UPDATES`` (an element count) overrides."""
    override = os.environ.get("FASTNET_NUMBA_PARALLEL_UPDATES", "")
    return max(int(override), 1) if override.isdigit() else 1 << 20


def _same_shape(*arrays: Any) -> bool:
    shape = arrays[0].shape
    return all(a.shape == shape for a in arrays[1:])


class NumbaBackend(Backend):
    """NumPy arrays; fused ``@njit(cache=True)`` kernels for bias+activation, activation
    backward+bias grad, softmax cross-entropy and optimizer updates."""

    name = "numba"
    compiled_takes_streamed = True  # (host memory: a memory map's rows go to the fused step)
    #: element count from which the parallel (threaded) flavour of a kernel is used. Below it,
    #: numba's threads only fight OpenBLAS's spinning workers for the 2 cores (bench/).
    parallel_min_elements = 1 << 20
    #: the same for optimizer updates, set per CPU by ``_parallel_min_updates`` (measured)
    parallel_min_updates = 1 << 20
    # (flush_mode, Backend's: the serial update kernels' flush-to-zero mode)

    def graph_capture_reason(self) -> str:
        return (
            "numba's compiled step (one fused JIT call) trains in one process: data-parallel "
            "steps on numba run eagerly"
        )

    def __init__(self) -> None:
        super().__init__()
        self.parallel_min_updates = _parallel_min_updates()
        # Sleeping (not spinning) OpenMP workers between kernels leave the cores to BLAS.
        # Only effective before numba's first parallel launch; a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from fastnet.kernels import blas_threads, numba_cpu

        self.k = numba_cpu
        self._blas_threads = blas_threads
        self._blocks: tuple[int, bool] | None = None  # (pid, ``infer_rows`` blocks)
        self._blocks_compiled: set[tuple] = set()  # (``_dense_forward``'s)
        self._empties: dict[tuple, np.ndarray] = {}
        self._infer_cache: _Inference | None = None
        self._update_calls: dict[tuple, _UpdateCall] = {}
        self._zero_bias: dict[tuple, np.ndarray] = {}

    def device_info(self) -> str:
        import numba

        threads = numba.get_num_threads()
        return f"CPU, {threads} numba thread{'s' if threads != 1 else ''}"

    def _pick(self, serial: Any, parallel: Any, a: Any) -> Any:
        """``parallel`` from ``parallel_min_elements`` on (never in a forked child: ``forks``)."""
        big = a.size >= self.parallel_min_elements
        return parallel if big and not forked_after_numba_launch() else serial

    # ------------------------------------------------------------------ matmul
    def matmul(self, a: Any, b: Any, out: Any = None, precision: str = "fp32") -> Any:
        if out is None and a.ndim == b.ndim == 2:
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
        if not _blas_ready(a, b, out):
            return super().matmul(a, b, out, precision)
        self.k.matmul(a, b, out)
        self.record_kernel("matmul", "blas (numba)")
        return out

    # ------------------------------------------------------------------ dense layer hooks
    def bias_act(self, z: Any, b: Any, activation: Act, alpha: float = 0.01) -> Any:
        if (
            b is None
            or z.ndim != 2
            or b.shape != (z.shape[1],)
            or not contiguous_floats(z, b)
            or activation not in self.k.ACTIVATIONS
        ):
            return super().bias_act(z, b, activation, alpha)
        kernel = self._pick(self.k.bias_act, self.k.bias_act_parallel, z)
        if activation == Act.TANH:  # numba's scalar tanh does not vectorize: 5.5x NumPy's time
            kernel(z, b, int(Act.LINEAR), z.dtype.type(alpha))
            np.tanh(z, out=z)
        else:
            kernel(z, b, int(activation), z.dtype.type(alpha))
        self.record_kernel("bias_act", "numba-fused")
        return z

    def act_backward_bias(
        self, y: Any, dy: Any, activation: Act, alpha: float, dz: Any = None, db: Any = None
    ) -> Any:
        if dz is None:
            dz = np.empty_like(dy, order="C")
        if (
            y.ndim != 2
            or not _same_shape(y, dy, dz)
            or (db is not None and db.shape != (y.shape[1],))
            or not contiguous_floats(y, dy, dz, *([db] if db is not None else []))
            or activation not in self.k.ACTIVATIONS
        ):
            return super().act_backward_bias(y, dy, activation, alpha, dz, db)
        bias_grad = db if db is not None else self._empty((0,), dy.dtype)
        kernel = self._pick(self.k.act_backward_bias, self.k.act_backward_bias_parallel, dy)
        kernel(y, dy, int(activation), dy.dtype.type(alpha), dz, bias_grad)
        self.record_kernel("act_backward_bias", "numba-fused")
        return dz

    # ------------------------------------------------------------------ activations
    def activation(self, x: Any, activation: Act, alpha: float = 0.01, out: Any = None) -> Any:
        if out is None:
            out = np.empty_like(x, order="C")
        if (
            x.ndim != 2
            or out.shape != x.shape
            or not contiguous_floats(out)
            or x.dtype != out.dtype
            or activation == Act.TANH  # NumPy's vectorized tanh is 7x faster
            or activation not in self.k.ACTIVATIONS
        ):
            return super().activation(x, activation, alpha, out)
        key = (x.shape[1], x.dtype)
        if key not in self._zero_bias:
            self._zero_bias[key] = np.zeros(x.shape[1], dtype=x.dtype)
        out[...] = x
        kernel = self._pick(self.k.bias_act, self.k.bias_act_parallel, out)
        kernel(out, self._zero_bias[key], int(activation), out.dtype.type(alpha))
        self.record_kernel("activation", "numba-fused")
        return out

    def activation_backward(
        self, y: Any, dy: Any, activation: Act, alpha: float = 0.01, out: Any = None
    ) -> Any:
        if (
            y.ndim != 2
            or not _same_shape(y, dy, *([out] if out is not None else []))
            or not contiguous_floats(y, dy)
            or (out is not None and not contiguous_floats(y, out))
            or activation not in self.k.ACTIVATIONS
        ):
            return super().activation_backward(y, dy, activation, alpha, out)
        return self.act_backward_bias(y, dy, activation, alpha, out, None)

    def standardize(self, x: Any, offset: Any, scale: Any, out: Any) -> Any:
        width = (x.shape[-1],)
        if x.ndim != 2 or out.shape != x.shape or width != offset.shape or width != scale.shape:
            return super().standardize(x, offset, scale, out)
        if not contiguous_floats(out, offset, scale) or x.dtype != out.dtype:
            return super().standardize(x, offset, scale, out)
        return self.k.standardize(x, offset, scale, out)

    # ------------------------------------------------------------------ inference
    def all_finite(self, x: Any) -> bool:
        if x.ndim != 2 or x.dtype not in FLOAT_DTYPES or x.size == 0:
            return super().all_finite(x)
        return bool(self.k.all_finite(x))

    def infer(
        self, plan: Any, x: Any, probabilities: bool, validate: Callable[[], None] | None = None
    ) -> Any:
        """One JIT call through a Dense stack (``kernels.numba_cpu.dense_forward``): what
        ``predict`` costs beyond the matmuls is one dispatch (arguments cached per plan);
        ``validate`` runs only where the first layer's products are not all finite."""
        cached = self._infer_cache  # read once: another thread's model may replace it
        if cached is None or cached.plan() is not plan or cached.dtype != x.dtype:
            cached = self._inference_args(plan, x.dtype)
            if cached.args is not None:  # (an unfused plan leaves another's cache be)
                self._infer_cache = cached
        if cached.args is None or x.ndim != 2 or not x.flags.c_contiguous:
            return None
        softmax = cached.predictions == "softmax"
        if probabilities and not softmax and cached.predictions != "identity":
            return None
        self.record_kernel("matmul", "blas (numba, fused inference)")
        out, finite = self._dense_forward(x, cached.args, probabilities and softmax)
        if not finite and validate is not None:
            validate()
        return out

    def _dense_forward(self, x: Any, args: tuple, softmax: bool) -> tuple[Any, bool]:
        """``dense_forward`` of ``x``; from two blocks on, where ``infer_rows`` allows, the
        blocks in parallel on min(BLAS's, this thread's numba) cores, BLAS at one thread."""
        if x.shape[0] >= 2 * INFER_BLOCK and self.infer_rows:
            import numba

            threads = numba.get_num_threads()  # (this thread's: numba's count is per thread)
            key = (x.dtype, x.flags.writeable, len(args[0]))
            if min(threads, self._blas_threads.count()) > 1:  # (read again under the lock)
                if key not in self._blocks_compiled:  # compiled (or loaded from the cache)
                    self.k.dense_forward_blocks(x[:1], *args, softmax, INFER_BLOCK)
                    self._blocks_compiled.add(key)  # before BLAS goes down to one thread
                with self._blas_threads.single_threaded() as cores:
                    if min(threads, cores) > 1:
                        numba.set_num_threads(min(threads, cores))
                        try:
                            return self.k.dense_forward_blocks(x, *args, softmax, INFER_BLOCK)
                        finally:
                            numba.set_num_threads(threads)
        return self.k.dense_forward(x, *args, softmax)

    @property
    def infer_rows(self) -> int:  # type: ignore[override]
        """16,384 where ``dense_forward_blocks`` can run (its blocks bound what a chunk holds,
        and large chunks keep both cores busy to the end: 10,000 rows at once took 0.94x the
        time of 2,048-row chunks, whose blocks in parallel were 1.07x; Intel Xeon model 207,
        41 paired rounds), else 0 (2,048-row chunks): NumPy's OpenBLAS with a settable
        thread count, numba threads in a layer that takes launches from several threads
        (OpenMP, TBB: not the workqueue), and not a forked child of a process that launched
        them, its own or any other parallel kernel (GNU OpenMP cannot launch there)."""
        blocks = self._blocks
        if blocks is None or blocks[0] != os.getpid():
            import numba

            cores = getattr(numba.config, "NUMBA_NUM_THREADS", 1)
            ok = not forked_after_numba_launch() and self._blas_threads.available() and cores > 1
            if ok:
                numba.get_num_threads()  # (starts the layer, which names itself)
                ok = numba.threading_layer() in ("omp", "tbb")
            self._blocks = blocks = (os.getpid(), ok)
        return 16384 if blocks[1] else 0

    def _inference_args(self, plan: Any, dtype: Any) -> _Inference:
        """``infer``'s cache for ``plan`` and inputs of ``dtype``: ``dense_forward``'s
        arguments after the input (None: the plan or dtype has no fused inference)."""
        layers, args = plan.dense_layers(inference=True), None
        if (  # (else: a code without a kernel branch, layer by layer)
            layers is not None
            and dtype == np.dtype(plan.dtype)
            and dtype in FLOAT_DTYPES
            and all(layer.activation in self.k.ACTIVATIONS for layer in layers)
        ):
            args = (
                tuple(layer.weight for layer in layers),
                tuple(
                    np.zeros(layer.weight.shape[1], dtype) if layer.bias is None else layer.bias
                    for layer in layers
                ),
                # (arrays, not tuples of scalars: a one-row call's dispatch ~1 us faster)
                np.array([int(layer.activation) for layer in layers], np.int64),
                np.array([layer.alpha for layer in layers], dtype),
                dtype == np.float32,  # the vectorized exp, as training's softmax
            )
        plan_ref = weakref.ref(plan, self._forget_inference)  # (a dead model's arrays go)
        return _Inference(plan_ref, dtype, args, plan.loss.predictions)

    def _forget_inference(self, dead: weakref.ref) -> None:
        """The cached inference arguments of a plan that died (its model's), dropped."""
        cached = self._infer_cache
        if cached is not None and cached.plan is dead:
            self._infer_cache = None

    # ------------------------------------------------------------------ loss
    def _targets(self, logits: Any, labels: Any) -> tuple[Any, Any] | None:
        """(integer labels, dense targets) as the kernels take them (the unused one empty),
        or None where the reference must run (shapes or dtypes the kernels do not cover)."""
        n, m = logits.shape
        if labels.ndim == 1 and labels.dtype.kind in "iu" and labels.shape[0] == n:
            labels = np.ascontiguousarray(labels, np.int64)
            if not self.k.labels_in_range(labels, m):
                raise ValueError(
                    f"softmax_xent: labels must be in [0, {m}), got range "
                    f"[{labels.min()}, {labels.max()}]"
                )
            return labels, self._empty((0, 0), logits.dtype)
        if labels.shape == logits.shape and labels.dtype.kind in "fiu":
            return self._empty((0,), np.int64), np.ascontiguousarray(labels, logits.dtype)
        return None

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
        pair = None
        if logits.ndim == 2 and logits.dtype in FLOAT_DTYPES and labels.ndim in (1, 2):
            pair = self._targets(logits, labels)
        if pair is None or (weights is not None and weights.shape != (logits.shape[0],)):
            return super().softmax_xent(
                logits, labels, dlogits, loss_out, loss_scale, weights, label_smoothing, hits
            )
        if hits is not None:
            self.count_correct(logits, labels, hits)
        logits = np.ascontiguousarray(logits)
        n = logits.shape[0]
        if (
            dlogits is None
            or dlogits.shape != logits.shape
            or not contiguous_floats(logits, dlogits)
        ):
            dlogits = np.empty_like(logits)
        t = logits.dtype.type
        w = self._empty((0,), logits.dtype) if weights is None else np.ascontiguousarray(weights, t)
        kernel = self._pick(self.k.softmax_xent, self.k.softmax_xent_parallel, logits)
        total = kernel(
            logits, *pair, dlogits, t(1.0 / n), logits.dtype == np.float32, w, t(label_smoothing)
        )
        self.record_kernel("softmax_xent", "numba-fused")
        if loss_out is None:
            return t(total / n), dlogits
        loss_out += (1.0 / n if loss_scale is None else loss_scale) * total
        return loss_out, dlogits

    def sigmoid_bce(
        self, logits: Any, targets: Any, weights: Any, totals: Any, dlogits: Any = None
    ) -> Any:
        """The fused step's kernel (``numba_cpu.sigmoid_bce``); the reference for other
        shapes and dtypes."""
        args = self.loss_kernel_arguments(logits, targets, weights, totals, dlogits)
        if args is None:
            return super().sigmoid_bce(logits, targets, weights, totals, dlogits)
        z, t, w, grad = args
        self.k.sigmoid_bce(z, t, self._empty((0,), z.dtype) if w is None else w, grad, totals)
        self.record_kernel("sigmoid_bce", "numba-fused")
        return grad

    def squared_error(
        self,
        outputs: Any,
        targets: Any,
        weights: Any,
        totals: Any,
        scale: float = 1.0,
        dout: Any = None,
    ) -> Any:
        """The fused step's kernel (``numba_cpu.squared_error``); the reference for other
        shapes and dtypes."""
        args = self.loss_kernel_arguments(outputs, targets, weights, totals, dout)
        if args is None:
            return super().squared_error(outputs, targets, weights, totals, scale, dout)
        y, t, w, grad = args
        w = self._empty((0,), y.dtype) if w is None else w
        self.k.squared_error(y, t, w, grad, float(scale), totals)
        self.record_kernel("squared_error", "numba-fused")
        return grad

    def count_correct(self, logits: Any, labels: Any, out: Any = None) -> Any:
        if not (
            logits.ndim == 2
            and labels.shape[:1] == logits.shape[:1]
            and labels.ndim in (1, 2)
            and (labels.ndim == 1 or labels.shape == logits.shape)
        ):
            return super().count_correct(logits, labels, out)
        logits = np.ascontiguousarray(logits)
        if labels.ndim == 1:
            pair = (np.ascontiguousarray(labels, np.int64), self._empty((0, 0), logits.dtype))
        else:
            pair = (self._empty((0,), np.int64), np.ascontiguousarray(labels, logits.dtype))
        hits = self.k.count_correct(logits, *pair)
        if out is None:
            return hits
        out += hits
        return out

    def _empty(self, shape: tuple, dtype: Any) -> np.ndarray:
        """A cached empty array: what the kernels take for an absent bias gradient, sample
        weights, labels or targets."""
        key = (shape, np.dtype(dtype))
        if key not in self._empties:
            self._empties[key] = np.empty(shape, dtype)
        return self._empties[key]

    # ------------------------------------------------------------------ dropout
    def dropout(
        self, x: Any, stream: Any, threshold: int, scale: float, out: Any, mask: Any
    ) -> Any:
        """One loop (``kernels/numba_random.py``), the reference's masks: 0.15 against 0.39 ms
        for 131,072 float32 elements (AMD EPYC)."""
        if not (
            x.ndim == 2
            and x.shape == out.shape == mask.shape
            and contiguous_floats(x, out, mask)
            and stream.dtype == np.int64
        ):
            return super().dropout(x, stream, threshold, scale, out, mask)
        from fastnet.backends.counter_rng import check_draw_size
        from fastnet.kernels.numba_random import dropout

        check_draw_size(x.size)
        dropout(x, stream, np.uint64(threshold), x.dtype.type(scale), out, mask)
        self.record_kernel("dropout", "numba")
        return out

    # ------------------------------------------------------------------ compiled step
    def compile_step(self, model: Any, batch_size: int, spec: Any) -> tuple[Any, str]:
        """A fused step (``fastnet.backends.numba_step``) when the model qualifies."""
        from fastnet.backends.numba_step import FusedDenseStep, fused_step_reason

        plan = model.step_plan()
        reason = fused_step_reason(plan)
        if reason:
            return None, reason
        return FusedDenseStep(model, batch_size, plan, spec), FusedDenseStep.description

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
        """``kernels.numba_cpu.<rule.kernel>_update`` over the flat group, scalars in the
        parameter dtype (``rule.derived_constants``, ``1 - beta``, computed in float64 and
        rounded once, last); the reference for rules without a kernel and for other layouts or
        dtypes, which the unchecked kernels must never see. The checked, typed arguments are
        kept per group (an arena's buffers never move), so a step pays one lookup."""
        key = (
            rule.kernel,
            id(p),
            id(g),
            *map(id, slots),
            id(s),
            constants,
            n_decay,
            wd,
            clip_value,
            self.flush_mode,
            forked_after_numba_launch(),  # (a child's serial kernel, not its parent's choice)
        )
        if s[6]:  # SKIP (advance_scalars): a mixed-precision step that overflowed
            return
        if compute is not None:  # mixed precision (not numba's): the reference
            return super().update(rule, p, g, slots, s, constants, n_decay, wd, clip_value, compute)
        call = self._update_calls.get(key)
        args = call.args() if call is not None else None
        if call is None or args is None:  # a new group, or ids of dead arrays come back
            if len(self._update_calls) > 64:
                self._update_calls.clear()
            built = self._update_call(rule, p, g, slots, s, constants, n_decay, wd, clip_value)
            call = self._update_calls[key] = built.dropped_from(self._update_calls, key)
            args = call.args()  # (its arrays are p, g, slots and s: alive here)
        if call.kernel is None or args is None:
            return super().update(rule, p, g, slots, s, constants, n_decay, wd, clip_value)
        if call.explicit and 0 < s[5] < call.explicit[len(constants) + 3]:
            args = (*args[: len(call.arrays)], *call.explicit)  # (a subnormal clip scale: the
        call.kernel(*args)  # mode would read it as 0; the explicit flush keeps it, as NumPy)
        self.record_kernel(f"update_{rule.kernel or type(rule).__name__}", "numba-fused")

    def _update_call(
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
    ) -> _UpdateCall:
        """The kernel and arguments of an update; no kernel where the reference must run."""
        serial = getattr(self.k, f"{rule.kernel}_update", None) if rule.kernel else None
        arrays = (p, g, *slots)
        if serial is None or not contiguous_floats(*arrays) or not _same_shape(*arrays):
            return _UpdateCall(None, (), ())
        size = int(p.size)
        parallel = getattr(self.k, f"{rule.kernel}_update_parallel")
        big = size >= self.parallel_min_updates and not forked_after_numba_launch()
        kernel = parallel if big else serial
        # subnormals are zero either way: by the CPU's flush-to-zero mode for this call (0.65x
        # the time of Adam's explicit selects on an Intel Xeon) or by those selects
        flush_mode = self.flush_mode and kernel is serial and rule.kernel in self.k.FLUSH_MODE_RULES
        t = p.dtype.type
        clip = np.inf if clip_value is None else clip_value
        scalars = [
            *map(t, constants),
            t(wd),
            min(max(int(n_decay), 0), size),
            t(clip),
            t(np.finfo(p.dtype).tiny),  # (the explicit flush; None: the CPU's mode)
            *map(t, rule.derived_constants(constants)),  # float64 on the host, rounded once
        ]
        explicit = tuple(scalars) if flush_mode else ()
        scalars[len(constants) + 3] = None if flush_mode else scalars[len(constants) + 3]
        return _UpdateCall(kernel, (*arrays, s), tuple(scalars), explicit)

    def advance_scalars(self, s: Any, checks: Any, constants: tuple) -> None:
        self.k.advance_scalars(s, checks, *map(float, constants))
        self.record_kernel("advance_scalars", "numba")

    def sum_squares(self, g: Any, out: Any) -> None:
        if not contiguous_floats(g):
            return super().sum_squares(g, out)
        self.k.sum_squares(g.reshape(-1), out)


#: rows per block of the parallel fused inference (predict_proba of 10,000 rows, Intel Xeon
#: model 207, 2 cores: 512 0.925x onnxruntime, 256 0.955x, 31 paired rounds; 1,024 and 2,500
#: slower in 15)
INFER_BLOCK = 512


class _Inference(NamedTuple):
    """``infer``'s arguments for one plan and input dtype (one tuple: a thread reads all)."""

    plan: weakref.ref  #: the plan's (its death drops the cache)
    dtype: Any  #: of the inputs
    args: tuple | None  #: ``dense_forward``'s after the input; None: not fused
    predictions: str  #: the loss's


class _UpdateCall(NamedTuple):
    """A fused update's kernel and arguments, kept per group so a step pays one lookup. Its
    arrays are held weakly: the backend, which lives as long as the process, must not keep a
    dead model's parameters and optimizer state alive (12 MB for one ``MLPClassifier((1024,))``
    fit); ``args()`` is None once one of them is gone."""

    kernel: Any  #: None: the NumPy reference runs
    arrays: tuple  #: parameters, gradients, slots and the device scalars (weakrefs, cached)
    scalars: tuple  #: the typed constants after them
    #: a flush-mode call's constants for the explicit flush instead (a subnormal clip scale)
    explicit: tuple = ()

    def dropped_from(self, calls: dict, key: tuple) -> _UpdateCall:
        """This call holding its arrays weakly, removed from ``calls`` when one of them dies."""

        def drop(_: Any) -> None:
            calls.pop(key, None)

        return self._replace(arrays=tuple(weakref.ref(a, drop) for a in self.arrays))

    def args(self) -> tuple | None:
        """The kernel's arguments (C-contiguous arrays flattened: views written in place)."""
        arrays = []
        for ref in self.arrays:
            a = ref()
            if a is None:
                return None
            arrays.append(a if a.ndim == 1 else a.reshape(-1))
        return (*arrays, *self.scalars)
