import importlib.util
import json

import numpy as np
import pytest
from test_data import make_dataset

import fastnet as fn
from fastnet.cli import main


@pytest.fixture
def data_dir(tmp_path):
    make_dataset(tmp_path, n_train=400, n_test=100)
    return tmp_path


def test_train_save_evaluate_plot(data_dir, tmp_path, capsys):
    ckpt, png, js = tmp_path / "m.npz", tmp_path / "c.png", tmp_path / "h.json"
    rc = main(
        [
            "train",
            "--data-dir",
            str(data_dir),
            "--epochs",
            "2",
            "--layers",
            "16",
            "--backend",
            "numpy",
            "--save",
            str(ckpt),
            "--plot",
            str(png),
            "--json",
            str(js),
            "--verbose",
            "2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "test accuracy" in out and "backend numpy" in out
    assert "s/epoch" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "c-confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "test confusion matrix" in out and "true\\pred" in out and "macro precision" in out
    history = json.loads(js.read_text())
    assert len(history["history"]["loss"]) == 2
    assert sum(map(sum, history["confusion_matrix"])) == 100
    assert main(["evaluate", str(ckpt), "--data-dir", str(data_dir), "--backend", "numpy"]) == 0
    first = capsys.readouterr().out
    assert "test accuracy" in first
    for f in data_dir.glob("train-*"):  # evaluate reads the test files alone
        f.unlink()
    assert main(["evaluate", str(ckpt), "--data-dir", str(data_dir), "--backend", "numpy"]) == 0
    assert capsys.readouterr().out == first
    pixels = np.random.default_rng(0).integers(0, 256, (5, 784)).astype(np.uint8)
    np.save(tmp_path / "raw.npy", pixels)  # (as stored: 0..255, not the loader's / 255)
    assert main(["predict", str(ckpt), "--data", str(tmp_path / "raw.npy")]) == 2
    assert "fashion-mnist pixels scaled to [0, 1]: divide them by 255" in capsys.readouterr().err
    np.save(tmp_path / "scaled.npy", pixels / 255.0)
    assert main(["predict", str(ckpt), "--data", str(tmp_path / "scaled.npy")]) == 0
    if importlib.util.find_spec("onnx") is not None:  # the export says so, and its metadata
        assert main(["export", str(ckpt), str(tmp_path / "m.onnx")]) == 0
        assert "inputs are scaled to [0, 1] (metadata 'inputs'): pixels / 255" in (
            capsys.readouterr().out
        )
        onnx = importlib.import_module("onnx")
        props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
        assert json.loads(props["inputs"]) == [0, 1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--backend", "tpu"], "unknown backend 'tpu'"),
        (["train", "--data-dir", "/nonexistent"], "dataset-fashion-mnist"),
        (["evaluate", "/nonexistent.npz"], "does not exist"),
        (
            ["train", "--backend", "numpy", "--precision", "tf32", "--limit", "200"],
            "error: --precision tf32 needs the cupy backend",
        ),
        (
            ["train", "--backend", "numpy", "--dtype", "mixed_float16", "--limit", "200"],
            "error: --dtype mixed_float16 needs the cupy backend: numpy has no half-precision "
            "kernels faster than float32 (use --dtype float32)",
        ),
        (
            ["train", "--backend", "numpy", "--compiled-step", "on", "--limit", "200"],
            "a compiled step was required (--compiled-step on), but numpy has no compiled step",
        ),
        (["train", "--val", "v.csv"], "--val applies only to your own --data, not to a built-in"),
        (["train", "--task", "regression"], "--task applies only to your own --data"),
    ],
)
def test_errors_are_one_line_messages(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "predict m.npz --data x.npy", "export m.npz m.onnx"])
def test_an_unknown_option_is_reported_by_its_command(command, capsys):
    """It was the top-level parser's error (``fastnet: error:``, the top-level usage)."""
    with pytest.raises(SystemExit) as exc:
        main([*command.split(), "--bogus", "1"])
    assert exc.value.code == 2
    name = command.split()[0]
    assert f"fastnet {name}: error: unrecognized arguments: --bogus 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "0"],
        ["train", "--lr", "-1"],
        ["train", "--layers", "a,b"],
        ["train", "--batch-size", "0"],
    ],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_bench_harness_runs_on_tiny_sizes(tmp_path, capsys):
    js = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "--quick",
                "--rounds",
                "2",
                "--suite",
                "kernels",
                "--backends",
                "numpy",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    report = json.loads(js.read_text())
    assert "softmax-CE fwd+bwd 4096x1000" in report["groups"]
    assert report["machine"]["cores"] and report["ceilings_gflops"]["numpy"] > 0
    res = report["groups"]["matmul 128x784x256"]["results"][0]
    assert len(res["times"]) == 2 and res["median"] > 0


def test_interleaved_alternates_and_computes_ratios():
    from fastnet.bench.harness import Contestant, interleaved

    order = []
    cs = [Contestant("a", lambda: order.append("a")), Contestant("b", lambda: order.append("b"))]
    results = interleaved(cs, rounds=4, reference="a", warmup=1)
    assert order[:2] == ["a", "b"] and order[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(r.times) == 4 for r in results) and results[0].ratio == 1.0


def test_a_contestants_prepare_runs_untimed_before_each_run():
    """The Adam kernel timing copied its seeded slots back inside the timed run (1.6 MB a
    round, host to device on a GPU: cupy refused the NumPy source)."""
    import time

    from fastnet.bench.harness import Contestant, interleaved

    calls = []
    slow = Contestant("a", lambda: calls.append("run"), prepare=lambda: time.sleep(0.05))
    result = interleaved([slow], rounds=3, warmup=1)[0]
    assert calls == ["run"] * 4 and max(result.times) < 0.04


def test_each_epochs_mean_loss_is_reported_to_compare_the_work():
    """Nothing said whether the contestants did alike work: each that can now reports the
    mean training loss of its last timed epoch."""
    from fastnet.bench.harness import Contestant, format_table, interleaved

    losses = iter([0.9, 0.7, 0.6, 0.5])
    cs = [Contestant("a", lambda: next(losses), loss=float), Contestant("b", lambda: None)]
    results = interleaved(cs, rounds=3, warmup=1)
    assert [r.loss for r in results] == [0.5, None] and results[0].to_dict()["loss"] == 0.5
    assert "mean training loss of the last timed epoch: a 0.5000" in format_table(results)


def test_a_floor_and_inference_suite_take_the_users_layers_and_batch(monkeypatch):
    """--layers and --batch-size were ignored by the floor and inference suites (their
    titles said 784-256-128-10 batch 128); the floor now runs full batches only."""
    from fastnet.bench import floor, inference

    seen = {}

    def fake_floor(X, y, sizes, batch, model_for):
        seen.update(rows=len(X), sizes=tuple(sizes), batch=batch)
        return {}

    monkeypatch.setattr(floor, "floor_groups", fake_floor)
    monkeypatch.setattr(
        inference, "inference_groups", lambda b, q, sizes: ({}, seen.update(inference=sizes))
    )
    argv = ["bench", "--quick", "--suite", "all", "--backends", "numba", "--layers", "32"]
    monkeypatch.setattr("fastnet.bench.suites.kernel_groups", lambda *a: {})
    monkeypatch.setattr("fastnet.bench.suites.train_groups", lambda *a: ({}, {}))
    assert main([*argv, "--batch-size", "100"]) == 0
    assert seen == {"rows": 2000, "sizes": (784, 32, 10), "batch": 100, "inference": (784, 32, 10)}


def test_a_failing_contestant_is_dropped_and_the_others_timed():
    """A contestant never run before (GPU paths) that raises, in its warm-up or a timed round,
    is reported and left out; the group is still timed and compared."""
    from fastnet.bench.harness import Contestant, interleaved

    calls = {"late": 0}

    def late():
        calls["late"] += 1
        if calls["late"] == 3:
            raise RuntimeError("cudaErrorIllegalAddress")

    def early():
        raise ValueError("no algorithm")

    cs = [Contestant(n, f) for n, f in (("a", lambda: None), ("b", early), ("c", late))]
    failed = {}
    results = interleaved(cs, rounds=4, reference="a", warmup=1, failed=failed)
    assert [r.name for r in results] == ["a"] and len(results[0].times) == 4
    assert failed == {"b": "ValueError: no algorithm", "c": "RuntimeError: cudaErrorIllegalAddress"}


