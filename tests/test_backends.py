import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import backend_params

import fastnet
from fastnet.backends import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    probe,
    set_backend,
    use_backend,
)


def test_import_fastnet_imports_neither_numba_nor_cupy():
    code = (
        "import sys, fastnet; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('numba', 'cupy')]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError, match="numpy, numba, cupy"):
        get_backend("tensorflow")


def test_device_index_only_for_cupy():
    with pytest.raises(ValueError, match="only cupy takes a device index"):
        get_backend("numba:1")
    for spec in ("cupy:x", "cupy:-1", "cupy:"):  # (cupy's, said to take none)
        with pytest.raises(ValueError, match="a device index is an integer >= 0"):
            get_backend(spec)


def test_unavailable_backend_raises_with_reason_not_fallback():
    missing = [n for n in ("numba", "cupy") if not probe(n).available]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(BackendUnavailableError, match=missing[0]):
        get_backend(missing[0])


def test_missing_cuda_device_index_is_an_error():
    if not probe("cupy").available:
        pytest.skip("cupy unavailable")
    with pytest.raises(BackendUnavailableError, match="device 99"):
        get_backend("cupy:99")


_FAKE_FAILURES = """
import builtins, sys, warnings
real = builtins.__import__
def failing(name, *args, **kw):
    if name == FAIL:
        raise ERROR
    return real(name, *args, **kw)
builtins.__import__ = failing
import fastnet as fn
from fastnet.backends import probe, get_backend, AUTO_ORDER
import fastnet.backends as b
b.AUTO_ORDER = ("numba", "numpy")
print(probe("numba").reason)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(fn.Sequential([fn.Dense(1)]).backend.name)  # (auto, through the model's code)
    get_backend("auto")
print(len(caught), caught[0].message if caught else "")
print(caught[0].filename if caught else "<string>")  # (the user's line, not fastnet's)
"""


@pytest.mark.parametrize(
    ("fail", "error", "reason", "warned"),
    [
        ("numba", "ModuleNotFoundError('x', name='numba')", "numba is not installed; install", 0),
        (
            "numba",
            "ValueError('Number of threads must be > 0')",
            "installed but fails to import",
            1,
        ),
        (
            "fastnet.kernels.numba_cpu",
            "RuntimeError(\"cannot cache function 'f': no locator available for file k.py\")",
            "cannot write its compile cache .* set NUMBA_CACHE_DIR",
            1,
        ),
    ],
)
def test_a_backend_that_cannot_run_says_why_and_auto_says_it_passed_it_over(
    fail, error, reason, warned
):
    """A read-only install without a cache folder crashed numba at its first kernel while
    auto chose it; a bad NUMBA_* variable said 'install numba'; auto passed over an installed
    backend silently. Each in a fresh process."""
    code = f"FAIL, ERROR = {fail!r}, {error}\n" + _FAKE_FAILURES
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.search(reason, lines[0]), lines[0]
    assert lines[1] == "numpy" and lines[2].startswith(str(warned)), lines
    if warned:  # once, naming the backend passed over and why, at the user's line
        assert "backend 'auto' chose numpy: numba is installed but unusable" in lines[2]
    assert lines[3] == "<string>", lines[3]


def test_auto_warns_on_rank_0_of_an_mpi_job_only():
    """Every rank of an mpirun job printed the same 'auto chose ...' warning."""
    code = "FAIL, ERROR = 'numba', ValueError('Number of threads must be > 0')\n" + _FAKE_FAILURES
    for rank, warned in (("1", "0"), ("0", "1")):
        env = {**os.environ, "OMPI_COMM_WORLD_RANK": rank}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[1] == "numpy" and lines[2].startswith(warned), (rank, lines)


def test_auto_picks_an_available_backend():
    assert get_backend("auto").name.split(":")[0] in available_backends()


def test_selection_order(monkeypatch):
    monkeypatch.setenv("FASTNET_BACKEND", "numpy")
    assert get_backend().name == "numpy"
    other = "numba" if probe("numba").available else "numpy"
    with use_backend(other):
        assert get_backend().name == other
        assert get_backend("numpy").name == "numpy"  # explicit argument wins
    assert get_backend().name == "numpy"


def test_set_backend_validates_and_clears(monkeypatch):
    monkeypatch.delenv("FASTNET_BACKEND", raising=False)
    with pytest.raises(ValueError):
        set_backend("nope")
    set_backend("numpy")
    try:
        assert get_backend().name == "numpy"
    finally:
        set_backend(None)


def test_env_var_unknown_backend_is_reported(monkeypatch):
    monkeypatch.setenv("FASTNET_BACKEND", "jax")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        get_backend()


def test_model_records_which_kernel_ran(backend):
    import numpy as np

    model = fastnet.Sequential([fastnet.Dense(8, "relu"), fastnet.Dense(3)], backend=backend)
    X = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
    model.fit(X, np.arange(16) % 3, epochs=1, verbose=0)
    report = backend.kernel_report
    assert {"softmax_xent", "update_adam"} <= set(report)
    # the Dense forward: a GEMM and the bias/activation kernel, or one cuBLASLt call (cupy)
    forward = report.get("linear", "") + " " + report.get("bias_act", "")
    assert "bias_act" in report or "cublaslt" in forward
    # the backward: the activation-gradient kernel, or cuBLASLt's gradient epilogues (cupy)
    ops = ("act_backward_bias", "input_gradient", "weight_gradients")
    backward = " ".join(report.get(op, "") for op in ops)
    assert "act_backward_bias" in report or "cublaslt-drelu" in backward
    if backend.name != "numpy":
        assert "fused" in forward or "cublaslt" in forward
        assert "fused" in backward or "cublaslt-drelu" in backward
        assert "fused" in report["update_adam"] and "fused" in report["softmax_xent"]


def test_kernel_records_are_scoped_nested_and_per_thread(backend):
    """``record_kernels`` blocks see what ran inside them (nested ones too), another thread's
    ops stay out, and ``kernel_report`` (read-only) is the backend's latest record."""
    import threading

    import numpy as np

    a = backend.asarray(np.ones((4, 3), np.float32))
    b = backend.asarray(np.ones((3, 2), np.float32))
    out = backend.empty((4, 2), np.float32)
    with fastnet.record_kernels() as outer:
        with fastnet.record_kernels(backend) as inner:
            backend.matmul(a, b, out)
            assert backend.kernel_report is inner and set(inner) == {"matmul"}
        thread = threading.Thread(target=backend.softmax, args=(out,))
        thread.start()
        thread.join()
    assert set(outer) == {"matmul"}
    assert backend.kernel_report is inner and "softmax" in inner  # the latest record goes on
    backend.softmax(out)
    assert "softmax" not in outer
    with pytest.raises(AttributeError):
        backend.kernel_report = {}


def test_an_op_run_two_ways_in_a_block_lists_both():
    """A Dense without a bias ran bias_act's reference while the others ran the kernel: the
    record kept the last one only, as if the kernel never ran."""
    from fastnet.backends.report import note_kernel, record_kernels

    last: dict = {}
    with record_kernels() as ran:
        for impl in ("numba-fused", "reference", "numba-fused"):
            note_kernel(last, "bias_act", impl)
    assert ran == {"bias_act": "numba-fused + reference"}
    assert last == {"bias_act": "numba-fused"}  # (a backend's report outside a block: the latest)


def test_evaluate_records_its_kernels(backend):
    import numpy as np

    model = fastnet.mlp(5, (8,), 3, backend=backend, seed=0)
    X = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
    model.fit(X, np.arange(16) % 3, epochs=1, verbose=0)
    with fastnet.record_kernels() as ran:
        model.evaluate(X, np.arange(16) % 3)
    # cupy's Dense forward is one cuBLASLt call with the bias epilogue, recorded as "linear"
    assert backend.kernel_report == ran and {"matmul", "linear"} & set(ran)
    assert "update_adam" not in ran


def test_cli_backends_lists_all(capsys):
    from fastnet.cli import main

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "numba", "cupy"):
        assert name in out


