"""The CPU emulation of CUDA kernels (``cuda_emulator.py``) runs CUDA's semantics and reports
what a GPU would get wrong: its own checks, on small kernels written to break them."""

import os
import types

import cuda_emulator as emu
import emulated_cupy
import numpy as np
import pytest

if (why := emu.missing()) and not os.environ.get("CI"):
    pytest.skip(why, allow_module_level=True)

BLOCK_SUM = r"""
// Per block: a shared-memory tree reduction, then one atomicAdd per block.
extern "C" __global__ void block_sum(const float* x, int n, double* out) {
    __shared__ double part[128];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    part[threadIdx.x] = i < n ? (double)x[i] : 0.0;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, part[0]);
}
"""


def test_a_reduction_over_blocks_barriers_and_atomics():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    out = np.zeros(1)
    emu.RawKernel(BLOCK_SUM, "block_sum")((8,), (128,), (x, np.int32(x.size), out))
    assert out[0] == pytest.approx(x.astype(np.float64).sum(), rel=1e-12)


def test_a_kernel_declared_exact_may_not_sum_floats_atomically(monkeypatch):
    """fastnet's clip norm must be the same bits on every data-parallel rank: its kernels are
    declared ``EXACT`` and their writes compared bit for bit in two block orders (the earlier
    kernel's atomicAdd over blocks differed); the deterministic ``sum_squares`` passes."""
    x = np.random.default_rng(0).standard_normal(1024).astype(np.float32) * 1e3
    x[::7] *= 1e-6  # (magnitudes that make the summation order show)
    monkeypatch.setattr(emu, "EXACT", emu.EXACT | {"exact_sum"})
    with pytest.raises(emu.EmulationError, match="differs .* in another order"):
        emu.RawKernel(BLOCK_SUM.replace("block_sum", "exact_sum"), "exact_sum")(
            (8,), (128,), (x, np.int32(x.size), np.zeros(1))
        )
    k = emu.load()
    for n in (1024, 300_000):  # one block; the most blocks, each summing several stripes
        g = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 1e3
        out = np.full(1, 0.5)
        k.sum_squares(g, out)
        assert out[0] == pytest.approx(0.5 + (g.astype(np.float64) ** 2).sum(), rel=1e-12)


def test_a_missing_barrier_reads_what_other_threads_have_not_written():
    racy = BLOCK_SUM.replace("    __syncthreads();\n    for", "    for", 1)
    racy = racy.replace("        __syncthreads();\n", "").replace("block_sum", "racy_sum")
    x = np.ones(128, np.float32)
    out = np.zeros(1)
    with pytest.raises(emu.EmulationError, match="differs .* in another order"):
        emu.RawKernel(racy, "racy_sum")((1,), (128,), (x, np.int32(128), out))
    assert out[0] == 0.0  # a failed launch writes nothing back


def test_blocks_writing_one_address_without_an_atomic_race():
    source = r"""
    extern "C" __global__ void lost_updates(const float* x, float* total) {
        total[0] += x[blockIdx.x];  // every block: a read-modify-write of one address
    }
    """
    x, total = np.ones(4, np.float32), np.zeros(1, np.float32)
    with pytest.raises(emu.EmulationError, match="blocks 0 and 1 both wrote"):
        emu.RawKernel(source, "lost_updates")((4,), (1,), (x, total))
    atomic = source.replace("total[0] += x[blockIdx.x]", "atomicAdd(total, x[blockIdx.x])")
    emu.RawKernel(atomic.replace("lost_updates", "atomic_adds"), "atomic_adds")(
        (4,), (1,), (x, total)
    )
    assert total[0] == 4.0


def test_barriers_of_different_lines_and_uninitialized_shared_memory():
    source = r"""
    extern "C" __global__ void split(float* y) {
        __shared__ float s[64];
        if (threadIdx.x < 32) { s[threadIdx.x] = 1.0f; __syncthreads(); }
        else { __syncthreads(); }
        y[threadIdx.x] = s[threadIdx.x];  // slots 32-63 never written
    }
    """
    y = np.zeros(64, np.float32)
    with pytest.raises(emu.EmulationError, match="different __syncthreads"):
        emu.RawKernel(source, "split")((1,), (64,), (y,))
    same = source.replace(
        "if (threadIdx.x < 32) { s[threadIdx.x] = 1.0f; __syncthreads(); }\n"
        "        else { __syncthreads(); }",
        "if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;\n        __syncthreads();",
    ).replace("split", "unset")
    emu.RawKernel(same, "unset")((1,), (64,), (y,))
    assert (y[:32] == 1).all() and np.isnan(y[32:]).all()  # garbage, as on a GPU, not zeros


