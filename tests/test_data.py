import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnet as fn
from fastnet.data import FASHION_MNIST_DIR, DatasetError, minibatches, read_idx, train_val_split


def write_idx(path, array, code=0x08, gz=False):
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_dataset(folder, n_train=50, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            gz=gz,
        )
        write_idx(
            folder / f"{split}-labels-idx1-ubyte{suffix}",
            rng.integers(0, 10, n, dtype=np.uint8),
            gz=gz,
        )


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
    gz=st.booleans(),
)
def test_idx_roundtrip_property(tmp_path_factory, shape, code, gz):
    dtype = {
        0x08: np.uint8,
        0x09: np.int8,
        0x0B: np.int16,
        0x0C: np.int32,
        0x0D: np.float32,
        0x0E: np.float64,
    }[code]
    arr = (np.arange(np.prod(shape)) % 100).astype(dtype).reshape(shape)
    path = write_idx(tmp_path_factory.mktemp("idx") / "a.idx", arr, code, gz)
    out = read_idx(path)
    assert out.shape == tuple(shape)
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=64))
def test_idx_reader_never_crashes_on_garbage(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("idx") / "g.idx"
    path.write_bytes(blob)
    try:
        read_idx(path)
    except DatasetError:
        pass


def test_a_split_loads_from_its_own_two_files(tmp_path):
    make_dataset(tmp_path, n_train=30, n_test=12)
    (X, y), (Xt, yt) = fn.load_fashion_mnist(tmp_path)
    for f in tmp_path.glob("train-*"):
        f.unlink()
    X_only, y_only = fn.load_fashion_mnist(tmp_path, split="test", one_hot_label=True)
    np.testing.assert_array_equal(X_only, Xt)
    np.testing.assert_array_equal(y_only, fn.one_hot(yt, 10))
    with pytest.raises(FileNotFoundError, match="train-images"):
        fn.load_mnist(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match="train-images"):
        fn.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="split must be None, 'train' or 'test', got 'val'"):
        fn.load_mnist(tmp_path, split="val")


