"""Issue #21, "a new user's first hour": the CLI and the Python API used as a new user would."""

import csv
import json
import tracemalloc
import warnings

import numpy as np
import pytest

import fastnet as fn
from fastnet.cli import main
from fastnet.tabular import LabelEncoding

FAST = [
    "--backend",
    "numpy",
    "--layers",
    "16",
    "--epochs",
    "8",
    "--lr",
    "0.01",
    "--quiet",
    "--schedule",
    "constant",
]


def blobs(n=300, k=3, d=4, seed=0):
    """Well separated classes: features (n, d), integer classes (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.standard_normal((n, d)).astype(np.float32) * 0.3
    X[np.arange(n), y % d] += 3.0
    return X, y


def write_csv(path, X, labels, target="label"):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"f{i}" for i in range(X.shape[1])), target])
        for row, label in zip(X, labels):
            w.writerow([*(f"{v:.5f}" for v in row), label])


def held_out_accuracy(out):
    line = next(s for s in out.splitlines() if "held-out accuracy" in s)
    return float(line.split("held-out accuracy")[1].split()[0])


# ---------------------------------------------------------------- item 1: one-hot .npz
def test_cli_trains_on_one_hot_labels(tmp_path, capsys):
    X, y = blobs()
    np.savez(tmp_path / "d.npz", X=X, y=fn.one_hot(y, 3))
    assert main(["train", "--data", str(tmp_path / "d.npz"), *FAST]) == 0
    assert held_out_accuracy(capsys.readouterr().out) > 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_one_hot_labels_with_a_broken_row_name_it(tmp_path, capsys, dtype):
    """A row of zeros made float one-hot labels a regression target, silently."""
    X, y = blobs()
    labels = fn.one_hot(y, 3).astype(dtype)
    labels[7] = 0
    np.savez(tmp_path / "d.npz", X=X, y=labels)
    assert main(["train", "--data", str(tmp_path / "d.npz"), *FAST]) == 2
    assert "row 7 (0-based) of these one-hot rows is [0" in capsys.readouterr().err
    labels[7] = [1, 1, 0]  # (several 1s: a multi-label row, not one class)
    with pytest.raises(
        fn.data.DatasetError, match=r"row 7 \(0-based\) of these one-hot rows is \[1"
    ):
        LabelEncoding.fit(labels)
    assert main(["train", "--data", str(tmp_path / "d.npz"), *FAST, "--task", "regression"]) == 0


def test_train_val_split_takes_one_hot_and_real_targets():
    X, y = blobs(100)
    (_, yt), (_, yv) = fn.train_val_split(X, fn.one_hot(y, 3), 0.2, seed=1)
    assert yt.shape[1] == yv.shape[1] == 3 and len(yv) == 20
    (_, _), (_, rv) = fn.train_val_split(X, X[:, 0] * 1.5, 0.2, seed=1)  # real-valued: no strata
    assert len(rv) == 20


# ---------------------------------------------------------------- item 2: classes from training
def test_csv_classes_come_from_the_training_file(tmp_path, capsys):
    names = np.array(["cat", "dog", "fox"])
    X, y = blobs(300)
    Xv, yv = blobs(100, seed=1)
    keep = yv > 0  # the validation file lacks "cat": per-file codes would shift dog -> 0
    write_csv(tmp_path / "a.csv", X, names[y])
    write_csv(tmp_path / "b.csv", Xv[keep], names[yv[keep]])
    ckpt = tmp_path / "m.npz"
    argv = [
        "train",
        "--data",
        str(tmp_path / "a.csv"),
        "--target",
        "label",
        "--val",
        str(tmp_path / "b.csv"),
        "--save",
        str(ckpt),
        *FAST,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert held_out_accuracy(out) > 0.9
    assert "cat" in out.split("confusion matrix")[1]  # the matrix is headed by class names
    _, meta = fn.model.load_model_with_meta(ckpt)
    assert meta["extra"]["classes"] == ["cat", "dog", "fox"]
    assert main(["predict", str(ckpt), "--data", str(tmp_path / "b.csv")]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0] == "label" and set(lines[1:]) <= {"cat", "dog", "fox"}
    assert np.mean(np.array(lines[1:]) == names[yv[keep]]) > 0.9


def test_unseen_validation_labels_are_refused(tmp_path, capsys):
    X, y = blobs(100)
    write_csv(tmp_path / "a.csv", X, np.array(["a", "b", "c"])[y])
    write_csv(tmp_path / "b.csv", X[:10], ["z"] * 10)
    argv = [
        "train",
        "--data",
        str(tmp_path / "a.csv"),
        "--target",
        "label",
        "--val",
        str(tmp_path / "b.csv"),
        *FAST,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "['z']" in err and "training data lacks" in err and err.count("\n") == 1


# ---------------------------------------------------------------- item 3: shuffled split
def test_validation_split_is_shuffled_and_stratified(tmp_path, capsys):
    X, y = blobs(300)
    order = np.argsort(y, kind="stable")  # a file sorted by class
    np.save(tmp_path / "X.npy", X[order])
    np.save(tmp_path / "y.npy", y[order])
    js = tmp_path / "h.json"
    argv = [
        "train",
        "--data",
        str(tmp_path / "X.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "--json",
        str(js),
        *FAST,
    ]
    assert main(argv) == 0
    cm = np.array(json.loads(js.read_text())["confusion_matrix"])
    assert (cm.sum(axis=1) > 0).all()  # every class is validated
    assert held_out_accuracy(capsys.readouterr().out) > 0.9


# ---------------------------------------------------------------- item 5: your own data
def test_labels_map_to_classes_as_scikit_learn_does(tmp_path, capsys):
    X, y = blobs(200, k=2)
    for labels, arch in ((np.array([0, 1000])[y], "4-16-2"), (np.array([-1, 1])[y], "4-16-2")):
        np.savez(tmp_path / "d.npz", X=X, y=labels)
        ckpt = tmp_path / "m.npz"
        argv = ["train", "--data", str(tmp_path / "d.npz"), "--save", str(ckpt), *FAST]
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"MLP {arch}," in out and held_out_accuracy(out) > 0.9
        np.save(tmp_path / "q.npy", X[:20])
        assert main(["predict", str(ckpt), "--data", str(tmp_path / "q.npy")]) == 0
        predicted = np.array(capsys.readouterr().out.split()[1:], dtype=np.int64)
        assert np.mean(predicted == labels[:20]) > 0.9


def test_regression_targets_train_and_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3)).astype(np.float32)
    t = X @ np.array([0.5, -1.0, 2.0]) + 0.25
    np.savez(tmp_path / "r.npz", X=X, y=t)
    ckpt = tmp_path / "r.npz.model.npz"
    argv = [
        "train",
        "--data",
        str(tmp_path / "r.npz"),
        "--save",
        str(ckpt),
        *FAST,
        "--epochs",
        "30",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    r2 = float(out.split("held-out R2")[1].split()[0])
    assert r2 > 0.9
    assert main(["predict", str(ckpt), "--data", str(tmp_path / "r.npz")]) == 0
    rows = capsys.readouterr().out.split()
    assert rows[0] == "prediction" and len(rows) == 301


def test_evaluate_and_predict_use_your_own_file(tmp_path, capsys):
    X, y = blobs(300)
    write_csv(tmp_path / "a.csv", X * 100 + 50, np.array(["x", "y", "z"])[y], target="kind")
    ckpt = tmp_path / "m.safetensors"
    argv = [
        "train",
        "--data",
        str(tmp_path / "a.csv"),
        "--target",
        "kind",
        "--save",
        str(ckpt),
        "--scale",
        "standard",
        *FAST,
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(ckpt)]) == 2  # trained on your own data: says to pass --data
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", str(ckpt), "--data", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    for metric in ("held-out accuracy", "loss", "macro precision", "f1", "confusion matrix"):
        assert metric in out  # the metrics fit reports
    assert held_out_accuracy(out) > 0.9  # the saved scaling is applied
    assert (
        main(
            [
                "predict",
                str(ckpt),
                "--data",
                str(tmp_path / "a.csv"),
                "--proba",
                "--output",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x", "y", "z"] and len(rows) == 301
    np.testing.assert_allclose(np.array(rows[1:], float).sum(axis=1), 1, rtol=1e-4)


def test_data_excludes_dataset(tmp_path, capsys):
    X, y = blobs(50)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    argv = ["train", "--data", str(tmp_path / "d.npz"), "--dataset", "mnist", *FAST]
    assert main(argv) == 2
    assert "--data" in capsys.readouterr().err


# ---------------------------------------------------------------- item 6: one-line errors
def test_not_implemented_is_one_error_line(tmp_path, capsys, monkeypatch):
    X, y = blobs(50)
    np.savez(tmp_path / "d.npz", X=X, y=y)

    def fit(*args, **kwargs):
        raise NotImplementedError("dtype='mixed_bfloat16': the cupy kernels\nare not built")

    monkeypatch.setattr(fn.Sequential, "fit", fit)
    assert main(["train", "--data", str(tmp_path / "d.npz"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --dtype mixed_bfloat16: " in err


# ---------------------------------------------------------------- item 7: CSV memory, scaling
def test_csv_reader_streams_at_about_the_array_size(tmp_path):
    from fastnet.datasets import load_arrays

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (8000, 64)).astype(np.float32)
    write_csv(tmp_path / "big.csv", X, rng.integers(0, 10, 8000))
    tracemalloc.start()
    Xl, yl = load_arrays(tmp_path / "big.csv", target="label")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(Xl, X)
    assert len(yl) == 8000
    assert peak < 3.5 * X.nbytes, f"peak {peak / 2**20:.1f} MiB for a {X.nbytes / 2**20} MiB array"


def test_scaling_is_fitted_on_training_rows():
    from fastnet.tabular import Scaler

    X = np.array([[0, 10], [255, 10], [51, 10]], np.float32)
    s = Scaler("minmax").fit(X)
    np.testing.assert_allclose(s.transform(X)[:, 0], [0, 1, 0.2])
    np.testing.assert_array_equal(s.transform(X)[:, 1], 0)  # constant column: shifted only
    z = Scaler.from_json(json.loads(json.dumps(Scaler("standard").fit(X).to_json())))
    np.testing.assert_allclose(z.transform(X).mean(0), 0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Standardize in float32")  # (its rounding: said, and shared)
def test_standard_scaling_keeps_the_spread_of_a_column_far_from_zero():
    """E[x²] - E[x]² cancelled for Unix timestamps over minutes: their std read 0 (scale 1,
    the column left as it was) or 20% off; now merged per chunk as the squared deviations."""
    from fastnet.tabular import Scaler

    rng = np.random.default_rng(0)
    for offset, width in ((1.7e9, 300.0), (1e12, 1e4), (5e6, 0.5)):
        X = np.c_[offset + rng.uniform(0, width, 10_000), rng.normal(size=10_000)]
        s = Scaler("standard").fit(X, chunk=777)  # (several chunks, one short)
        np.testing.assert_allclose(s.scale, X.std(0), rtol=1e-7)
        np.testing.assert_allclose(s.offset, X.mean(0), rtol=1e-12)
        z = s.transform(X, np.float64)
        np.testing.assert_allclose([z.mean(0), z.std(0)], [[0, 0], [1, 1]], atol=1e-6)
        model = fn.Sequential([fn.Standardize(s.offset, s.scale)], backend="numpy")
        model.build(2)  # the saved model's first layer computes what training was given
        X32 = X.astype(np.float32)
        np.testing.assert_array_equal(s.transform(X32), model.forward(X32, training=False))


# ---------------------------------------------------------------- item 8: notebook vocabulary
def test_notebook_names_and_helpers_are_exported():
    assert fn.Affine is fn.Dense and fn.Relu is fn.ReLU
    assert fn.SoftmaxWithLoss is fn.SoftmaxCrossEntropy
    assert fn.minibatches is fn.data.minibatches and fn.train_val_split is fn.data.train_val_split
    assert {"Affine", "Relu", "SoftmaxWithLoss", "minibatches", "train_val_split"} <= set(
        fn.__all__
    )


def test_softmax_before_softmax_cross_entropy_is_refused():
    from fastnet.layer_stack import check_loss_after_layers as check

    with pytest.raises(ValueError, match="applies softmax.*again"):
        check([fn.Dense(10), fn.Softmax()], fn.SoftmaxWithLoss())
    check([fn.Dense(10), fn.Softmax()], "mean_squared_error")
    check([fn.Dense(10)], fn.SoftmaxCrossEntropy())
    check([fn.Dropout(0.5)], fn.SoftmaxCrossEntropy())


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "bce"])
def test_a_trailing_dropout_or_a_new_loss_does_not_hide_a_second_softmax_or_sigmoid(loss):
    """Dropout after the Softmax/Sigmoid layer (a newcomer's model predicted one class), and
    the loss replaced on a built model, are checked as the plain stack is; nothing changes."""
    last = fn.Softmax() if loss != "bce" else fn.Sigmoid()
    with pytest.raises(ValueError, match="applies .* again"):
        fn.Sequential([fn.Dense(4, "relu"), fn.Dense(2), last, fn.Dropout(0.1)], loss=loss)
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(2), last, fn.Dropout(0.1)], loss="mse")
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=f"last layer {type(last).__name__} applies"):
        model.loss = loss
    assert model.loss.name == "mean_squared_error"


def test_linear_dense_before_relu_gets_he():
    from fastnet.layer_stack import fix_default_initializers

    layers = [
        fn.Affine(8),
        fn.Relu(),
        fn.Dense(8, initializer="xavier"),
        fn.ReLU(),
        fn.Dense(8),
        fn.Sigmoid(),
        fn.Affine(8),
        fn.Dropout(0.5),
        fn.Relu(),
        fn.Affine(8),  # the notebooks' MultiLayerNetExtend: Affine, BatchNorm, Relu
        fn.BatchNorm1d(),
        fn.Relu(),
        fn.Dense(8),
        fn.Dropout(0.5),
        fn.Tanh(),
        fn.Dense(3),
        fn.Dropout(0.5),
    ]
    assert fix_default_initializers(layers) == [0, 6, 9]
    assert isinstance(layers[0].initializer, fn.He)
    assert isinstance(layers[2].initializer, fn.Xavier)  # chosen by the user: kept
    assert isinstance(layers[4].initializer, fn.Xavier)
    assert [type(layers[i].initializer) for i in (6, 9)] == [fn.He] * 2
    assert [type(layers[i].initializer) for i in (12, 15)] == [fn.Xavier] * 2


# ---------------------------------------------------------------- item 11: NaN flags
@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--weight-decay", "nan"),
        ("--dropout", "inf"),
        ("--val-fraction", "nan"),
    ],
)
def test_numeric_flags_refuse_nan_and_inf(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: must be a finite number" in capsys.readouterr().err


# ---------------------------------------------------------------- item 14: small things
def test_help_shows_each_default_once(capsys):
    from fastnet.cli import build_parser

    text = build_parser().commands["train"].format_help()
    assert "(default: None)" not in text and text.count("$FASTNET_BACKEND") == 1
    assert "(default: 20)" in text and ".safetensors" in text
    top = build_parser().format_help()
    assert "``" not in top and "export" in top.split("options:")[0].split("\n", 3)[-1]


def test_interrupt_message_says_it_once(tmp_path, capsys, monkeypatch):
    X, y = blobs(50)
    np.savez(tmp_path / "d.npz", X=X, y=y)

    def fit(self, *args, **kwargs):
        self.stop_reason = "interrupted in epoch 1; weights of the last finished epoch restored"
        raise KeyboardInterrupt

    monkeypatch.setattr(fn.Sequential, "fit", fit)
    assert main(["train", "--data", str(tmp_path / "d.npz"), *FAST]) == 130
    err = capsys.readouterr().err
    assert "interrupted in epoch 1" in err and "interrupted: interrupted" not in err


def test_noisy_benchmark_is_flagged():
    from fastnet.bench.harness import Result, format_table

    quiet = format_table([Result("a", [1.0, 1.1, 1.2], 0.0)])
    noisy = format_table([Result("a", [1.0, 2.5, 3.0], 0.0)])
    assert "noisy" not in quiet and "noisy machine" in noisy


# ---------------------------------------------------------------- item 4: the right data set
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not __import__("os").path.isdir(FASHION), reason="Fashion-MNIST not installed")
def test_fashion_files_are_not_reported_as_mnist(monkeypatch, capsys):
    monkeypatch.setenv("FASTNET_DATA", FASHION)
    for split in (None, "train", "test"):
        with pytest.raises(fn.DatasetError, match="does not hold MNIST.*Fashion-MNIST's"):
            fn.load_mnist(split=split)
    assert main(["train", "--dataset", "mnist", "--epochs", "1", "--limit", "100"]) == 2
    assert "does not hold MNIST" in capsys.readouterr().err


def test_identity_check_uses_label_counts(tmp_path, monkeypatch):
    from fastnet.data import check_identity

    train, test = (np.repeat(np.arange(10), c) for c in fn.data._LABEL_COUNTS["mnist"])
    check_identity("mnist", tmp_path, {"train": train, "test": test})
    for labels in ({"train": train, "test": test}, {"test": test}, {"train": train}):
        with pytest.raises(fn.DatasetError, match="Fashion-MNIST.*MNIST's"):
            check_identity("fashion-mnist", tmp_path, labels)
    subsets = {"train": np.zeros(500, int), "test": np.zeros(100, int)}
    check_identity("mnist", tmp_path, subsets)  # subsets pass
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv("FASTNET_DATA", str(tmp_path))
    assert fn.data.data_dir_for("mnist", None) == tmp_path / "mnist"
    assert fn.data.data_dir_for("fashion-mnist", None) == tmp_path


# ---------------------------------------------------------------- item 12: files
@pytest.fixture
def small_model():
    X, y = blobs(60)
    model = fn.Sequential([fn.Dense(4)], backend="numpy", seed=0)
    model.fit(X, y, epochs=1, verbose=0)
    return model


def test_save_raises_os_errors(tmp_path, small_model):
    (tmp_path / "file").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="checkpoint path .* is a directory"):
        small_model.save(tmp_path / "adir")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        small_model.save(tmp_path / "file" / "m.npz")
    with pytest.raises(FileNotFoundError, match="is missing"):
        small_model.save(tmp_path / "nope" / "m.npz")
    with pytest.raises(ValueError, match="unknown checkpoint extension '.h5'"):
        small_model.save(tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_loading_a_non_model_file_says_what_it_is_not(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(fn.CheckpointError, match="not a fastnet checkpoint: neither an .npz"):
        fn.load_model(tmp_path / "data.csv")


def test_model_checkpoint_creates_folders_and_says_path_once(tmp_path, small_model):
    X, y = blobs(60)
    ckpt = fn.ModelCheckpoint(tmp_path / "runs" / "a" / "m-{epoch}.npz")
    small_model.fit(X, y, epochs=1, verbose=0, callbacks=[ckpt])
    assert (tmp_path / "runs" / "a" / "m-1.npz").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="ModelCheckpoint path '") as exc:
        small_model.fit(
            X, y, epochs=1, verbose=0, callbacks=[fn.ModelCheckpoint(tmp_path / "file" / "m.npz")]
        )
    assert str(exc.value).count("path") == 1


# ---------------------------------------------------------------- item 10: estimators as drop-ins
def _clf(**kw):
    params = dict(
        hidden_layer_sizes=(8,),
        max_iter=10,
        random_state=0,
        backend="numpy",
        learning_rate_init=0.1,
        n_iter_no_change=1000,
    )
    return fn.MLPClassifier(**{**params, **kw})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sample_weight_two_equals_a_repeated_row():
    X, y = blobs(40)
    X = X.astype(np.float64)
    w = np.ones(40)
    w[3] = 2.0
    Xr, yr = np.vstack([X, X[3:4]]), np.append(y, y[3])
    kw = dict(solver="sgd", dtype="float64", batch_size=1000, shuffle=False, alpha=1e-3)
    weighted = _clf(**kw).fit(X, y, sample_weight=w)
    repeated = _clf(**kw).fit(Xr, yr)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-10)
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-10)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sklearn_hyperparameters_are_honoured():
    X, y = blobs(60)
    sgd = _clf(solver="sgd", momentum=0.5, nesterovs_momentum=False).fit(X, y)
    opt = sgd.model_.optimizer
    assert isinstance(opt, fn.Momentum) and opt.momentum == 0.5 and not opt.nesterov
    assert isinstance(_clf(solver="sgd", momentum=0).fit(X, y).model_.optimizer, fn.SGD)
    adam = _clf(beta_1=0.8, beta_2=0.99, epsilon=1e-6).fit(X, y).model_.optimizer
    assert (adam.beta1, adam.beta2, adam.eps) == (0.8, 0.99, 1e-6)
    assert _clf(activation="logistic").fit(X, y).model_.layers[0].activation == "sigmoid"
    assert _clf(activation="identity").fit(X, y).model_.layers[0].activation is None
    inv = _clf(solver="sgd", learning_rate="invscaling", power_t=0.5, max_iter=3).fit(X, y)
    assert inv.model_.optimizer.lr == pytest.approx(0.1 / (2 * 60 + 1) ** 0.5)


def test_convergence_warning_at_max_iter():
    X, y = blobs(60)
    expected = fn.estimator.ConvergenceWarning
    if fn.estimator.HAVE_SKLEARN:
        from sklearn.exceptions import ConvergenceWarning

        assert expected is ConvergenceWarning
    with pytest.warns(expected, match=r"Maximum iterations \(2\)"):
        _clf(max_iter=2).fit(X, y)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"solver": "lbfgs"}, "solver='lbfgs' is not supported"),
        ({"learning_rate_init": -1.0}, "learning_rate_init must be"),
        ({"alpha": float("nan")}, "alpha must be"),
        ({"momentum": 1.5}, "momentum must be"),
        ({"learning_rate": "optimal"}, "learning_rate='optimal'"),
        ({"activation": "softplus"}, "activation='softplus'"),
    ],
)
def test_bad_hyperparameters_name_the_estimator_parameter(params, message):
    X, y = blobs(30)
    clf = _clf(**params)
    with pytest.raises(ValueError, match=message):
        clf.fit(X, y)
    assert not hasattr(clf, "model_")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_softmax_loss_over_one_output_is_refused(backend):
    """Dense(1) with the default loss and an (n, 1) column of labels trained with loss 0 and
    accuracy 1.0 and learned nothing (a softmax of one value is 1); the loss set on a built
    model the same."""
    if backend == "numba":
        pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)), rng.integers(0, 2, 40)
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(1)], backend=backend, seed=0)
    with pytest.raises(ValueError, match=r"over 1 output is always 0.*loss='bce'"):
        model.fit(X, y.reshape(-1, 1), epochs=1, verbose=0)
    assert not model.built
    binary = fn.Sequential([fn.Dense(1)], loss="bce", backend=backend, seed=0).build(4)
    with pytest.raises(ValueError, match=r"over 1 output is always 0"):
        binary.loss = "softmax_cross_entropy"
    assert isinstance(binary.loss, fn.SigmoidBinaryCrossEntropy)


def test_a_frame_fitted_is_read_by_its_column_names_later(tmp_path):
    """A model fitted on a DataFrame took reordered columns by position at evaluate, silently:
    fit now records the names (model.metadata['features'], saved) as the CLI does."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    y = (X[:, 0] > 0).astype(int)
    frame = pd.DataFrame(X, columns=list("abcd"))
    model = fn.Sequential([fn.Dense(8, "relu"), fn.Dense(2)], backend="numpy", seed=0)
    model.fit(frame, y, epochs=3, verbose=0)
    assert model.metadata["features"] == ["a", "b", "c", "d"]
    expected = model.predict_proba(frame)
    np.testing.assert_array_equal(model.predict_proba(frame[list("dcba")]), expected)
    model.save(tmp_path / "m.npz")
    loaded = fn.load_model(tmp_path / "m.npz", backend="numpy")
    np.testing.assert_array_equal(loaded.predict_proba(frame[list("cadb")]), expected)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['a'\]"):
        loaded.predict(frame.rename(columns={"a": "z"}))


def test_numpy_warnings_of_a_diverging_fit_are_fastnets_one_warning():
    """The numpy backend printed 'overflow encountered in matmul' and 'invalid value' from
    fastnet's internals before fastnet's own divergence warning."""
    import warnings

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)) * 100
    model = fn.Sequential([fn.Dense(16, "relu"), fn.Dense(1)], loss="mse", backend="numpy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.optimizer = fn.SGD(10.0)
        model.fit(X, X[:, :1] ** 3, epochs=3, verbose=0)
    messages = [str(w.message) for w in caught]
    assert messages and all("encountered in" not in m for m in messages), messages


def test_set_weights_says_what_is_wrong():
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0).build(2)
    weights = model.get_weights()
    weights[1] = np.array([0.0, np.nan, 0.0], np.float32)
    with pytest.raises(ValueError, match=r"weights\[1\] \(b of layer 0\).*got NaN or infinite"):
        model.set_weights(weights)
    weights[1] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"of shape \(3,\): got shape \(4,\)"):
        model.set_weights(weights)


