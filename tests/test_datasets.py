"""CIFAR binary files, the user's own data files, and larger-than-memory .npy training."""

import gc
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastnet as fn
from fastnet.cli import main
from fastnet.data import DatasetError
from fastnet.datasets import load_arrays, load_cifar, load_table, read_csv


def _write_cifar(folder, name, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        files, label_bytes, classes = [f"data_batch_{i}.bin" for i in range(1, 6)], 1, 10
        files.append("test_batch.bin")
    else:
        files, label_bytes, classes = ["train.bin", "test.bin"], 2, 100
    for f in files:
        labels = rng.integers(0, classes, (n, label_bytes)).astype(np.uint8)
        if name == "cifar100":
            labels[:, 0] = rng.integers(0, 20, n)
        pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        np.hstack([labels, pixels]).tofile(folder / f)
    return files


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_loader(tmp_path, name):
    _write_cifar(tmp_path / name, name)
    (X, y), (Xt, yt) = load_cifar(name, tmp_path / name)
    train_files = 5 if name == "cifar10" else 1
    assert X.shape == (20 * train_files, 3072) and Xt.shape == (20, 3072)
    assert X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    assert y.max() < (10 if name == "cifar10" else 100)
    raw = np.fromfile(
        tmp_path / name / ("test_batch.bin" if name == "cifar10" else "test.bin"), np.uint8
    ).reshape(20, -1)
    np.testing.assert_array_equal(yt, raw[:, 1 if name == "cifar100" else 0])
    if name == "cifar100":
        (_, coarse), _ = load_cifar(name, tmp_path / name, label="coarse")
        assert coarse.max() < 20
    for f in (tmp_path / name).glob("*"):
        if "test" not in f.name:
            f.unlink()
    X_only, y_only = load_cifar(name, tmp_path / name, split="test")
    np.testing.assert_array_equal(X_only, Xt)
    np.testing.assert_array_equal(y_only, yt)
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_cifar(name, tmp_path / name, split="train")


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="binary version"):
        load_cifar("cifar10", tmp_path)
    files = _write_cifar(tmp_path, "cifar10")
    with open(tmp_path / files[0], "ab") as f:
        f.write(b"\0" * 7)
    with pytest.raises(DatasetError, match="whole number"):
        load_cifar("cifar10", tmp_path)


def test_user_data_files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    y = rng.integers(0, 2, 50)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    with open(tmp_path / "t.csv", "w") as f:
        f.write("a,label,b,c\n")
        for row, label in zip(X, y):
            f.write(f"{row[0]},{'yes' if label else 'no'},{row[1]},{row[2]}\n")
    for args in (("d.npz",), ("X.npy", "y.npy"), ("t.csv", None, "label")):
        paths = [tmp_path / a if a else None for a in args[:2]]
        Xl, yl = load_arrays(*paths, *args[2:])
        np.testing.assert_allclose(Xl, X, rtol=1e-6)
        expected = np.where(y == 1, "yes", "no") if args[0] == "t.csv" else y
        np.testing.assert_array_equal(yl, expected)  # as stored: classes come from training
    assert isinstance(load_arrays(tmp_path / "X.npy", tmp_path / "y.npy")[0], np.memmap)
    np.savez(tmp_path / "y0.npz", X=X, y=np.array(5))
    np.savez(tmp_path / "objects.npz", X=X, y=np.array(["a"] * 50, object))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:200])
    whole = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "half.npz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "adir").mkdir()
    (tmp_path / "semi.csv").write_text("a;label;b\n1;yes;2\n")  # (European Excel's)
    for bad, match in (
        (("X.npy",), "labels"),
        (("t.csv", None, "nope"), "no column"),
        (("missing.npz",), "does not exist"),
        (("adir",), "'.*adir' is a directory, not a file"),
        (("semi.csv", None, "label"), r"one column, 'a;label;b', separated by ';': .* comma-"),
        (("y0.npz",), r"one label per row, got X \(50, 3\) and y \(\)"),
        (("X.npy", "d.npz"), "labels file .*d.npz': the labels of a .npy of features are a .npy"),
        (("X.npy", "t.csv"), "labels file .*t.csv'"),
        (("objects.npz",), r"Python objects \(strings\? save them with .astype\(str\)\)"),
        (("cut.npz",), "cut.npz is not a readable data file"),
        (("half.npz",), "half.npz is not a readable data file: .* no complete one"),
    ):
        with warnings.catch_warnings(record=True) as seen:  # (a file np.load left open)
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises((DatasetError, FileNotFoundError), match=match):
                load_arrays(*[tmp_path / a if a else None for a in bad[:2]], *bad[2:])
            gc.collect()
        assert not [w for w in seen if issubclass(w.category, ResourceWarning)], bad


