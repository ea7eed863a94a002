"""The cupy backend's training steps: CUDA graphs (K steps per replay, batch gathers inside)
train as eager steps do. On a GPU (``cupy``), and in CI on the CPU (``cupy-emulated``: the
backend's code and its CUDA kernels compiled for the CPU, graphs with capture semantics)."""

import numpy as np
import pytest
from conftest import EMULATED, make_blobs, needs_bfloat16_arrays

import fastnet as fn
from fastnet.optimizers import OPTIMIZERS as REGISTRY

OPTIMIZERS = {
    "adam": lambda: fn.Adam(1e-3),
    "adamw": lambda: fn.AdamW(1e-3, weight_decay=0.05, clip_norm=1.0),
    "sgd": lambda: fn.SGD(0.05),
    "nesterov": lambda: fn.Momentum(0.02, nesterov=True),
    "rmsprop": lambda: fn.RMSProp(1e-3, clip_value=0.5),
    "adagrad": lambda: fn.AdaGrad(0.02),
    "momentum": lambda: fn.Momentum(0.02),
}


def _mlp(backend, seed=0, opt=None):
    return fn.Sequential(
        [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)],
        optimizer=opt or fn.Adam(1e-3),
        backend=backend,
        seed=seed,
    )


def test_every_optimizer_is_captured_here():
    assert sorted(OPTIMIZERS) == REGISTRY.builtin()


LOSS_OPTIONS = [
    "labels",
    "smoothing",
    "one_hot",
    "weights",
    "multilabel",
    "multilabel_weights",
    "regression",
    "regression_weights",
]


def _loss_and_targets(loss_option, X, y):
    """(a loss factory, targets, its op's name) for a loss option: softmax cross-entropy of
    labels or one-hot rows; sigmoid BCE of each row's class and the next one (multilabel);
    mean squared error of four features (regression)."""
    if loss_option.startswith("multilabel"):
        targets = np.eye(4)[y] + np.eye(4)[(y + 1) % 4]
        return fn.SigmoidBinaryCrossEntropy, targets, "sigmoid_bce"
    if loss_option.startswith("regression"):
        return (lambda: fn.MeanSquaredError(2.0)), X[:, :4] * 0.1, "squared_error"
    smoothing = 0.1 if loss_option == "smoothing" else 0.0
    targets = np.eye(4)[y] if loss_option == "one_hot" else y
    return (lambda: fn.SoftmaxCrossEntropy(smoothing)), targets, "softmax_xent"


@pytest.mark.parametrize("loss_option", LOSS_OPTIONS)
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_captured_training_equals_eager(gpu, opt, loss_option):
    """The CUDA graph replays the eager step function: the same weights after 3 epochs with a
    per-step schedule, for every optimizer and loss option (softmax cross-entropy; sigmoid
    binary cross-entropy on multi-hot targets; mean squared error), in float64: exactly up to
    atomics' summation order; the sigmoid and squared-error kernels against NumPy's too."""
    if gpu.name == EMULATED and opt != "adamw" and loss_option != "labels":
        pytest.skip("emulated: every optimizer with labels, every loss option with adamw")
    X, y = make_blobs(n=1000)
    loss, targets, op = _loss_and_targets(loss_option, X, y)
    weights = np.linspace(0.5, 1.5, len(y)) if loss_option.endswith("weights") else None

    def model(backend):
        layers = [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)]
        kw = {"optimizer": OPTIMIZERS[opt](), "seed": 0, "dtype": "float64"}
        return fn.Sequential(layers, loss=loss(), backend=backend, **kw)

    fit = dict(epochs=3, batch_size=64, verbose=0, sample_weight=weights)
    models = [model(gpu) for _ in range(2)]
    hist = [
        m.fit(X, targets, compiled=c, callbacks=[fn.WarmupCosine(1, 3)], **fit)
        for m, c in zip(models, (False, True))
    ]
    eager, graphed = models
    assert graphed.step_description.startswith("captured graph")
    assert eager.step_description.startswith("eager")
    np.testing.assert_allclose(hist[0]["loss"], hist[1]["loss"], rtol=1e-9)
    np.testing.assert_allclose(hist[0].get("accuracy", 0), hist[1].get("accuracy", 0), rtol=1e-12)
    assert gpu.kernel_report[op] == "cuda-fused"
    if op != "softmax_xent":  # the kernel against the NumPy reference, not only itself
        ordered = [model(gpu), model("numpy")]  # (cupy draws its own permutations: no shuffle)
        unshuffled = [
            m.fit(X, targets, shuffle=False, callbacks=[fn.WarmupCosine(1, 3)], **fit)
            for m in ordered
        ]
        assert ordered[0].step_description.startswith("captured graph")
        np.testing.assert_allclose(unshuffled[0]["loss"], unshuffled[1]["loss"], rtol=1e-9)
        accuracies = [h.get("accuracy", 0) for h in unshuffled]
        np.testing.assert_allclose(*accuracies, rtol=1e-12)
    assert eager.arena.groups[0].step == graphed.arena.groups[0].step == 48
    for a, b in zip(eager.parameters(), graphed.parameters()):
        np.testing.assert_allclose(
            gpu.to_numpy(a.value), gpu.to_numpy(b.value), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "linear"])
