"""Model files other than .npz: safetensors checkpoints and ONNX export; CLI conveniences."""

import json
import os
import re
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


DAMAGES = ["truncate", "cut-header", "header", "offsets", "metadata", "wrapping", "huge", "text"]
DAMAGES += ["nested", "dimensions"]


def test_a_file_of_something_else_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A large file that is no checkpoint was read whole (1 GiB in memory before the error);
    /dev/zero grew to a MemoryError."""
    import builtins

    other = tmp_path / "big.bin"
    other.write_bytes(b"\x00" * 4096)
    reads = []
    real_open = builtins.open

    def spying_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if os.fspath(file) == str(other):
            f_read = f.read
            f.read = lambda n=-1: reads.append(n) or f_read(n)
        return f

    monkeypatch.setattr(builtins, "open", spying_open)
    with pytest.raises(
        fn.CheckpointError, match=r"big.bin' is not a fastnet checkpoint: .*4096 by"
    ):
        fn.load_model(other)
    assert reads and -1 not in reads and max(reads) <= 16
    if os.path.exists("/dev/zero"):
        with pytest.raises(fn.CheckpointError, match="is not a regular file"):
            fn.load_model("/dev/zero")


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_safetensors_raise_checkpoint_error(tmp_path, damage):
    model, _, _ = _model(bn=False)
    path = tmp_path / "m.safetensors"
    model.save(path)
    raw = bytearray(path.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    if damage in ("truncate", "cut-header"):
        raw = raw[: len(raw) // 2 if damage == "truncate" else 8 + size // 2]
        if damage == "cut-header":  # (was "neither an .npz archive nor a safetensors file")
            path.write_bytes(bytes(raw))
            with pytest.raises(fn.CheckpointError, match="m.safetensors' is a truncated safet"):
                fn.load_model(path)
    elif damage == "header":
        raw[:8] = (len(raw) * 4).to_bytes(8, "little")
    else:
        entry, lo = header["param/0/W"], header["param/0/W"]["data_offsets"][0]
        if damage == "offsets":
            entry["data_offsets"] = [0, 10**9]
        elif damage == "wrapping":  # 2**64 elements: an int64 product wraps to 0
            entry.update(shape=[2**32, 2**32], data_offsets=[lo, lo])
        elif damage == "dimensions":  # (NumPy's ValueError: 'maximum supported dimension')
            entry["shape"] = [1] * 64 + [entry["shape"][0] * entry["shape"][1]]
        elif damage in ("huge", "text"):  # the spec's shapes are lists of integers >= 0
            entry["shape"] = [2**70, 0] if damage == "huge" else "68"
        elif damage == "metadata":
            header["__metadata__"]["config"] = "{not json"
        text = json.dumps(header).encode()
        if damage == "nested":
            text = text[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        text += b" " * (-len(text) % 8)
        raw = bytearray(len(text).to_bytes(8, "little")) + text + raw[8 + size :]
    path.write_bytes(bytes(raw))
    with pytest.raises(fn.CheckpointError, match="m.safetensors"):
        fn.load_model(path)


def test_onnx_export_matches_onnxruntime(tmp_path):
    """The file is IR version 8 (opset 17's first): onnxruntime 1.16, the oldest the onnx
    extra takes, refused onnx's newest ("Unsupported model IR version: 14, max supported IR
    version: 9"; checked by hand with onnxruntime 1.16.3)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, X, _ = _model()
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    assert onnx.load(str(path)).ir_version == 8
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
    run = cli("export", "m.npz", "m.txt")
    assert run.returncode == 2 and "'m.txt' must end in .onnx" in run.stderr
    assert not (tmp_path / "m.txt").exists()
    assert fn.__version__ in cli("--version").stdout
    help_text = cli("train", "--help").stdout
    assert "(default: 128)" in help_text and "--distributed" in help_text


def test_summary_and_repr_before_build():
    """Every layer before build (an unbuilt BatchNorm1d raised AttributeError 'gamma')."""
    model = fn.Sequential([fn.Dense(8, "relu"), fn.BatchNorm1d(), fn.Dense(3)], backend="numpy")
    text = repr(model)
    assert "not built" in text and "total params=0" in text and model.count_params() == 0
    assert model.layers[1].state_buffers() == {}
    model.build(5)
    assert "total params=91" in model.summary(None)  # 5*8+8 + 2*8 + 8*3+3


def test_onnx_export_of_a_float64_model_keeps_its_precision(tmp_path):
    """LeakyRelu's alpha and BatchNormalization's epsilon are float32 attributes in ONNX: a
    float64 model exports them as float64 tensors (fastnet's own ops), agreeing to rounding."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    layers = [fn.Dense(16, "leaky_relu", alpha=0.1234567891), fn.BatchNorm1d(eps=1.23456789e-7),
              fn.LeakyReLU(alpha=-0.3141592653), fn.Dense(3)]  # fmt: skip
    model = fn.Sequential(layers, dtype="float64", seed=0)
    model.fit(X, rng.integers(0, 3, 200), epochs=2, verbose=0)
    model.layers[1].running_var[:] = 1e-6  # small variances: epsilon's rounding would show
    model.to_onnx(tmp_path / "m.onnx", {"classes": "[7, 8, 9]"})
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": X})
    np.testing.assert_allclose(logits, model.predict_raw(X), rtol=1e-13, atol=1e-12)
    props = session.get_modelmeta().custom_metadata_map
    assert props["classes"] == "[7, 8, 9]" and props["producer"] == "fastnet"


def test_cli_export_records_the_class_labels(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from fastnet.cli import main

    X = np.random.default_rng(1).standard_normal((60, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=np.array([0, 1000, 2000])[np.arange(60) % 3])
    argv = ["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--quiet"]
    assert main([*argv, "--scale", "standard", "--save", str(tmp_path / "m.npz")]) == 0
    assert main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert "maps output columns to labels: [0, 1000, 2000]" in capsys.readouterr().out
    meta = ort.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == [0, 1000, 2000] and meta["task"] == "classification"
    binary = fn.Sequential([fn.Dense(1)], loss="sigmoid_binary_cross_entropy", backend="numpy")
    binary.fit(X, (X[:, 0] > 0).astype(np.float32), epochs=1, verbose=0)
    binary.metadata["classes"] = ["no", "yes"]  # one column: not a column per label
    binary.save(tmp_path / "b.npz")
    assert main(["export", str(tmp_path / "b.npz"), str(tmp_path / "b.onnx")]) == 0
    assert "names the labels: the output is P('yes')" in capsys.readouterr().out


def test_onnx_metadata_maps_names_to_strings(tmp_path):
    pytest.importorskip("onnx")
    model, _, _ = _model()
    with pytest.raises(TypeError, match="metadata maps names to strings"):
        model.to_onnx(tmp_path / "m.onnx", {"classes": [0, 1]})
    assert not (tmp_path / "m.onnx").exists()


def test_an_activation_without_an_onnx_op_is_named(tmp_path, monkeypatch):
    """It was a bare KeyError from inside the exporter."""
    pytest.importorskip("onnx")
    from fastnet import export

    model = fn.Sequential([fn.Dense(8, "tanh"), fn.Dense(3)], backend="numpy", seed=0)
    model.build(4)
    monkeypatch.delitem(export._ACTIVATION_OPS, "tanh")  # as a new activation would be
    with pytest.raises(NotImplementedError, match="the tanh activation has no ONNX export"):
        model.to_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "layers, said",
    [
        ([fn.Dense(8), fn.Tanh()], "tanh runs faster through NumPy than in numba"),
        ([fn.Dense(8), fn.LeakyReLU(-0.2)], "layer 1, a separate leaky_relu"),
        ([fn.Dense(8, "relu"), fn.ReLU()], "layer 1, a separate relu (right after a linear"),
        ([fn.Dense(8), fn.Dropout(0.2), fn.ReLU()], "layer 2, a separate relu (right after"),
    ],
)
def test_the_compile_refusal_says_what_stays_eager(layers, said):
    """A separate activation right after a linear Dense fuses with it (the notebooks' Affine,
    Relu); what stays eager is named: tanh; a negative-slope leaky ReLU, which reads its input
    (it was told "Dense(units, ...) fuses it"); an activation after an activated Dense or a
    Dropout."""
    X, y = make_blobs(n=64)
    model = fn.Sequential([*layers, fn.Dense(4)], backend="numba", seed=0)
    with pytest.raises(ValueError, match=re.escape(said)):
        model.fit(X, y, epochs=1, verbose=0, compiled=True)
