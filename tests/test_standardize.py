"""The Standardize layer (a model's own input scaling) and ``Sequential.prepend``: a model
trained on scaled rows, saved, loaded or exported, takes raw features (the CLI's --scale)."""

import warnings

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn
from fastnet.cli import main


def _raw(n=240, seed=0):
    X, y = make_blobs(n=n, d=6, k=3, seed=seed)
    return (X * 50 + 100).astype(np.float32), y  # features around 100, spread 50


def test_standardize_scales_and_backpropagates_on_every_backend(backend):
    rng = np.random.default_rng(0)
    offset, scale = rng.normal(size=5), rng.uniform(0.5, 3, 5)
    X = rng.normal(size=(7, 5))
    model = fn.Sequential(
        [fn.Standardize(offset, scale), fn.Dense(3)], loss="mse", backend=backend, dtype="float64"
    ).build(5)
    out = backend.to_numpy(model.layers[0].forward(backend.asarray(X), training=True))
    np.testing.assert_allclose(out, (X - offset) / scale, rtol=1e-15)
    dy = rng.normal(size=(7, 5))
    dx = backend.to_numpy(model.layers[0].backward(backend.asarray(dy)))
    np.testing.assert_allclose(dx, dy / scale, rtol=1e-15)
    assert model.layers[0].backward(backend.asarray(dy), need_dx=False) is None
    assert model.layers[0].parameters() == []