def test_layers_without_bias_are_captured_without_allocations(gpu, activation):
    """A Dense layer without bias ran its activation through the NumPy reference, whose
    temporaries (``exp``, ``where``) CuPy's pool hands to a graph that keeps writing them after
    other arrays get that memory; the emulator now fails any allocation inside a capture."""
    X, y = make_blobs(n=300)
    models = [
        fn.Sequential(
            [fn.Dense(16, activation, use_bias=False), fn.Dense(4, use_bias=False)],
            backend=gpu,
            seed=0,
            dtype="float64",
        )
        for _ in range(2)
    ]
    hist = [
        m.fit(X, y, epochs=2, batch_size=64, verbose=0, compiled=c)
        for m, c in zip(models, (False, True))
    ]
    assert models[1].step_description.startswith("captured graph"), models[1].step_description
    np.testing.assert_allclose(hist[0]["loss"], hist[1]["loss"], rtol=1e-9)


def test_schedules_change_lr_without_recapture(gpu):
    X, y = make_blobs(n=1000)
    model = _mlp(gpu, opt=fn.Adam(1e-2))
    model.fit(
        X, y, epochs=2, batch_size=64, verbose=0, callbacks=[fn.CosineDecay(2)], compiled=True
    )
    step = next(iter(model._compiled_steps.values()))[0]
    assert step.captures == [14, 15] and step.graph is None  # an epoch schedule: one replay
    model.fit(
        X, y, epochs=1, batch_size=64, verbose=0, callbacks=[fn.WarmupCosine(0.5, 1)], compiled=True
    )
    assert step.graph is not None and step.replays > 0  # a per-step schedule: one per replay
    replays = step.replays
    model.fit(
        X, y, epochs=1, batch_size=64, verbose=0, callbacks=[fn.CosineDecay(1)], compiled=True
    )
    assert step.replays == replays + 14  # an eager warm-up, then 14 full batches in new graphs


