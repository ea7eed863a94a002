"""Every CUDA source fastnet builds compiles with NVRTC for sm_80 and sm_90, without a GPU; the
registers and spills ptxas reports are printed after the module's tests, and a spill fails.

Needs the ``gpu-check`` extra (pinned CuPy + NVRTC wheels). Without it the module skips, except in
CI (``CI`` set), where a missing toolchain fails."""

import os

import numpy as np
import pytest
from fastnet.bench import nvrtc_check

MISSING = nvrtc_check.missing()
if MISSING and not os.environ.get("CI"):
    pytest.skip(f"no NVRTC toolchain: {MISSING}", allow_module_level=True)

if not MISSING:
    from fastnet.kernels.cuda_source import CUPY_HEADERS, elementwise_source
    from fastnet.kernels.cupy_gpu import kernel_sources

SOURCES = kernel_sources() if not MISSING else []


def test_toolchain_is_installed():
    assert not MISSING, f"CI needs the gpu-check extra: {MISSING}"
    assert nvrtc_check.version() >= (12, 0)


@pytest.fixture(scope="module")
def ptxas_table(request):
    """Collects what ptxas reported and prints it once the module's tests have run."""
    rows: list[str] = []
    yield rows
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and rows:
        reporter.write_sep("-", f"NVRTC {nvrtc_check.version()}: registers and spills")
        for row in rows:
            reporter.write_line(row)


@pytest.mark.parametrize("arch", nvrtc_check.ARCHS)
@pytest.mark.parametrize(("name", "source"), SOURCES, ids=[n for n, _ in SOURCES])
def test_kernel_compiles_without_spills(name, source, arch, ptxas_table):
    infos = nvrtc_check.check(source, arch)
    ptxas_table.extend(f"{name:28s} {info}" for info in infos)
    assert [i.arch for i in infos] == [arch]
    assert all(i.registers > 0 for i in infos)
    spilled = [str(i) for i in infos if i.spills]
    assert not spilled, f"{name} spills registers: {spilled}"


def test_every_kernel_family_is_enumerated():
    names = {n.split("[")[0] for n, _ in SOURCES}
    expected = {
        "act_bwd_bias",
        "softmax_xent",
        "sigmoid_bce",
        "squared_error",
        "count_correct",
        "advance_scalars",
        "sum_squares_partial",
        "sum_squares_total",
        "fastnet_sgd",
        "fastnet_momentum",
        "fastnet_adagrad",
        "fastnet_rmsprop",
        "fastnet_adam",
        "relu_mask",
    }
    expected |= {f"fastnet_{k}_{c}" for k in ("bias_act", "act", "act_grad") for c in range(5)}
    halves = ("float16", "bfloat16")  # mixed precision's kernels, for both half types
    expected |= {"unscale", "update_loss_scale"}
    expected |= {f"fastnet_{d}_{h}" for d in ("to", "from") for h in halves}
    kinds = ("bias_act", "act", "act_grad")
    expected |= {f"fastnet_{k}_{h}" for k in ("dropout", "dropout_grad") for h in halves}
    expected |= {f"fastnet_{k}_{h}_{c}" for k in kinds for h in halves for c in range(5)}
    assert expected <= names, sorted(expected - names)
    assert {n for n, _ in SOURCES if n.startswith("fastnet_sgd")} == {
        "fastnet_sgd[float32]",
        "fastnet_sgd[float64]",
        "fastnet_sgd_float16[float16]",  # float32 master weights writing their half copy
        "fastnet_sgd_bfloat16[bfloat16]",
    }


# A kernel that keeps 96 values live while allowed 24 registers: ptxas must spill.
_SPILLER = r"""
extern "C" __global__ void spiller(const float* __restrict__ x, float* __restrict__ y, int n) {
    float r[96];
    #pragma unroll
    for (int j = 0; j < 96; ++j) r[j] = x[(threadIdx.x + 37 * j) % n];
    float s = 0;
    #pragma unroll
    for (int k = 0; k < 8; ++k) {
        #pragma unroll
        for (int j = 0; j < 96; ++j) r[j] = r[j] * r[(j + k + 1) % 96] + s;
        s += r[k];
    }
    #pragma unroll
    for (int j = 0; j < 96; ++j) y[threadIdx.x * 96 + j] = r[j];
}
"""


@pytest.mark.parametrize("arch", nvrtc_check.ARCHS)
def test_spills_are_detected(arch):
    (squeezed,) = nvrtc_check.check(_SPILLER, arch, ("--maxrregcount=24",))
    assert squeezed.spills and squeezed.spill_stores > 0 and squeezed.spill_loads > 0, squeezed
    assert squeezed.registers <= 24
    (roomy,) = nvrtc_check.check(_SPILLER, arch)
    assert not roomy.spills, roomy


def test_compile_errors_carry_the_log():
    with pytest.raises(RuntimeError, match="undefined_name"):
        nvrtc_check.compile_log('extern "C" __global__ void f() { undefined_name = 1; }', "80")


# The template against CuPy's own (private) generator, for the pinned CuPy: argument kinds are the
# enum values of cupy._core._kernel._ArgKind in CuPy 14 (1 ndarray, 2 indexer, 3 scalar).
_TEMPLATE_CASES = [
    ("raw T b, int32 ncol, T alpha", "T z", "T v = z + b[i % ncol]; z = v;", {}, ()),
    ("T g, raw T sc, bool nesterov, int64 n", "T p, T m", "p -= sc[0] * g; m = n;", {}, ("g",)),
    (
        "T y, T dy, T alpha",
        "T dz",
        "dz = dy * f(y);",
        {"preamble": "__device__ float f(float v) { return v; }", "loop_prep": "int k = 0"},
        ("y", "dy"),
    ),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("ins", "outs", "op", "kw", "arrays"),
    _TEMPLATE_CASES,
    ids=["raw-int", "bool-int64-outputs", "preamble-loop_prep"],
)
def test_elementwise_template_matches_the_generator(ins, outs, op, kw, arrays, dtype):
    import cupy
    from cupy._core import _carray, _kernel, _scalar

    kernel = cupy.ElementwiseKernel(ins, outs, op, "template_case", **kw)
    t = np.dtype(dtype)
    types = [t if p.dtype is None else np.dtype(p.dtype) for p in kernel.in_params]
    infos = []
    for p, d in zip(kernel.in_params, types):
        if p.raw or p.name in arrays:
            infos.append(_kernel._ArgInfo(1, cupy.ndarray, d, 1, True, True))
        else:
            infos.append(_kernel._ArgInfo(3, _scalar.CScalar, d, 0, True, True))
    infos += [_kernel._ArgInfo(1, cupy.ndarray, t, 1, True, True) for _ in kernel.out_params]
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, 1, True, True))
    type_map = kernel._decide_params_type(tuple(types), (t,) * kernel.nout)[2]
    theirs = _kernel._get_elementwise_kernel_code(
        tuple(infos),
        type_map,
        kernel.params,
        kernel.operation,
        kernel.name,
        kernel.preamble,
        kw.get("loop_prep", ""),
        kw.get("after_loop", ""),
    )
    header = "\n".join(f"#include <{h}>" for h in CUPY_HEADERS)
    assert elementwise_source(kernel, dtype, arrays) == header + theirs
    nvrtc_check.check(header + theirs, "80")