def test_standardize_refuses_bad_values_and_widths():
    with pytest.raises(ValueError, match="scale must be positive"):
        fn.Standardize([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        fn.Standardize([np.nan, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="one value per feature, got 2 and 3"):
        fn.Standardize([0.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="Standardize has 2 features, the inputs 3"):
        fn.Sequential([fn.Standardize([0, 0], [1, 1]), fn.Dense(2)], backend="numpy").build(3)
    for offset, scale in [([1e39, 0], [1, 1]), ([0, 0], [1e-50, 1]), ([0, 0], [1e-40, 1])]:
        # (inf, 0 or a subnormal scale in float32: x / 1e-40 gave inf, predictions NaN)
        with pytest.raises(ValueError, match="offset and scale leave float32's range"):
            fn.Sequential([fn.Standardize(offset, scale), fn.Dense(2)], backend="numpy").build(2)
    model = fn.Sequential([fn.Standardize([1e39, 0], [1e-50, 1])], dtype="float64")
    with pytest.warns(RuntimeWarning, match="subtract the offset"):  # holds, but rounds them
        model.build(2)
    with pytest.raises(ValueError, match="X contains 1 NaN or infinite values"):
        fn.Standardize.fit(np.array([[1.0, np.nan], [3.0, 5.0]]))
    layer = fn.Standardize.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_array_equal(layer.offset, [2.0, 5.0])
    np.testing.assert_array_equal(layer.scale, [1.0, 1.0])  # a constant column: only shifted


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_prepend_gives_a_model_of_raw_features_with_the_same_state(tmp_path, name):
    X, y = _raw()
    layer = fn.Standardize.fit(X)
    scaled = ((X - layer.offset.astype(np.float32)) / layer.scale.astype(np.float32)).astype(
        np.float32
    )
    model = fn.Sequential(
        [fn.Dense(16, "relu"), fn.Dropout(0.2), fn.Dense(3)], backend=name, seed=0
    )
    model.fit(scaled, y, epochs=2, batch_size=32, verbose=0)
    raw = model.prepend(layer)
    assert raw.input_dim == 6 and isinstance(raw.layers[0], fn.Standardize)
    want = model.predict_proba(scaled)  # numba's Dense-only inference kernel: to an ulp
    np.testing.assert_allclose(raw.predict_proba(X), want, rtol=1e-6, atol=1e-7)
    state, copied = model.host_state(), raw.host_state()
    assert len(copied) == len(state)
    for key, value in state.items():
        kind, index, rest = (key.split("/", 2) + ["", ""])[:3]
        shifted = f"{kind}/{int(index) + 1}/{rest}" if rest else key  # a layer's, the model's
        np.testing.assert_array_equal(copied[shifted], value)
    assert raw.epochs_trained == 2  # the same shuffles next
    raw.save(tmp_path / "raw.npz")
    loaded = fn.load_model(tmp_path / "raw.npz", backend=name)
    np.testing.assert_array_equal(loaded.predict_proba(X), raw.predict_proba(X))
    with pytest.raises(ValueError, match="without parameters"):
        model.prepend(fn.Dense(6))


def test_cli_scaled_model_takes_raw_features_loaded_and_exported(tmp_path, capsys):
    X, y = _raw(300)
    rows = [",".join([*map(str, x), str(t)]) for x, t in zip(X.tolist(), y)]
    (tmp_path / "d.csv").write_text("\n".join(["a,b,c,d,e,f,label", *rows]) + "\n")
    ckpt = tmp_path / "m.npz"
    argv = ["train", "--data", str(tmp_path / "d.csv"), "--target", "label", "--scale"]
    argv += ["standard", "--save", str(ckpt), "--epochs", "5", "--backend", "numpy"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["predict", str(ckpt), "--data", str(tmp_path / "d.csv")]) == 0
    cli = np.array(capsys.readouterr().out.split()[1:], np.int64)
    model = fn.load_model(ckpt)
    assert isinstance(model.layers[0], fn.Standardize)
    assert (model.predict(X) == cli).all()  # labels 0..2 encode as themselves
    assert (cli == y).mean() > 0.8
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model.to_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": X})
    np.testing.assert_allclose(logits, model.predict_raw(X), rtol=1e-4, atol=1e-4)


def test_prepend_carries_buffers_per_layer_optimizers_history_and_shuffles():
    X, y = _raw()
    layer = fn.Standardize.fit(X)
    scaled = (X - layer.offset.astype(np.float32)) / layer.scale.astype(np.float32)
    model = fn.Sequential(
        [fn.Dense(8, optimizer=fn.SGD(lr=0.05)), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(3)],
        backend="numpy",
        seed=3,
    )
    model.fit(scaled, y, epochs=1, batch_size=32, verbose=0)
    raw = model.prepend(layer)
    assert raw.history == model.history
    model.fit(scaled, y, epochs=1, batch_size=32, verbose=0)  # shuffled as the copy will be
    raw.fit(X, y, epochs=1, batch_size=32, verbose=0)
    for a, b in zip(model.parameters(), raw.parameters()):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        raw.layers[2].running_var, model.layers[1].running_var, rtol=1e-6, atol=1e-7
    )


def test_no_input_gradient_is_computed_below_the_lowest_parameters():
    X, y = _raw(64)
    model = fn.Sequential(
        [fn.Standardize.fit(X), fn.Dropout(0.1), fn.Dense(8, "relu"), fn.Dense(3)],
        backend="numpy",
        seed=0,
    ).build(6)
    with fn.record_kernels() as report:
        model.fit(X, y, epochs=1, batch_size=64, verbose=0, compiled=False)
    dense = model.layers[2]
    assert not any(key[0] == "dx" for key in dense._buffers), list(dense._buffers)
    assert report  # the step ran through the backend


def test_mixed_precision_standardizes_raw_features_before_the_half_cast(gpu):
    """Raw features past float16's range (1e5) are scaled in float32 first, then cast."""
    X, y = _raw(96)
    X = X * 1000  # around 1e5: inf in float16
    layer = fn.Standardize.fit(X)
    scaled = ((X - layer.offset) / layer.scale).astype(np.float32)
    ref = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], backend="numpy", seed=0).build(6)
    mixed = fn.Sequential(
        [layer, fn.Dense(8, "relu"), fn.Dense(3)], backend=gpu, seed=0, dtype="mixed_float16"
    ).build(6)
    for src, dst in zip(ref.parameters(), mixed.parameters()):
        dst.value[...] = gpu.asarray(src.value)
    mixed.arena.refresh_compute()
    got = mixed.predict_proba(X)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref.predict_proba(scaled), rtol=2e-2, atol=2e-3)
    hist = mixed.fit(X, y, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(hist["loss"]).all()


def test_standardize_says_when_the_models_dtype_rounds_away_its_inputs(tmp_path):
    """Inputs are cast to the model's dtype before Standardize: a float32 model of timestamps
    near 1.7e9 spread over 100 kept 2 distinct standardized values (accuracy 0.56 against
    0.83 in float64), silently; a memory-mapped float64 X beyond float32's range trained to
    inf; Standardize.fit of values near 1e200 overflowed its variance."""
    r = np.random.default_rng(0)
    t = 1.7e9 + r.uniform(0, 100, (200, 1))
    with pytest.warns(RuntimeWarning, match=r"Standardize in float32: .* steps of up to 6\.\d"):
        fn.Sequential([fn.Standardize.fit(t), fn.Dense(2)]).build(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn.Sequential([fn.Standardize.fit(t), fn.Dense(2)], dtype="float64").build(1)
        fn.Sequential([fn.Standardize.fit(t - 1.7e9), fn.Dense(2)]).build(1)
    huge = r.normal(size=(50, 3)) * 1e200
    scaler = fn.Standardize.fit(huge)
    np.testing.assert_allclose(scaler.scale, np.std(huge / 1e200, axis=0) * 1e200, rtol=1e-12)
    path = tmp_path / "X.npy"
    np.save(path, np.full((40, 3), 1e39))
    X = np.load(path, mmap_mode="r")
    with pytest.raises(ValueError, match=r"X contains 120 NaN or infinite value\(s\) \(as float32"):
        fn.Sequential([fn.Dense(2)]).fit(X, np.arange(40) % 2, verbose=0)


@pytest.mark.parametrize("name", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_leading_standardize_keeps_predictions_on_the_fused_path(name, dtype):
    """A model with its Standardize first (a CLI --scale checkpoint) predicted layer by layer:
    one row took 3x the time of the same model's fused call on numba. The rows are now
    standardized, then the rest runs fused: as the layers' forward (bit for bit on NumPy, to
    rounding on numba's one-call stack), and the fused call reported."""
    from fastnet.backends import probe

    if not probe(name).available:
        pytest.skip(f"{name} unavailable")
    X, y = _raw()
    layers = [fn.Standardize.fit(X), fn.Dense(16, "relu"), fn.Dropout(0.2), fn.Dense(3)]
    model = fn.Sequential(layers, backend=name, dtype=dtype, seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    X = X.astype(dtype)
    for rows in (X[:1], X, X[::2]):  # (one row, all, a strided view)
        want = model.loss.predict_output(np.array(model.forward(rows, training=False)))
        tolerance = 0 if name == "numpy" else 1e-6 if dtype == "float32" else 1e-13
        got = model.predict_proba(rows)
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
        assert "fused inference" in model.backend.kernel_report["matmul"]
        np.testing.assert_array_equal(model.predict(rows), want.argmax(axis=1))


def test_numba_standardizes_as_numpy_rounds():
    """numba's one-pass kernel rounds each element as NumPy's subtract, then divide."""
    from fastnet.backends import get_backend, probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    numba, numpy = get_backend("numba"), get_backend("numpy")
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        X = (rng.normal(size=(37, 11)) * 1e3).astype(dtype)
        X[0, :3] = [np.inf, -np.inf, np.nan]
        offset = rng.normal(size=11).astype(dtype)
        scale = rng.uniform(1e-3, 1e3, 11).astype(dtype)
        for x in (X, X[:, ::-1], X[::3]):
            want = numpy.standardize(x, offset, scale, np.empty(x.shape, dtype))
            for standardize in (numba.standardize, numba.k.standardize):  # (the kernel's own)
                got = standardize(x, offset, scale, np.empty(x.shape, dtype))
                np.testing.assert_array_equal(got, want)