@pytest.mark.parametrize("steps_per_graph", [4, 32])
@pytest.mark.parametrize("loss_option", ["labels", "one_hot", "weights"])
def test_several_steps_per_replay_equal_eager(gpu, monkeypatch, steps_per_graph, loss_option):
    """K steps per CUDA-graph replay with the batch gathers inside the graph (rows read at a
    device position) train as eager steps do (float64, 3 epochs, an epoch schedule)."""
    monkeypatch.setattr(gpu, "steps_per_graph", steps_per_graph)
    X, y = make_blobs(n=1000)
    targets = np.eye(4)[y] if loss_option == "one_hot" else y
    weights = np.linspace(0.5, 1.5, len(y)) if loss_option == "weights" else None
    models = []
    for compiled in (False, True):
        model = fn.Sequential(
            [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)],
            optimizer=fn.Adam(1e-2),
            backend=gpu,
            seed=2,
            dtype="float64",
        )
        model.fit(
            X,
            targets,
            epochs=3,
            batch_size=64,
            verbose=0,
            compiled=compiled,
            sample_weight=weights,
            callbacks=[fn.CosineDecay(3)],
        )
        models.append(model)
    eager, graphed = models
    step = next(iter(graphed._compiled_steps.values()))[0]
    assert f"{steps_per_graph} steps per replay" in graphed.step_description
    assert step.replays == 44 and 1 not in step.captures  # 15 full batches an epoch, 1 eager
    np.testing.assert_allclose(eager.history["loss"], graphed.history["loss"], rtol=1e-9)
    for a, b in zip(eager.arena.groups, graphed.arena.groups):
        np.testing.assert_allclose(
            gpu.to_numpy(b.values), gpu.to_numpy(a.values), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("steps_per_graph", [1, 32])
def test_dropout_and_batchnorm_train_captured_as_eager(gpu, monkeypatch, steps_per_graph):
    monkeypatch.setattr(gpu, "steps_per_graph", steps_per_graph)
    X, y = make_blobs(n=1000)
    models = []
    for compiled in (False, True):
        model = fn.Sequential(
            [fn.Dense(64), fn.BatchNorm1d(), fn.ReLU(), fn.Dropout(0.3, seed=4), fn.Dense(4)],
            optimizer=fn.Adam(1e-2),
            backend=gpu,
            seed=2,
            dtype="float64",
        )
        model.fit(X, y, epochs=3, batch_size=64, verbose=0, compiled=compiled)
        models.append(model)
    eager, graphed = models
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    np.testing.assert_allclose(eager.history["loss"], graphed.history["loss"], rtol=1e-9)
    for a, b in zip(eager.arena.groups, graphed.arena.groups):
        np.testing.assert_allclose(
            gpu.to_numpy(b.values), gpu.to_numpy(a.values), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("steps_per_graph", [1, 4])
def test_an_allocation_met_in_a_capture_runs_the_steps_eagerly(gpu, monkeypatch, steps_per_graph):
    """CuPy captures a pool allocation silently (the graph would keep writing memory the pool
    hands out again): fastnet's memory hook refuses it, the steps run eagerly with a warning
    and train as eager steps; compiled=True refuses, the weights as before the fit."""
    monkeypatch.setattr(gpu, "steps_per_graph", steps_per_graph)
    advance = gpu.advance_scalars
    monkeypatch.setattr(gpu, "advance_scalars", lambda *a: (gpu.xp.zeros(8), advance(*a)))
    X, y = make_blobs(n=600)
    fit = dict(epochs=2, batch_size=64, verbose=0, shuffle=False)  # (cupy's own permutations)
    eager = _mlp("numpy", opt=fn.SGD(0.05))
    eager.fit(X, y, **fit)
    model = _mlp(gpu, opt=fn.SGD(0.05))
    with pytest.warns(UserWarning, match="allocation of .* bytes inside the CUDA graph capture"):
        model.fit(X, y, **fit)
    assert model.step_description.startswith("eager (an allocation of"), model.step_description
    np.testing.assert_allclose(model.history["loss"], eager.history["loss"], rtol=1e-5)
    before = model.get_weights()
    with pytest.raises(ValueError, match="compiled=True.*allocation"):
        model.fit(X, y, compiled=True, **fit)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="compiled=True.*allocation"):  # a fresh step's capture
        _mlp(gpu, opt=fn.SGD(0.05)).fit(X, y, compiled=True, **fit)


def test_a_host_sync_met_in_a_capture_runs_the_steps_eagerly(gpu, monkeypatch):
    """CuPy refuses a sync or a copy to the host while a stream captures (a RuntimeError,
    not an allocation): the fit crashed; now it runs the steps eagerly, with a warning."""
    advance = gpu.advance_scalars
    monkeypatch.setattr(gpu, "advance_scalars", lambda *a: (gpu.to_numpy(a[0]), advance(*a)))
    X, y = make_blobs(n=600)
    fit = dict(epochs=2, batch_size=64, verbose=0, shuffle=False)
    eager = _mlp("numpy", opt=fn.SGD(0.05))
    eager.fit(X, y, **fit)
    model = _mlp(gpu, opt=fn.SGD(0.05))
    with pytest.warns(UserWarning, match=r"eagerly: \w*Error: the current stream is capturing"):
        model.fit(X, y, **fit)  # (the emulator's RuntimeError is a CaptureError)
    assert "synchronous API calls are disallowed" in model.step_description
    np.testing.assert_allclose(model.history["loss"], eager.history["loss"], rtol=1e-5)


def test_a_capture_cuda_invalidates_at_its_end_runs_the_steps_eagerly(monkeypatch):
    """CUDA may report a capture invalid only when it ends (cudaErrorStreamCaptureInvalidated
    from end_capture): that error crashed fit, outside the fallback that catches the same
    error met during the capture. (The emulator: a real stream's method cannot be patched.)"""
    import emulated_cupy
    from conftest import _unavailable, make_backend

    if _unavailable(EMULATED):
        pytest.skip(f"{EMULATED}: {_unavailable(EMULATED)}")
    gpu = make_backend(EMULATED)
    end = emulated_cupy._Stream.end_capture

    def invalidated(stream):
        end(stream)
        raise gpu.xp.cuda.runtime.CUDARuntimeError(
            "cudaErrorStreamCaptureInvalidated: operation failed due to a previous error "
            "during capture"
        )

    monkeypatch.setattr(emulated_cupy._Stream, "end_capture", invalidated)
    X, y = make_blobs(n=300)
    model = _mlp(gpu, opt=fn.SGD(0.05))
    with pytest.warns(UserWarning, match="eagerly: CUDARuntimeError: cudaErrorStreamCapture"):
        model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    assert model.step_description.startswith("eager (CUDARuntimeError")


def test_a_second_thread_training_on_the_same_gpu_is_refused_not_recorded(gpu):
    """Threads share a GPU's step stream: a capture in one recorded the other's kernels (a
    fit that allocated in it failed; one that did not trained into the other's graph). While
    one thread's fit runs, between its epochs too, a second thread's fit on the same GPU is
    refused before it changes anything; the first trains on, and the GPU is free after."""
    import threading

    X, y = make_blobs(n=200)
    between, go_on, errors = threading.Event(), threading.Event(), []

    class Pause(fn.Callback):
        def on_epoch_end(self, model, epoch, logs):
            if epoch == 0:  # (between two epochs: no step stream entered)
                between.set()
                go_on.wait(10)

    first = _mlp(gpu, opt=fn.SGD(0.05))

    def train():
        try:
            first.fit(X, y, epochs=2, batch_size=64, verbose=0, callbacks=[Pause()])
        except Exception as exc:  # (the test reads it: the first fit must finish)
            errors.append(exc)

    thread = threading.Thread(target=train)
    thread.start()
    assert between.wait(30)
    second = _mlp(gpu, seed=1, opt=fn.SGD(0.05))
    try:
        with pytest.raises(RuntimeError, match="another thread is training on"):
            second.fit(X, y, epochs=1, batch_size=64, verbose=0)
    finally:
        go_on.set()
        thread.join()
    assert not errors and first.epochs_trained == 2 and not second.built
    second.fit(X, y, epochs=1, batch_size=64, verbose=0)  # (free again)


MIXED_LAYERS = {
    "dense": lambda: [fn.Dense(64, "relu"), fn.Dense(32, "tanh"), fn.Dense(4)],
    "dropout-batchnorm": lambda: [
        fn.Dense(64, use_bias=False, initializer="xavier"),  # (2 epochs' accuracy: > 0.9)
        fn.BatchNorm1d(),
        fn.ReLU(),
        fn.Dropout(0.2, seed=1),
        fn.Dense(4),
    ],
}


def test_mixed_bfloat16_on_cupy_14_or_a_clear_error(gpu):
    """CuPy >= 14 has bfloat16 arrays (ml_dtypes): bf16 trains; older CuPy says what it needs."""
    if gpu.name != EMULATED:
        import cupy

        if int(cupy.__version__.split(".")[0]) < 14:
            with pytest.raises(NotImplementedError, match="mixed_bfloat16.*CuPy >= 14"):
                fn.Sequential([fn.Dense(4)], backend=gpu, dtype="mixed_bfloat16")
            return
    X, y = make_blobs(n=1000)
    layers = [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)]
    model = fn.Sequential(layers, backend=gpu, dtype="mixed_bfloat16", seed=0)
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)
    assert model.layers[0].W.compute.dtype.name == "bfloat16" and model.loss_scaler is None
    assert model.evaluate(X, y)["accuracy"] > 0.9