def test_a_model_with_class_names_evaluates_labels_by_name():
    """A model that knows its classes (the CLI's, an estimator's) refused its own string
    labels at evaluate, advising an encoding that could differ from the training one."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 3))
    names = np.array(["bird", "cat", "dog"])
    codes = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model = fn.Sequential([fn.Dense(3)], backend="numpy", seed=0)
    model.fit(X, codes, epochs=2, verbose=0)
    model.metadata["classes"] = names.tolist()
    assert model.evaluate(X, names[codes]) == model.evaluate(X, codes)
    with pytest.raises(ValueError, match=r"label\(s\) \['fox'\] that the training data lacks"):
        model.evaluate(X, np.where(codes == 2, "fox", names[codes]))


def test_a_binary_model_reads_names_and_integer_labels_are_class_indices():
    """A two-class estimator's model (one sigmoid output) refused its own string labels; the
    model of labels 1..4 read the labels 1, 2, 3 as indices and refused 4 without saying
    why: labels that can only be class values are refused, naming the encoding."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 3))
    codes = (X[:, 0] > 0).astype(int)
    binary = fn.Sequential([fn.Dense(1)], loss="bce", backend="numpy", seed=0)
    binary.fit(X, codes, epochs=2, verbose=0)
    binary.metadata["classes"] = ["no", "yes"]
    names = np.array(["no", "yes"])[codes]
    assert binary.evaluate(X, names) == binary.evaluate(X, codes)
    assert binary.evaluate(X, list(names)) == binary.evaluate(X, codes)
    binary.metadata["classes"] = np.array(["no", "yes"])  # (as one keeps LabelEncoder's)
    assert binary.evaluate(X, names) == binary.evaluate(X, codes)
    binary.fit(X, codes, epochs=1, verbose=0)
    codes = codes + (X[:, 1] > 0) + (X[:, 2] > 0)
    model = fn.Sequential([fn.Dense(4)], backend="numpy", seed=0)
    model.fit(X, codes, epochs=2, verbose=0)
    model.metadata["classes"] = [1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.evaluate(X, codes)  # indices (0 is no class: no doubt)
    some = codes > 0  # 1..3: indices or classes? read as indices, with a warning
    with pytest.warns(
        UserWarning, match=r"read as class indices 0..3 .* are class labels, pass"
    ) as w:
        model.evaluate(X[some], codes[some])
    assert w[0].filename == __file__  # (the user's line)
    with pytest.raises(ValueError, match=r"classes'\] \[1, 2, 3, 4\]; a model takes class ind"):
        model.evaluate(X, codes + 1)
    model.metadata["classes"] = [0, 1, 2, 3]  # (indices and labels alike)
    model.evaluate(X, codes)


def test_label_encoding_takes_lists_and_pandas_series():
    """The encoding fit's error message recommends failed on a Series or a list."""
    pd = pytest.importorskip("pandas")
    from fastnet.tabular import LabelEncoding

    for labels in (
        ["b", "a", "b"],
        pd.Series(["b", "a", "b"]),
        pd.Series(list("bab"), dtype="category"),
    ):
        encoding, codes = LabelEncoding.fit(labels)
        assert encoding.classes.tolist() == ["a", "b"] and codes.tolist() == [1, 0, 1]
        assert encoding.encode(pd.Series(["a", "b"])).tolist() == [0, 1]


def test_names_kept_from_a_frame_serve_its_validation_frame_and_unique_names_only():
    """The first fit read its validation frame by position (the names were kept after it),
    and names equal as strings (1 and '1') or repeated were kept and misread later."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 4))
    y = (X[:, 0] > 0).astype(int)
    frame = pd.DataFrame(X, columns=list("abcd"))
    model = fn.Sequential([fn.Dense(2)], backend="numpy", seed=0)
    history = model.fit(
        frame, y, epochs=2, verbose=0, validation_data=(frame[list("dcba")], y), top_k=None
    )
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(frame, y)["loss"], rel=1e-6)
    for columns in ([1, "1", 2, 3], ["a", "a", "b", "c"]):
        clash = fn.Sequential([fn.Dense(2)], backend="numpy", seed=0)
        with pytest.warns(UserWarning, match="X has column names, but .* by position"):
            clash.fit(pd.DataFrame(X, columns=columns), y, epochs=1, verbose=0)
        assert "features" not in clash.metadata


def test_a_saved_softmax_model_of_one_output_still_loads():
    """Refused when built now, but a file an older fastnet wrote must load as it was."""
    model = fn.Sequential([fn.Dense(1)], loss="bce", backend="numpy", seed=0).build(3)
    config = {**model.get_config(), "loss": "softmax_cross_entropy"}
    assert fn.Sequential.from_config(config, backend="numpy").output_dim == 1


def test_a_users_seterr_choice_is_kept_in_training():
    """fastnet quiets NumPy's floating-point warnings in its steps only where they are at
    their default: np.seterr(over="raise") still raises from a diverging step."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)) * 100
    model = fn.Sequential([fn.Dense(16, "relu"), fn.Dense(1)], loss="mse", backend="numpy")
    model.optimizer = fn.SGD(10.0)
    with np.errstate(over="raise", invalid="raise"), pytest.raises(FloatingPointError):
        model.fit(X, X[:, :1] ** 3, epochs=3, verbose=0)


def test_notebook_and_torch_habits_get_hints():
    """A loss placed as the last layer, PyTorch's betas=, and a Keras-style one-output model
    trained with the default softmax loss on 0/1 labels name what to write instead."""
    with pytest.raises(TypeError, match=r"layers\[1\] is a SoftmaxCrossEntropy \(a loss goes as"):
        fn.Sequential([fn.Affine(3), fn.SoftmaxWithLoss()])
    with pytest.raises(TypeError, match=r"layers\[0\] is a str"):
        fn.Sequential(["relu"])
    with pytest.raises(TypeError, match=r"'betas': PyTorch's betas=\(b1, b2\) are beta1=b1"):
        fn.Adam(0.01, betas=(0.9, 0.99))
    with pytest.raises(TypeError, match=r"argument 'betas'$"):  # (RMSProp has no betas)
        fn.RMSProp(0.01, betas=(0.9, 0.99))
    X = np.random.default_rng(0).standard_normal((20, 3))
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(1)], backend="numpy")
    with pytest.raises(ValueError, match=r"always 1: two classes on one output are loss='bce'"):
        model.fit(X, np.arange(20) % 2, verbose=0)


def test_text_labels_for_a_sigmoid_loss_say_how_to_encode_them():
    """A binary classifier (loss 'bce') on "no"/"yes" labels: the error says how to map them
    to 0 and 1 (it said only that they must be numeric); a regression's says no more."""
    X = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    y = np.array(["no", "yes"])[(X[:, 0] > 0.5).astype(int)]
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(1)], loss="bce", backend="numpy")
    with pytest.raises(TypeError, match=r"y must be numeric.*as 0 and 1 first .*LabelEncoding"):
        model.fit(X, y, epochs=1, verbose=0)
    assert not model.built
    model = fn.Sequential([fn.Dense(4, "relu"), fn.Dense(1)], loss="mse", backend="numpy")
    with pytest.raises(TypeError, match=r"y must be numeric, got dtype <U3$"):
        model.fit(X, y, epochs=1, verbose=0)
