"""Images left on disk (data/disk.py): a folder or tfds dataset over `in_memory_mb` is read from the decoded cache
a batch at a time, with the same pixels, the same batches in the same order as in memory, per-worker shards that
read only their own rows, and memory that does not grow with the data."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_folders import make_classes
from tftrain.data.datasets import make_dataset
from tftrain.data.disk import DiskImages
from tftrain.data.folders import load_folder
from tftrain.errors import UserError


def on_disk(tmp_path, images: np.ndarray, rows: np.ndarray | None = None) -> DiskImages:
    path = tmp_path / "images.npy"
    np.save(path, images)
    rows = np.arange(len(images)) if rows is None else rows
    return DiskImages.of(np.load(path, mmap_mode="r"), rows)


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)


def test_disk_images_index_like_the_array(tmp_path, pixels):
    rows = np.array([1, 2, 3, 10, 11, 30, 49])  # a split: some rows of the file, sorted
    x, expected = on_disk(tmp_path, pixels, rows), pixels[rows]
    assert x.shape == expected.shape and len(x) == 7 and x.dtype == np.uint8 and x.ndim == 4
    np.testing.assert_array_equal(x[3], expected[3])
    np.testing.assert_array_equal(x[-1], expected[-1])
    np.testing.assert_array_equal(x[1:5], expected[1:5])  # consecutive rows of the file: one read
    np.testing.assert_array_equal(x[::-2], expected[::-2])
    np.testing.assert_array_equal(x[[6, 0, 0, 4]], expected[[6, 0, 0, 4]])  # any order, repeats
    np.testing.assert_array_equal(np.asarray(x), expected)
    np.testing.assert_array_equal(x.astype(np.float32), expected.astype(np.float32))
    np.testing.assert_array_equal(x.subset(np.array([2, 5]))[:], expected[[2, 5]])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(x))[:], expected)  # as a Ray worker gets it
    assert x[:0].shape == (0, 6, 5, 3)
    with pytest.raises(IndexError):
        x[7]


def test_a_truncated_cache_file_is_an_error_not_zeros(tmp_path, pixels):
    x = on_disk(tmp_path, pixels)
    with open(x.path, "r+b") as f:
        f.truncate(x.offset + 10 * x.row_bytes)
    with pytest.raises(OSError, match="ended early"):
        x[20]


@pytest.mark.parametrize("shard, drop", [((1, 0), False), ((2, 1), True), ((3, 0), False)])
def test_batches_from_disk_are_the_batches_from_memory(tmp_path, pixels, shard, drop):
    labels = np.arange(50) % 7
    rows = np.arange(3, 50)  # a split that is not the whole file
    x = on_disk(tmp_path, pixels, rows)
    for shuffle in (True, False):
        from_disk = make_dataset(x, labels[rows], 8, shuffle=shuffle, seed=5, shard=shard, drop_remainder=drop)
        in_memory = make_dataset(pixels[rows], labels[rows], 8, shuffle=shuffle, seed=5, shard=shard,
                                 drop_remainder=drop)  # fmt: skip
        assert from_disk.cardinality() == in_memory.cardinality()
        for _epoch in range(2):  # reshuffled each epoch, the same way
            pairs = list(zip(from_disk, in_memory, strict=True))
            assert pairs
            for (a, b), (c, d) in pairs:
                np.testing.assert_array_equal(a.numpy(), c.numpy())
                np.testing.assert_array_equal(b.numpy(), d.numpy())


def test_worker_shards_read_their_own_rows_and_cover_the_split(tmp_path, pixels):
    labels = np.arange(50)
    x = on_disk(tmp_path, pixels)
    seen = []
    for index in range(3):
        for images, ys in make_dataset(x, labels, 4, shuffle=True, seed=1, shard=(3, index)):
            np.testing.assert_array_equal(images.numpy(), pixels[ys.numpy()])
            assert all(y % 3 == index for y in ys.numpy())
            seen.extend(ys.numpy().tolist())
    assert sorted(seen) == list(range(50))


def test_a_folder_over_the_budget_stays_on_disk_with_the_same_splits(tmp_path, capsys):
    root = tmp_path / "data"
    make_classes(root, {"a": 12, "b": 9, "c": 10})
    cache = tmp_path / "cache"
    in_memory = load_folder(root, cache_dir=cache)
    streamed = load_folder(root, cache_dir=cache, in_memory_mb=0)
    assert "over in_memory_mb=0: reading them from the cache a batch at a time" in capsys.readouterr().err
    for split in ("train", "validation", "test"):
        memory_x, memory_y = getattr(in_memory, split)
        disk_x, disk_y = getattr(streamed, split)
        assert isinstance(disk_x, DiskImages) and isinstance(memory_x, np.ndarray)
        np.testing.assert_array_equal(disk_x[:], memory_x)
        np.testing.assert_array_equal(disk_y, memory_y)


def test_a_folder_over_the_budget_with_no_room_for_its_cache_is_refused_not_loaded(tmp_path, caplog):
    """Over in_memory_mb the images must stream from the cache file: when it cannot be written, one line says so
    (in memory they might not fit); under it, a warning and the images in memory, as before."""
    root = tmp_path / "data"
    make_classes(root, {"a": 6, "b": 6})
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    with pytest.raises(UserError, match=r"cannot write the image cache in .*; the 0\.0 MB of decoded images are "
                                        r"over in_memory_mb=0, so they train from that file; allowed: a cache folder"):
        load_folder(root, cache_dir=blocked, in_memory_mb=0)
    data = load_folder(root, cache_dir=blocked)
    assert isinstance(data.train[0], np.ndarray) and "keeping images in memory only" in caplog.text


def test_memory_does_not_grow_with_the_data(tmp_path):
    """An epoch over 393 MB of images on disk, in a process of its own: its peak memory grows by far less than
    the data (in memory, measured the same way, it grows by about three times the data; through a memory map, every page
    read stays resident)."""
    path = tmp_path / "big.npy"
    images = np.lib.format.open_memmap(path, "w+", np.uint8, (8000, 128, 128, 3))  # written here, not there
    for start in range(0, 8000, 500):
        images[start : start + 500] = np.random.default_rng(start).integers(0, 256, (500, 128, 128, 3), np.uint8)
    images.flush()
    del images
    script = textwrap.dedent(f"""
        import resource
        import numpy as np
        import tensorflow as tf
        from tftrain.data.datasets import make_dataset
        from tftrain.data.disk import DiskImages

        x = DiskImages.of(np.load({str(path)!r}, mmap_mode="r"), np.arange(8000))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        total = 0
        for batch, _ in make_dataset(x, np.zeros(8000, np.int32), 64, shuffle=True, seed=0):
            total += int(tf.reduce_sum(tf.cast(batch[:, 0, 0, 0], tf.int64)))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, total)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    grown, total = map(int, done.stdout.split()[-2:])
    assert total > 0  # every batch was read
    assert grown < 150e6, f"peak memory grew by {grown / 1e6:.0f} MB over an epoch of 393 MB of images"


def test_in_memory_mb_must_be_a_whole_number_of_at_least_zero():
    from tftrain.config import DataConfig

    with pytest.raises(UserError, match="invalid value for in_memory_mb: received -1; allowed: an integer >= 0"):
        DataConfig(in_memory_mb=-1)
