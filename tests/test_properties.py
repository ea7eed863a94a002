"""Property-based tests: checkpoints mutated as a broken disk or an attacker would (bytes, keys,
shapes, dtypes, values; re-signed so only validation can catch them) and arbitrary model inputs.
A load either fails with ``CheckpointError`` or gives a model that trains safely on every
backend; bad input is rejected with ``ValueError``/``TypeError`` and changes nothing."""

import json
import os

import numpy as np
import pytest
from conftest import backend_params, make_blobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnet as fn
from fastnet.backends import get_backend
from fastnet.checkpoint import META_KEY, _digest

SETTINGS = settings(
    max_examples=int(os.environ.get("FASTNET_HYPOTHESIS_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
X, Y = make_blobs(n=96, d=6, k=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = fn.Sequential(
        [fn.Dense(8, "relu"), fn.BatchNorm1d(), fn.Dense(3)], optimizer=fn.Adam(1e-2), seed=0
    )
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("prop") / "m.npz"
    model.save(path)
    model.save(path.with_suffix(".safetensors"))
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != META_KEY}
        meta = json.loads(str(data[META_KEY]))
    return path, arrays, meta


def _write(path, arrays, meta):
    meta = dict(meta, sha256=_digest(arrays, [meta.get("config"), meta.get("extra", {})]))
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})


def _load_and_train(path, backend):
    """Either a CheckpointError, or a model that trains a step without corrupting memory."""
    try:
        model = fn.load_model(path, backend=backend)
    except fn.CheckpointError:
        return False
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0, on_divergence="ignore")
    return True


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("backend", backend_params(["numpy", "numba"]))
@SETTINGS
@given(data=st.data())
def test_flipped_bytes_never_crash(checkpoint, tmp_path, backend, suffix, data):
    path = checkpoint[0].with_suffix(suffix)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    bad = tmp_path / f"flipped{suffix}"
    bad.write_bytes(bytes(raw[:cut]))
    _load_and_train(bad, get_backend(backend))


_DTYPES = st.sampled_from(
    [np.float32, np.float64, np.int64, np.int8, np.bool_, np.complex64, "U3", np.uint64]
)


@st.composite
def _mutation(draw, keys):
    kind = draw(st.sampled_from(["drop", "add", "shape", "dtype", "value", "scalar"]))
    key = draw(st.sampled_from(sorted(keys)))
    return kind, key, draw(st.data())


@pytest.mark.parametrize("backend", backend_params(["numpy", "numba"]))
@SETTINGS
@given(data=st.data())
def test_resigned_mutations_are_rejected_or_safe(checkpoint, tmp_path, backend, data):
    path, arrays, meta = checkpoint
    arrays = dict(arrays)
    for _ in range(data.draw(st.integers(1, 3))):
        kind, key, more = data.draw(_mutation(arrays.keys() or {"param/0/W"}))
        if kind == "drop":
            arrays.pop(key, None)
        elif kind == "add":
            name = more.draw(st.sampled_from(["slot/0/W/m2", "param/9/W", "junk", "step/0/x"]))
            arrays[name] = np.zeros(more.draw(st.integers(0, 5)), np.float32)
        elif kind == "shape":
            shape = tuple(more.draw(st.lists(st.integers(0, 9), max_size=3)))
            arrays[key] = np.ones(shape, np.float32)
        elif kind == "dtype" and key in arrays:
            arrays[key] = np.zeros(arrays[key].shape, more.draw(_DTYPES))
        elif (
            kind == "value"
            and key in arrays
            and arrays[key].size
            and (arrays[key].dtype.kind in "biuf")
        ):
            value = more.draw(st.sampled_from([np.nan, np.inf, -np.inf, -1e30, 1e30, -1.0]))
            arr = arrays[key].astype(np.float64).copy()
            arr.flat[more.draw(st.integers(0, arr.size - 1))] = value
            arrays[key] = arr.astype(arrays[key].dtype) if arrays[key].dtype.kind == "f" else arr
        elif kind == "scalar":
            arrays[key] = np.array(more.draw(st.integers(-(2**63), 2**63 - 1)))
    bad = tmp_path / "mutated.npz"
    _write(bad, arrays, meta)
    _load_and_train(bad, get_backend(backend))


@SETTINGS
@given(
    config=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    )
)
def test_arbitrary_configs_raise_checkpoint_error(checkpoint, tmp_path, config):
    _, arrays, meta = checkpoint
    bad = tmp_path / "config.npz"
    _write(bad, arrays, dict(meta, config=config))
    with pytest.raises(fn.CheckpointError):
        fn.load_model(bad)


@pytest.mark.parametrize("backend", backend_params(["numpy", "numba"]))
@SETTINGS
@given(
    rows=st.integers(0, 6),
    cols=st.integers(0, 4),
    dtype=_DTYPES,
    poison=st.sampled_from([None, np.nan, np.inf, 1e38]),
    labels=st.lists(st.integers(-3, 10**6) | st.floats(allow_nan=True), max_size=7),
)
def test_arbitrary_inputs_are_rejected_cleanly(backend, rows, cols, dtype, poison, labels):
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(3)], backend=backend, seed=0)
    Xb = np.ones((rows, cols), dtype=dtype) if cols else np.ones(rows)
    if poison is not None and Xb.size and Xb.dtype.kind == "f":
        Xb.flat[0] = poison
    try:
        model.fit(Xb, np.asarray(labels), epochs=1, verbose=0)
    except (ValueError, TypeError):
        assert not model.built and model.history == {}
        return
    assert model.built and np.isfinite(model.history["loss"][0]) or poison == 1e38
