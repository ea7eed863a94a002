"""Inference: the numba backend's fused forward (one JIT call per chunk) and its finiteness
check give what the NumPy reference gives, for every loss's predictions; the NumPy backend's
one-loop inference gives what its layers give, bit for bit."""

import warnings

import numpy as np
import pytest

import fastnet as fn
from fastnet.backends import probe

needs_numba = pytest.mark.skipif(not probe("numba").available, reason="numba unavailable")


def _pair(loss="softmax_cross_entropy", acts=("relu", "tanh"), outputs=4):
    layers = lambda: [fn.Dense(16, acts[0]), fn.Dense(8, acts[1]), fn.Dense(outputs)]  # noqa: E731
    models = [
        fn.Sequential(layers(), loss=loss, backend=b, seed=0, dtype="float64").build(6)
        for b in ("numpy", "numba")
    ]
    return models


@pytest.mark.parametrize("loss, outputs", [("softmax_cross_entropy", 4), ("bce", 1), ("mse", 2)])
@pytest.mark.parametrize("acts", [("relu", "tanh"), ("leaky_relu", "sigmoid")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 9, 8193])  # one row (GEMV), two 8192-row chunks
def test_numpy_inference_is_the_layers_forward_bit_for_bit(loss, outputs, acts, dtype, rows):
    """NumPy's one-loop inference is the layers' forward and the loss's predictions, bit for
    bit (the numba tests above compare against it)."""
    layers = [fn.Dense(16, acts[0]), fn.Dense(8, acts[1], use_bias=False), fn.Dense(outputs)]
    model = fn.Sequential(layers, loss=loss, backend="numpy", seed=0, dtype=dtype).build(6)
    X = np.random.default_rng(0).normal(size=(rows, 6)).astype(dtype)
    X.setflags(write=False)
    chunks = [X[lo : lo + 8192] for lo in range(0, rows, 8192)]  # as predict runs them
    layered = np.concatenate([np.array(model.forward(c, training=False)) for c in chunks])
    np.testing.assert_array_equal(model.predict_raw(X), layered)
    if loss != "mse":
        expected = np.concatenate(
            [model.loss.predict_output(np.array(model.forward(c, training=False))) for c in chunks]
        )
        np.testing.assert_array_equal(model.predict_proba(X), expected)
    assert "fused inference" in model.backend.kernel_report["matmul"]
    assert model.predict_raw(X).dtype == dtype


@needs_numba
@pytest.mark.parametrize("loss, outputs", [("softmax_cross_entropy", 4), ("bce", 1), ("mse", 2)])
@pytest.mark.parametrize("rows", [1, 7, 9000])
def test_fused_inference_matches_the_reference(loss, outputs, rows):
    ref, fused = _pair(loss, outputs=outputs)
    X = np.random.default_rng(0).normal(size=(rows, 6))
    X.setflags(write=False)  # e.g. a memory map
    np.testing.assert_allclose(fused.predict_raw(X), ref.predict_raw(X), rtol=1e-12, atol=1e-12)
    if loss != "mse":
        np.testing.assert_allclose(
            fused.predict_proba(X), ref.predict_proba(X), rtol=1e-12, atol=1e-14
        )
    if loss == "mse":
        np.testing.assert_allclose(fused.predict(X), ref.predict(X), rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(fused.predict(X), ref.predict(X))
    assert "fused inference" in fused.backend.kernel_report["matmul"]


@needs_numba
def test_fused_inference_follows_new_weights():
    ref, fused = _pair()
    X = np.random.default_rng(1).normal(size=(5, 6))
    before = fused.predict_proba(X)
    fused.fit(X, np.arange(5) % 4, epochs=2, batch_size=5, verbose=0)  # updated in place
    ref.set_state(fused.get_state())
    assert not np.allclose(fused.predict_proba(X), before)
    np.testing.assert_allclose(fused.predict_proba(X), ref.predict_proba(X), rtol=1e-12)
    fused.build(6)  # a new arena: a new plan
    ref.set_state(fused.get_state())
    np.testing.assert_allclose(fused.predict_proba(X), ref.predict_proba(X), rtol=1e-12)


@needs_numba
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (3, 5), (-1, -1)])
def test_all_finite_finds_every_non_finite_value(bad, where):
    be = fn.get_backend("numba")
    for dtype in (np.float32, np.float64):
        x = np.random.default_rng(0).normal(size=(40, 17)).astype(dtype) * 1e30
        assert be.all_finite(x)
        x[where] = bad
        assert not be.all_finite(x)
    model, X = _pair()[1], np.ones((5, 6))
    X[where] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict(X)