def test_numba_backend_does_not_override_user_omp_policy():
    if not probe("numba").available:
        pytest.skip("numba unavailable")
    code = "import os, fastnet; fastnet.get_backend('numba'); print(os.environ['OMP_WAIT_POLICY'])"
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "ACTIVE", out.stderr


@pytest.mark.parametrize(
    "constants",
    [(1e-8, 0.9, 0.999, 1.0, 0.0, 0.0), (1e-7, 0.9, 0.99, 1.0, 0.01, 1.0), (0, 0, 0, 0, 0, 0.5)],
)
def test_numpy_host_scalars_equal_the_array_reference(constants):
    """The NumPy backend advances the step scalars in Python floats; the values must be the
    base class's array arithmetic bit for bit, a NaN gradient norm included."""
    from fastnet.backends.base import Backend
    from fastnet.backends.numpy_backend import NumpyBackend

    for norm_sq in (0.0, 0.3, 100.0, np.nan, np.inf):
        s_ref, s_host = np.zeros(8), np.zeros(8)
        s_ref[0] = s_host[0] = 3e-3
        for _ in range(5):
            Backend().advance_scalars(s_ref, np.array([norm_sq, 0.0]), constants)
            NumpyBackend().advance_scalars(s_host, np.array([norm_sq, 0.0]), constants)
        assert np.array_equal(s_ref, s_host, equal_nan=True), (norm_sq, s_ref, s_host)