def test_idx_errors(tmp_path):
    arr = np.zeros((4, 3), np.uint8)
    good = write_idx(tmp_path / "a", arr).read_bytes()
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(DatasetError, match="bad IDX magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "trunc").write_bytes(good[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(DatasetError, match="decompress"):
        read_idx(tmp_path / "gz")
    huge = struct.pack(">HBB4I", 0, 0x08, 4, *[65536] * 4)  # 2**64 bytes: an int64 wraps to 0
    (tmp_path / "huge").write_bytes(huge)
    with pytest.raises(DatasetError, match=r"declares shape \(65536, 65536, 65536, 65536\)"):
        read_idx(tmp_path / "huge")


def test_idx_pairs_are_checked(tmp_path):
    from fastnet.data import load_idx_pair

    images = write_idx(tmp_path / "i", np.zeros((3, 2, 2), np.uint8))
    labels = write_idx(tmp_path / "f", np.array([0.5, 1, np.nan], ">f4"), code=0x0D)
    with pytest.raises(DatasetError, match="labels must be integers >= 0, got float32"):
        load_idx_pair(images, labels)
    labels = write_idx(tmp_path / "n", np.array([0, -1, 2], np.int8), code=0x09)
    with pytest.raises(DatasetError, match="integers >= 0, got int8, the lowest -1"):
        load_idx_pair(images, labels)
    wide = write_idx(tmp_path / "w", np.full((3, 2, 2), 10**6, ">i4"), code=0x0C)
    with pytest.raises(DatasetError, match="normalize divides by 255.*got int32"):
        load_idx_pair(wide, write_idx(tmp_path / "y", np.zeros(3, np.uint8)))
    assert load_idx_pair(wide, tmp_path / "y", normalize=False)[0].max() == 10**6
    empty = write_idx(tmp_path / "e", np.zeros((0, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="holds no images"):
        load_idx_pair(empty, write_idx(tmp_path / "ey", np.zeros(0, np.uint8)))


def test_loader_on_generated_files_and_count_mismatch(tmp_path):
    make_dataset(tmp_path)
    (X, y), (Xt, yt) = fn.load_mnist(tmp_path)
    assert X.shape == (50, 784) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    assert y.dtype == np.int64 and Xt.shape == (20, 784)
    (_, T), (_, Tt) = fn.load_mnist(tmp_path, one_hot_label=True)  # the notebooks' keyword
    np.testing.assert_array_equal(T, fn.one_hot(y, 10))
    np.testing.assert_array_equal(Tt, fn.one_hot(yt, 10))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((20, 14, 56), np.uint8), gz=True)
    with pytest.raises(DatasetError, match=r"t10k-images.*: images of \(14, 56\), not MNIST's 28x"):
        fn.load_mnist(tmp_path, flatten=True)  # (784 pixels too: train and test must agree)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(49, np.uint8), gz=True)
    with pytest.raises(DatasetError, match="50 images but .* 49 labels"):
        fn.load_mnist(tmp_path)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTNET_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fn.load_fashion_mnist(tmp_path)
    monkeypatch.setenv("FASTNET_DATA", str(tmp_path))
    make_dataset(tmp_path, gz=False)
    (X, _), _ = fn.load_fashion_mnist()
    assert len(X) == 50


def test_one_hot_split_minibatches():
    y = np.array([0, 2, 1, 2])
    np.testing.assert_array_equal(fn.one_hot(y, 3).argmax(1), y)
    np.testing.assert_array_equal(fn.one_hot(y[:, None], 3), fn.one_hot(y, 3))  # (a column)
    with pytest.raises(ValueError, match=r"labels must be 1-D integers, got shape \(4, 2\)"):
        fn.one_hot(np.stack([y, y], 1))
    with pytest.raises(ValueError, match="labels must be in"):
        fn.one_hot(y, 2)
    X = np.arange(200).reshape(100, 2).astype(np.float32)
    labels = np.arange(100) % 4
    (Xa, ya), (Xb, yb) = train_val_split(X, labels, 0.2, seed=0)
    assert len(Xb) == 20 and set(np.bincount(yb)) == {5}
    assert not set(Xa[:, 0]) & set(Xb[:, 0])
    batches = list(minibatches(X, labels, 32, seed=1))
    assert [len(b[0]) for b in batches] == [32, 32, 32, 4]
    assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == sorted(labels.tolist())


HAVE_FASHION = os.path.exists(
    os.path.join(os.environ.get("FASTNET_DATA") or FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="dataset-fashion-mnist is not installed")
def test_end_to_end_real_fashion_mnist(backend):
    (X, y), (Xt, yt) = fn.load_fashion_mnist()
    assert (
        X.shape == (60000, 784) and Xt.shape == (10000, 784) and set(np.unique(y)) == set(range(10))
    )
    model = fn.Sequential(
        [fn.Dense(256, "relu"), fn.Dense(128, "relu"), fn.Dense(10)],
        optimizer=fn.Adam(1e-3),
        backend=backend,
        seed=0,
    )
    model.fit(X[:10000], y[:10000], epochs=1, batch_size=128, verbose=0)
    assert model.evaluate(Xt, yt)["accuracy"] > 0.75


def test_idx_gz_is_decompressed_no_further_than_its_header_declares(tmp_path):
    import tracemalloc

    bomb = tmp_path / "bomb.gz"  # 32 MiB of zeros behind a header declaring one byte
    bomb.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 0x08, 1, 1) + bytes(2**25), 1))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"bomb.gz: .*shape \(1,\) .* holds more than 1 b"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**22
    with pytest.raises(DatasetError, match="is a directory, not an IDX file"):
        read_idx(tmp_path)


@pytest.mark.parametrize("label", [200, 2**31 - 1])
def test_mnist_labels_past_9_name_the_file(tmp_path, label):
    make_dataset(tmp_path)
    labels = np.r_[np.zeros(49), label].astype(">i4")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, code=0x0C, gz=True)
    for load in (fn.load_mnist, fn.load_fashion_mnist):
        with pytest.raises(DatasetError, match=rf"train-labels-idx1-ubyte.gz: label {label} is"):
            load(tmp_path, one_hot_label=True)


def test_a_cli_model_of_a_built_in_set_records_its_task_and_classes(tmp_path, capsys):
    """`fastnet export` of a model trained on Fashion-MNIST wrote no task or classes into the
    ONNX metadata (a model of your own file had both): the class indices are its labels."""
    from fastnet.cli import main

    make_dataset(tmp_path)
    ckpt = str(tmp_path / "m.npz")
    argv = ["train", "--data-dir", str(tmp_path), "--epochs", "1", "--backend", "numpy"]
    assert main([*argv, "--quiet", "--save", ckpt]) == 0
    extra = fn.load_model(ckpt, backend="numpy").metadata
    assert extra["task"] == "classification" and extra["classes"] == list(range(10))
    assert main(["evaluate", ckpt, "--data-dir", str(tmp_path)]) == 0