def test_graph_check_reports_a_raising_comparison_as_a_failed_row(monkeypatch, tmp_path):
    from fastnet.bench import graph_check

    def compare(backend, optimizer, *args):
        if optimizer == "adam":
            raise RuntimeError("capture failed")
        return {
            "optimizer": optimizer,
            "pass": True,
            "max_rel_diff": 0.0,
            "seconds": 0.0,
            "step_compiled": "captured",
        }

    monkeypatch.setattr(graph_check, "compare", compare)
    monkeypatch.setattr(
        graph_check, "load_fashion_mnist", lambda d: ((np.zeros((4, 2)), np.zeros(4)), None)
    )
    out = tmp_path / "g.json"
    argv = ["--backend", "numpy", "--optimizers", "sgd,adam", "--schedules", "constant"]
    assert graph_check.main([*argv, "--out", str(out)]) == 1
    rows = json.loads(out.read_text())["results"]
    assert [r["pass"] for r in rows] == [True, False] and "capture failed" in rows[1]["error"]


def test_a_gpu_floor_is_timed_as_one_captured_graph():
    """The GPU matmul-only floor replays its GEMMs from a graph (no Python launch overhead in
    the floor); what the replay computes is what the eager GEMMs computed."""
    from capture_backend import CaptureSimBackend
    from fastnet.bench.peers import matmul_only_epoch
    from fastnet.bench.suites import _graphed

    be = CaptureSimBackend()
    outs = []

    def matmul(a, b, out):
        be.matmul(a, b, out)
        outs.append(out)

    floor = matmul_only_epoch(np, (6, 5, 3), 8, 4, np.float64, matmul=matmul)
    replay = _graphed(be, floor, "floor")
    assert replay is not floor
    eager = [o.copy() for o in outs[: len(outs) // 2]]
    for o in outs:
        o[...] = 0
    replay()
    np.testing.assert_array_equal(
        np.concatenate([o.ravel() for o in outs[: len(eager)]]),
        np.concatenate([e.ravel() for e in eager]),
    )


def test_a_gpu_bench_times_the_gpu_peers_only_and_names_a_cpu_jax(monkeypatch):
    """Benchmarking GPU backends alone leaves out the CPU peers (book loop, NumPy floor,
    scikit-learn, PyTorch on the CPU); a JAX without a GPU is named "-cpu-", never taken for
    the GPU reference."""
    jax = pytest.importorskip("jax")
    if jax.devices()[0].platform == "gpu":
        pytest.skip("JAX has a GPU here")
    from fastnet.bench import suites
    from fastnet.bench.suites import _peer_contestants, _reference

    monkeypatch.setattr(suites, "_torch_contestants", lambda *a, **k: "left out")

    X = np.random.default_rng(0).random((64, 6), dtype=np.float32)
    y = np.arange(64) % 3
    epoch = []
    notes = _peer_contestants(epoch, (6, 4, 3), X, y, 16, 1.0, gpu=True)
    names = [c.name for c in epoch]
    assert names == ["jax-scan-cpu-fp32", "jax-jit-cpu-fp32"] and "no GPU" in notes["jax"]
    assert not {"book-numpy-fp32", "matmul-only-numpy-fp32", "sklearn-adam-fp32"} & set(names)
    assert _reference("train epoch x", names) is None
    on_gpu = ["fastnet-cupy-graph-fp32", "jax-scan-gpu-fp32", "book-numpy-fp32"]
    assert _reference("train epoch x", on_gpu) == "jax-scan-gpu-fp32"  # (not a CPU peer)


def test_a_bench_cut_short_keeps_the_groups_it_finished(monkeypatch, tmp_path):
    """The GPU run's benchmark call may hit its time limit: the JSON is rewritten after every
    group, so the groups done before are on disk."""
    import json

    from fastnet.bench import suites
    from fastnet.bench.harness import Contestant

    def groups(*args):
        return {"first": [Contestant("a", lambda: None)], "second": [Contestant("b", stop)]}

    def stop():
        raise KeyboardInterrupt  # what a timeout's signal does to the run

    monkeypatch.setattr(suites, "_suite_groups", groups)
    monkeypatch.setattr(suites, "cold_start", lambda name: {k: 0.0 for k in _COLD_KEYS})
    monkeypatch.setattr(suites, "sgemm_ceiling", lambda be, n: 1.0)
    path = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        suites.run_suites("numpy", "kernels", 1, True, str(path))
    assert list(json.loads(path.read_text())["groups"]) == ["first"]


_COLD_KEYS = ("import_s", "first_step_s", "kernel_loading_s", "second_step_s")


def test_evaluate_uses_the_dataset_recorded_in_the_checkpoint(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    argv = [
        "train",
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--layers",
        "8",
        "--dataset",
        "mnist",
        "--quiet",
        "--save",
        str(ckpt),
    ]
    (data_dir / "mnist").mkdir()
    make_dataset(data_dir / "mnist", n_train=200, n_test=50)
    argv[2] = str(data_dir / "mnist")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch" not in out.replace("s/epoch", "").replace("epochs", "")  # --quiet
    assert main(["evaluate", str(ckpt), "--data-dir", str(data_dir / "mnist")]) == 0
    assert "mnist test accuracy" in capsys.readouterr().out


def test_bench_chart_is_titled_by_the_machine(tmp_path):
    from fastnet.bench.suites import machine_title, plot_report

    machine = {
        "cpu": "Some CPU",
        "cores": 2,
        "blas": "openblas 0.3",
        "backend_cupy": "unavailable: no module named cupy",
    }
    assert machine_title(machine) == "Some CPU, 2 cores, openblas 0.3"
    result = {"name": "a", "median": 0.5, "min": 0.4, "max": 0.6}
    report = {
        "machine": machine,
        "groups": {
            "g": {
                "reference": "a",
                "results": [result, {"name": "b", "median": 1.0, "min": 0.9, "max": 1.2}],
            }
        },
    }
    plot_report(report, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_preset_sets_defaults_that_flags_override():
    from fastnet.cli import PRESETS, build_parser

    parser = build_parser()
    parser.commands["train"].set_defaults(
        **{k: v for k, v in PRESETS["best"].items() if k != "help"}
    )
    args = parser.parse_args(["train", "--preset", "best", "--epochs", "3"])
    assert args.epochs == 3 and args.optimizer == "adamw" and args.layers == (2048, 1024)
    assert args.label_smoothing == 0.1 and args.schedule == "warmup-cosine"


def test_inference_suite_compares_with_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    js = tmp_path / "i.json"
    argv = ["bench", "--quick", "--rounds", "2", "--suite", "inference", "--backends", "numpy"]
    assert main([*argv, "--json", str(js)]) == 0
    groups = json.loads(js.read_text())["groups"]
    assert set(groups) == {"predict_proba 1000 rows", "predict_proba 1 row"}
    assert groups["predict_proba 1000 rows"]["reference"] == "onnxruntime-cpu-fp32"
    assert groups["predict_proba 1 row"]["reference"] == "onnxruntime-cpu-1thread-fp32"
    names = {r["name"] for r in groups["predict_proba 1 row"]["results"]}
    assert {"fastnet-numpy-predict-fp32", "matmul-only-fp32"} <= names


TINY = ["--epochs", "1", "--layers", "4", "--backend", "numpy", "--quiet"]


def _table(path, y, header="a,b,target"):
    """A CSV of two features and target cells ``y``."""
    X = np.random.default_rng(0).standard_normal((len(y), 2)).round(3)
    path.write_text("\n".join([header, *(f"{a},{b},{t}" for (a, b), t in zip(X, y))]) + "\n")
    return str(path)


def test_csv_regression_and_numeric_classes_as_for_npz(tmp_path, capsys):
    """A CSV target of numbers is numeric: --task auto picks regression for non-integer numbers
    and classification for whole ones (as for an .npz); both tasks can be asked for."""
    y = np.random.default_rng(1).standard_normal(60).round(3)
    reg, ckpt = _table(tmp_path / "reg.csv", y), str(tmp_path / "r.npz")
    for task in ("auto", "regression"):
        assert main(["train", "--data", reg, "--target", "target", "--task", task, *TINY]) == 0
        assert "MLP 2-4-1" in capsys.readouterr().out
    assert main(["train", "--data", reg, "--target", "target", "--save", ckpt, *TINY]) == 0
    assert main(["evaluate", ckpt, "--data", reg]) == 0
    assert "R2" in capsys.readouterr().out
    whole = _table(tmp_path / "int.csv", np.array(["0", "1.0", "2"])[np.arange(60) % 3])
    assert main(["train", "--data", whole, "--target", "target", *TINY]) == 0
    out = capsys.readouterr().out
    assert "MLP 2-4-3" in out and "true\\pred   0   1   2" in out
    halves = _table(tmp_path / "half.csv", np.arange(60) % 2 + 0.5)
    argv = ["train", "--data", halves, "--target", "target", "--task", "classification"]
    assert main([*argv, *TINY]) == 0
    assert "MLP 2-4-2" in capsys.readouterr().out


def test_predict_ignores_labels_that_evaluate_checks(tmp_path, capsys):
    X = np.random.default_rng(2).standard_normal((40, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", X=X, y=np.arange(40) % 2)
    np.savez(tmp_path / "b.npz", X=X[:5], y=np.array(["p", "q", "r", "p", "q"]))
    ckpt = str(tmp_path / "m.npz")
    assert main(["train", "--data", str(tmp_path / "a.npz"), "--save", ckpt, *TINY]) == 0
    capsys.readouterr()
    assert main(["predict", ckpt, "--data", str(tmp_path / "b.npz")]) == 0
    assert capsys.readouterr().out.split()[0] == "label"
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "b.npz")]) == 2
    assert "training data lacks" in capsys.readouterr().err
    np.savez(tmp_path / "narrow.npz", X=X[:, :2], y=np.arange(40) % 2)  # the option named
    for command in ("predict", "evaluate"):
        assert main([command, ckpt, "--data", str(tmp_path / "narrow.npz")]) == 2
        err = capsys.readouterr().err
        assert "--data" in err and "has 2 feature columns" in err and "takes 3" in err, err


def test_csv_text_labels_are_stripped_and_predictions_written_as_lines(
    tmp_path, capsys, monkeypatch
):
    """A CSV written "a, b, label" / "0.1, 3.6, mid" (UCI Adult's style) kept the label's
    space: classes " high", " low", predictions " high", and the same labels unspaced were
    unknown to evaluate (a checkpoint of such classes still reads them). predict wrote CRLF
    lines (grep '^high$' matched none) and ``--output -`` a file named "-"."""
    rng = np.random.default_rng(0)
    words = np.array(["high", "low", "mid"])[np.arange(60) % 3]
    X = rng.standard_normal((60, 2)) + (np.arange(60) % 3)[:, None]
    lines = ["a, b, label", *(f"{x:.3f}, {z:.3f}, {w}" for (x, z), w in zip(X, words))]
    (tmp_path / "spaced.csv").write_text("\n".join(lines) + "\n")
    bare = ["a,b,label", *(f"{x:.3f},{z:.3f},{w}" for (x, z), w in zip(X, words))]
    (tmp_path / "bare.csv").write_text("\n".join(bare) + "\n")
    ckpt = str(tmp_path / "m.npz")
    train = ["train", "--data", str(tmp_path / "spaced.csv"), "--target", "label", *TINY]
    assert main([*train, "--save", ckpt]) == 0
    assert fn.load_model(ckpt, backend="numpy").metadata["classes"] == ["high", "low", "mid"]
    capsys.readouterr()
    for data in ("spaced.csv", "bare.csv"):
        argv = ["--data", str(tmp_path / data), "--backend", "numpy"]
        assert main(["evaluate", ckpt, *argv, "--target", "label"]) == 0
        assert main(["predict", ckpt, *argv]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["predict", ckpt, "--data", "bare.csv", "--output", "-"]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out and not (tmp_path / "-").exists()
    assert out.splitlines()[0] == "label" and set(out.splitlines()[1:]) <= {"high", "low", "mid"}
    model = fn.load_model(ckpt, backend="numpy")  # (classes read with their spaces before)
    model.metadata["classes"] = [" high", " low", " mid"]
    model.save(tmp_path / "old.npz", extra=model.metadata)
    assert (
        main(["evaluate", str(tmp_path / "old.npz"), "--data", "bare.csv", "--target", "label"])
        == 0
    )
    resume = ["train", "--resume", str(tmp_path / "old.npz"), "--data", "spaced.csv", "--quiet"]
    assert main([*resume, "--epochs", "3", "--save", str(tmp_path / "on.npz")]) == 0
    resumed = fn.load_model(tmp_path / "on.npz", backend="numpy")
    assert resumed.metadata["classes"] == [" high", " low", " mid"]  # (the model's own)


@pytest.mark.parametrize("call", ["main()", "main(sys.argv[1:])"])  # the console script's
def test_predict_into_a_closed_pipe_exits_quietly(tmp_path, call):
    import subprocess
    import sys

    path = _table(tmp_path / "t.csv", np.arange(30) % 2)
    ckpt = str(tmp_path / "m.npz")
    assert main(["train", "--data", path, "--target", "target", "--save", ckpt, *TINY]) == 0
    import os

    code = f"import sys; from fastnet.cli import main; sys.exit({call})"
    argv = [sys.executable, "-c", code, "predict", ckpt, "--data", path]
    env = {**os.environ, "FASTNET_BACKEND": "numba"}  # (no warning from 'auto' on stderr)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head` gone before the first write: EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


def test_train_into_a_closed_pipe_goes_on_to_save_its_model(tmp_path):
    """`fastnet train --save m.npz | head -1`: the reader gone, the run is not lost."""
    import os
    import subprocess
    import sys

    path, ckpt = _table(tmp_path / "t.csv", np.arange(30) % 2), tmp_path / "m.npz"
    argv = [sys.executable, "-m", "fastnet", "train", "--data", path, "--target", "target"]
    env = {**os.environ, "FASTNET_BACKEND": "numba"}
    proc = subprocess.Popen(
        [*argv, "--save", str(ckpt), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "fastnet train: stdout closed early: the run goes on" in err
    assert fn.load_model(ckpt, backend="numpy").built
    for extra in ([], ["--json", "-"]):  # `2>&1 | head`: stderr in the same closed pipe (the
        ckpt.unlink()  # notice on stderr raised again, and the run ended unsaved with 141)
        proc = subprocess.Popen(
            [*argv, "--save", str(ckpt), *TINY, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        proc.stdout.close()
        assert proc.wait() == 0 and fn.load_model(ckpt, backend="numpy").built


def test_options_that_do_not_apply_are_refused_by_name(tmp_path, capsys):
    """--labels goes with a .npy, --target with a .csv: refused, never ignored, elsewhere; so
    are a --target that was a feature column and a CSV without data rows."""
    np.savez(tmp_path / "d.npz", X=np.zeros((20, 2), np.float32), y=np.arange(20) % 2)
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    npz, y, ckpt = str(tmp_path / "d.npz"), str(tmp_path / "y.npy"), str(tmp_path / "m.npz")
    csv = _table(tmp_path / "t.csv", np.arange(20) % 2)
    head = _table(tmp_path / "head.csv", [])
    assert main(["train", "--data", csv, "--target", "target", "--save", ckpt, *TINY]) == 0
    capsys.readouterr()
    cases = [
        (
            ["train", "--data", npz, "--labels", y],
            f"--labels applies only to a .npy --data, not to {npz}",
        ),
        (
            ["train", "--data", npz, "--target", "t"],
            "--target applies only to a .csv --data, not to",
        ),
        (["train", "--data", csv, "--target", "target", "--labels", y], "--labels applies only"),
        (["train", "--data", npz, "--val", npz, "--val-labels", y], "--val-labels applies only to"),
        (["train", "--target", "t"], "--target applies only to a .csv --data"),
        (["evaluate", ckpt, "--data", npz, "--labels", y], "--labels applies only to a .npy"),
        (
            ["evaluate", ckpt, "--data", csv, "--target", "a"],
            f"'a' was a feature column when {ckpt} was trained; its target column was 'target'",
        ),
        (["train", "--data", head, "--target", "target"], "head.csv holds no data rows"),
    ]
    for argv, message in cases:
        assert main(argv + (TINY if argv[0] == "train" else [])) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_bench_checks_its_outputs_and_suite_before_timing(tmp_path, capsys):
    missing = str(tmp_path / "no" / "such" / "folder" / "r.json")
    assert main(["bench", "--quick", "--suite", "kernels", "--json", missing]) == 2
    assert "--json path" in capsys.readouterr().err
    assert main(["bench", "--quick", "--suite", "floor", "--backends", "numpy"]) == 2
    assert "include numba in --backends" in capsys.readouterr().err
    late = [  # (each refused before the cold start and the timing, not after them)
        (["--suite", "kernels", "--plot", str(tmp_path / "chart.txt")], "a chart file is one of"),
        (["--suite", "train", "--batch-size", "4096"], "exceeds the 2048 training rows"),
        (["--suite", "kernels", "--backends", " "], "--backends is empty"),
    ]
    for argv, message in late:
        assert main(["bench", "--quick", *argv]) == 2
        out, err = capsys.readouterr()
        assert message in err and "cold start" not in out, (out, err)


def test_bench_times_a_backend_named_twice_once():
    """'auto,numba' timed numba twice, two contestants of one name in every table."""
    from fastnet.bench.suites import resolve_backends

    backends = resolve_backends("numpy, NUMPY,numpy")
    assert len(backends) == 1
    chosen = fn.get_backend("auto")
    assert resolve_backends(f"auto,{chosen.name}") == [chosen]


def test_bench_groups_without_numpy_have_a_reference():
    from fastnet.bench.suites import _reference

    assert _reference("matmul 128x784x256", ["numba", "numba-parallel"]) == "numba"


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_a_column_of_labels_is_a_vector_of_them(tmp_path, capsys, dtype):
    """Labels of shape (n, 1) in an .npz are the (n,) labels: float 0/1 ones a classifier
    (it trained a regressor), integer ones no contradictory error."""
    X = np.random.default_rng(2).standard_normal((60, 3)).astype(np.float32)
    path = tmp_path / "c.npz"
    np.savez(path, X=X, y=(np.arange(60) % 2).astype(dtype)[:, None])
    assert main(["train", "--data", str(path), *TINY]) == 0
    assert "MLP 3-4-2" in capsys.readouterr().out


def test_csv_with_a_bom_and_nan_features_named_by_row_and_column(tmp_path, capsys):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the first column keeps its name. A
    NaN feature is reported with its file, row and column (with --scale too: it was "54")."""
    y = np.arange(60) % 2
    path = tmp_path / "bom.csv"
    _table(path, y, header="label,b,target")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["train", "--data", str(path), "--target", "label", *TINY]) == 0
    assert "MLP 2-4-" in capsys.readouterr().out
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    lines[8] = "1," + lines[8].split(",", 1)[1].replace(lines[8].split(",")[1], "nan", 1)
    path.write_text("\n".join(lines) + "\n")
    for scale in ("none", "standard"):
        argv = ["train", "--data", str(path), "--target", "target", "--scale", scale]
        assert main([*argv, *TINY]) == 2
        err = capsys.readouterr().err
        assert (
            "1 NaN or infinite value(s) (as float32: or beyond +-3.403e+38), the first in data "
            "row 7"
            in err
            and "'b'" in err
        )
    from fastnet.data import DatasetError
    from fastnet.tabular import Scaler

    with pytest.raises(DatasetError, match=r"column\(s\) \[1\] hold NaN"):
        Scaler("standard").fit(np.array([[1.0, np.nan], [2.0, 3.0]]))  # (a memory-mapped .npy)


def test_many_whole_number_targets_warn_that_they_become_classes(tmp_path, capsys):
    ages = _table(tmp_path / "ages.csv", 18 + np.arange(240) % 30)  # 30 "classes"
    assert main(["train", "--data", ages, "--target", "target", *TINY]) == 0
    err = capsys.readouterr().err
    assert "fastnet train: warning: the target holds 30 distinct whole numbers over 240 rows" in err
    assert "--task regression" in err
    args = ["train", "--data", ages, "--target", "target", "--task", "regression", *TINY]
    assert main(args) == 0
    assert "distinct whole numbers" not in capsys.readouterr().err
    codes = _table(tmp_path / "codes.csv", np.array([f"${i}.00" for i in range(40)] * 2))
    assert main(["train", "--data", codes, "--target", "target", *TINY]) == 0  # text: few
    err = capsys.readouterr().err  # rows (no --task regression advised: text cannot be one)
    assert "the target holds 40 distinct labels over 80 rows" in err and "--task" not in err
    kinds = _table(tmp_path / "kinds.csv", np.array(["a", "b", "c"] * 20))  # a class
    assert main(["train", "--data", kinds, "--target", "target", *TINY]) == 0
    assert "distinct" not in capsys.readouterr().err


def test_bench_names_its_machine_flags_outliers_and_plots_the_tables_ratios(tmp_path, capsys):
    """The console names fastnet, the CPU (family and model), the rounds and --quick; a table
    gives each contestant's per-round ratio range and flags one outlier round; the chart's bars
    are the table's ratios (medians of per-round ratios), the reference black."""
    from fastnet.bench.harness import Result, cpu_name, format_table, machine_info
    from fastnet.bench.suites import _bar_color, plot_report

    machine = machine_info()
    assert machine["fastnet"] == fn.__version__ and machine["cpu"] == cpu_name()
    if "family" in open("/proc/cpuinfo").read():
        assert "family" in machine["cpu"] and "model" in machine["cpu"]
    ref = Result("ref", [1.0, 1.0, 1.0], 0.0, ratios=[1.0, 1.0, 1.0])
    spiky = Result("x", [0.02, 0.239, 0.02], 0.0, ratios=[0.5, 0.6, 0.55])
    table = format_table([ref, spiky])
    assert "ratio per round (3 rounds): ref 1.00-1.00, x 0.50-0.60" in table
    assert "noisy machine" in table and "x" in table.split("noisy machine")[1]
    assert _bar_color("ref", "ref") == "black" and _bar_color("numba", "numpy") == "tab:orange"
    assert _bar_color("jax-scan-fp32", "numpy") == "tab:gray"
    report = {"machine": machine, "date": "2026-12-02 00:00", "rounds": 3, "quick": True,
              "groups": {"g": {"reference": "ref", "results": [
                  {**r.to_dict(), "ratios": r.ratios} for r in (ref, spiky)]}}}  # fmt: skip
    plot_report(report, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["bench", "--quick", "--rounds", "1", "--suite", "kernels", "--backends",
                 "numpy,numpy", "--json", str(tmp_path / "b.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "1 round(s): a median of so few is no result" in out
    assert f"fastnet {fn.__version__} bench --suite kernels: {cpu_name()}" in out
    assert "--quick (small sizes: not a result)" in out
    groups = json.loads((tmp_path / "b.json").read_text())["groups"]
    assert [r["name"] for r in groups["matmul 128x784x256"]["results"]] == ["numpy"]


def test_bench_train_suite_takes_the_users_layers_and_batch(monkeypatch):
    from fastnet.bench import suites

    seen = {}

    def fake(backends, quick, sizes, batch):
        seen.update(sizes=sizes, batch=batch)
        return {}, {}

    monkeypatch.setattr(suites, "train_groups", fake)
    monkeypatch.setattr(suites, "big_gpu_groups", lambda backends, quick: {})
    argv = ["bench", "--quick", "--suite", "train", "--backends", "numpy", "--layers", "512,256"]
    assert main([*argv, "--batch-size", "256"]) == 0
    assert seen == {"sizes": (784, 512, 256, 10), "batch": 256}


def test_a_checkpoints_cli_metadata_is_checked_against_its_model(tmp_path, capsys):
    """classes, features, the task and an old scaling come from the file: a re-signed edit
    is a clear error naming the key, never a traceback or labels in the wrong order."""
    from fastnet.checkpoint import _digest, read_checkpoint

    X = np.random.default_rng(3).standard_normal((40, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", X=X, y=np.array(["c", "d", "e", "d"] * 10))
    ckpt, edited = str(tmp_path / "m.npz"), str(tmp_path / "e.npz")
    assert main(["train", "--data", str(tmp_path / "a.npz"), "--save", ckpt, *TINY]) == 0
    meta, arrays = read_checkpoint(ckpt)
    for key, value, match in [
        ("classes", ["c", "d"], "'classes' must list the model's 3 labels (strings, numbers or"),
        ("classes", ["e", "c", "d"], "'classes' must list"),
        ("classes", "cde", "'classes' must list"),  # a string of the right length
        ("classes", [None, "c", "d"], "'classes' must list"),
        ("classes", [1, "c", "d"], "'classes' must list"),
        ("classes", [[1], [2], [3]], "'classes' must list"),
        ("features", "abc", "'features' must name the model's 3 input columns"),
        ("features", ["f0", "f0", "f1"], "'features' must name the model's 3 input columns, each"),
        ("scale", {"kind": "standard"}, "a scaling is a JSON object with kind, offset and"),
        ("scale", {"kind": "standard", "offset": [0] * 3, "scale": [0] * 3}, "a scaling's"),
        ("task", "clustering", "'target' must be a column name and 'task' one of"),
        (None, ["x"], "is not a JSON object"),
    ]:
        extra = value if key is None else {**meta["extra"], key: value}
        signed = {**meta, "extra": extra}
        signed["sha256"] = _digest(arrays, [meta["config"], extra])
        np.savez(edited, **arrays, __fastnet_meta__=np.array(json.dumps(signed)))
        for command in ("predict", "evaluate"):
            assert main([command, edited, "--data", str(tmp_path / "a.npz")]) == 2
            err = capsys.readouterr().err
            assert "e.npz': its metadata (extra) " + match in err, err
    assert main(["export", edited, str(tmp_path / "m.onnx")]) == 2


def test_cli_options_that_would_be_ignored_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((60, 3)).astype(np.float32)
    np.savez(tmp_path / "r.npz", X=X, y=X @ np.array([1.0, 2.0, 0.5]))
    np.savez(tmp_path / "c.npz", X=X, y=np.arange(60) % 3)
    regression, classes = str(tmp_path / "r.npz"), str(tmp_path / "c.npz")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X[:, 0])
    for argv, message in [
        (["--data", regression, "--label-smoothing", "0.1"], "--label-smoothing smooths class"),
        (["--data", regression, "--task", "classification"], "holds fractional numbers"),
        (["--data", classes, "--limit", "5"], "0.1 (--val-fraction) holds out 0 of 5 rows"),
        (  # what chose a classifier, and the labels' file, named
            [
                "--data",
                str(tmp_path / "X.npy"),
                "--labels",
                str(tmp_path / "y.npy"),
                "--loss",
                "cross-entropy",
            ],  # fmt: skip
            "--loss cross-entropy trains a classifier, but the target of "
            f"{tmp_path / 'y.npy'} holds fractional numbers, 60 distinct in 60 rows: --loss "
            "squared-error (or poisson)",
        ),
        (["--data", classes, "--val", classes, "--val-fraction", "0.5"], "replaces --val-fraction"),
    ]:
        assert main(["train", *TINY, *argv]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--data", classes, "--layers", "8,,4"])
    assert "--layers must be comma-separated integers" in capsys.readouterr().err
    assert main(["train", *TINY, "--data", classes, "--val", classes]) == 0
    assert main(["train", *TINY, "--data", regression, "--preset", "best", "--epochs", "1"]) == 0


def test_a_cli_trained_model_loaded_in_python_keeps_its_labels(tmp_path):
    import pickle

    onnx = pytest.importorskip("onnx")
    X = np.random.default_rng(5).standard_normal((40, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", X=X, y=np.array(["cat", "dog", "emu", "dog"] * 10))
    ckpt = str(tmp_path / "m.npz")
    assert main(["train", "--data", str(tmp_path / "a.npz"), "--save", ckpt, *TINY]) == 0
    model = fn.load_model(ckpt)
    assert model.metadata["classes"] == ["cat", "dog", "emu"]
    labels = np.asarray(model.metadata["classes"])[model.predict(X)]  # the README's way
    assert set(labels) <= {"cat", "dog", "emu"}
    model.to_onnx(tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert (
        json.loads(props["classes"]) == ["cat", "dog", "emu"] and props["task"] == "classification"
    )
    model.save(tmp_path / "again.safetensors")
    for copy in (fn.load_model(tmp_path / "again.safetensors"), pickle.loads(pickle.dumps(model))):
        assert copy.metadata == model.metadata
    assert model.to("numpy").metadata == model.metadata
    model.metadata["classes"] = np.array(model.metadata["classes"])  # as one would keep them
    model.save(tmp_path / "arrays.npz")
    assert fn.load_model(tmp_path / "arrays.npz").metadata["classes"] == ["cat", "dog", "emu"]
    model.metadata["when"] = object()
    with pytest.raises(TypeError, match="extra \\(metadata\\) holds a object: only JSON"):
        model.save(tmp_path / "bad.npz")
    old = {**model.metadata, "scale": {"kind": "standard", "offset": [0] * 3, "scale": [1] * 3}}
    model.metadata = old  # an old CLI checkpoint's scaling, folded into a Standardize layer:
    folded = model.prepend(fn.Standardize([0.0] * 3, [1.0] * 3))
    assert "scale" not in folded.metadata and folded.metadata["task"] == "classification"


def _csv_rows(out: str) -> tuple[list[str], list[list[str]]]:
    import csv
    import io

    header, *rows = list(csv.reader(io.StringIO(out)))
    return header, rows


@pytest.mark.parametrize("classes", [None, ["neg", "pos"]])
def test_a_binary_sigmoid_model_predicts_labels_probabilities_and_accuracy(
    tmp_path, capsys, classes
):
    """loss="bce" with one output is a classifier: labels (its class names) as model.predict
    gives them, --proba the positive class's probability, evaluate its accuracy (it was raw
    logits under "prediction", "is a regression model" and a KeyError 'r2' traceback)."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((60, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(1)], loss="bce", backend="numpy", seed=0)
    model.fit(X, y, epochs=3, verbose=0)
    names = classes or ["0", "1"]
    if classes:
        model.metadata = {"classes": classes, "task": "classification"}
    ckpt, data = str(tmp_path / "b.npz"), str(tmp_path / "x.npz")
    model.save(ckpt)
    np.savez(data, X=X, y=np.asarray(names)[y.astype(int)] if classes else y.astype(int))
    assert main(["predict", ckpt, "--data", data]) == 0
    header, rows = _csv_rows(capsys.readouterr().out)
    assert header == ["label"] and [r[0] for r in rows] == [names[i] for i in model.predict(X)]
    assert main(["predict", ckpt, "--data", data, "--proba"]) == 0
    header, rows = _csv_rows(capsys.readouterr().out)
    assert header == [names[1]]  # the probability of the positive class, as predict_proba's
    np.testing.assert_allclose(np.array(rows, float), model.predict_proba(X), rtol=1e-6)
    assert main(["evaluate", ckpt, "--data", data]) == 0
    out = capsys.readouterr().out
    expected = model.evaluate(X, y)
    assert f"held-out accuracy {expected['accuracy']:.4f}" in out and "R2" not in out
    assert ["true\\pred", *names] in [line.split() for line in out.splitlines()]  # its matrix


def test_a_multi_label_model_predicts_a_column_per_output(tmp_path, capsys):
    """Sigmoid outputs of their own: a 0/1 label column per output (named by the metadata's
    classes where given), --proba a probability per output, evaluate the share of outputs
    right; its targets are never read as class labels (rows of one 1 were argmax-ed)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 3)).astype(np.float32)
    y = (X > 0).astype(np.float32)
    model = fn.Sequential([fn.Dense(6, "relu"), fn.Dense(3)], loss="bce", backend="numpy", seed=0)
    model.fit(X, y, epochs=3, verbose=0)
    ckpt, tagged, data = str(tmp_path / "m.npz"), str(tmp_path / "t.npz"), str(tmp_path / "x.npz")
    model.save(ckpt)
    model.metadata = {"classes": ["cat", "dog", "emu"]}  # sorted, as the CLI keeps classes
    model.save(tagged)
    np.savez(data, X=X, y=y)
    for path, names in ((ckpt, ["0", "1", "2"]), (tagged, ["cat", "dog", "emu"])):
        assert main(["predict", path, "--data", data]) == 0
        header, rows = _csv_rows(capsys.readouterr().out)
        assert header == [f"label_{n}" for n in names]
        np.testing.assert_array_equal(np.array(rows, int), model.predict(X))
        assert main(["predict", path, "--data", data, "--proba"]) == 0
        header, rows = _csv_rows(capsys.readouterr().out)
        assert header == names
        np.testing.assert_allclose(np.array(rows, float), model.predict_proba(X), rtol=1e-6)
        assert main(["evaluate", path, "--data", data]) == 0
        out = capsys.readouterr().out
        accuracy = model.evaluate(X, y)["accuracy"]
        assert f"held-out accuracy {accuracy:.4f} (per output)" in out
        assert "R2" not in out and "true\\pred" not in out


def test_a_float64_model_gets_a_csvs_features_in_float64(tmp_path, capsys):
    """Timestamps near 1.7e9 as float32 are rounded to 128 s: a float64 model's CSV features
    are read in float64 (predict was 0.7 off, evaluate's R2 -0.77 for 0.99)."""
    rng = np.random.default_rng(1)
    t = np.round(1.7e9 + rng.uniform(0, 100, 200), 6)
    X, y = np.stack([t, rng.normal(size=200).round(6)], 1), (t - 1.7e9) / 100
    model = fn.Sequential(
        [fn.Standardize.fit(X), fn.Dense(8, "tanh"), fn.Dense(1)],
        loss="mse",
        dtype="float64",
        backend="numpy",
        seed=0,
    )
    model.fit(X, y, epochs=3, batch_size=32, verbose=0)
    model.metadata = {"features": ["t", "z"], "target": "y", "task": "regression"}
    ckpt, data = str(tmp_path / "ts.npz"), tmp_path / "ts.csv"
    model.save(ckpt)
    lines = [f"{a!r},{b!r},{c!r}" for (a, b), c in zip(X.tolist(), y.tolist())]
    data.write_text("\n".join(["t,z,y", *lines]) + "\n")
    assert main(["predict", ckpt, "--data", str(data)]) == 0
    header, rows = _csv_rows(capsys.readouterr().out)
    assert header == ["prediction"]
    np.testing.assert_allclose(np.array(rows, float), model.predict(X), rtol=0, atol=1e-12)
    assert main(["evaluate", ckpt, "--data", str(data)]) == 0
    expected = model.evaluate(X, y)
    assert f"held-out R2 {expected['r2']:.4f}" in capsys.readouterr().out


def test_train_in_float64_reads_a_csv_in_float64(tmp_path, capsys, monkeypatch):
    """--dtype float64 trains on the CSV's float64 features and targets (they were float32:
    timestamps to 128 s), and its banner names no matmul precision (only float32 has one)."""
    rng = np.random.default_rng(2)
    t = np.round(1.7e9 + rng.uniform(0, 100, 40), 6)
    path = tmp_path / "ts.csv"
    path.write_text("\n".join(["t,y", *(f"{v!r},{v + 0.25!r}" for v in t.tolist())]) + "\n")
    seen = []
    fit = fn.Sequential.fit

    def spy(self, X, y, **kwargs):
        seen.append((np.asarray(X), np.asarray(y), kwargs["validation_data"]))
        return fit(self, X, y, **kwargs)

    monkeypatch.setattr(fn.Sequential, "fit", spy)
    argv = ["train", "--data", str(path), "--target", "y", "--task", "regression", *TINY]
    assert main([*argv, "--dtype", "float64", "--val-fraction", "0.25"]) == 0
    banner = capsys.readouterr().out.splitlines()[0]
    (X, y, (Xv, yv)), rows = seen[0], np.concatenate([seen[0][0], seen[0][2][0]])[:, 0]
    assert X.dtype == Xv.dtype == np.float64 and sorted(rows.tolist()) == sorted(t.tolist())
    both = np.concatenate([y, yv])[:, 0]
    assert sorted(both.tolist()) == sorted((t + 0.25).tolist())
    assert banner.endswith(" float64"), banner
    assert main(argv) == 0
    assert "float32 (fp32 matmuls)" in capsys.readouterr().out


def test_errors_in_a_labels_file_name_that_file(tmp_path, capsys):
    """A .npy of labels with the wrong shape was reported as the labels of the features file."""
    rng = np.random.default_rng(0)
    for name, array in [
        ("x.npy", rng.random((50, 3), np.float32)),
        ("wide.npy", rng.integers(0, 3, (50, 2))),
        ("labels.npy", np.array(["a", "b"] * 25)),
    ]:
        np.save(tmp_path / name, array)
    x, wide, labels = (str(tmp_path / n) for n in ("x.npy", "wide.npy", "labels.npy"))
    for argv in (
        ["--data", x, "--labels", wide],
        ["--data", x, "--labels", labels, "--val", x, "--val-labels", wide],
    ):
        assert main(["train", *argv, *TINY]) == 2
        assert f"the labels of {wide} has shape (50, 2)" in capsys.readouterr().err


def test_warnings_print_as_one_line_naming_the_command(monkeypatch, capsys):
    """Python's warning format (file:line, the source line) read as a crash in a terminal."""
    import warnings

    import fastnet.cli as cli

    def warns(args):
        warnings.warn(
            "backend 'auto' chose numba: cupy is installed\n but unusable",
            RuntimeWarning,
            stacklevel=2,
        )
        return 0

    monkeypatch.setattr(cli, "cmd_backends", warns)
    assert main(["backends"]) == 0
    err = capsys.readouterr().err
    assert (
        err
        == "fastnet backends: warning: backend 'auto' chose numba: cupy is installed but unusable\n"
    )


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_diverged_train_writes_strict_json_and_says_it_once(tmp_path, capsys, backend):
    """--json held "s_per_epoch": NaN (strict parsers refuse it), and the divergence was
    printed twice (the warning, then the stop reason); the JSON says it (a script's check).
    With no epoch finished: no "nan s/epoch" (numba's timing line raised IndexError), no
    empty --plot."""
    import importlib.util

    from fastnet.backends import probe

    if not probe(backend).available:
        pytest.skip(f"{backend} unavailable")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", X=rng.standard_normal((640, 4)), y=np.arange(640) % 3)
    out, plot = tmp_path / "run.json", tmp_path / "curves.png"
    args = ["train", "--data", str(tmp_path / "t.npz"), "--epochs", "1", "--backend", backend]
    args += ["--optimizer", "sgd", "--lr", "1e30", "--json", str(out)]
    args += ["--plot", str(plot)] if importlib.util.find_spec("matplotlib") else []
    assert main(args) == 0
    assert "epochs 0  (none finished)" in capsys.readouterr().out and not plot.exists()
    assert main([*args, "--quiet"]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    report = json.loads(out.read_text(), parse_constant=refuse)
    assert report["s_per_epoch"] is None
    assert report["diverged"] is True and "loss became" in report["stop_reason"]  # (exit 0)
    err = capsys.readouterr().err
    assert err.count("loss became") == 1, err


def test_json_to_a_pipe_is_written_into_it(tmp_path):
    """--json /dev/stdout or a FIFO was replaced by a renamed temporary file (or failed)."""
    import os
    import threading

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", X=rng.standard_normal((64, 4)), y=np.arange(64) % 2)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    args = ["train", "--data", str(tmp_path / "t.npz"), "--epochs", "1", "--backend", "numpy"]
    assert main([*args, "--quiet", "--json", str(fifo)]) == 0
    reader.join(30)
    assert json.loads(got[0])["backend"] == "numpy" and fifo.is_fifo()


def test_json_dash_is_stdout(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "t.npz", X=np.random.default_rng(0).standard_normal((64, 4)),
             y=np.arange(64) % 2)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", "t.npz", "--epochs", "1", "--backend", "numpy", "--quiet"]
    assert main([*args, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "numpy"
    assert not (tmp_path / "-").exists()


def test_poisson_loss_from_the_cli_trains_counts_and_predicts_rates(tmp_path, capsys):
    """--loss poisson: integer counts are a regression's (not 40 classes), negative counts are
    refused by name, a classification loss for a regression is refused; the checkpoint predicts
    exp(outputs), as the Python model does."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((80, 2)).round(3)
    counts = rng.poisson(np.exp(0.5 * X[:, 0])).astype(int)
    path, ckpt = _table(tmp_path / "n.csv", counts), str(tmp_path / "p.npz")
    argv = ["train", "--data", path, "--target", "target", *TINY]
    assert main([*argv, "--loss", "poisson", "--save", ckpt]) == 0
    out = capsys.readouterr().out
    assert "MLP 2-4-1" in out and "held-out loss (poisson)" in out and "R2" in out
    model = fn.load_model(ckpt, backend="numpy")
    assert model.loss.name == "poisson" and model.metadata["task"] == "regression"
    assert main(["predict", ckpt, "--data", path]) == 0
    _, rows = _csv_rows(capsys.readouterr().out)
    features = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.float32)
    np.testing.assert_allclose([float(r[0]) for r in rows], model.predict(features)[:, 0], 1e-6)
    assert min(float(r[0]) for r in rows) > 0
    negative = _table(tmp_path / "neg.csv", np.where(np.arange(80) == 3, -1, counts))
    for given, message in [
        (["--data", negative, "--loss", "poisson"], "--loss poisson needs counts or rates >= 0"),
        (["--data", path, "--loss", "cross-entropy", "--task", "regression"], "a classification"),
        (["--loss", "squared-error"], "a regression loss: the built-in sets are classes"),
    ]:
        target = ["--target", "target"] if "--data" in given else []
        assert main(["train", *TINY, *target, *given]) == 2
        assert message in capsys.readouterr().err


def test_data_errors_found_in_training_name_their_file(tmp_path, capsys):
    """A memory-mapped .npy's NaN is found as it trains: the error named only 'X'; a --val
    file of another width was found after the model was built, named 'X_val'."""
    X = np.random.default_rng(8).random((50, 4)).astype(np.float32)
    X[7, 2] = np.nan
    np.save(tmp_path / "Xnan.npy", X)
    np.save(tmp_path / "y.npy", np.arange(50) % 2)
    np.savez(tmp_path / "a4.npz", X=np.nan_to_num(X), y=np.arange(50) % 2)
    np.savez(tmp_path / "a5.npz", X=np.ones((50, 5), np.float32), y=np.arange(50) % 2)
    labels = ["--labels", str(tmp_path / "y.npy")]
    assert main(["train", "--data", str(tmp_path / "Xnan.npy"), *labels, *TINY]) == 2
    assert "error: " + str(tmp_path / "Xnan.npy") + ": X contains 1 NaN" in capsys.readouterr().err
    argv = ["train", "--data", str(tmp_path / "a4.npz"), "--val", str(tmp_path / "a5.npz")]
    assert main([*argv, *TINY]) == 2
    out, err = capsys.readouterr()
    assert "a5.npz holds 5 feature columns, --data" in err and "MLP" not in out


def test_evaluate_names_the_file_or_dataset_of_bad_labels_or_width(tmp_path, capsys):
    """A checkpoint saved from Python (no class names): evaluate's errors about y and X name
    the --data file or the --dataset they came from, as train's do."""
    X = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0)
    model.fit(X, np.arange(50) % 3, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    np.savez(tmp_path / "frac.npz", X=X, y=np.arange(50) % 3 + 0.5)
    np.savez(tmp_path / "wide.npz", X=X, y=np.arange(50) % 15)
    for data, message in [
        ("frac.npz", "frac.npz: y must hold integer class labels"),
        ("wide.npz", "wide.npz: y contains label 14 but the model has 3 outputs"),
    ]:
        assert main(["evaluate", str(tmp_path / "m.npz"), "--data", str(tmp_path / data)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_train_resume_continues_an_interrupted_run_as_one_straight_run(
    tmp_path, monkeypatch, capsys, backend
):
    """`train --resume m.npz` trains a saved model on: a run stopped by Ctrl-C after 2 of 4
    epochs (its checkpoint saved), resumed to --epochs 4, ends with the weights and optimizer
    state a straight 4-epoch run has, bit for bit (cosine schedule, --scale, dropout: the
    scaling taken off and put back, the data order and dropout stream continued)."""
    import fastnet.cli as cli
    from fastnet.backends import probe

    if not probe(backend).available:
        pytest.skip(f"{backend} unavailable")
    X = (np.random.default_rng(0).standard_normal((300, 6)) * 5 + 3).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 3).astype(int) + (X[:, 1] > 3))
    data = ["--data", str(tmp_path / "d.npz"), "--backend", backend, "--quiet"]
    run = [*data, "--batch-size", "32", "--epochs", "4"]
    paths = {name: str(tmp_path / f"{name}.npz") for name in ("straight", "stopped", "resumed")}
    first = [*run, "--scale", "standard", "--dropout", "0.1"]
    assert main(["train", *first, "--save", paths["straight"]]) == 0

    class CtrlC(fn.Callback):
        def on_epoch_begin(self, model, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    callbacks = cli._callbacks
    monkeypatch.setattr(cli, "_callbacks", lambda *args: [*callbacks(*args), CtrlC()])
    assert main(["train", *first, "--save", paths["stopped"]]) == 130  # (saved first)
    monkeypatch.undo()
    resume = ["--resume", paths["stopped"]]  # (its --epochs, --batch-size, --schedule too)
    report = tmp_path / "resumed.json"
    assert main(["train", *data, *resume, "--save", paths["resumed"], "--json", str(report)]) == 0
    run = json.loads(report.read_text())  # (the history's first entry is epoch 3's)
    assert run["first_epoch"] == 3 and len(run["history"]["loss"]) == 2
    straight, stopped, resumed = (fn.load_model(p, backend="numpy") for p in paths.values())
    assert (stopped.epochs_trained, resumed.epochs_trained) == (2, 4)
    assert type(resumed.layers[0]).__name__ == "Standardize"  # (takes raw rows, as saved)
    want, got = straight.host_state(), resumed.host_state()
    assert set(want) == set(got)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    capsys.readouterr()
    for extra, message in [
        (["--layers", "8"], "drop --layers"),
        (["--scale", "standard", "--seed", "3"], "drop --scale, --seed"),
        (["--preset", "best"], "drop --preset"),
        (["--epochs", "2"], "has trained 2 epoch(s), and --epochs counts from its first"),
        (["--val-fraction", "0.3"], "was trained with --val-fraction 0.1: a resumed run"),
        (["--val", str(tmp_path / "d.npz")], "validated on a --val-fraction split"),
        (["--json", paths["stopped"]], "--json"),  # (the checkpoint: not overwritten)
    ]:
        assert main(["train", *data, *resume, *extra]) == 2
        assert message in capsys.readouterr().err
    assert fn.load_model(paths["stopped"], backend="numpy").epochs_trained == 2
    y = (X[:, 0] > 3).astype(int) + (X[:, 1] > 3)
    for rows, labels, message in [
        (X[:200], y[:200], "the data hold 200 rows; "),
        (X, np.arange(300) % 4, "the data's targets make 4 outputs; "),
        (X, y + 1, "the data's classes are not those"),
    ]:
        np.savez(tmp_path / "other.npz", X=rows, y=labels)
        argv = ["--data", str(tmp_path / "other.npz"), *resume, "--quiet", "--backend", backend]
        assert main(["train", *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["train", "--resume", paths["stopped"], "--quiet"]) == 2
    assert "was trained on your own data (d.npz): give it again with --data" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("after", [1, 2])  # epochs after the best one when Ctrl-C came
@pytest.mark.parametrize("scale", [[], ["--scale", "standard"]])
def test_resume_continues_early_stopping_where_it_left_off(
    tmp_path, monkeypatch, capsys, after, scale
):
    """--resume with --patience went on from fresh counters: a run stopped after its best
    epoch and resumed waited its whole patience again from the first resumed epoch (always a
    "best" against inf) and ended on weights worse than the checkpoint's. The best val_loss and
    the epochs waited are saved with the checkpoint: interrupted right after its best epoch
    and resumed, a run stops where a straight one does, with the same weights (interrupted
    after a later epoch, the best epoch's state is saved beside the last one's: its weights
    are the ones restored, through the scaling taken off and put back); a run that stopped,
    resumed, stops again after one epoch with no gain and keeps its best weights."""
    import fastnet.cli as cli

    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 8)).astype(np.float32)
    y = (X[:, 0] + rng.standard_normal(200) > 0).astype(int)  # (noisy: overfits, stops)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = ["--data", str(tmp_path / "d.npz"), "--backend", "numpy", "--quiet"]
    run = [*data, *scale, "--layers", "64,64", "--lr", "0.01", "--patience", "2", "--epochs", "40"]
    path = {name: str(tmp_path / f"{name}.npz") for name in ("straight", "cut", "resumed")}
    assert (
        main(["train", *run, "--save", path["straight"], "--json", str(tmp_path / "s.json")]) == 0
    )
    val_loss = json.loads((tmp_path / "s.json").read_text())["history"]["val_loss"]
    stopped, best = len(val_loss), int(np.argmin(val_loss))
    assert 0 < best and stopped == best + 3 < 40  # (stopped by its patience of 2)

    class CtrlC(fn.Callback):
        def on_epoch_begin(self, model, epoch, logs=None):
            if epoch == best + after:  # (the best epoch finished, and after - 1 more)
                raise KeyboardInterrupt

    callbacks = cli._callbacks
    monkeypatch.setattr(cli, "_callbacks", lambda *args: [*callbacks(*args), CtrlC()])
    assert main(["train", *run, "--save", path["cut"]]) == 130
    monkeypatch.undo()
    resume = [
        "--resume",
        path["cut"],
        "--save",
        path["resumed"],
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert main(["train", *data, *resume]) == 0
    resumed_epochs = len(json.loads((tmp_path / "r.json").read_text())["history"]["val_loss"])
    assert resumed_epochs == 3 - after
    straight, resumed = (fn.load_model(path[k], backend="numpy") for k in ("straight", "resumed"))
    assert straight.epochs_trained == resumed.epochs_trained == stopped
    for key, value in straight.host_state().items():
        np.testing.assert_array_equal(resumed.host_state()[key], value, err_msg=key)
    capsys.readouterr()
    again = ["--resume", path["straight"], "--epochs", "60", "--save", path["resumed"]]
    assert main(["train", *data, *again]) == 0
    assert "best val_loss" in capsys.readouterr().out
    more = fn.load_model(path["resumed"], backend="numpy")
    assert more.epochs_trained == stopped + 1
    copy = fn.load_model(path["cut"], backend="numpy")  # (re-saved: the record, no best/ keys)
    copy.save(tmp_path / "copy.npz")
    capsys.readouterr()
    assert main(["train", *data, "--resume", str(tmp_path / "copy.npz")]) == 0
    warned = "not its best epoch's weights (a copy saved without them)" in capsys.readouterr().err
    assert warned == (after == 2)  # (interrupted after a later epoch than the best: at_best no)
    kept = [k for k in straight.host_state() if k.startswith(("param/", "slot/"))]
    for key in kept:  # (the checkpoint's best weights and optimizer state restored)
        np.testing.assert_array_equal(more.host_state()[key], straight.host_state()[key])


def test_a_resumed_run_trains_at_the_base_rate_and_reports_the_first_runs_options(tmp_path):
    """Resumed with --schedule constant after a cosine run, the header said lr=0.001 while
    every epoch trained at the cosine's last value (no schedule set it back); a resumed
    run's --json reported dropout 0.0, scale "none" and loss "auto" (the parser's defaults)
    for a model trained with others."""
    X = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    data = ["--data", str(tmp_path / "d.npz"), "--backend", "numpy", "--quiet"]
    ckpt, report = str(tmp_path / "m.npz"), tmp_path / "r.json"
    assert main(["train", *data, "--epochs", "3", "--lr", "0.002", "--save", ckpt]) == 0
    assert fn.load_model(ckpt, backend="numpy").optimizer.lr < 0.002  # (cosine's last)
    resume = ["--resume", ckpt, "--epochs", "5", "--schedule", "constant", "--json", str(report)]
    assert main(["train", *data, *resume]) == 0
    assert json.loads(report.read_text())["history"]["lr"] == [0.002, 0.002]
    first = ["--epochs", "2", "--dropout", "0.3", "--scale", "minmax", "--loss", "cross-entropy"]
    assert main(["train", *data, *first, "--save", ckpt]) == 0
    assert main(["train", *data, "--resume", ckpt, "--epochs", "3", "--json", str(report)]) == 0
    given = json.loads(report.read_text())["args"]  # (the resumed run's --json: 0.0, "none")
    assert (given["dropout"], given["scale"], given["loss"]) == (0.3, "minmax", "cross-entropy")
    assert given["precision"] == "fp32"


def test_confusion_names_stay_apart_and_a_resumed_run_cut_at_once_reports(
    tmp_path, capsys, monkeypatch
):
    """Class names cut to 12 characters read alike (every row "temperature_"); a resumed
    run interrupted before its first epoch finished said "test: not trained" of a trained
    model."""
    import fastnet.cli as cli
    from fastnet.cli import format_confusion

    names = ["temperature_high", "temperature_low", "wind"]
    table = format_confusion(np.eye(3, dtype=int), names)
    assert [line.split()[0] for line in table.splitlines()[1:]] == [
        "temperature_h",
        "temperature_l",
        "wind",
    ]
    assert "abcdefghijkl " in format_confusion(np.eye(2, dtype=int), ["abcdefghijklmn", "b"])
    X = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    data = ["--data", str(tmp_path / "d.npz"), "--backend", "numpy", "--quiet"]
    ckpt = str(tmp_path / "m.npz")
    assert main(["train", *data, "--epochs", "2", "--save", ckpt]) == 0

    class CtrlC(fn.Callback):
        def on_epoch_begin(self, model, epoch, logs=None):
            raise KeyboardInterrupt

    callbacks = cli._callbacks
    monkeypatch.setattr(cli, "_callbacks", lambda *args: [*callbacks(*args), CtrlC()])
    capsys.readouterr()
    assert main(["train", *data, "--resume", ckpt, "--epochs", "4"]) == 130
    out = capsys.readouterr().out
    assert "not trained" not in out and "held-out accuracy" in out


def test_resume_takes_options_given_at_their_default_values(tmp_path, capsys):
    """An option given with its default's value counted as not given: --epochs 20 was the
    first run's 5, --batch-size 128 its 16, --optimizer adam passed unrefused."""
    X = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    data = ["--data", str(tmp_path / "d.npz"), "--backend", "numpy", "--quiet"]
    first = ["--epochs", "2", "--batch-size", "16", "--patience", "3", "--optimizer", "sgd"]
    assert main(["train", *data, *first, "--save", str(tmp_path / "m.npz")]) == 0
    resume, report = ["--resume", str(tmp_path / "m.npz")], tmp_path / "r.json"
    assert main(["train", *data, *resume, "--optimizer", "adam"]) == 2
    assert "drop --optimizer" in capsys.readouterr().err
    assert main(["train", *data, *resume, "--epochs", "20", "--batch-size", "128",
                 "--json", str(report)]) == 0  # fmt: skip
    given = json.loads(report.read_text())["args"]
    assert (given["epochs"], given["batch_size"], given["patience"]) == (20, 128, 3)
    assert main(["train", *data, *resume, "--epochs", "3", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["args"]["batch_size"] == 16  # (not given: saved)


def test_the_pipe_safe_stream_passes_on_its_terminal():
    """train's guarded stdout/stderr said they were no terminal (io's default): tqdm drew a
    10-column '#' bar in a terminal instead of a full-width one."""
    import io

    from fastnet.cli import _PipeSafeOutput

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    guarded = _PipeSafeOutput(Terminal())
    assert guarded.isatty() and guarded.encoding == "utf-8"
    assert not _PipeSafeOutput(io.StringIO()).isatty()