def test_cli_trains_on_user_files(tmp_path, capsys):
    from fastnet.cli import main

    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "val.npz", X=X[:60], y=y[:60])
    rc = main(
        [
            "train",
            "--data",
            str(tmp_path / "train.npz"),
            "--val",
            str(tmp_path / "val.npz"),
            "--epochs",
            "5",
            "--layers",
            "8",
            "--quiet",
            "--backend",
            "numpy",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "train.npz" in out and "held-out accuracy" in out
    assert main(["train", "--data", str(tmp_path / "nope.npz")]) == 2


@pytest.mark.slow
def test_memory_mapped_npy_trains_with_bounded_memory(tmp_path):
    """A 78 MB uint8 .npy (313 MB once cast to float32) trains through the streamed source:
    peak memory grows by far less than the cast data set would take."""
    n, d = 100_000, 784
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.uint8, shape=(n, d))
    rng = np.random.default_rng(0)
    for lo in range(0, n, 10_000):
        X[lo : lo + 10_000] = rng.integers(0, 2, (10_000, d), dtype=np.uint8)
    X.flush()
    np.save(tmp_path / "y.npy", np.asarray(X[:, 0], dtype=np.int64))
    del X
    code = (
        "import resource, sys, numpy as np, fastnet as fn\n"
        "from fastnet.datasets import load_arrays\n"
        "X, y = load_arrays(sys.argv[1] + '/X.npy', sys.argv[1] + '/y.npy')\n"
        "m = fn.Sequential([fn.Dense(32, 'relu'), fn.Dense(2)], backend='numpy', seed=0)\n"
        "m.build(784)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "h = m.fit(X, y, epochs=1, batch_size=256, verbose=0)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(m.streamed, h['accuracy'][0], (after - before) // 1024)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    streamed, accuracy, grown_mib = run.stdout.split()
    assert streamed == "True" and float(accuracy) > 0.6, run.stderr  # it learns: y = X[:, 0]
    assert int(grown_mib) < 150, f"peak memory grew by {grown_mib} MiB"
    print(f"peak memory grew by {grown_mib} MiB")


def _csv(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_targets_that_all_hold_numbers_are_numbers(tmp_path):
    """As an .npz's would be: whole numbers integers ("3" and "3.0" one class), others floats."""
    rows = [f"{i * 0.1:.1f},{t}" for i, t in enumerate(["3", "3.0", "4", "5"])]
    y = load_arrays(_csv(tmp_path / "i.csv", "a,t", rows), target="t")[1]
    assert y.dtype == np.int64 and y.tolist() == [3, 3, 4, 5]
    rows = [f"{i},{t}" for i, t in enumerate(["0.25", "1", "-2.5", " 7"])]
    y = load_arrays(_csv(tmp_path / "f.csv", "a,t", rows), target="t")[1]
    assert y.dtype == np.float64 and y.tolist() == [0.25, 1, -2.5, 7]
    y = load_arrays(_csv(tmp_path / "s.csv", "a,t", ["1,7", "2,x"]), target="t")[1]
    assert y.dtype.kind == "U" and y.tolist() == ["7", "x"]
    rows = [f"{i},{t}" for i, t in enumerate(["001", "010", "100", "7", "007"])]
    y = load_arrays(_csv(tmp_path / "codes.csv", "a,t", rows), target="t")[1]
    assert y.tolist() == ["001", "010", "100", "7", "007"]  # (1, 10, 100, 7, 7 before)
    rows = [f"{i},{t}" for i, t in enumerate(["05", "6.25", "7"])]  # (a quantity: numbers)
    y = load_arrays(_csv(tmp_path / "q.csv", "a,t", rows), target="t")[1]
    assert y.dtype == np.float64 and y.tolist() == [5, 6.25, 7]


def test_csv_header_errors_name_the_file_and_columns(tmp_path):
    dup = _csv(tmp_path / "dup.csv", "a,b,a,d,label", ["1,2,3,4,x", "5,6,7,8,y"])
    with pytest.raises(DatasetError, match=r"dup\.csv: the header repeats .*\['a'\]"):
        load_arrays(dup, target="label")
    blank = _csv(tmp_path / "blank.csv", "a,,,label", ["1,2,3,x"])
    with pytest.raises(DatasetError, match=r"blank\.csv: 2 column\(s\) of the header have no name"):
        load_arrays(blank, target="label")
    empty = _csv(tmp_path / "head.csv", "a,b,label", [])
    with pytest.raises(DatasetError, match=r"head\.csv holds no data rows"):
        load_arrays(empty, target="label")


def test_a_csv_without_a_header_is_refused_not_read_a_row_short(tmp_path):
    """Its first row was taken as the header: predict printed a row fewer, shifted."""
    rows = ["0.5,1.5,2", "0.25,3,1", "1,2,0"]
    for header in (rows[0], "1"):
        bare = _csv(tmp_path / "bare.csv", header, rows[1:])
        with pytest.raises(DatasetError, match=r"bare\.csv: the first line, .* holds numbers"):
            load_arrays(bare, target="label")
    bare = _csv(tmp_path / "bare.csv", "0.5,1.5,dog", ["0.25,3,cat"])  # (a class label's row)
    with pytest.raises(DatasetError, match=r"no column 'label' .* lacks its header row"):
        load_arrays(bare, target="label")
    for header in ("weight,height,dog", "2019,2020,dog"):  # names, however numeric some are
        names = load_table(_csv(tmp_path / "n.csv", header, rows[1:]), target="dog")[2]
        assert names == header.split(",")[:2]
    years = _csv(tmp_path / "y.csv", "1990,2000,pop", ["0.1,0.2,0.3"])  # (predict: no names)
    assert load_table(years, need_target=False)[0].shape == (1, 3)
    semi = _csv(tmp_path / "semi.csv", "a;b", ["1;2"])  # (predict's message as train's)
    with pytest.raises(DatasetError, match=r"one column, 'a;b', separated by ';'"):
        load_table(semi, need_target=False, columns=["a", "b"])
    for first, message in [
        ("", "its first line is blank: delete it"),
        ("sep=,", "its first line is Excel's sep= line"),
    ]:
        odd = _csv(tmp_path / "odd.csv", first, ["a,b,label", *rows])
        with pytest.raises(DatasetError, match=message):
            load_arrays(odd, target="label")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match=r"empty\.csv is empty"):
        load_arrays(tmp_path / "empty.csv", target="label")
    for header, message in [
        ("a,b,label,", r"have no name \(a comma at the end of the line\?\)"),
        ("a,  ,label", r"1 column\(s\) of the header have no name"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_arrays(_csv(tmp_path / "h.csv", header, rows), target="label")
    X, _, names = load_table(_csv(tmp_path / "s.csv", "a, b , label", rows), target=" label")
    assert names == ["a", "b"]  # (spaced names trained as ' b ', then refused a clean file)
    model = fn.Sequential([fn.Dense(2)], backend="numpy", seed=0)
    model.metadata["features"] = names
    model.fit(X, np.array([2, 1, 0]) % 2, epochs=1, verbose=0)
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(tmp_path / "s.csv")  # (pandas keeps " b ")
    assert model.predict(frame[["a", " b "]]).shape == (3,)
    short = _csv(tmp_path / "short.csv", "a,b,label", ["1,2,0", "3,1"])  # (file lines, as
    with pytest.raises(DatasetError, match="short.csv: line 3 has 2 fields, the header 3"):
        load_arrays(short, target="label")  # the target's messages count them)
    gap = _csv(tmp_path / "gap.csv", "a,b,label", ["1,2,0", "  ", "3,x,1"])  # (a spaces line
    with pytest.raises(DatasetError, match=r"data row 1 \(0-based; line 4\), column 'b' holds"):
        load_arrays(gap, target="label")  # before it: row 1, column 'a' was named)
    spaced = _csv(tmp_path / "w.csv", "a,b,label", [*rows, "  ", "\t"])  # (spaces-only lines)
    assert load_arrays(spaced, target="label")[0].shape == (3, 2)
    years = _csv(tmp_path / "years.csv", "2019,2020,2021", rows)  # (named by the target)
    assert load_arrays(years, target="2021")[0].shape == (3, 2)
    one = _csv(tmp_path / "one.csv", "x", ["1.5", "  ", "2"])  # (one column: an empty cell)
    with pytest.raises(DatasetError, match="column 'x' is empty"):
        load_table(one, need_target=False)
    pandas_names = _csv(tmp_path / "named.csv", "0,1,2", rows)  # (a frame's default names)
    X, y = load_arrays(pandas_names, target="2")
    assert X.shape == (3, 2) and y.tolist() == [2, 1, 0]


def test_csv_missing_targets_name_the_file_column_and_lines(tmp_path):
    from fastnet.datasets import load_table

    rows = ["1,a", "2,", "3,b", "", "4, ", "5,b", "6,a"]  # line 5 is blank: lines 3 and 6
    path = _csv(tmp_path / "gaps.csv", "x,kind", rows)
    with pytest.raises(
        DatasetError, match=r"gaps\.csv: the target column 'kind' .* \[3, 6\]: drop or fill"
    ):
        load_arrays(path, target="kind")
    values = "1 2 nan 3 -inf Infinity".split()
    nan = _csv(tmp_path / "nan.csv", "x,y", [f"{i},{v}" for i, v in enumerate(values)])
    with pytest.raises(
        DatasetError, match=r"'y' is empty, NaN, infinite or a missing-value .* \[4, 6, 7\]"
    ):
        load_arrays(nan, target="y")
    X, y, names = load_table(path, None, "kind", need_target=False)  # predicting: no labels read
    assert y is None and names == ["x"] and X[:, 0].tolist() == [1, 2, 3, 4, 5, 6]


def test_csv_missing_value_markers_among_numbers_are_missing_targets(tmp_path, capsys):
    """An "NA" (R's and pandas's marker) among numeric targets made the column text: the CLI
    trained a classifier of one class per price, silently. Among text labels it is a class."""
    prices = [f"{i},{50 + i * 0.37:.2f}" for i in range(30)]
    prices[7], prices[20] = "7,NA", "20, null"
    path = _csv(tmp_path / "p.csv", "x,price", prices)
    with pytest.raises(DatasetError, match=r"'price' .* missing-value marker .* \[9, 22\]: drop"):
        load_arrays(path, target="price")
    assert main(["train", "--data", str(path), "--target", "price", "--epochs", "1"]) == 2
    assert "line(s) [9, 22]" in capsys.readouterr().err
    kinds = _csv(tmp_path / "k.csv", "x,kind", ["1,None", "2,Low", "3,NA"])
    assert load_arrays(kinds, target="kind")[1].tolist() == ["None", "Low", "NA"]


def test_csv_quoted_cells_stay_whole_with_a_line_break_anywhere(tmp_path):
    """With a quoted line break in the file, a quoted "1,5" was split in two features (the
    record was joined again unquoted); a header's quoted line break read as a data row."""
    comma = tmp_path / "c.csv"
    comma.write_text('a,b,label\n"1,5",2,"multi\nline"\n"3,25",4,y\n')
    with pytest.raises(
        DatasetError, match=r"data row 0 \(0-based; line 3\), column 'a' holds '1,5'"
    ):
        load_arrays(comma, target="label")
    comma.write_text('a,b,label\n"1.5",2,"multi\nline"\n"3.25",4,"y"\n')
    assert load_arrays(comma, target="label")[0].tolist() == [[1.5, 2], [3.25, 4]]
    header = tmp_path / "h.csv"
    header.write_text('"a\nb",c,label\n1,2,x\n3,4,y\n')
    X, y, names = read_csv(header, "label")
    assert X.tolist() == [[1, 2], [3, 4]] and names == ["a\nb", "c"] and y.tolist() == ["x", "y"]


def test_csv_sign_labels_are_classes(tmp_path):
    path = _csv(tmp_path / "signs.csv", "a,b,class", ["1,2,+", "3,4,-", "5,6,+"])
    assert load_arrays(path, target="class")[1].tolist() == ["+", "-", "+"]


def test_csv_rows_keep_their_features(tmp_path):
    """A ``#`` is data and a quoted line break stays in its field: each row keeps its own
    features (NumPy's parser once read both as line structure and broadcast another row)."""
    quoted = tmp_path / "q.csv"
    quoted.write_text('a,b,y\n1,2,"two\nlines"\n3,4,z\n5,6,"x,y"\n')
    X, y = load_arrays(quoted, target="y")
    assert X.tolist() == [[1, 2], [3, 4], [5, 6]] and y.tolist() == ["two\nlines", "z", "x,y"]
    rows = [f"c{i},{i},{i}" for i in range(9)] + ["#tag,9,9", "C#,10,10", "z,11,11"]
    X, y, _ = read_csv(_csv(tmp_path / "h.csv", "y,a,b", rows), "y", chunk_rows=4)
    assert X[:, 0].tolist() == list(range(12)) and y[-3:].tolist() == ["#tag", "C#", "z"]


def test_labels_from_text_match_the_same_labels_from_arrays():
    """Train on an .npz's labels, read the test file's as text (a CSV): the same classes.
    Integer IDs past 2**53 stay distinct; booleans read as True/False or 1/0."""
    from fastnet.tabular import LabelEncoding, as_labels

    ids = [2**60, 2**60 + 1, 9007199254740993]
    assert as_labels(np.array([str(i) for i in ids])).tolist() == ids
    assert as_labels(np.array([" 3", "+4", "-5", "3.0"])).tolist() == [3, 4, -5, 3]
    assert as_labels(np.array(["1" * 25, "+1"])).tolist() == ["1" * 25, "1"]  # past int64: text
    encoding, _ = LabelEncoding.fit(np.array(ids))
    assert encoding.encode(np.array([str(i) for i in ids[::-1]])).tolist() == [0, 2, 1]
    encoding, _ = LabelEncoding.fit(np.array([False, True]))
    assert encoding.encode(np.array(["False", " true", "1", "0"])).tolist() == [0, 1, 1, 0]
    encoding, _ = LabelEncoding.fit(np.array([1, 2]))
    with pytest.raises(DatasetError, match=r"label\(s\) \['x'\] that the training data lacks"):
        encoding.encode(np.array(["1", "2", "x"]))


def test_csv_feature_errors_name_the_data_row_and_column(tmp_path):
    """Past the first parse chunk too; an empty cell (pandas's NaN) is said to be missing."""
    rows = [f"{i},{i + 1},c{i % 2}" for i in range(10)]
    rows[7] = "7,,c1"
    with pytest.raises(
        DatasetError, match=r"data row 7 \(0-based; line 9\), column 'b' is empty: fill"
    ):
        read_csv(_csv(tmp_path / "e.csv", "a,b,t", rows), "t", chunk_rows=4)
    quoted = tmp_path / "q.csv"  # a quoted line break elsewhere, one feature column
    quoted.write_text('a,note,y\n1,"x\ny",0\n,"z",1\n3,"q",0\n')
    with pytest.raises(DatasetError, match=r"data row 1 \(0-based; line 4\), column 'a' is empty"):
        read_csv(quoted, "y", columns=["a"])
    rows[7] = "7,oops,c1"
    with pytest.raises(
        DatasetError, match=r"data row 7 \(0-based; line 9\), column 'b' holds 'oops'"
    ):
        read_csv(_csv(tmp_path / "t.csv", "a,b,t", rows), "t", chunk_rows=4)


def test_corrupt_files_and_odd_dtypes_name_the_file(tmp_path):
    X, y = np.zeros((4, 2), np.float32), np.arange(4) % 2
    _csv(tmp_path / "long.csv", "a,t", ["1,x", "2," + "y" * 2**17 + "1"])
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',}")
    (tmp_path / "junk.npz").write_bytes(b"abcde")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "nan.npy", np.where(y, np.nan, 1.0))
    np.savez(tmp_path / "cy.npz", X=X, y=y.astype(complex))
    np.savez(tmp_path / "when.npz", X=X.astype("datetime64[s]"), y=y)
    np.savez(tmp_path / "none.npz", X=X[:, :0], y=y)
    for bad, match in (
        (("long.csv", None, "t"), r"long.csv: line 3: field larger than field limit"),
        (("bad.npy", "X.npy"), r"bad.npy is not a readable data file: TokenError"),
        (("X.npy", "bad.npy"), r"bad.npy' is not a readable .npy: TokenError"),
        (("junk.npz",), r"junk.npz is not a readable data file: neither a .npy nor a .npz"),
        (("X.npy", "nan.npy"), r"nan.npy: labels hold 2 NaN"),
        (("cy.npz",), r"cy.npz: labels must be integers, floats, bools or strings, got complex"),
        (("when.npz",), r"when.npz: features must be .* numbers, got datetime64"),
        (("none.npz",), r"none.npz: features must be one or more columns"),
    ):
        with pytest.raises(DatasetError, match=match):
            load_arrays(*[tmp_path / a if a else None for a in bad[:2]], *bad[2:])
    with pytest.raises(ValueError, match=r"labels= applies only to a .npy file, not to .*cy.npz"):
        load_arrays(tmp_path / "cy.npz", labels=tmp_path / "X.npy")
    with pytest.raises(ValueError, match=r"target= applies only to a .csv file"):
        load_arrays(tmp_path / "cy.npz", target="y")
    with pytest.raises(ValueError, match="label='coarse' is CIFAR-100's"):
        load_cifar("cifar10", tmp_path, label="coarse")


def test_csv_integer_labels_past_int64_stay_distinct(tmp_path):
    big = ["9223372036854775807", "9223372036854775808", "+9223372036854775809", "9" * 23]
    rows = [f"{i},{v}" for i, v in enumerate(big)]
    y = load_arrays(_csv(tmp_path / "ids.csv", "a,t", rows), target="t")[1]
    assert y.tolist() == [str(int(v)) for v in big]


def test_python_m_fastnet_runs_the_cli_and_exits_with_its_code(monkeypatch, tmp_path):
    import runpy

    monkeypatch.setattr(sys, "argv", ["fastnet", "train", "--data", str(tmp_path / "no.npz")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("fastnet", run_name="__main__")
    assert exit_.value.code == 2


def test_an_npz_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    """A compressed .npz expanding past the memory was read (a 2 MB file: 4.7 GB resident,
    then NumPy's MemoryError as a traceback); the CLI says 'out of memory' in one line."""
    import fastnet.datasets as datasets

    path = tmp_path / "z.npz"
    np.savez_compressed(path, X=np.zeros((2000, 1000), np.float32), y=np.zeros(2000))
    real = os.sysconf
    pages = {"SC_PHYS_PAGES": 2**20 // real("SC_PAGE_SIZE")}  # a machine of 1 MiB
    monkeypatch.setattr(datasets.os, "sysconf", lambda name: pages.get(name) or real(name))
    with pytest.raises(DatasetError, match=r"z.npz expands to 0.0 GiB, over half this machine's"):
        load_arrays(path)
    monkeypatch.undo()
    np.savez(tmp_path / "s.npz", X=np.zeros((20, 3), np.float32), y=np.arange(20) % 2)

    def build(self, *args, **kwargs):  # (as --layers 400000000000 does: no real attempt, which
        raise MemoryError("Unable to allocate 4.37 TiB")  # an overcommitting kernel may allow)

    monkeypatch.setattr(fn.Sequential, "build", build)
    argv = ["train", "--data", str(tmp_path / "s.npz"), "--epochs", "1", "--backend", "numpy"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fastnet train: error: out of memory: Unable to allocate 4.37 TiB" in err


def test_bytes_labels_and_a_features_file_given_as_labels(tmp_path, capsys):
    """Labels of bytes are UTF-8 text (b"\\xc3\\xa9" is "é"; invalid bytes named, not NumPy's
    'ascii' codec error); --labels naming the features' own .npy trained a regression of X on
    X; a config's initializer given by name loads."""
    from fastnet.initializers import initializer_from_config

    X = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    np.savez(tmp_path / "u.npz", X=X, y=np.array(["é".encode(), b"a"] * 20))
    np.savez(tmp_path / "b.npz", X=X, y=np.array([b"\xff\xfe", b"a"] * 20))
    np.save(tmp_path / "X.npy", X)
    tiny = ["--epochs", "1", "--backend", "numpy", "--quiet"]
    assert main(["train", "--data", str(tmp_path / "u.npz"), *tiny]) == 0
    assert "é" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "b.npz"), *tiny]) == 2
    assert "b.npz holds bytes that are not UTF-8 text" in capsys.readouterr().err
    features = str(tmp_path / "X.npy")
    assert main(["train", "--data", features, "--labels", features, *tiny]) == 2
    assert "--labels '" in capsys.readouterr().err
    np.save(tmp_path / "y.npy", np.arange(40) % 2)
    ckpt = str(tmp_path / "m.npz")
    labels = ["--labels", str(tmp_path / "y.npy")]
    assert main(["train", "--data", features, *labels, *tiny, "--save", ckpt]) == 0
    capsys.readouterr()
    assert main(["evaluate", ckpt, "--data", features, "--labels", features]) == 2
    assert "is the features' file" in capsys.readouterr().err  # (it scored X against X)
    assert repr(initializer_from_config("he")) == "He()"


def test_a_memory_mapped_file_too_large_to_shuffle_validates_on_its_last_rows(
    tmp_path, monkeypatch, capsys
):
    """A .npy over a quarter of the memory is not copied for a shuffled split: its last rows
    validate (a warning says so), refused where they hold a class the rest lacks."""
    import fastnet.datasets as datasets

    X = np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.arange(100) % 2)
    np.save(tmp_path / "z.npy", np.r_[np.zeros(90, int), np.ones(10, int)])
    monkeypatch.setattr(datasets, "physical_memory", lambda: 4 * X.nbytes - 4)
    argv = ["train", "--data", str(tmp_path / "X.npy"), "--epochs", "1", "--backend", "numpy"]
    assert main([*argv, "--labels", str(tmp_path / "y.npy"), "--val-fraction", "0.2"]) == 0
    out, err = capsys.readouterr()
    assert "validating on the last 20 rows of" in err and "give --val to choose them" in err
    assert main([*argv, "--labels", str(tmp_path / "z.npy"), "--val-fraction", "0.1"]) == 2
    assert "its last rows hold classes the rest lacks: give a validation file" in (
        capsys.readouterr().err
    )
    monkeypatch.undo()
    assert main([*argv, "--labels", str(tmp_path / "y.npy")]) == 0
    assert "validating on the last" not in capsys.readouterr().err


def test_array_files_a_newcomer_writes_get_errors_that_say_the_fix(tmp_path, capsys):
    """An .npz of other names listed its needs only, an object or empty .npy gave NumPy's
    words, images were not told to be flattened, predict's NaN named no file."""
    np.savez(tmp_path / "lower.npz", x=np.ones((4, 2)), y=np.arange(4))
    with pytest.raises(DatasetError, match=r"lacks array\(s\) \['X'\]: it holds \['x', 'y'\]"):
        load_arrays(tmp_path / "lower.npz")
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "y.npy", np.arange(3))
    np.save(tmp_path / "img.npy", np.zeros((3, 4, 4)))
    for name, message in [
        ("obj.npy", "it holds Python objects"),
        ("empty.npy", "it is empty or cut short"),
        ("img.npy", r"flatten images first, X.reshape\(len\(X\), -1\)"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_arrays(tmp_path / name, labels=tmp_path / "y.npy")
    X = np.ones((6, 2), np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(6) % 2)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--layers", "4",
                 "--backend", "numpy", "--quiet", "--save", str(model)]) == 0  # fmt: skip
    X[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", X)  # (memory-mapped: checked as predict reads it)
    capsys.readouterr()
    assert main(["predict", str(model), "--data", str(tmp_path / "nan.npy")]) == 2
    assert "nan.npy: X contains NaN" in capsys.readouterr().err


def test_numba_trains_a_memory_mapped_npy_with_its_fused_step(tmp_path):
    """A memory map's streamed batches ran eager steps, and compiled=True was refused with a
    message about the GPU; the fused step takes host batches."""
    from fastnet.backends import probe

    if not probe("numba").available:
        pytest.skip("numba unavailable")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    models = []
    for data in (X, mapped):
        model = fn.Sequential([fn.Dense(16, "relu"), fn.Dense(3)], backend="numba", seed=0)
        model.fit(data, y, epochs=2, batch_size=32, verbose=0, compiled=True)
        assert model.step_description.startswith("numba fused step"), model.step_description
        models.append(model)
    np.testing.assert_array_equal(models[1].predict_raw(X), models[0].predict_raw(X))


def test_csv_labels_differing_only_in_spaces_are_one_class_and_said(tmp_path):
    """ " yes" and "yes" in one target column are one class (spaces stripped, as a space after
    each comma puts them), with a warning naming both; consistent spacing and numbers say
    nothing (pandas keeps " yes" apart)."""
    import warnings

    mixed = _csv(tmp_path / "m.csv", "a,t", ["1,yes", '2," yes"', "3,no", "4, no ", "5,no"])
    with pytest.warns(UserWarning, match=r"m\.csv: .*'t'.*\[' yes', 'yes'\] as 'yes'; \[' no ',"):
        assert load_arrays(mixed, target="t")[1].tolist() == ["yes", "yes", "no", "no", "no"]
    codes = _csv(tmp_path / "k.csv", "a,t", ["1,1", "2, 1", "3,a", "4,a"])  # (a text column)
    with pytest.warns(UserWarning, match=r"\[' 1', '1'\] as '1'"):
        assert load_arrays(codes, target="t")[1].tolist() == ["1", "1", "a", "a"]
    for rows in (["1, yes", "2, no", "3, yes"], ["1, 3", "2,3", "3, 4"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_arrays(_csv(tmp_path / "c.csv", "a,t", rows), target="t")
