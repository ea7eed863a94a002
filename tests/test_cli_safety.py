"""What a newcomer who follows the docs literally runs into: one-line errors with exit 2 for a
missing extra, outputs that would overwrite an input, defaults of 0 in --help, a bad --backend
blamed on the file, options that do nothing, and "not found" messages in the CLI's words."""

import os
import sys

import numpy as np
import pytest

import fastnet as fn
from fastnet.cli import main
from fastnet.datasets import load_cifar

TINY = ["--epochs", "1", "--layers", "4", "--backend", "numpy", "--quiet"]


@pytest.fixture
def trained(tmp_path, capsys):
    """A .npz and a .csv of 40 rows, and a checkpoint trained on the .npz."""
    X = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    y = np.arange(40) % 2
    np.savez(tmp_path / "d.npz", X=X, y=y)
    rows = "\n".join(f"{a},{b},{t}" for (a, b), t in zip(X.tolist(), y.tolist()))
    (tmp_path / "t.csv").write_text("a,b,target\n" + rows + "\n")
    ckpt = tmp_path / "m.npz"
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--save", str(ckpt), *TINY]) == 0
    capsys.readouterr()
    return tmp_path


def _one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith(f"fastnet {command}: error: "), captured.err
    assert captured.err.count("\n") == 1 and captured.out == "", captured
    return captured.err


def test_export_without_onnx_is_a_one_line_error_naming_the_extra(trained, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    onnx_path = trained / "m.onnx"
    assert main(["export", str(trained / "m.npz"), str(onnx_path)]) == 2
    err = _one_line_error(capsys, "export")
    assert "needs the onnx package" in err and "'.[onnx]'" in err and "extra 'onnx'" in err
    assert not onnx_path.exists()


def test_outputs_naming_an_input_file_are_refused_before_any_work(trained, capsys):
    d, csv, ckpt = (str(trained / n) for n in ("d.npz", "t.csv", "m.npz"))
    os.link(d, trained / "hard.npz")  # another name of d.npz's file
    roundabout = os.path.join(str(trained), "sub", "..", "d.npz")  # sub/ does not exist
    before = {p: open(p, "rb").read() for p in (d, csv, ckpt)}
    cases = [
        (
            ["predict", ckpt, "--data", csv, "--proba", "--output", ckpt],
            "--output",
            "the checkpoint",
        ),
        (["predict", ckpt, "--data", csv, "--output", csv], "--output", "--data"),
        (["train", "--data", csv, "--target", "target", "--json", csv], "--json", "--data"),
        (["train", "--data", d, "--save", d], "--save", "--data"),
        (["train", "--data", d, "--save", str(trained / "hard.npz")], "--save", "--data"),
        (["train", "--data", d, "--save", roundabout], "--save", "--data"),
        (["train", "--data", d, "--val", csv, "--plot", csv], "--plot", "--val"),
        (["train", "--data", d, "--save", ckpt, "--json", ckpt], "--json", "--save"),
        (["export", ckpt, ckpt], "the output", "the checkpoint"),
    ]
    for argv, output, given in cases:
        assert main(argv + (TINY if argv[0] == "train" else [])) == 2, argv
        err = _one_line_error(capsys, argv[0])  # nothing printed: no training ran
        assert f"error: {output} " in err and f"is the same file as {given}" in err, err
    assert {p: open(p, "rb").read() for p in before} == before


def test_help_shows_defaults_of_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "weights, shuffle, split (default: 0)",
        "L2 weight decay (default: 0.0)",
        "for the CE loss (default: 0.0)",
        "dropout rate after each hidden layer (default: 0.0)",
        "default: mpi",
    ):
        assert shown in text, shown
    assert "(default: False)" not in text and "(default: None)" not in text


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_bad_backend_is_the_options_fault_not_the_files(trained, command, capsys):
    argv = [command, str(trained / "m.npz"), "--data", str(trained / "d.npz")]
    assert main([*argv, "--backend", "bogus"]) == 2
    err = _one_line_error(capsys, command)
    assert "--backend: unknown backend 'bogus'; known backends: numpy, numba, cupy, auto" in err
    assert "m.npz" not in err and "architecture" not in err


def test_load_model_blames_a_bad_backend_not_the_file(trained):
    import fastnet as fn

    with pytest.raises(ValueError, match="unknown backend 'bogus'") as raised:
        fn.load_model(trained / "m.npz", backend="bogus")
    assert not isinstance(raised.value, fn.CheckpointError)
    assert "m.npz" not in str(raised.value)


def test_comm_without_distributed_is_refused(trained, capsys):
    for comm in ("nccl", "mpi"):
        assert main(["train", "--data", str(trained / "d.npz"), "--comm", comm, *TINY]) == 2
        err = _one_line_error(capsys, "train")
        assert f"--comm {comm}" in err and "add --distributed" in err


@pytest.mark.parametrize(
    "load",
    [fn.load_mnist, fn.load_fashion_mnist, lambda folder: load_cifar("cifar10", folder)],
)
def test_not_found_tells_both_the_cli_and_python_spelling(tmp_path, load):
    with pytest.raises(FileNotFoundError) as exc:
        load(tmp_path)
    assert "not found" in str(exc.value)
    assert "--data-dir DIR on the command line, data_dir= in Python" in str(exc.value)


def test_nvrtc_check_without_cupy_says_why_in_one_line(monkeypatch, capsys):
    from fastnet.bench import nvrtc_check

    monkeypatch.setitem(sys.modules, "cupy", None)
    assert nvrtc_check.main([]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "nvrtc_check: error: " in captured.err
    assert "'gpu-check' extra" in captured.err


def test_a_val_file_of_another_format_than_data_is_named_first(trained, capsys):
    """--data d.npz --val t.csv asked for --target, then refused --target for the .npz."""
    d, csv = str(trained / "d.npz"), str(trained / "t.csv")
    for target in ([], ["--target", "target"]):
        assert main(["train", "--data", d, "--val", csv, *target, *TINY]) == 2
        assert "give both as .csv, or neither" in _one_line_error(capsys, "train")


def test_ctrl_c_before_an_epoch_finished_says_nothing_was_saved(trained, capsys, monkeypatch):
    import fastnet as fn
    import fastnet.cli as cli

    class CtrlC(fn.Callback):
        def on_epoch_begin(self, model, epoch, logs=None):
            raise KeyboardInterrupt

    callbacks = cli._callbacks
    monkeypatch.setattr(cli, "_callbacks", lambda *args: [*callbacks(*args), CtrlC()])
    save = trained / "new.npz"
    assert main(["train", "--data", str(trained / "d.npz"), *TINY, "--save", str(save)]) == 130
    err = capsys.readouterr().err
    assert "interrupted before an epoch finished; the model unbuilt" in err
    assert "nothing saved to" in err
    assert not save.exists()
