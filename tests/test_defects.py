"""Regressions for the defects found by the independent bad-input and conformance suites:
memory safety at the backend boundary, backends agreeing on extreme values, rejection changing
nothing, short BatchNorm batches, divergence restoring the last good weights, and errors a user
can act on."""

import json
import os
import stat
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from conftest import make_blobs

import fastnet as fn
from fastnet.checkpoint import META_KEY, _digest


def _mlp(backend="numpy", **kw):
    return fn.Sequential([fn.Dense(16, "relu"), fn.Dense(4)], backend=backend, seed=0, **kw)


def _rewrite(path, out, mutate):
    """Load a checkpoint's arrays, ``mutate(arrays, meta)``, re-sign with a fresh SHA-256 (so
    only validation, not the integrity check, can catch it) and write it to ``out``."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != META_KEY}
        meta = json.loads(str(data[META_KEY]))
    mutate(arrays, meta)
    meta["sha256"] = _digest(arrays, [meta["config"], meta.get("extra", {})])
    arrays[META_KEY] = np.array(json.dumps(meta))
    np.savez(out, **arrays)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X, y = make_blobs(n=256)
    model = _mlp()
    model.fit(X, y, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("ckpt") / "m.npz"
    model.save(path)
    return path, X, y


# ---------------------------------------------------------------- memory safety
@pytest.mark.parametrize(
    "key,value",
    [
        ("slot/0/W/m", np.zeros((3, 3), np.float32)),  # the heap-corrupting case
        ("slot/0/b/v", np.zeros(40, np.float32)),
        ("slot/1/W/v", -np.ones((16, 4), np.float32)),  # negative second moment
        ("param/1/b", np.array(["a", "b", "c", "d"])),  # string weights
        ("param/0/W", np.full((20, 16), np.nan, np.float32)),
        ("step/0/W", np.array(-3)),
        ("step/0/b", np.array(2.5)),
        ("slot/0/W/bogus", np.zeros((20, 16), np.float32)),  # unknown key
    ],
)
def test_checkpoint_arrays_are_validated_before_use(saved, tmp_path, backend, key, value):
    path, X, y = saved
    bad = tmp_path / "bad.npz"

    def mutate(arrays, meta):
        arrays[key] = value

    _rewrite(path, bad, mutate)
    with pytest.raises(fn.CheckpointError, match=key.split("/")[0]) as info:
        fn.load_model(bad, backend=backend)
    assert str(bad) in str(info.value)


def test_checkpoint_missing_param_and_step_mismatch(saved, tmp_path):
    path, _, _ = saved
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, lambda a, m: a.pop("param/1/W"))
    with pytest.raises(fn.CheckpointError, match="param/1/W"):
        fn.load_model(bad)
    _rewrite(path, bad, lambda a, m: a.__setitem__("step/1/W", np.array(99)))
    loaded = fn.load_model(bad)  # parameters' counts differ (saved while one was frozen):
    assert loaded.arena.groups[0].step == 99  # the group takes the largest


def test_numba_kernels_refuse_mismatched_buffers():
    """Arrays of the wrong size never reach an unchecked kernel: the backend falls back to the
    reference, which raises (NumPy broadcasting) instead of writing out of bounds."""
    be = fn.get_backend("numba") if fn.backends.probe("numba").available else None
    if be is None:
        pytest.skip("numba unavailable")
    p, g = np.ones(1000, np.float32), np.ones(1000, np.float32)
    rule, s = fn.Adam(), np.zeros(8)
    with pytest.raises(ValueError):
        be.update(
            rule,
            p,
            g,
            (np.zeros(10, np.float32), np.zeros(10, np.float32)),
            s,
            rule.constants(),
            1000,
            0.0,
            None,
        )
    with pytest.raises(ValueError):
        be.bias_act(np.ones((4, 8), np.float32), np.ones(3, np.float32), fn.backends.Act.RELU)
    with pytest.raises((ValueError, IndexError)):
        be.act_backward_bias(
            np.ones((4, 8)),
            np.ones((4, 8)),
            fn.backends.Act.RELU,
            0.0,
            np.empty((2, 8)),
            np.empty(8),
        )
    logits = np.ones((6, 3), np.float32)
    with pytest.raises((ValueError, IndexError)):
        be.count_correct(logits, np.zeros(2, np.int64))
    loss, d = be.softmax_xent(logits, np.zeros(6, np.int64), np.empty((2, 2), np.float32))
    assert d.shape == logits.shape  # a wrong-shaped out buffer is replaced, not overrun


# ---------------------------------------------------------------- backends agree on extremes
@pytest.mark.parametrize("rule", ["adam", "rmsprop", "adagrad", "momentum", "sgd"])
def test_huge_gradients_give_the_same_result_on_every_backend(backend, ref, rule):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(512).astype(np.float32)
    g = np.where(rng.random(512) > 0.5, 1e20, -1e20).astype(np.float32)
    opt = fn.optimizers.get_optimizer(rule, lr=1e-3)
    results = []
    for be in (ref, backend):
        layer = fn.Dense(512)
        model = fn.Sequential([layer], optimizer=opt, backend=be).build(1)
        model.parameters()[0].value[...] = be.asarray(p0.reshape(1, 512))
        model.parameters()[0].grad[...] = be.asarray(g.reshape(1, 512))
        model.parameters()[1].grad[...] = 0
        with np.errstate(over="ignore", invalid="ignore"):
            model.apply_gradients()
        results.append(be.to_numpy(model.parameters()[0].value).ravel())
    np.testing.assert_array_equal(np.isfinite(results[0]), np.isfinite(results[1]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5)


def test_inputs_scaled_by_1e30_train_alike_on_every_backend(backend):
    X, y = make_blobs(n=256)
    with np.errstate(all="ignore"):
        h = _mlp(backend).fit(X * 1e30, y, epochs=2, verbose=0, on_divergence="ignore")
        h_ref = _mlp("numpy").fit(X * 1e30, y, epochs=2, verbose=0, on_divergence="ignore")
    assert np.isfinite(h["loss"]).tolist() == np.isfinite(h_ref["loss"]).tolist()


# ---------------------------------------------------------------- rejection changes nothing
def test_rejected_first_fit_does_not_build(backend):
    X, y = make_blobs(n=64)
    model = _mlp(backend)
    for bad_y in (y[:10], y + 100, np.full(64, 1e20), None):
        with pytest.raises((ValueError, TypeError)):
            model.fit(X, bad_y, epochs=1, verbose=0)
        assert not model.built and model.input_dim is None and model.history == {}
    with pytest.raises(ValueError):
        model.fit(X, y, epochs=1, verbose=0, validation_data=(X[:, :3], y))
    assert not model.built
    model.fit(X[:, :7], y, epochs=1, verbose=0)  # the input width is still free
    assert model.input_dim == 7


def test_rejected_refit_keeps_a_fitted_estimator():
    X, y = make_blobs(n=200)
    clf = fn.MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y)
    before = (clf.classes_.copy(), clf.model_, clf.predict(X).copy())
    bad = [
        (X, np.array(["a", "b"] * 100)[:150]),  # length mismatch
        (X, np.array(["a"] * 200)),  # a single class
        (np.full((200, 5), "abc"), np.array(["a", "b"] * 100)),  # new labels, then bad X
        (np.full_like(X, np.nan), y),
    ]
    for Xb, yb in bad:
        with pytest.raises((ValueError, TypeError)):
            clf.fit(Xb, yb)
        assert clf.model_ is before[1]
        np.testing.assert_array_equal(clf.classes_, before[0])
        np.testing.assert_array_equal(clf.predict(X), before[2])


# ---------------------------------------------------------------- short BatchNorm batches
def test_batchnorm_merges_a_last_batch_of_one(backend):
    X, y = make_blobs(n=129)
    model = fn.Sequential(
        [fn.Dense(8), fn.BatchNorm1d(), fn.ReLU(), fn.Dense(4)], backend=backend, seed=0
    )
    h = model.fit(X, y, epochs=2, batch_size=128, verbose=0)
    assert len(h["loss"]) == 2 and np.isfinite(h["loss"]).all()
    clf = fn.MLPClassifier((8,), batch_norm=True, max_iter=1, batch_size=128, backend=backend)
    assert np.isfinite(clf.fit(X, y).predict_proba(X)).all()
    with pytest.raises(ValueError, match="at least 2"):
        fn.Sequential([fn.BatchNorm1d(), fn.Dense(4)], backend=backend).fit(X[:1], y[:1])
    assert fn.training.batch_bounds(129, 128, 2) == [(0, 129)]
    assert fn.training.batch_bounds(257, 128, 2) == [(0, 128), (128, 257)]
    assert fn.training.batch_bounds(129, 128, 1) == [(0, 128), (128, 129)]


# ---------------------------------------------------------------- divergence
def test_full_batch_divergence_restores_weights_with_a_finite_loss(backend):
    X, y = make_blobs(n=128)
    model = _mlp(backend, optimizer=fn.SGD(lr=1e6))
    with pytest.warns(RuntimeWarning, match="restored"):
        model.fit(X * 100, y, epochs=30, batch_size=128, verbose=0)
    assert "finite loss" in model.stop_reason
    assert np.isfinite(model.evaluate(X * 100, y)["loss"])


def test_a_finite_loss_hiding_non_finite_state_is_a_divergence_too(backend, tmp_path):
    """One batch an epoch: the loss is computed before the update that overflows, so it
    stayed finite while the weights became inf (fit returned normally, then the restore of a
    second epoch crashed on its non-finite snapshot); Adam's v of squared 1e20 gradients
    overflowed float32 under finite weights and loss (saved, the model did not load)."""
    r = np.random.default_rng(0)
    X, y = r.normal(size=(64, 4)).astype(np.float32), r.integers(0, 3, 64)
    cases = ((fn.SGD(1e30), X * 1e10, "the weights"), (fn.Adam(1e-3), X * 1e20, "'s v slot"))
    for optimizer, features, what in cases:
        model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(3)], optimizer=optimizer,
                              backend=backend, seed=0)  # fmt: skip
        with pytest.warns(RuntimeWarning, match=f"{what} became NaN or infinite in epoch 1"):
            model.fit(features, y, epochs=3, batch_size=64, verbose=0)
        assert model.diverged and "start of epoch 1 restored" in model.stop_reason
        model.save(tmp_path / "m.npz")  # a finite state: saved and loaded
        assert fn.load_model(tmp_path / "m.npz").count_params() == model.count_params()
        with pytest.raises(fn.TrainingDivergedError, match=what):
            model.fit(features, y, epochs=2, batch_size=64, verbose=0, on_divergence="raise")


# ---------------------------------------------------------------- errors a user can act on
def _signed(tmp_path, name, arrays, meta):
    meta = {"format_version": 1, "sha256": _digest(arrays), **meta}
    path = tmp_path / name
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})
    return path


@pytest.mark.parametrize("stored", ["float16", "int32", "float64"])
def test_a_checkpoint_array_of_another_dtype_than_its_model_is_refused(tmp_path, stored):
    """A float32 model's weights stored as float16 or int32 (a hand-edited file, its digest
    recomputed) loaded cast, predicting differently; config dtype null loaded as float64."""
    from fastnet.checkpoint import read_checkpoint, write_checkpoint

    X, y = make_blobs(n=64)
    model = _mlp()
    model.fit(X, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    meta, arrays = read_checkpoint(tmp_path / "m.npz")
    edited = {**arrays, "param/1/W": arrays["param/1/W"].astype(stored)}
    write_checkpoint(tmp_path / "e.npz", meta["config"], edited)
    with pytest.raises(fn.CheckpointError, match=rf"'param/1/W' holds {stored}; .* is float32"):
        fn.load_model(tmp_path / "e.npz")
    write_checkpoint(tmp_path / "n.npz", {**meta["config"], "dtype": None}, arrays)
    with pytest.raises(fn.CheckpointError, match="dtype must be float32 or float64, got None"):
        fn.load_model(tmp_path / "n.npz")
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got None"):
        fn.Sequential([fn.Dense(2)], dtype=None)
    assert fn.load_model(tmp_path / "m.npz", dtype="float64").dtype == np.float64  # (a cast asked)


def test_malformed_checkpoints_raise_checkpoint_error(saved, tmp_path):
    path, _, _ = saved
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(fn.CheckpointError, match="plain.npy.*single .npy"):
        fn.load_model(npy)
    weird = tmp_path / "weird.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(weird, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
    raw = bytearray(weird.read_bytes())
    for magic, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local + central header
        at = raw.find(magic)
        while at >= 0:
            raw[at + offset : at + offset + 2] = (99).to_bytes(2, "little")  # unknown method
            at = raw.find(magic, at + 4)
    weird.write_bytes(bytes(raw))
    with pytest.raises(fn.CheckpointError, match="weird.npz"):
        fn.load_model(weird)
    for config in (
        {"layers": "dense"},
        {"layers": [42], "optimizer": {}},
        {
            "layers": [{"name": "dense", "units": "many"}],
            "optimizer": {"name": "sgd"},
            "input_dim": 3,
        },
        [],
    ):
        bad = _signed(tmp_path, "cfg.npz", {}, {"config": config})
        with pytest.raises(fn.CheckpointError, match="cfg.npz"):
            fn.load_model(bad)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(fn.CheckpointError, match="directory"):
        fn.load_model(tmp_path / "dir.npz")


def test_config_is_signed_and_version_1_files_still_load(saved, tmp_path):
    path, X, _ = saved
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != META_KEY}
        meta = json.loads(str(data[META_KEY]))
    tampered = dict(meta, config={**meta["config"], "seed": 12345})  # not re-signed
    np.savez(tmp_path / "t.npz", **arrays, **{META_KEY: np.array(json.dumps(tampered))})
    with pytest.raises(fn.CheckpointError, match="integrity"):
        fn.load_model(tmp_path / "t.npz")
    old = dict(meta, format_version=1, sha256=_digest(arrays))  # written by fastnet 0.1
    np.savez(tmp_path / "v1.npz", **arrays, **{META_KEY: np.array(json.dumps(old))})
    np.testing.assert_allclose(
        fn.load_model(tmp_path / "v1.npz").predict_proba(X), fn.load_model(path).predict_proba(X)
    )


def test_checkpoints_get_umask_permissions(tmp_path):
    X, y = make_blobs(n=64)
    model = _mlp()
    model.fit(X, y, epochs=1, verbose=0)
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode) == 0o644


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_saving_again_keeps_the_files_permissions_and_its_symbolic_link(tmp_path, suffix):
    """A checkpoint made private (chmod 600) stayed so only until the next save (0644 again,
    every epoch under ModelCheckpoint); a save to a link replaced the link by a file."""
    X, y = make_blobs(n=64)
    model = _mlp()
    model.fit(X, y, epochs=1, verbose=0)
    path, link = tmp_path / f"m{suffix}", tmp_path / f"latest{suffix}"
    model.save(path)
    os.chmod(path, 0o600)
    link.symlink_to(path.name)
    model.fit(X, y, epochs=1, verbose=0)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == path.name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    np.testing.assert_array_equal(fn.load_model(path).get_weights()[0], model.get_weights()[0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fastnet-")] == []
    dangling, loop = tmp_path / f"dangling{suffix}", tmp_path / f"loop{suffix}"
    dangling.symlink_to(tmp_path / "nowhere" / f"m{suffix}")
    loop.symlink_to(loop.name)
    trained = model.epochs_trained  # (refused before training, naming the link)
    with pytest.raises(FileNotFoundError, match=r"dangling.*a link to .*nowhere.* is missing"):
        model.fit(X, y, epochs=1, verbose=0, callbacks=[fn.ModelCheckpoint(str(dangling))])
    assert model.epochs_trained == trained
    with pytest.raises(OSError, match="loop.* is a loop of symbolic links"):
        model.save(loop)


def test_real_number_types_are_accepted():
    assert fn.Adam(np.float32(1e-3)).lr == pytest.approx(1e-3)
    assert fn.SGD(np.float64(0.1), weight_decay=np.float32(0)).lr == pytest.approx(0.1)
    assert fn.Dropout(np.float32(0.25)).rate == 0.25
    assert fn.BatchNorm1d(momentum=np.float32(0.5)).momentum == 0.5
    with pytest.raises(ValueError, match="lr"):
        fn.Adam(True)


def test_input_errors_name_the_argument():
    model = _mlp()
    with pytest.raises(ValueError, match="X cannot be converted .*ragged"):
        model.fit([[1.0, 2.0], [3.0]], [0, 1], epochs=1, verbose=0)
    X, y = make_blobs(n=20)
    with pytest.raises(ValueError, match=r"label 1e\+20"):
        model.fit(X, np.full(20, 1e20), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="negative label -3"):
        model.fit(X, np.full(20, -3), epochs=1, verbose=0)
    clf = fn.MLPClassifier((8,), max_iter=1).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about the column vector
        assert clf.score(X, y[:, None]) == clf.score(X, y)  # not broadcast to n x n
    with pytest.raises(ValueError, match="1-D|multioutput"):
        clf.score(X, np.stack([y, y], axis=1))
    with pytest.raises((TypeError, ValueError), match="None"):
        clf.score(X, None)


def test_bad_backend_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("FASTNET_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="FASTNET_BACKEND='tensorflow'"):
        fn.get_backend()


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fastnet.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_checks_destinations_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [
        (["--save", str(tmp_path / "file" / "m.npz")], "--save.*a file, not a folder"),
        (["--json", str(tmp_path / "adir")], "--json.*is a directory"),
        (["--plot", str(tmp_path / "missing" / "c.png")], "--plot.*missing"),
    ]
    for extra, message in cases:
        run = _cli("train", "--data-dir", str(tmp_path / "nodata"), *extra, cwd=tmp_path)
        assert run.returncode == 2
        assert "Traceback" not in run.stderr
        assert __import__("re").search(message, run.stderr), run.stderr
    run = _cli("train", "--seed", "-1", cwd=tmp_path)
    assert run.returncode == 2 and "--seed" in run.stderr and "non-negative" in run.stderr


def test_cli_evaluate_on_bad_files(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    for name in ("w.npy", "junk.npz"):
        run = _cli("evaluate", str(tmp_path / name), cwd=tmp_path)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert name in run.stderr, run.stderr


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_policies_name_backend_and_policy_on_cpu(backend, policy):
    """Half-precision policies (float32 master weights) run on the GPU only; CPU backends say so
    instead of emulating them, and nothing is built."""
    if backend.name.startswith("cupy"):
        pytest.skip("the cupy mixed-precision path is GPU work")
    with pytest.raises(ValueError, match=f"{policy}.*cupy backend.*{backend.name}"):
        fn.Sequential([fn.Dense(4)], dtype=policy, backend=backend)
    X, y = make_blobs(n=40)
    clf = fn.MLPClassifier((4,), dtype=policy, backend=backend.name, max_iter=1)
    with pytest.raises(ValueError, match=policy):
        clf.fit(X, y)
    assert not hasattr(clf, "model_")
    from fastnet.cli import main

    assert main(["train", "--dtype", policy, "--backend", backend.name, "--epochs", "1"]) == 2
