import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn


def _trained(backend, epochs=2):
    X, y = make_blobs()
    model = fn.Sequential(
        [fn.Dense(16, "relu"), fn.BatchNorm1d(), fn.Dense(4)],
        optimizer=fn.Adam(1e-2),
        backend=backend,
        seed=0,
    )
    model.fit(X, y, epochs=epochs, verbose=0)
    return model, X, y


def test_roundtrip_onto_every_backend(backend, tmp_path):
    model, X, y = _trained("numpy")
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fn.load_model(path, backend=backend)
    assert loaded.backend is backend
    np.testing.assert_allclose(
        loaded.predict_proba(X), model.predict_proba(X), rtol=1e-5, atol=1e-7
    )
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert set(a.state) == set(b.state)
        np.testing.assert_array_equal(np.asarray(a.state["m"]), backend.to_numpy(b.state["m"]))
    assert [g.step for g in model.arena.groups] == [g.step for g in loaded.arena.groups]
    # training continues from the saved optimizer state exactly as the original would
    model.fit(X, y, epochs=1, shuffle=False, verbose=0)
    loaded.fit(X, y, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        loaded.predict_proba(X), model.predict_proba(X), rtol=1e-3, atol=1e-5
    )


def test_saving_does_not_move_the_live_model(backend, tmp_path):
    model, X, _ = _trained(backend, epochs=1)
    w = model.parameters()[0].value
    model.save(tmp_path / "m.npz")
    assert model.parameters()[0].value is w and backend.is_native(w)


def test_loading_never_unpickles(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, __fastnet_meta__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(fn.CheckpointError):
        fn.load_model(evil)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_files_give_clear_errors(tmp_path, damage):
    model, _, _ = _trained("numpy", epochs=1)
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # one byte inside the first array's data (not a zip header field)
        import zipfile

        info = zipfile.ZipFile(path).infolist()[0]
        at = info.header_offset + 30 + len(info.filename) + info.file_size - 8
        path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        path.write_bytes(b"")
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(fn.CheckpointError):
            fn.load_model(path)
        gc.collect()  # (a file np.load left open: a truncated .npz's)
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)]


def test_a_compressed_file_may_not_expand_before_its_checks(tmp_path):
    """A 70 kB .npz declaring 64 MiB of zeros is refused from the zip directory, unread; a
    config asking for more memory than there is is a CheckpointError, not a MemoryError."""
    import json

    from fastnet.checkpoint import _digest

    model, _, _ = _trained("numpy", epochs=1)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez_compressed(tmp_path / "bomb.npz", **arrays, zeros=np.zeros(2**23))
    with pytest.raises(fn.CheckpointError, match=r"bomb\.npz' expands to \d+ bytes from"):
        fn.load_model(tmp_path / "bomb.npz")
    np.savez_compressed(tmp_path / "small.npz", **arrays)  # compressed, but not a bomb
    assert fn.load_model(tmp_path / "small.npz").get_config() == model.get_config()
    meta = json.loads(str(arrays["__fastnet_meta__"]))
    meta["config"]["layers"][0]["units"] = 10**13  # re-signed: a checksum, not a signature
    state = {k: v for k, v in arrays.items() if k != "__fastnet_meta__"}
    meta["sha256"] = _digest(state, [meta["config"], meta.get("extra", {})])
    np.savez(path, **{**arrays, "__fastnet_meta__": np.array(json.dumps(meta))})
    with pytest.raises(fn.CheckpointError, match="invalid architecture"):
        fn.load_model(path)


def test_tampered_array_fails_integrity_check(tmp_path):
    model, _, _ = _trained("numpy", epochs=1)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/0/W"] = arrays["param/0/W"] + 1  # consistent zip, edited weights
    np.savez(path, **arrays)
    with pytest.raises(fn.CheckpointError, match="integrity"):
        fn.load_model(path)