class _TemperedSoftmax(fn.SoftmaxCrossEntropy):
    def predict_output(self, logits):
        return self.backend.softmax(logits / 4)


class _DoubledOutputs(fn.MeanSquaredError):
    def predict_output(self, outputs):
        return outputs * 2


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
@pytest.mark.parametrize("loss_class, outputs", [(_TemperedSoftmax, 4), (_DoubledOutputs, 2)])
def test_inference_runs_a_custom_loss_own_predictions(backend, loss_class, outputs):
    """A loss subclass with its own ``predict_output`` is not mistaken for the built-in one
    fused inference computes: its predictions are what it computes."""
    loss = loss_class()
    layers = [fn.Dense(8, "relu"), fn.Dense(outputs)]
    model = fn.Sequential(layers, loss=loss, backend=backend, seed=0, dtype="float64").build(6)
    X = np.random.default_rng(2).normal(size=(5, 6))
    raw = model.predict_raw(X)
    np.testing.assert_allclose(model.predict_proba(X), loss.predict_output(raw), rtol=1e-12)
    assert loss.planned_predictions() == "custom"
    assert fn.SoftmaxCrossEntropy().planned_predictions() == "softmax"


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_dropout_does_not_keep_inference_off_the_fused_path(backend_name):
    """Dropout is the identity in inference: a Dense stack with Dropout predicts through the
    backend's one-loop ``infer``, with the layers' outputs."""
    from fastnet.backends import probe

    if not probe(backend_name).available:
        pytest.skip(f"{backend_name} unavailable")
    X = np.random.default_rng(0).standard_normal((9, 6))
    layers = [fn.Dense(8, "relu"), fn.Dropout(0.5), fn.Dense(3)]
    model = fn.Sequential(layers, backend=backend_name, dtype="float64", seed=1).build(6)
    plan = model._inference_plan()
    got = model.backend.infer(plan, X, True)
    assert got is not None
    want = model.loss.predict_output(model.forward(X, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-12)  # softmax probabilities


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("row", [0, 2047, 2048, 4999])
def test_predictions_check_every_chunk_for_nan(backend_name, row):
    """Rows are checked chunk by chunk (2,048 at a time on a CPU), every chunk, first to last."""
    if not probe(backend_name).available:
        pytest.skip(f"{backend_name} unavailable")
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(3)], backend=backend_name, seed=0)
    model.build(5)
    X = np.random.default_rng(0).random((5000, 5)).astype(np.float32)
    want = model.predict_proba(X)
    X[row, 1] = np.inf
    for predict in (model.predict_proba, model.predict, model.predict_raw):
        with pytest.raises(
            ValueError,
            match=rf"^X contains NaN or infinite values \(as float32.*first in row {row}$",
        ):
            predict(X)
    with pytest.raises(ValueError, match=rf"the first in row {row}$"):  # whatever the chunks
        model.predict(X, batch_size=7)
    X[row, 1] = 0.5
    assert model.predict_proba(X).shape == want.shape


