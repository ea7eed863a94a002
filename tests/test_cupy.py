"""GPU-only behaviour of the cupy backend (skipped cleanly without a usable GPU)."""

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn
from fastnet.backends import probe

pytestmark = pytest.mark.skipif(not probe("cupy").available, reason=f"cupy: {probe('cupy').reason}")


def _mlp(seed=0, opt=None):
    return fn.Sequential(
        [fn.Dense(64, "relu"), fn.Dense(32, "relu"), fn.Dense(4)],
        optimizer=opt or fn.Adam(1e-3),
        backend="cupy",
        seed=seed,
    )


def test_labels_from_another_gpu_framework_are_adopted():
    model = _mlp()  # the backend (and its cuBLAS library) first, then torch's libraries
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("a PyTorch build without CUDA")
    X, y = make_blobs(n=200)
    model.fit(
        torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda"), epochs=1, verbose=0
    )
    assert model.history["loss"]


def test_validation_split_takes_device_sample_weights():
    import cupy as cp

    X, y = make_blobs(n=200)
    w = cp.asarray(np.linspace(0.5, 2.0, 200), cp.float32)  # weights, not all ones
    models = [_mlp(), _mlp()]
    models[0].fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=w)
    models[1].fit(X, y, epochs=1, verbose=0, validation_split=0.2, sample_weight=w.get())
    assert models[0].history["val_loss"] == pytest.approx(models[1].history["val_loss"])


def test_data_stays_on_device_and_predict_returns_numpy():
    import cupy as cp

    X, y = make_blobs()
    model = _mlp()
    model.fit(cp.asarray(X), cp.asarray(y), epochs=1, verbose=0)
    out = model.predict_proba(cp.asarray(X))
    assert isinstance(out, np.ndarray) and isinstance(model.parameters()[0].value, cp.ndarray)


def test_numpy_model_refuses_gpu_array():
    import cupy as cp

    X, y = make_blobs()
    with pytest.raises(TypeError, match="cupy .*numpy"):
        fn.Sequential([fn.Dense(4)], backend="numpy").fit(cp.asarray(X), y, verbose=0)


def test_pool_memory_does_not_grow_across_epochs():
    import cupy as cp

    X, y = make_blobs(n=4000)
    model = _mlp()
    model.fit(X, y, epochs=2, verbose=0)
    cp.cuda.Device().synchronize()
    held = model.backend.peak_memory()
    model.fit(X, y, epochs=50, verbose=0)
    assert model.backend.peak_memory() <= held * 1.05 + 2**20