WARP = r"""
extern "C" __global__ void warp_total(const int* x, int* out, int early) {
    int lane = threadIdx.x & 31;
    if (early && lane >= 16) return;
    int v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    out[threadIdx.x] = v;
}
"""


def test_warp_shuffles_and_lanes_that_have_exited():
    x = np.arange(64, dtype=np.int32)
    out = np.zeros(64, np.int32)
    kernel = emu.RawKernel(WARP, "warp_total")
    kernel((1,), (64,), (x, out, np.int32(0)))
    np.testing.assert_array_equal(out, [x[:32].sum()] * 32 + [x[32:].sum()] * 32)
    with pytest.raises(emu.EmulationError, match="lane that has exited|lanes of the warp returned"):
        kernel((1,), (64,), (x, out, np.int32(1)))


def test_a_deadlock_is_reported_not_waited_for():
    source = r"""
    extern "C" __global__ void stuck(float* x) {
        if (threadIdx.x < 16) __syncthreads();
        else x[threadIdx.x] = __shfl_xor_sync(0xffffffff, x[threadIdx.x], 1);
    }
    """
    with pytest.raises(emu.EmulationError, match="deadlock"):
        emu.RawKernel(source, "stuck")((1,), (32,), (np.zeros(32, np.float32),))


def test_launch_arguments_are_checked_as_the_gpu_would_misread_them():
    kernel = emu.RawKernel(BLOCK_SUM, "block_sum")
    x, out = np.ones(10, np.float32), np.zeros(1)
    with pytest.raises(emu.EmulationError, match="a int64 passed for a int32 parameter"):
        kernel((1,), (128,), (x, 10, out))  # a Python int goes in as 8 bytes
    with pytest.raises(emu.EmulationError, match="float64 array for float32 elements"):
        kernel((1,), (128,), (x.astype(np.float64), np.int32(10), out))
    with pytest.raises(emu.EmulationError, match="not C-contiguous"):
        kernel((1,), (128,), (np.ones(20, np.float32)[::2], np.int32(10), out))
    with pytest.raises(emu.EmulationError, match="takes 3 arguments, 2 given"):
        kernel((1,), (128,), (x, np.int32(10)))
    with pytest.raises(emu.EmulationError, match="more than 1024 threads"):
        kernel((1,), (2048,), (x, np.int32(10), out))


def test_writes_past_an_array_and_elementwise_indexes_past_a_raw_array():
    source = r"""
    extern "C" __global__ void overrun(float* y, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i <= n) y[i] = 1.0f;  // one past the end
    }
    """
    y = np.zeros(32, np.float32)
    with pytest.raises(emu.EmulationError, match="wrote outside"):
        emu.RawKernel(source, "overrun")((1,), (64,), (y, np.int32(32)))
    assert (y == 0).all()  # nothing written back from a failed launch
    shifted = emu.ElementwiseKernel("raw T x", "T y", "y = x[i + 1]", "shifted")
    with pytest.raises(emu.EmulationError, match="CArray index 4 outside"):
        shifted(np.arange(4, dtype=np.float32), np.empty(4, np.float32))


def test_elementwise_types_follow_cupy():
    """CuPy 14: arrays fix a placeholder type (they must agree), scalars never do and are cast
    to it."""
    scale = emu.ElementwiseKernel("T x, T a", "T y", "y = x * a", "scale")
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(scale(x, 2.0), x * 2)
    np.testing.assert_array_equal(scale(x, np.float64(0.1)), x * np.float32(0.1))  # cast
    with pytest.raises(emu.EmulationError, match="x is float32, T is already float64"):
        scale(x, 2.0, np.empty(5, np.float64))  # the output fixes T first
    fill = emu.ElementwiseKernel("T a", "float32 y", "y = a", "fill")
    with pytest.raises(emu.EmulationError, match="no argument fixes the type T"):
        fill(np.float64(1.0), np.empty(3, np.float32))
    half = scale(x.astype(np.float16), np.float16(0.1))
    np.testing.assert_array_equal(half, (x.astype(np.float16) * np.float16(0.1)))