def test_version_mismatch_is_reported(tmp_path):
    import json

    model, _, _ = _trained("numpy", epochs=1)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["__fastnet_meta__"]))
    meta["format_version"] = 99
    arrays["__fastnet_meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(fn.CheckpointError, match="version 99"):
        fn.load_model(path)


def test_a_config_is_held_to_its_arrays_before_building_allocates_them(tmp_path):
    """A file of a few KB whose config asks for Dense(12000) layers (the hash is no signature:
    anyone can write one) is refused before 12000x12000 weights and their slots are drawn."""
    import tracemalloc

    from fastnet.checkpoint import write_checkpoint

    model, _, _ = _trained("numpy", epochs=1)
    config, arrays = model.get_config(), model.host_state()
    for key in ("layers", "input_dim"):
        wide = {**config, "input_dim": 12000}
        if key == "layers":
            wide["layers"] = [
                {**c, "units": 12000} if "units" in c else c for c in config["layers"]
            ]
        write_checkpoint(tmp_path / "wide.npz", wide, arrays, backend="numpy")
        tracemalloc.start()
        with pytest.raises(fn.CheckpointError, match=r"needs 'param/0/W' of shape \(12000, "):
            fn.load_model(tmp_path / "wide.npz", backend="numpy")
        assert tracemalloc.get_traced_memory()[1] < 50e6
        tracemalloc.stop()
    arrays["param/1/gamma"] = arrays["param/1/gamma"][:8]
    write_checkpoint(tmp_path / "bn.npz", config, arrays, backend="numpy")
    with pytest.raises(fn.CheckpointError, match=r"'param/1/gamma' of shape \(16,\), got \(8,\)"):
        fn.load_model(tmp_path / "bn.npz", backend="numpy")


def test_missing_file_and_foreign_npz(tmp_path):
    with pytest.raises(FileNotFoundError):
        fn.load_model(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(fn.CheckpointError, match="not a fastnet checkpoint"):
        fn.load_model(tmp_path / "other.npz")


def test_save_refuses_a_state_that_would_not_load(tmp_path):
    """Weights written NaN in place (``W.value = ...`` refuses NaN) would write a checkpoint
    that ``load_model`` refuses: save says so and writes nothing."""
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0)
    model.build(4)
    model.layers[0].W.value[...] = np.nan
    for name in ("m.npz", "m.safetensors"):
        with pytest.raises(ValueError, match="not saved: 'param/0/W' contains NaN.*would not load"):
            model.save(tmp_path / name)
        assert not (tmp_path / name).exists()


def test_a_bad_dtype_argument_is_not_blamed_on_the_file(tmp_path):
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0)
    model.build(4)
    model.save(tmp_path / "m.npz")
    with pytest.raises(TypeError, match="^dtype must be float32 or float64, got 'bogus'"):
        fn.load_model(tmp_path / "m.npz", dtype="bogus")
    with pytest.raises(ValueError, match="^dtype='mixed_float16' needs the cupy backend"):
        fn.load_model(tmp_path / "m.npz", backend="numpy", dtype="mixed_float16")
    assert fn.load_model(tmp_path / "m.npz", dtype="float64").dtype == np.float64