@pytest.mark.parametrize("backend_name", ["numpy", pytest.param("numba", marks=needs_numba)])
@pytest.mark.parametrize("bad", [[np.inf], [-np.inf], [np.nan], [np.inf, -np.inf]])
@pytest.mark.parametrize("lead", [False, True])
def test_inputs_are_checked_through_the_first_layers_products(backend_name, bad, lead, monkeypatch):
    """Fused inference checks the first layer's products instead of the inputs (a NaN or
    infinite input makes its row's products NaN or infinite): a bad value in a column whose
    weights are all zero (inf * 0), opposite infinities, behind a Standardize and a ReLU
    that would zero them, is still refused by row; finite inputs are never checked apart;
    finite inputs whose products overflow are computed, as the layers compute them."""
    import fastnet.training as training

    calls = []
    check = training.check_finite
    monkeypatch.setattr(training, "check_finite", lambda *a: calls.append(1) or check(*a))
    layers = [fn.Dense(3, "relu"), fn.Dense(2)]
    if lead:
        layers.insert(0, fn.Standardize(np.zeros(6), np.full(6, 2.0)))
    model = fn.Sequential(layers, backend=backend_name, seed=0).build(6)
    dense = model.layers[-2]
    dense.W.value[4] = 0.0  # input column 4 reaches nothing
    dense.b.value[:] = -1e30  # and every product's ReLU output would be 0
    X = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    model.predict_proba(X)
    assert calls == []  # (numpy's: the products of 3 columns, narrower than the 6 inputs)
    X[17, 4 : 4 + len(bad)] = bad
    with warnings.catch_warnings():  # (the error alone: no NumPy warning of inf * 0 first)
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="NaN or infinite values .*the first in row 17$"):
            model.predict_proba(X)
    X[17, 4:] = 3e38  # finite, past float32's range once summed: the layers' outputs
    dense.W.value[:], dense.b.value[:] = 1.0, 0.0
    with np.errstate(all="ignore"):
        want = model.loss.predict_output(model.forward(X, training=False))
        got = model.predict_proba(X)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert not np.isfinite(want).all()


def test_the_harness_lets_cores_settle_untimed():
    import time

    from fastnet.bench.harness import Contestant, interleaved

    calls = []
    contestants = [Contestant(n, lambda n=n: calls.append(n), None, 1.0) for n in ("a", "b")]
    start = time.perf_counter()
    results = interleaved(contestants, rounds=3, settle=0.05)
    assert time.perf_counter() - start >= 6 * 0.05  # before each timed run
    assert all(max(r.times) < 0.04 for r in results)  # not in the timings
    assert calls.count("a") == calls.count("b") == 4  # warm-up and 3 rounds


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_inference_follows_a_changed_leaky_relu_slope(backend):
    """The fused inference plan is rebuilt when a layer constant changes (a slope set by a
    callback): predictions and validation scores use the slope training uses."""
    X = np.random.default_rng(3).normal(size=(20, 6))
    model = fn.Sequential(
        [fn.Dense(16, "leaky_relu"), fn.Dense(2)], backend=backend, seed=1, dtype="float64"
    ).build(6)
    before = model.predict_raw(X)
    model.layers[0].alpha = 0.5
    after = model.predict_raw(X)
    assert not np.array_equal(before, after)
    np.testing.assert_allclose(after, model.to("numpy").forward(X, training=False), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_inference_follows_a_replaced_loss(backend):
    """predict_proba after ``model.loss = ...`` applies the new loss's transform (the fused
    plan kept the softmax of the loss it was made for)."""
    X = np.random.default_rng(3).normal(size=(20, 6))
    model = fn.Sequential(
        [fn.Dense(16, "relu"), fn.Dense(2)], backend=backend, seed=1, dtype="float64"
    ).build(6)
    raw = model.predict_raw(X)
    softmax = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(X), softmax, rtol=1e-12)
    model.loss = "bce"
    np.testing.assert_allclose(model.predict_proba(X), 1 / (1 + np.exp(-raw)), rtol=1e-12)
    model.loss = "mse"
    np.testing.assert_allclose(model.predict_proba(X), raw, rtol=1e-12)


