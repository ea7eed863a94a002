"""Model files other than .npz: safetensors checkpoints and ONNX export; CLI conveniences."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn


def _model(backend="numpy", bn=True):
    layers = [
        fn.Dense(16),
        fn.BatchNorm1d(),
        fn.LeakyReLU(0.1),
        fn.Dropout(0.2),
        fn.Dense(8, "tanh"),
        fn.Dense(4),
    ]
    if not bn:
        layers = [fn.Dense(16, "relu"), fn.Dense(4)]
    model = fn.Sequential(layers, backend=backend, seed=0)
    X, y = make_blobs(n=256)
    model.fit(X, y, epochs=2, verbose=0)
    return model, X, y


def test_safetensors_roundtrip(tmp_path, backend):
    model, X, y = _model()
    path = tmp_path / "m.safetensors"
    model.save(path, extra={"dataset": "blobs"})
    loaded, meta = fn.model.load_model_with_meta(path, backend=backend)
    np.testing.assert_allclose(
        loaded.predict_proba(X), model.predict_proba(X), rtol=1e-5, atol=1e-7
    )
    assert meta["extra"] == {"dataset": "blobs"}
    assert loaded.arena.groups[0].step == model.arena.groups[0].step


def test_safetensors_interoperates_with_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model, X, _ = _model(bn=False)
    path = tmp_path / "m.safetensors"
    model.save(path)
    tensors = st.load_file(str(path))
    np.testing.assert_array_equal(tensors["param/0/W"], model.parameters()[0].value)


@pytest.mark.parametrize("damage", ["truncate", "header", "offsets", "metadata"])
def test_damaged_safetensors_raise_checkpoint_error(tmp_path, damage):
    model, _, _ = _model(bn=False)
    path = tmp_path / "m.safetensors"
    model.save(path)
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "header":
        raw[:8] = (len(raw) * 4).to_bytes(8, "little")
    else:
        if damage == "offsets":
            header["param/0/W"]["data_offsets"] = [0, 10**9]
        else:
            header["__metadata__"]["config"] = "{not json"
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        raw = bytearray(len(text).to_bytes(8, "little")) + text + raw[8 + size :]
    path.write_bytes(bytes(raw))
    with pytest.raises(fn.CheckpointError, match="m.safetensors"):
        fn.load_model(path)


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, X, _ = _model()
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"input": X[:50]})
    np.testing.assert_allclose(logits, model.predict_raw(X[:50]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probabilities, model.predict_proba(X[:50]), rtol=1e-4, atol=1e-6)


def test_cli_export_version_and_help(tmp_path):
    pytest.importorskip("onnx")
    model, _, _ = _model()
    model.save(tmp_path / "m.npz")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "fastnet.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    run = cli("export", "m.npz", "m.onnx")
    assert run.returncode == 0 and (tmp_path / "m.onnx").exists(), run.stderr
    assert fn.__version__ in cli("--version").stdout
    help_text = cli("train", "--help").stdout
    assert "(default: 128)" in help_text and "--distributed" in help_text


def test_summary_and_repr_before_build():
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)])
    text = repr(model)
    assert "not built" in text and "total params=0" in text
    model.build(5)
    assert "total params=75" in model.summary()  # 5*8+8 + 8*3+3