def test_the_kernels_module_runs_on_the_stand_in_and_leaves_cupy_alone():
    import sys

    before = sys.modules.get("cupy")
    module = emu.load()
    assert sys.modules.get("cupy") is before
    assert module.cp.RawKernel is emu.RawKernel
    z, b = np.array([[-1.0, 2.0]], np.float32), np.array([0.5, -3.0], np.float32)
    module.bias_act(z, b, 1, 0.0)  # ReLU
    np.testing.assert_array_equal(z, [[0.0, 0.0]])


def _lt_module():
    module = emu.load("fastnet.kernels.cublaslt")
    stand_in = emu.stand_in()
    stand_in.cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=0, is_capturing=bool)
    module._cupy = lambda: stand_in
    return module


def test_the_fake_cublaslt_computes_gemms_with_epilogues_and_tf32():
    lt_module = _lt_module()
    lt = lt_module.LtGemm(emulated_cupy.fake_cublas_path())
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((20, 30)).astype(np.float32), rng.standard_normal((30, 10))
    w, b = w.astype(np.float32), rng.standard_normal(10).astype(np.float32)
    out = np.empty((20, 10), np.float32)
    assert lt.matmul(x, w, out, False, b, True, False)
    np.testing.assert_allclose(out, np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)
    assert lt.matmul(np.asfortranarray(x), w, out, True, None, False, True)  # timed candidates
    err = np.abs(out - x.astype(np.float64) @ w).max()
    assert 1e-5 < err < 5e-2  # TF32 rounds the operands to 10 mantissa bits


def test_the_fake_cublaslt_refuses_what_cublaslt_refuses():
    import ctypes

    lt_module = _lt_module()
    lt = lt_module.LtGemm(emulated_cupy.fake_cublas_path())
    with pytest.raises(RuntimeError, match="status 7"):  # an attribute of the wrong size
        desc = ctypes.c_void_p()
        lt.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), lt_module.COMPUTE_32F, 0)
        lt._set(lt.lib.cublasLtMatmulDescSetAttribute, desc, 3, ctypes.c_int64(1))
    desc = ctypes.c_void_p()
    lt.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), lt_module.COMPUTE_32F, 0)
    found = ctypes.c_int(0)
    results = (lt_module._HeuristicResult * 1)()

    def heuristic(*shapes):  # (rows, cols, ld) of A, B and D, float32
        layouts = [ctypes.c_void_p() for _ in shapes]
        for handle, shape in zip(layouts, shapes):
            assert lt.lib.cublasLtMatrixLayoutCreate(ctypes.byref(handle), 0, *shape) == 0
        a, b, d = layouts
        args = (lt.handle, desc, a, b, d, d, lt.preference, 1, results, ctypes.byref(found))
        return lt.lib.cublasLtMatmulAlgoGetHeuristic(*args), found.value

    assert heuristic((8, 4, 8), (4, 5, 4), (8, 5, 8)) == (0, 1)
    assert heuristic((8, 4, 4), (4, 5, 4), (8, 5, 8)) == (7, 0)  # ld shorter than the rows
    assert heuristic((8, 4, 8), (3, 5, 3), (8, 5, 8)) == (7, 0)  # k of A and B differ