def test_a_dataframe_is_read_by_the_feature_names_the_model_keeps():
    """``model.metadata["features"]`` (the CLI's, or set by hand) names the columns: a frame
    in another order was taken by position (62 of 100 labels changed), silently."""
    pd = pytest.importorskip("pandas")
    r = np.random.default_rng(0)
    X = r.normal(size=(100, 4))
    y = (X[:, 0] > X[:, 3]).astype(int)
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(2)], backend="numpy", seed=0)
    model.fit(X, y, epochs=3, verbose=0)
    model.metadata = {"features": ["a", "b", "c", "d"]}
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    np.testing.assert_array_equal(model.predict(frame[["d", "c", "b", "a"]]), model.predict(X))
    with pytest.raises(ValueError, match=r"X lacks column\(s\) \['d'\] the model takes"):
        model.predict(frame[["a", "b", "c"]].assign(e=0.0))


def test_fit_reads_frames_by_the_feature_names_too():
    """fit took a reordered frame by position while evaluate read it by name."""
    pd = pytest.importorskip("pandas")
    r = np.random.default_rng(0)
    X = r.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])

    def model():
        m = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(2)], backend="numpy", seed=0)
        m.metadata = {"features": ["a", "b", "c"]}
        return m

    by_name, plain = model(), model()
    h = by_name.fit(frame[["c", "b", "a"]], y, epochs=3, verbose=0,
                    validation_data=(frame[["b", "a", "c"]], y))  # fmt: skip
    plain.fit(X, y, epochs=3, verbose=0)
    for a, b in zip(by_name.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert h["val_accuracy"][-1] == plain.evaluate(X, y)["accuracy"]


@needs_numba
@pytest.mark.parametrize("blas_threads", [1, 2])
def test_large_predictions_run_row_blocks_in_parallel_with_blas_single_threaded(
    blas_threads, monkeypatch
):
    """From two blocks of rows on, numba's fused inference runs the blocks on as many cores
    as BLAS had, BLAS at one thread meanwhile, and restores both counts after; with BLAS at
    one thread it runs the serial kernel. Outputs are the serial kernel's, and a bad value
    in a late block is found by row."""
    import numba
    from fastnet.kernels import blas_threads as bt

    from fastnet.backends.numba_backend import INFER_BLOCK

    if not bt.available():
        pytest.skip("NumPy's OpenBLAS thread count cannot be set here")
    get, set_ = bt._controls()
    model = fn.Sequential([fn.Dense(16, "relu"), fn.Dense(3)], backend="numba", seed=0).build(6)
    k = model.backend.k
    seen = []
    blocks = k.dense_forward_blocks
    monkeypatch.setattr(
        k,
        "dense_forward_blocks",
        lambda *a: seen.append((len(a[0]), get(), numba.get_num_threads())) or blocks(*a),
    )
    X = np.random.default_rng(0).random((2 * INFER_BLOCK + 7, 6)).astype(np.float32)
    before, threads = get(), numba.get_num_threads()
    set_(blas_threads)
    try:
        got = model.predict_proba(X)
        after, kept = get(), X[-3, 2]
        X[-3, 2] = np.nan
        with pytest.raises(ValueError, match=rf"the first in row {len(X) - 3}$"):
            model.predict_proba(X)
    finally:
        set_(before)
    assert after == blas_threads and numba.get_num_threads() == threads
    if blas_threads == 1 or threads == 1:
        assert seen == []  # (not even compiled: no warm-up call)
    else:
        # (a first call of this kind compiles on one row first, BLAS not yet lowered)
        warm_up = [call for call in seen if call[0] == 1]
        assert warm_up in ([], [(1, blas_threads, threads)])
        assert [c for c in seen if c[0] > 1] == [(len(X), 1, min(threads, blas_threads))] * 2
    X[-3, 2] = kept
    want, _ = k.dense_forward(X, *model.backend._infer_cache.args, True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_a_far_logits_probability_is_its_exact_exp_not_the_fast_exps_floor(backend):
    """The fused softmax's vectorized float32 exp stops at exp(-87) ~ 1.6e-38: a row whose
    logits span farther gets the exact exps (0 past float32's range) as the reference."""
    model = fn.Sequential([fn.Dense(3)], backend=backend, seed=0).build(2)
    model.layers[0].W.value[:] = [[0.0, -200.0, 1.0], [0.0, -50.0, 0.0]]
    model.layers[0].b.value[:] = 0.0
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    got = model.predict_proba(X)
    logits = X @ model.layers[0].W.value
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=1e-6, atol=0)
    assert got[0, 1] == 0.0 and 0 < got[1, 1] < 1e-20


@needs_numba
def test_blocked_inference_is_decided_per_thread_layer_and_process(monkeypatch):
    """numba's parallel row blocks need a threading layer that takes launches from several
    threads (not the workqueue), run nowhere in a forked child of a process that launched
    them (GNU OpenMP terminates it), and follow this thread's numba count (1: the serial
    kernel, BLAS untouched); chunks are at most 64 MiB of inputs."""
    import os

    import numba
    from fastnet.kernels import blas_threads as bt

    from fastnet.backends import forks

    be = fn.get_backend("numba")
    if not bt.available() or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NumPy's OpenBLAS thread count cannot be set here, or one numba thread")
    monkeypatch.setattr(be, "_blocks", None)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    assert be.infer_rows == 0
    monkeypatch.setattr(be, "_blocks", None)
    monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
    assert be.infer_rows == 16384
    monkeypatch.setattr(be, "_blocks", (os.getpid() + 1, True))  # (a forked child's: its
    assert be.infer_rows == 16384  # parent had not started numba's threads, then had)
    monkeypatch.setattr(be, "_blocks", (os.getpid() + 1, True))
    monkeypatch.setattr(forks, "_forked_after_launch", True)
    assert be.infer_rows == 0
    monkeypatch.setattr(forks, "_forked_after_launch", False)
    monkeypatch.setattr(be, "_blocks", (os.getpid(), True))
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(3)], backend=be, seed=0).build(4096)
    rows, blocks = [], be.k.dense_forward_blocks
    monkeypatch.setattr(be, "infer", lambda plan, x, *a: rows.append(len(x)) or None)
    model.predict_proba(np.zeros((9000, 4096), np.float32))  # 16 KiB a row: 4,096 rows
    assert rows == [4096, 4096, 808]
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(be.k, "dense_forward_blocks", lambda *a: calls.append(1) or blocks(*a))
    X = np.random.default_rng(0).random((3000, 4), np.float32)
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(3)], backend=be, seed=0).build(4)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        model.predict_proba(X)
    finally:
        numba.set_num_threads(threads)
    assert calls == []