@pytest.mark.parametrize("name", backend_params(["numpy", "numba"]))
def test_a_non_finite_gradient_count_skips_the_step(name):
    """``checks[1] > 0`` (mixed precision's overflow) sets SKIP and leaves every scalar, and
    ``update`` leaves parameters and slots, as they were; every backend alike."""
    from fastnet.backends.base import Backend
    from fastnet.optimizers import Adam

    rule = Adam(1e-2)
    for be in (Backend(), get_backend(name)):
        s = np.zeros(8)
        s[0] = 1e-2
        be.advance_scalars(s, np.array([0.0, 0.0]), rule.scalar_constants())
        p, g = np.linspace(-1, 1, 40), np.full(40, 0.5)
        slots = (np.full(40, 0.1), np.full(40, 0.2))
        before = [a.copy() for a in (s, p, *slots)]
        be.advance_scalars(s, np.array([0.0, 3.0]), rule.scalar_constants())
        assert s[6] == 1 and np.array_equal(np.delete(s, 6), np.delete(before[0], 6))
        be.update(rule, p, g, slots, s, rule.constants(), 40, 0.0, None)
        for a, b in zip((p, *slots), before[1:]):
            np.testing.assert_array_equal(a, b)
        be.advance_scalars(s, np.array([0.0, 0.0]), rule.scalar_constants())  # clean again
        assert s[6] == 0 and s[1] == 2
        be.update(rule, p, g, slots, s, rule.constants(), 40, 0.0, None)
        assert not np.array_equal(p, before[1])


@pytest.mark.parametrize("norm_sq", [0.0, 0.3, 100.0, np.nan, np.inf])
def test_step_scalar_kernels_equal_the_reference_for_any_gradient_norm(fast_backend, norm_sq):
    """numba's and CUDA's advance_scalars against the reference, a NaN norm giving a NaN clip
    scale (min(1, NaN) is NaN in NumPy; C's fmin and Python's min would say 1)."""
    from fastnet.backends.base import Backend

    constants = (1e-7, 0.9, 0.99, 1.0, 0.01, 1.0)
    s_ref = np.zeros(8)
    s_ref[0] = 3e-3
    s = fast_backend.asarray(s_ref.copy())
    checks = np.array([norm_sq, 0.0])
    for _ in range(3):
        Backend().advance_scalars(s_ref, checks, constants)
        fast_backend.advance_scalars(s, fast_backend.asarray(checks), constants)
    got = fast_backend.to_numpy(s)
    # (a few ulp: on AVX-512 CPUs NumPy's array power is SVML's, not libm's, 2e-15 apart
    # after three steps on an Intel Xeon model 207)
    np.testing.assert_allclose(got, s_ref, rtol=1e-14, atol=0)
    assert np.isnan(got[5]) == np.isnan(norm_sq)