def test_kill_during_save_leaves_previous_checkpoint_intact(tmp_path):
    """A writer process killed with SIGKILL mid-save never leaves a partial checkpoint."""
    model, X, _ = _trained("numpy", epochs=1)
    path = tmp_path / "ckpt.npz"
    model.save(path)
    expected = fn.load_model(path).predict_proba(X)
    script = textwrap.dedent(f"""
        import numpy as np, fastnet as fn, sys
        model = fn.load_model({str(path)!r})
        big = fn.Sequential([fn.Dense(2048, "relu"), fn.Dense(2048), fn.Dense(4)], seed=1)
        big.build(20)
        print("ready", flush=True)
        while True:
            big.save({str(path)!r})  # large writes, over and over, until killed
    """)
    for delay in (0.05, 0.2, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        loaded = fn.load_model(path)  # either the old or a complete new checkpoint
        assert zipfile.is_zipfile(path)
        if loaded.input_dim == 20 and loaded.layers[0].units == 16:
            np.testing.assert_allclose(loaded.predict_proba(X), expected)
        model.save(path)  # reset to the small one for the next round
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert len(leftovers) <= 3  # killed writers may leave temp files, never a broken target


def test_one_state_schema_drives_get_host_validate_and_set():
    """Every key ``get_state`` writes is an entry of the schema, in its order; ``host_state``
    is that state on the host; steps are integer scalars shared within a group."""

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    model = fn.Sequential(
        [fn.Dense(6, "relu"), fn.BatchNorm1d(), fn.Dense(3)], seed=0, backend="numpy"
    )
    model.fit(X, y, epochs=1, batch_size=10, verbose=0)
    entries = model.state_entries()
    state = model.get_state()
    assert list(state) == [e.key for e in entries]
    assert {e.kind for e in entries} == {"param", "step", "slot", "buffer", "order"}
    host = model.host_state()
    assert all(
        isinstance(v, int) if k.startswith("step/") else isinstance(v, np.ndarray)
        for k, v in host.items()
    )
    assert host["step/0/W"] == 4
    host["step/2/W"] = 3  # Dense 2 shares the Adam group with Dense 0: the larger count
    model.set_state(host)  # (a state saved with Dense 2 frozen while Dense 0 trained on)
    assert model.arena.groups[0].step == 4


def _dropout_model(backend, seed=5):
    return fn.Sequential(
        [fn.Dense(16, "relu"), fn.Dropout(0.3), fn.Dense(4)],
        optimizer=fn.Adam(1e-2),
        backend=backend,
        seed=seed,
    )


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_a_fit_resumed_from_a_checkpoint_trains_as_uninterrupted_training(name, tmp_path):
    """Shuffles, dropout masks and Adam's state all resume: four epochs in one fit equal two,
    the ModelCheckpoint file written after them, its load and two more fits of one epoch, bit
    for bit."""
    pytest.importorskip(name)
    X, y = make_blobs(n=200)
    kw = dict(batch_size=32, verbose=0)
    whole = _dropout_model(name)
    whole.fit(X, y, epochs=4, **kw)
    first = _dropout_model(name)
    first.fit(X, y, epochs=2, callbacks=[fn.ModelCheckpoint(tmp_path / "e{epoch}.npz")], **kw)
    resumed = fn.load_model(tmp_path / "e2.npz", backend=name)
    assert (first.epochs_trained, resumed.epochs_trained) == (2, 2)
    resumed.fit(X, y, epochs=1, **kw)
    resumed.fit(X, y, epochs=1, **kw)
    assert resumed.epochs_trained == whole.epochs_trained == 4
    np.testing.assert_array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    again = fn.load_model(tmp_path / "e1.npz", backend=name)  # from the first epoch's file
    again.fit(X, y, epochs=1, **kw)
    np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
    reshuffled = _dropout_model(name)
    reshuffled.fit(X, y, epochs=2, **kw)
    reshuffled.set_state({**reshuffled.get_state(), "data/order": np.array([7, 2])})
    reshuffled.fit(X, y, epochs=2, **kw)  # another seed: other batches, other weights
    assert not np.array_equal(reshuffled.predict_proba(X), whole.predict_proba(X))


def test_every_fit_holds_out_the_same_validation_rows():
    """validation_split rows never leak into a later fit's training rows."""
    X, _ = make_blobs(n=120)
    y = np.arange(120, dtype=np.float32)  # a row's target names the row
    held: list[set] = []
    record = lambda t, p: held[-1].update(np.asarray(t).ravel().tolist()) or 0.0  # noqa: E731
    model = fn.Sequential([fn.Dense(1)], loss="mse", seed=0)
    for _ in range(2):
        held.append(set())
        model.fit(X, y, epochs=1, validation_split=0.25, metrics=[record], verbose=0)
    assert len(held[0]) == 30 and held[0] == held[1]
    other = fn.Sequential([fn.Dense(1)], loss="mse", seed=1)
    held.append(set())
    other.fit(X, y, epochs=1, validation_split=0.25, metrics=[record], verbose=0)
    assert held[2] != held[0]  # the split follows the model's seed


def test_the_data_order_state_is_checked_and_optional(tmp_path):
    model, X, y = _trained("numpy", epochs=3)
    state = model.get_state()
    assert state["data/order"][1] == 3 and state["data/order"].dtype == np.int64
    for bad in (np.array([1.5, 2.0]), np.array([-1, 2]), np.array([1, 2, 3])):
        with pytest.raises(fn.StateError, match="data/order"):
            model.set_state({**state, "data/order": bad})
    assert model.epochs_trained == 3  # a rejected state changed nothing
    del state["data/order"]  # a checkpoint of an older fastnet: the order stays as it was
    fresh = fn.Sequential.from_config(model.get_config())
    fresh.set_state(state)
    assert fresh.epochs_trained == 0
    import pickle

    assert pickle.loads(pickle.dumps(model)).epochs_trained == 3
    assert model.to("numba").epochs_trained == 3


def test_state_values_are_checked_in_the_model_dtype_and_streams_as_integers():
    """A float64 1e39 is finite but an infinity in a float32 model; a dropout stream is two
    integers (key, step). Both are refused by key, and the model is left unchanged."""
    model = _dropout_model("numpy")
    model.fit(np.ones((8, 3), np.float32), np.arange(8) % 4, epochs=1, verbose=0)
    state = model.host_state()
    before = {k: np.copy(v) for k, v in state.items()}
    bad_weight = {**state, "param/2/b": np.full(4, 1e39)}
    with pytest.raises(fn.StateError, match=r"'param/2/b' holds values beyond float32's range"):
        model.set_state(bad_weight)
    with pytest.raises(fn.StateError, match="'stream/1/dropout' must hold integers"):
        model.set_state({**state, "stream/1/dropout": np.array([1e30, 2.7])})
    for key, value in model.host_state().items():
        np.testing.assert_array_equal(value, before[key])
    model64 = fn.Sequential.from_config({**model.get_config(), "dtype": "float64"})
    model64.set_state(bad_weight)  # within float64's range


def test_a_dropout_seed_given_as_a_numpy_integer_saves(tmp_path):
    """It was kept as np.int64: the model trained, and save (or a ModelCheckpoint, after its
    first epoch) failed to write the config as JSON."""
    X, y = make_blobs(n=64)
    layers = [fn.Dense(8, "relu"), fn.Dropout(0.3, seed=np.int64(3)), fn.Dense(4)]
    model = fn.Sequential(layers, backend="numpy", seed=1)
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    assert fn.load_model(tmp_path / "m.npz").layers[1].seed == 3
    for seed in (True, -1, 2.0):
        with pytest.raises(ValueError, match="dropout seed must be a non-negative integer"):
            fn.Dropout(0.3, seed=seed)


def test_a_per_layer_optimizer_on_any_layer_is_saved(tmp_path):
    """Only Dense's config held its own optimizer: a BatchNorm1d's (or a user layer's) was
    dropped by to() and, with slots, made files and pickles that would not load ('unexpected
    state key slot/1/gamma/velocity'); now every layer's is saved and resumes exactly."""
    import pickle

    X = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    y = np.arange(64) % 3
    norm = fn.BatchNorm1d()
    norm.optimizer = fn.Momentum(0.5, 0.9)
    model = fn.Sequential([fn.Dense(8), norm, fn.Dense(3)], backend="numpy", seed=0)
    model.fit(X, y, epochs=1, verbose=0, batch_size=16)
    model.save(tmp_path / "m.npz")
    copies = [fn.load_model(tmp_path / "m.npz", backend="numpy"), pickle.loads(pickle.dumps(model))]
    copies.append(model.to("numpy"))
    model.fit(X, y, epochs=1, verbose=0, batch_size=16)
    for other in copies:
        assert repr(other.layers[1].optimizer) == repr(norm.optimizer)
        other.fit(X, y, epochs=1, verbose=0, batch_size=16)
        for a, b in zip(other.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_second_state_saved_beside_loads_apart_and_checked(tmp_path, suffix):
    """``save(best_state=...)`` (the CLI's early-stopping best epoch) keeps another state of
    the model under ``best/`` keys: the model loads its own, ``meta["best_state"]`` holds the
    other; one that would not load is refused when saving, and a file's is checked."""
    X, y = make_blobs(n=60, d=5, k=3)
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(3)], backend="numpy", seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    earlier = model.host_state()
    model.fit(X, y, epochs=2, initial_epoch=1, verbose=0)
    path = tmp_path / f"m{suffix}"
    model.save(path, best_state=earlier)
    loaded, meta = fn.model.load_model_with_meta(path, "numpy")
    for key, value in model.host_state().items():
        np.testing.assert_array_equal(loaded.host_state()[key], value)
    assert set(meta["best_state"]) == set(earlier)
    for key, value in earlier.items():
        np.testing.assert_array_equal(meta["best_state"][key], value)
    model.save(tmp_path / "plain.npz")
    assert fn.model.load_model_with_meta(tmp_path / "plain.npz", "numpy")[1]["best_state"] is None
    with pytest.raises(ValueError, match="best_state: .*param/0/W"):
        model.save(tmp_path / "bad.npz", best_state={**earlier, "param/0/W": np.zeros((2, 2))})
    assert not (tmp_path / "bad.npz").exists()
    from fastnet.checkpoint import read_checkpoint, write_checkpoint

    saved, arrays = read_checkpoint(path)  # (a file whose best state has another shape)
    arrays["best/param/0/W"] = np.zeros((2, 2), np.float32)
    write_checkpoint(tmp_path / f"odd{suffix}", saved["config"], arrays, extra=saved["extra"])
    with pytest.raises(fn.checkpoint.CheckpointError, match="param/0/W"):
        fn.load_model(tmp_path / f"odd{suffix}", backend="numpy")
