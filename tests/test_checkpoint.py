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
    with pytest.raises(fn.CheckpointError):
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


def test_missing_file_and_foreign_npz(tmp_path):
    with pytest.raises(FileNotFoundError):
        fn.load_model(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(fn.CheckpointError, match="not a fastnet checkpoint"):
        fn.load_model(tmp_path / "other.npz")


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
    from fastnet.state import StateError

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    model = fn.Sequential(
        [fn.Dense(6, "relu"), fn.BatchNorm1d(), fn.Dense(3)], seed=0, backend="numpy"
    )
    model.fit(X, y, epochs=1, batch_size=10, verbose=0)
    entries = model.state_entries()
    state = model.get_state()
    assert list(state) == [e.key for e in entries]
    assert {e.kind for e in entries} == {"param", "step", "slot", "buffer"}
    host = model.host_state()
    assert all(
        isinstance(v, int) if k.startswith("step/") else isinstance(v, np.ndarray)
        for k, v in host.items()
    )
    assert host["step/0/W"] == 4
    host["step/2/W"] = 3  # Dense 2 shares the Adam group with Dense 0
    with pytest.raises(StateError, match="different step counts"):
        model.validate_state(host)
    host["step/2/W"] = 4
    model.set_state(host)
    assert model.arena.groups[0].step == 4