@pytest.mark.parametrize("layers", sorted(MIXED_LAYERS))
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_steps_are_captured_and_equal_eager(gpu, policy, layers):
    """Mixed precision is captured on cupy (half kernels for every layer, cuBLASLt GEMMs, loss
    scaling on the device) and trains as the eager step does."""
    if policy == "mixed_bfloat16":
        needs_bfloat16_arrays(gpu)
    X, y = make_blobs(n=1000)
    models = []
    for compiled in (False, True):
        model = fn.Sequential(MIXED_LAYERS[layers](), backend=gpu, dtype=policy, seed=0)
        model.fit(X, y, epochs=2, batch_size=64, verbose=0, compiled=compiled, shuffle=False)
        models.append(model)
    eager, graphed = models
    assert graphed.step_description.startswith("captured graph"), graphed.step_description
    for a, b in zip(eager.parameters(), graphed.parameters()):
        np.testing.assert_allclose(
            gpu.to_numpy(a.value), gpu.to_numpy(b.value), rtol=1e-5, atol=1e-6
        )
    assert graphed.evaluate(X, y)["accuracy"] > 0.9


def test_cuda_graph_rejects_unsupported_models(gpu):
    X, y = make_blobs(n=100)
    model = fn.Sequential([fn.Dense(8), fn.Softmax(), fn.Dense(4)], backend=gpu)
    with pytest.raises(ValueError, match="not Softmax"):  # Dropout is captured since DropoutPlan
        model.fit(X, y, epochs=1, verbose=0, compiled=True)
    with pytest.raises(ValueError, match="numpy has no compiled step"):
        fn.Sequential([fn.Dense(4)], backend="numpy").fit(X, y, epochs=1, verbose=0, compiled=True)