@needs_numba
def test_a_forked_child_predicts_after_its_parent_ran_blocks_or_forked_inside_one():
    """A child forked after its parent's parallel prediction predicts (serially: GNU OpenMP
    cannot launch in it); one forked while another thread held BLAS at one thread gets its
    count back and a free lock."""
    import os
    import signal
    import threading

    from fastnet.kernels import blas_threads as bt

    if not bt.available() or not hasattr(os, "fork"):
        pytest.skip("NumPy's OpenBLAS thread count cannot be set here, or no fork")
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend="numba", seed=0).build(5)
    X = np.random.default_rng(0).random((3000, 5)).astype(np.float32)
    want = model.predict_proba(X)
    get, _ = bt._controls()
    before = get()
    inside, release = threading.Event(), threading.Event()

    def hold():
        with bt.single_threaded():
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if all is well (killed if it hangs)
        signal.alarm(60)
        ok = get() == before and np.allclose(model.predict_proba(X), want, rtol=1e-5)
        with bt.single_threaded():
            ok = ok and get() == 1
        os._exit(0 if ok and get() == before else 1)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@needs_numba
def test_a_child_forked_after_any_parallel_kernel_predicts(monkeypatch):
    """A parent whose numba threads started elsewhere (a user's ``parallel=True`` function,
    fastnet's parallel updates) and that never predicted in blocks: its forked child predicts
    serially (it ran the blocks, and GNU OpenMP terminated it)."""
    import os
    import signal

    import numba
    from fastnet.kernels import blas_threads as bt

    if not bt.available() or not hasattr(os, "fork") or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NumPy's OpenBLAS thread count cannot be set here, no fork, or one thread")

    @numba.njit(parallel=True)
    def total(a):
        s = 0.0
        for i in numba.prange(a.shape[0]):
            s += a[i]
        return s

    total(np.ones(10))  # (numba's threads start in this process)
    be = fn.get_backend("numba")
    monkeypatch.setattr(be, "_blocks", None)  # (this backend never decided: never ran blocks)
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend=be, seed=0).build(5)
    X = np.random.default_rng(0).random((3000, 5)).astype(np.float32)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if all is well (killed if it hangs)
        signal.alarm(60)
        ok = model.predict_proba(X).shape == (3000, 3) and be.infer_rows == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


