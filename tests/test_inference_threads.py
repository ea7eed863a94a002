"""Serving from threads: one model's ``predict`` called from several threads, and several
models of one backend at once, give each call its own model's outputs (layer-by-layer
inference reuses the layers' buffers: one thread at a time; numba's fused inference keeps
its arguments per plan, read once)."""

import sys
import threading

import numpy as np
import pytest

import fastnet as fn


def _hammer(calls, rounds=150):
    """Run each ``(predict, X, expected)`` in its own thread ``rounds`` times; wrong results."""
    wrong = [0] * len(calls)

    def worker(i, predict, X, expected):
        for _ in range(rounds):
            if not np.allclose(predict(X), expected, rtol=1e-5, atol=1e-6):
                wrong[i] += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # (threads interleave often)
    try:
        threads = [threading.Thread(target=worker, args=(i, *c)) for i, c in enumerate(calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    return wrong


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_one_model_predicts_from_two_threads(backend):
    r = np.random.default_rng(0)
    X, y = r.normal(size=(300, 20)).astype(np.float32), r.integers(0, 3, 300)
    layers = [fn.Standardize.fit(X), fn.Dense(16), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(3)]
    model = fn.Sequential(layers, backend=backend, seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    A, B = X[:100], X[100:200]
    calls = [(model.predict_proba, A, model.predict_proba(A)),
             (model.predict_proba, B, model.predict_proba(B))]  # fmt: skip
    assert _hammer(calls) == [0, 0]


def test_two_models_of_one_numba_backend_predict_at_once():
    r = np.random.default_rng(0)
    X, y = r.normal(size=(300, 20)).astype(np.float32), r.integers(0, 3, 300)
    models = [fn.Sequential([fn.Dense(16, "relu"), fn.Dense(3)], backend="numba", seed=s)
              for s in (0, 1)]  # fmt: skip
    for m in models:
        m.fit(X, y, epochs=1, verbose=0)
    calls = [(m.predict_proba, X[:64], m.predict_proba(X[:64])) for m in models]
    assert _hammer(calls, rounds=2000) == [0, 0]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_thread_never_sees_half_of_a_new_inference_plan(backend):
    """The plan of a model with a leading Standardize was stored in three attributes one
    after another: a thread predicting between the stores took the new plan (Standardize
    left out) with the old count of leading layers (0) and ran the Dense stack on raw rows.
    Here one thread is paused before each attribute store of the plan's cache in turn while
    another predicts: every prediction is the model's."""
    import dis

    from fastnet.backends import probe
    from fastnet.training import Trainer

    if not probe(backend).available:
        pytest.skip(f"{backend} unavailable")
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((200, 4)) * 50 + 100).astype(np.float32)
    model = fn.Sequential([fn.Standardize.fit(X), fn.Dense(8, "relu"), fn.Dense(2)], seed=0)
    model.backend = backend
    model.fit(X, (X[:, 0] > 100).astype(int), epochs=1, verbose=0)
    want = model.predict_proba(X[:1])
    code = Trainer._inference_entry.__code__
    stores = [i.offset for i in dis.get_instructions(code) if i.opname == "STORE_ATTR"]
    assert stores
    for offset in stores:
        model._plan_cache = None  # (a plan to make, as on a model's first prediction)
        paused, go, got = threading.Event(), threading.Event(), {}

        def tracer(frame, event, arg, offset=offset, paused=paused, go=go):
            if frame.f_code is not code:
                return None
            frame.f_trace_opcodes = True

            def opcode(frame, event, arg):
                if event == "opcode" and frame.f_lasti == offset and not paused.is_set():
                    paused.set()
                    go.wait(10)
                return opcode

            return opcode

        def first(tracer=tracer, got=got):
            sys.settrace(tracer)
            try:
                got["first"] = model.predict_proba(X[:1])
            finally:
                sys.settrace(None)

        thread = threading.Thread(target=first)
        thread.start()
        assert paused.wait(10)
        got["between"] = model.predict_proba(X[:1])
        go.set()
        thread.join()
        for name, value in got.items():
            np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=f"{name} at {offset}")