def test_an_algorithm_used_on_less_aligned_operands_faults():
    """A plan chosen for 256-byte aligned operands, run on ones at a 4-byte offset, is a
    misaligned-address fault on a GPU: the fake aborts the process (here a child)."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import numpy as np, emulated_cupy, test_cuda_emulator as t
module = t._lt_module()
lt = module.LtGemm(emulated_cupy.fake_cublas_path())
x, w = np.ones((64, 64), np.float32), np.ones((64, 64), np.float32)
arena = np.zeros(64 * 64 + 64 + 1, np.float32)
out = arena[64:64 + 64 * 64].reshape(64, 64)  # 256-byte aligned
key, plan = lt._plan(x, w, out, module.Epilogue(), False, False)
lt._launch(plan, x, w, arena[1:1 + 64 * 64].reshape(64, 64), module.Epilogue())
"""
    here = Path(__file__).parent
    env = {**__import__("os").environ, "PYTHONPATH": str(here)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "less aligned than its algorithm" in result.stderr, result.stderr[-2000:]


def test_the_emulated_backend_refuses_allocations_and_host_copies_in_a_capture():
    """Allocations reach the memory hook of ``CupyBackend.capture`` (as CuPy's pool calls
    it); without it the emulator refuses them itself, as it refuses a copy to the host."""
    from capture_backend import CaptureError

    from fastnet.backends.graph_step import CaptureObstacleError

    be = emulated_cupy.emulated_cupy_backend()
    x = be.asarray(np.ones(4, np.float32))
    allocating = (
        lambda: be.xp.zeros(3),
        lambda: be.xp.ascontiguousarray(x[::2]),  # a strided view: copied
        lambda: be.k.cast(x, be.xp.empty(4, np.float16)),
        lambda: x * 2,
        lambda: x.astype(np.float64),
    )
    with be.step_stream():
        for work in allocating:
            with pytest.raises(CaptureObstacleError, match="allocation of [0-9]+ bytes"):
                be.capture(work)
        with pytest.raises(CaptureObstacleError, match="Error: the current stream is capturing"):
            be.capture(lambda: be.to_numpy(x))  # (a sync: CuPy's RuntimeError, as an obstacle)
        be.capture(lambda: be.xp.ascontiguousarray(x))  # no copy: allowed
        for work in allocating:  # the emulator's own guard, as a capture without the hook
            be.begin_capture()
            with pytest.raises((CaptureError, RuntimeError), match="allocates"):
                work()
            be.end_capture()


def test_gemm_autotune_times_candidates_and_skips_one_that_fails():
    """The fake's heuristic offers three algorithms, the second failing at launch: the timed
    choice (``gemm_autotune``) skips it and the GEMMs stay right."""
    from fastnet.backends.base import Act

    be = emulated_cupy.emulated_cupy_backend()
    be.gemm_autotune = True
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((40, 24)).astype(np.float32), rng.standard_normal((24, 16))
    w, b = w.astype(np.float32), rng.standard_normal(16).astype(np.float32)
    got = be.linear(be.asarray(x), be.asarray(w), be.asarray(b), Act.LINEAR)
    np.testing.assert_allclose(be.to_numpy(got), x @ w + b, rtol=1e-5, atol=1e-5)
    plans = be.lt.lt_gemm(be._cublas_path).plans
    assert plans and all(p is not None and p.result.algo[6] != 1 for p in plans.values())


def test_a_device_error_met_in_a_cublaslt_call_is_not_taken_for_cublaslts():
    """An earlier kernel's CUDA error surfacing at cuBLASLt's host sync propagates and leaves
    cuBLASLt on (it is not the library's failure)."""
    be = emulated_cupy.emulated_cupy_backend()

    def fails(lt):
        raise be.xp.cuda.runtime.CUDARuntimeError("cudaErrorIllegalAddress")

    def launch_fails(lt):  # a RawKernel launch (the mask probe's) raises the driver's error
        raise be.xp.cuda.driver.CUDADriverError("CUDA_ERROR_ILLEGAL_ADDRESS")

    with pytest.raises(RuntimeError, match="IllegalAddress"):
        be._lt_call(fails)
    with pytest.raises(RuntimeError, match="ILLEGAL_ADDRESS"):
        be._lt_call(launch_fails)
    assert be._lt_reason == ""
    assert be._lt_call(lambda lt: (_ for _ in ()).throw(OSError("no library"))) is False
    assert "no library" in be._lt_reason


def test_cupy_capture_runs_on_emulated_streams():
    """``CupyBackend.capture`` and ``step_stream`` themselves: no capture on the default
    stream, the step stream current inside, a failing capture ends with fn's own error."""
    be = emulated_cupy.emulated_cupy_backend()
    x = be.asarray(np.arange(4, dtype=np.float32))
    with pytest.raises(RuntimeError, match="non-default stream"):
        be.capture(lambda: be.scale(x, 2.0))
    with be.step_stream():
        assert be.xp.cuda.get_current_stream().ptr != 0
        graph = be.capture(lambda: be.scale(x, 2.0))
        np.testing.assert_array_equal(be.to_numpy(x), [0, 1, 2, 3])  # a capture runs nothing
        graph.replay()
        graph.replay()
        np.testing.assert_array_equal(be.to_numpy(x), [0, 4, 8, 12])
        with pytest.raises(ZeroDivisionError):
            be.capture(lambda: 1 / 0)
        assert not be.capturing
    assert be.xp.cuda.get_current_stream().ptr == 0


def test_the_emulated_device_refuses_host_arrays_in_kernels():
    """Device memory is ``DeviceArray``: the backend's arrays are, host NumPy arrays are not,
    and its kernels refuse them (a GPU would fault on a host pointer)."""
    be = emulated_cupy.emulated_cupy_backend()
    host = np.zeros((2, 3), np.float32)
    device = be.asarray(host)
    assert be.is_native(device) and not be.is_native(host)
    assert not isinstance(be.to_numpy(device), emu.DeviceArray)
    with pytest.raises(emu.EmulationError, match="host"):
        be.k.bias_act(host, be.asarray(np.zeros(3, np.float32)), 1, 0.0)
    with pytest.raises(emu.EmulationError, match="host"):
        be.k.sum_squares(device.reshape(-1), np.zeros(1))
    be.k.sum_squares(device.reshape(-1), be.zeros((1,), np.float64))


def test_the_relu_epilogue_is_asked_about_once_per_dtype(monkeypatch):
    from fastnet.backends.base import Act

    be = emulated_cupy.emulated_cupy_backend()
    lt = be.lt.lt_gemm(be._cublas_path)
    asked = []
    probe = lt.relu_keeps_nan
    monkeypatch.setattr(lt, "relu_keeps_nan", lambda *a: asked.append(a) or probe(*a))
    x, w = be.asarray(np.ones((8, 4), np.float32)), be.asarray(np.ones((4, 16), np.float32))
    b = be.asarray(np.zeros(16, np.float32))
    for _ in range(3):
        be.linear(x, w, b, Act.RELU)
    assert len(asked) == 1


@pytest.mark.parametrize("version, header", [("13.6.0", "carray"), ("14.2.0", "float16")])
def test_float16_kernels_include_the_header_of_the_installed_cupy(monkeypatch, version, header):
    """CuPy 13 defines its float16 class in carray.cuh; CuPy 14 moved it to float16.cuh (no
    such header before): the half kernels include the one of the CuPy they compile with."""
    monkeypatch.setattr(emu, "CUPY_VERSION", [version])
    k = emu.load()
    assert k._HALF_HEADER["float16"] == f"#include <cupy/{header}.cuh>\n"
    x = np.linspace(-2, 2, 8, dtype=np.float32)
    out = np.empty(8, np.float16)
    k.cast(x, out)
    np.testing.assert_array_equal(out, x.astype(np.float16))


def test_an_allocation_refused_in_a_cublaslt_call_is_not_taken_for_cublaslt_failing():
    """A cuBLASLt workspace first allocated inside a capture was refused by the memory hook,
    and _lt_call took that for cuBLASLt failing: cuBLAS for good, the capture 'succeeded'."""
    from fastnet.backends.base import Act
    from fastnet.backends.graph_step import CaptureObstacleError

    be = emulated_cupy.emulated_cupy_backend()
    x, w = be.asarray(np.ones((8, 4), np.float32)), be.asarray(np.ones((4, 16), np.float32))
    b, out = be.asarray(np.zeros(16, np.float32)), be.xp.empty((8, 16), np.float32)
    with be.step_stream():
        be.linear(x, w, b, Act.RELU, out=out)  # the warm-up: this stream's workspace
        be.lt.lt_gemm(be._cublas_path).workspaces.clear()  # (a stream it did not meet)
        with pytest.raises(CaptureObstacleError, match="allocation"):
            be.capture(lambda: be.linear(x, w, b, Act.RELU, out=out))
    assert be._lt_reason == ""