@needs_numba
def test_a_child_forked_before_the_numba_backend_was_imported_predicts(tmp_path):
    """The fork handler is registered by ``import fastnet``: a parent that started numba's
    threads and forks before it ever touched the numba backend has a child that predicts
    serially (the handler came with the backend's module, after the fork: terminated)."""
    import os
    import subprocess
    import sys

    from fastnet.kernels import blas_threads as bt

    if not bt.available() or not hasattr(os, "fork"):
        pytest.skip("NumPy's OpenBLAS thread count cannot be set here, or no fork")
    script = tmp_path / "late.py"
    script.write_text(
        "import os, sys, numpy as np, numba, fastnet as fn\n"
        "assert 'fastnet.backends.numba_backend' not in sys.modules\n"
        "@numba.njit(parallel=True)\n"
        "def total(a):\n"
        "    s = 0.0\n"
        "    for i in numba.prange(a.shape[0]):\n"
        "        s += a[i]\n"
        "    return s\n"
        "total(np.ones(10))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    m = fn.Sequential([fn.Dense(8, 'relu'), fn.Dense(3)], backend='numba', seed=0)\n"
        "    m.build(5).predict_proba(np.ones((3000, 5), np.float32))\n"
        "    os._exit(0 if m.backend.infer_rows == 0 else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 3)\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(script)], env=env, timeout=120)
    assert done.returncode == 0


@needs_numba
def test_a_forked_child_trains_on_serial_kernels_where_its_parent_ran_parallel_ones(
    monkeypatch,
):
    """fastnet's parallel kernels (bias and activation, softmax, updates: from a size on)
    run serially in a child forked after its parent launched numba's threads: the parent's
    cached parallel update, or its choice of flavour, got the child terminated."""
    import os
    import signal

    import numba

    if not hasattr(os, "fork") or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("no fork, or one numba thread")
    be = fn.get_backend("numba")
    monkeypatch.setattr(be, "parallel_min_elements", 1)
    monkeypatch.setattr(be, "parallel_min_updates", 1)
    X = np.random.default_rng(0).random((64, 5)).astype(np.float32)
    y = np.arange(64) % 3
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend=be, seed=0)
    model.fit(X, y, epochs=1, batch_size=32, verbose=0, compiled=False)  # (parallel kernels)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if all is well (killed if it hangs)
        signal.alarm(60)
        model.fit(X, y, epochs=1, batch_size=32, verbose=0, compiled=False)
        os._exit(0 if np.isfinite(model.predict_proba(X)).all() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
