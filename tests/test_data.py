import gzip
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_images, write_dataset, write_idx
from tftrain.data import datasets as data
from tftrain.data.datasets import load_dataset, make_dataset, read_idx, split_validation
from tftrain.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_idx_round_trip(tmp_path):
    images, _ = tiny_images(7, seed=0)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", 3), images)


def test_uncompressed_idx_is_read_too(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "y.gz", labels)
    (tmp_path / "y").write_bytes(gzip.decompress((tmp_path / "y.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "y", 1), labels)


def test_wrong_magic_number_names_the_file(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + b"\x00" * 100)  # type 0x0d is float32, not uint8
    with pytest.raises(UserError, match=r"corrupt data file .*bad.gz: magic number 00000d03"):
        read_idx(path, 3)


def test_size_mismatch_names_the_file(tmp_path):
    images, _ = tiny_images(4, seed=0)
    write_idx(tmp_path / "x.gz", images)
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(UserError, match=r"short.gz: header says shape \(4, 28, 28\) \(3136 bytes\), body has 3036"):
        read_idx(tmp_path / "short.gz", 3)


def test_truncated_gzip_names_the_file(tmp_path):
    images, _ = tiny_images(50, seed=0)
    write_idx(tmp_path / "x.gz", images)
    blob = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match=r"cannot read data file .*cut.gz"):
        read_idx(tmp_path / "cut.gz", 3)


def test_folder_missing_files_lists_them(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="lacks t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_label_count_and_range_are_checked(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(UserError, match="3 labels for 200 images"):
        load_dataset("fashion_mnist", str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(200, 12, np.uint8))
    with pytest.raises(UserError, match=r"label 12 outside 0..9"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_data_dir_wins_over_known_copies(tiny_data):
    ds = load_dataset("fashion_mnist", str(tiny_data))
    assert ds.source == str(tiny_data)
    assert ds.x_train.shape == (640, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.y_test.shape == (200,)


def test_nothing_found_lists_everything_tried(tmp_path, monkeypatch):
    monkeypatch.setitem(data.KNOWN_DIRS, "fashion_mnist", (str(tmp_path / "not-here"),))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(data, "_from_keras", _offline_keras)
    with pytest.raises(UserError) as info:
        load_dataset("fashion_mnist")
    message = str(info.value)
    assert f"{tmp_path / 'not-here'} (absent)" in message
    assert str(tmp_path / "keras-home" / "datasets/fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message


def _offline_keras(name):
    raise OSError("URL fetch failure: Name or service not known")


def test_real_fashion_mnist_from_debian():
    ds = load_dataset("fashion_mnist")
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_validation_is_the_last_fraction_like_keras():
    x, y = np.arange(100).reshape(100, 1), np.arange(100)
    (x_tr, y_tr), (x_val, y_val) = split_validation(x, y, 0.2)
    assert y_tr.tolist() == list(range(80)) and y_val.tolist() == list(range(80, 100))


def test_validation_split_that_leaves_nothing_is_refused():
    with pytest.raises(UserError, match="validation_split"):
        split_validation(np.zeros((3, 1)), np.zeros(3), 0.1)


def test_pipeline_batches_float_images_and_shuffles_reproducibly():
    x, y = tiny_images(100, seed=3)
    first = [b.numpy() for _, b in make_dataset(x, y, 32, shuffle=True, seed=5)]
    again = [b.numpy() for _, b in make_dataset(x, y, 32, shuffle=True, seed=5)]
    images, labels = next(iter(make_dataset(x, y, 32, shuffle=False)))
    assert images.dtype.name == "uint8" and images.shape == (32, 28, 28)  # raw pixels: the model scales them
    assert labels.dtype.name == "int32"
    assert labels.numpy().tolist() == y[:32].tolist()
    assert [len(b) for b in first] == [32, 32, 32, 4]
    assert np.array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), y)


def test_pipeline_keeps_each_image_with_its_label_once_per_epoch_and_shards_split_the_examples():
    x, y = tiny_images(100, seed=3)
    x = x.copy()
    x[:, 0, 0] = np.arange(100)  # each image carries its own index
    y = np.arange(100, dtype=np.uint8)
    ds = make_dataset(x, y, 16, shuffle=True, seed=1)
    orders = []
    for _ in range(2):  # two epochs, each a fresh order
        batches = list(ds)
        ids = np.concatenate([images.numpy()[:, 0, 0] for images, _ in batches]).astype(int)
        labels = np.concatenate([labels.numpy() for _, labels in batches])
        assert ids.tolist() == labels.tolist() and sorted(ids.tolist()) == list(range(100))
        orders.append(ids.tolist())
    assert orders[0] != orders[1]
    shards = [
        np.concatenate([lab.numpy() for _, lab in make_dataset(x, y, 8, shuffle=True, shard=(2, i))]) for i in (0, 1)
    ]
    assert sorted(np.concatenate(shards).tolist()) == list(range(100)) and len(shards[0]) == 50