def test_data_too_large_for_the_device_is_streamed_from_pinned_memory(gpu, monkeypatch):
    X, y = make_blobs(n=3000)
    resident = _mlp(gpu, seed=3)
    h1 = resident.fit(X, y, epochs=4, batch_size=64, verbose=0)
    monkeypatch.setattr(gpu, "device_data_limit_bytes", 1000)
    streamed = _mlp(gpu, seed=3)
    h2 = streamed.fit(X, y, epochs=4, batch_size=64, verbose=0, validation_data=(X[:500], y[:500]))
    assert streamed.streamed and not resident.streamed
    assert h2["loss"][-1] < h2["loss"][0] and h2["val_accuracy"][-1] > 0.9
    assert abs(h1["accuracy"][-1] - h2["accuracy"][-1]) < 0.05
    with pytest.raises(ValueError, match="resident on the GPU"):
        _mlp(gpu).fit(X, y, epochs=1, verbose=0, compiled=True)


def test_checkpoint_saved_on_gpu_loads_on_cpu(gpu, tmp_path):
    X, y = make_blobs()
    model = _mlp(gpu)
    model.fit(X, y, epochs=2, verbose=0)
    model.save(tmp_path / "gpu.npz")
    cpu = fn.load_model(tmp_path / "gpu.npz", backend="numpy")
    np.testing.assert_allclose(cpu.predict_proba(X), model.predict_proba(X), rtol=1e-4, atol=1e-6)


def test_each_epoch_reseeds_one_generator_and_a_resumed_fit_matches(gpu, tmp_path):
    """Each epoch's order comes from the generator the batch source keeps, reseeded (no
    cuRAND generator per epoch), as a fresh one would draw it; a fit resumed from a checkpoint
    (captured steps, dropout) equals uninterrupted training."""
    first = gpu.reseeded(None, 5)
    order = gpu.to_numpy(gpu.permutation(first, 50))
    again = gpu.reseeded(first, 5)
    assert again is first
    np.testing.assert_array_equal(gpu.to_numpy(gpu.permutation(again, 50)), order)
    X, y = make_blobs(n=200)

    def model():
        layers = [fn.Dense(16, "relu"), fn.Dropout(0.2), fn.Dense(4)]
        return fn.Sequential(layers, backend=gpu, seed=4, dtype="float32")

    whole, part = model(), model()
    whole.fit(X, y, epochs=3, batch_size=32, verbose=0)
    part.fit(X, y, epochs=2, batch_size=32, verbose=0)
    part.save(tmp_path / "m.npz")
    resumed = fn.load_model(tmp_path / "m.npz", backend=gpu)
    resumed.fit(X, y, epochs=3, initial_epoch=2, batch_size=32, verbose=0)
    np.testing.assert_allclose(resumed.predict_proba(X), whole.predict_proba(X), rtol=1e-6)
