"""Image folders (folders.py): layouts, auto size and channels, seedless stratified splits, bad files, the cache.

Real image files written with Pillow into tmp_path. Most images are solid gray with a unique value (their id),
so every decoded row says which file it came from, whatever split it landed in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tftrain.data.folders import load_folder
from tftrain.data.layout import scan
from tftrain.errors import UserError


def save(path: Path, value: int = 0, size: tuple[int, int] = (8, 6), colour: bool = False) -> Path:
    """A solid image of `size` (height, width): gray `value`, or the colour (value, 255 - value, 7)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    pixels = np.full((height, width, 3), (value, 255 - value, 7)) if colour else np.full((height, width), value)
    Image.fromarray(pixels.astype(np.uint8), "RGB" if colour else "L").save(path)
    return path


def make_classes(root: Path, counts: dict[str, int], first_id: int = 0, suffix: str = ".png") -> int:
    """counts[class] gray PNGs under root/<class>/, with ids (pixel values) from first_id on; the next id."""
    for name, count in counts.items():
        for i in range(count):
            save(root / name / f"{i:03d}{suffix}", first_id)
            first_id += 1
    return first_id


def ids(split: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int]]:
    """(file id, label) of every image in a split: which file landed where."""
    images, labels = split
    return sorted(zip(images[:, 0, 0].tolist(), labels.tolist(), strict=True))


def load(root: Path, tmp_path: Path, **kwargs):
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return load_folder(root, progress=True, **kwargs)


# ---------------------------------------------------------------- layouts and splits


def test_flat_layout_splits_each_class_without_overlap(tmp_path):
    make_classes(tmp_path / "data", {"ant": 20, "bee": 20, "cat": 10})
    f = load(tmp_path / "data", tmp_path)
    assert f.class_names == ("ant", "bee", "cat")
    assert f.source == f"image folder {tmp_path / 'data'} (50 files)"
    train, validation, test = ids(f.train), ids(f.validation), ids(f.test)
    assert len(train) + len(validation) + len(test) == 50
    assert set(train).isdisjoint(validation) and set(train).isdisjoint(test) and set(validation).isdisjoint(test)
    # per class: round(0.1 n) (at least 1) to test, then round(0.2 of the rest) to validation
    assert np.bincount(f.test[1]).tolist() == [2, 2, 1]
    assert np.bincount(f.validation[1]).tolist() == [4, 4, 2]
    assert np.bincount(f.train[1]).tolist() == [14, 14, 7]
    for image_id, label in train + validation + test:  # labels follow the folders: ids 0-19 ant, 20-39 bee
        assert label == min(image_id // 20, 2)
    assert f.train[1].dtype == np.int32 and f.train[0].dtype == np.uint8


def test_splits_are_the_same_on_every_decode_and_need_no_seed(tmp_path):
    make_classes(tmp_path / "data", {"a": 13, "b": 7, "c": 30})
    first = load(tmp_path / "data", tmp_path, cache_dir=tmp_path / "one")
    again = load(tmp_path / "data", tmp_path, cache_dir=tmp_path / "two")
    assert not again.from_cache
    for split in ("train", "validation", "test"):
        assert ids(getattr(first, split)) == ids(getattr(again, split))


def test_tiny_classes_keep_an_image_for_training(tmp_path):
    make_classes(tmp_path / "data", {"one": 1, "two": 2, "many": 10})
    f = load(tmp_path / "data", tmp_path)
    counts = {
        name: [int(np.sum(split[1] == k)) for split in (f.train, f.validation, f.test)]
        for k, name in enumerate(f.class_names)
    }
    assert counts == {"many": [7, 2, 1], "one": [1, 0, 0], "two": [1, 0, 1]}


def test_train_test_val_folders_are_used_as_they_are(tmp_path):
    root = tmp_path / "data"
    next_id = make_classes(root / "train", {"x": 6, "y": 5})
    next_id = make_classes(root / "test", {"x": 2, "y": 3}, next_id)
    make_classes(root / "val", {"x": 1, "y": 4}, next_id)
    f = load(root, tmp_path)
    assert f.class_names == ("x", "y")
    assert ids(f.train) == [(i, int(i >= 6)) for i in range(11)]
    assert ids(f.test) == [(i, int(i >= 13)) for i in range(11, 16)]
    assert ids(f.validation) == [(i, int(i >= 17)) for i in range(16, 21)]


def test_train_folder_without_test_holds_the_test_split_out_of_train(tmp_path):
    root = tmp_path / "data"
    next_id = make_classes(root / "train", {"x": 10, "y": 10})
    make_classes(root / "val", {"x": 2, "y": 2}, next_id)
    f = load(root, tmp_path)
    assert np.bincount(f.test[1]).tolist() == [1, 1]
    assert ids(f.validation) == [(20, 0), (21, 0), (22, 1), (23, 1)]
    assert len(f.train[1]) == 18 and max(i for i, _ in ids(f.train)) < 20


def test_nested_folders_symlinks_and_other_files(tmp_path):
    root = tmp_path / "data"
    make_classes(root, {"a": 3, "b": 3})
    save(root / "a" / "deeper" / "still" / "x.png", 100)
    make_classes(tmp_path / "elsewhere", {"c": 4}, 200)
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c")
    (root / "a" / "deeper" / "loop").symlink_to(root / "a")  # a link loop must end
    for junk in ("a/notes.txt", "b/.DS_Store", "b/._001.png", "README.md"):
        (root / junk).write_text("not an image")
    listing = scan(root)
    assert listing.class_names == ("a", "b", "c")
    assert listing.ignored == 4
    assert [rel for rel, _ in listing.splits["all"]][:4] == [
        "a/000.png",
        "a/001.png",
        "a/002.png",
        "a/deeper/still/x.png",
    ]
    assert sorted(label for _, label in listing.splits["all"]) == [0] * 4 + [1] * 3 + [2] * 4


# ---------------------------------------------------------------- formats, size and channels


def test_mixed_formats_sizes_and_colour_resolve_to_most_common_size_and_3_channels(tmp_path):
    root = tmp_path / "data"
    for cls in ("p", "q"):
        save(root / cls / "a.png", 10, (40, 30))
        save(root / cls / "b.JPG", 20, (40, 30), colour=True)
        save(root / cls / "c.jpeg", 30, (40, 30))
        save(root / cls / "d.BMP", 40, (8, 6))
        save(root / cls / "e.gif", 50, (12, 20), colour=True)
    f = load(root, tmp_path)
    assert (f.image_size, f.channels) == ((40, 30), 3)
    assert f.train[0].shape[1:] == (40, 30, 3)
    assert sum(len(split[1]) for split in (f.train, f.validation, f.test)) == 10


def test_gray_only_folder_gives_one_channel(tmp_path):
    root = tmp_path / "data"
    for cls in ("p", "q"):
        save(root / cls / "a.png", 10, (8, 6))
        save(root / cls / "b.jpg", 20, (8, 6))
        save(root / cls / "c.bmp", 30, (16, 12))
    f = load(root, tmp_path)
    assert (f.image_size, f.channels) == ((8, 6), 1)
    assert f.train[0].shape[1:] == (8, 6)


def test_a_sample_that_guesses_the_size_and_channels_wrong_costs_a_second_decode_not_a_wrong_answer(tmp_path, capsys):
    # 200 files: the sample reads every 3rd header (all 8x6 gray), but most files are 10x4 and one is colour
    root = tmp_path / "data"
    for i in range(200):
        sampled = i % 3 == 0
        save(root / f"c{i // 100}" / f"{i:03d}.png", i, (8, 6) if sampled else (10, 4), colour=i == 199)
    f = load(root, tmp_path)
    err = capsys.readouterr().err
    assert "most images are 10x4 colour, not 8x6 gray as sampled: decoding again" in err
    assert err.count("decoding 200 images") == 2 and "reading the sizes" not in err
    assert (f.image_size, f.channels) == ((10, 4), 3)
    exact = load(root, tmp_path, image_size=(10, 4), channels=3)  # what a right guess would have decoded
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(f, split)[0], getattr(exact, split)[0])


def test_a_right_guess_decodes_once_and_no_dominant_size_reads_every_header_first(tmp_path, capsys):
    make_classes(tmp_path / "same", {"a": 30, "b": 30})
    save(tmp_path / "same" / "a" / "odd.png", 3, (5, 5))  # not in the sample: resized, no second pass
    assert load(tmp_path / "same", tmp_path).image_size == (8, 6)
    err = capsys.readouterr().err
    assert err.count("decoding 61 images") == 1 and "reading the sizes" not in err
    root = tmp_path / "mixed"  # three sizes, none of them half the sample: every header is read, then one decode
    for i in range(60):
        save(root / f"c{i % 2}" / f"{i:03d}.png", i, [(8, 6), (6, 8), (7, 7)][i % 3])
    f = load(root, tmp_path)
    err = capsys.readouterr().err
    assert "reading the sizes of 60 images" in err and err.count("decoding 60 images") == 1
    # no size holds half the files: a square of the median shorter side (6, 6, 7 -> 6), never enlarged
    assert f.image_size == (6, 6)
    assert "image_size auto: 6x6, a square of the files' median shorter side (6 px; 3 sizes among 60 files)" in err


def test_auto_sizes_follow_the_models_bounds(tmp_path, capsys):
    """keras.applications models (bounds 96 to 224): photos of many sizes get a square of their median shorter
    side within the bounds; a size most files share is enlarged, aspect kept, to a shorter side of 96."""
    mixed = tmp_path / "mixed"
    for i in range(40):
        save(mixed / f"c{i % 2}" / f"{i:03d}.png", i, (120 + i, 150 + 2 * i))  # every file a size of its own
    assert load(mixed, tmp_path).image_size == (64, 64)  # median shorter side 139 -> 136 -> at most 64
    assert load(mixed, tmp_path, auto_sides=(96, 224)).image_size == (136, 136)
    assert load(mixed, tmp_path, auto_sides=(96, 112)).image_size == (112, 112)
    make_classes(tmp_path / "same", {"a": 10, "b": 10})  # 8x6 files
    assert load(tmp_path / "same", tmp_path).image_size == (8, 6)
    capsys.readouterr()
    assert load(tmp_path / "same", tmp_path, auto_sides=(96, 224)).image_size == (128, 96)
    assert "image_size auto: 128x96, the size of most files (8x6) enlarged to at least 96" in capsys.readouterr().err


def test_explicit_size_is_height_by_width_and_pixels_survive_exactly(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    originals = {}
    for cls in ("p", "q"):
        for i in range(5):
            pixels = rng.integers(0, 256, (40, 30), dtype=np.uint8)  # 40 rows, 30 columns
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "L").save(root / cls / f"{i}.png")
            originals[int(pixels[0, 0]), int(pixels[0, 1])] = pixels
    f = load(root, tmp_path, image_size=(40, 30), channels=1)
    images = np.concatenate([f.train[0], f.validation[0], f.test[0]])
    assert images.shape == (10, 40, 30)
    for image in images:
        np.testing.assert_array_equal(image, originals[int(image[0, 0]), int(image[0, 1])])


def test_explicit_size_and_channels_resize_and_convert(tmp_path):
    root = tmp_path / "data"
    for cls in ("p", "q"):
        for i in range(3):
            save(root / cls / f"{i}.png", 255, (8, 6), colour=True)  # (255, 0, 7): red
            save(root / cls / f"{i}.bmp", 90, (30, 40))  # gray
    gray = load(root, tmp_path, image_size=(20, 10), channels=1)
    images = np.concatenate([gray.train[0], gray.validation[0], gray.test[0]])
    assert images.shape == (12, 20, 10)
    assert set(np.unique(images).tolist()) == {77, 90}  # red as Pillow's L: 0.299 * 255 + 0.114 * 7 = 77.04
    colour = load(root, tmp_path, image_size=(20, 10), channels=3)
    images = np.concatenate([colour.train[0], colour.validation[0], colour.test[0]])
    assert images.shape == (12, 20, 10, 3)
    assert {tuple(p) for p in images.reshape(-1, 3).tolist()} == {(255, 0, 7), (90, 90, 90)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": (0, 5)}, r"image_size: received \(0, 5\)"),
        ({"image_size": "28x28"}, "image_size: received '28x28'"),
        ({"channels": 2}, "channels: received 2; allowed: None"),
        ({"test_split": 1.0}, "test_split: received 1.0"),
        ({"validation_split": 0}, "validation_split: received 0"),
        ({"bad_images": "ignore"}, "bad_images: received 'ignore'; allowed: fail or skip"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, kwargs, match):
    make_classes(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(UserError, match=match) as e:
        load(tmp_path / "data", tmp_path, **kwargs)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- scan errors


def scan_error(path: Path) -> str:
    with pytest.raises(UserError) as e:
        scan(path)
    message = str(e.value)
    assert "\n" not in message and "allowed:" in message
    return message


def test_scan_errors_name_what_was_wrong(tmp_path):
    assert "image folder not found: received" in scan_error(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    assert "image folder expected: received the file" in scan_error(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    assert f"image folder {tmp_path / 'empty'} is empty" in scan_error(tmp_path / "empty")

    make_classes(tmp_path / "one", {"only": 3})
    assert "has 1 class folder(s) (only); allowed: at least 2" in scan_error(tmp_path / "one")
    save(tmp_path / "loose" / "x.png")
    assert "has 0 class folder(s) (none) and 1 files directly in it" in scan_error(tmp_path / "loose")

    make_classes(tmp_path / "hollow", {"full": 2})
    (tmp_path / "hollow" / "void").mkdir()
    (tmp_path / "hollow" / "void" / "notes.txt").write_text("no images")
    message = scan_error(tmp_path / "hollow")
    assert "class folder(s) with no images in" in message and ": void (received 1 other files)" in message


def test_test_folder_with_other_classes_names_both_sides(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"cat": 2, "dog": 2, "emu": 2})
    make_classes(root / "test", {"cat": 1, "dog": 1, "fox": 1})
    message = scan_error(root)
    assert f"class folders of {root}/test differ from train/: only in train/: emu; only in test/: fox" in message


def test_val_folder_with_other_classes_is_an_error_too(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"cat": 2, "dog": 2})
    make_classes(root / "test", {"cat": 1, "dog": 1})
    make_classes(root / "val", {"cat": 1})
    assert "only in train/: dog; only in val/: none" in scan_error(root)


# ---------------------------------------------------------------- unreadable images


def test_a_corrupt_file_fails_with_one_line_naming_it(tmp_path):
    root = tmp_path / "data"
    make_classes(root, {"a": 3, "b": 3})
    (root / "b" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(UserError) as e:
        load(root, tmp_path)
    message = str(e.value)
    assert message.startswith(f"cannot read image {root / 'b' / 'broken.png'}: cannot identify image file")
    assert message.endswith("; fix or remove it, or pass bad_images=skip to train without it")
    assert "\n" not in message


def test_a_truncated_file_found_only_by_decoding_is_skipped_and_listed(tmp_path, capsys):
    root = tmp_path / "data"
    make_classes(root, {"a": 4, "b": 4})
    whole = save(tmp_path / "big.png", 0, (40, 30)).read_bytes()
    (root / "a" / "cut.png").write_bytes(whole[: len(whole) // 2])  # header fine, pixels missing
    with pytest.raises(UserError, match="cut.png"):
        load(root, tmp_path, image_size=(8, 6), channels=1)
    f = load(root, tmp_path, image_size=(8, 6), channels=1, bad_images="skip")
    assert f.from_cache  # the failed run's cache records the bad file; nothing is decoded again
    assert f.skipped == (str(root / "a" / "cut.png"),)
    assert sum(len(split[1]) for split in (f.train, f.validation, f.test)) == 8
    assert f"skipped unreadable image {root / 'a' / 'cut.png'}" in capsys.readouterr().err


def test_many_skipped_files_print_ten_lines_then_a_count(tmp_path, capsys):
    root = tmp_path / "data"
    make_classes(root, {"a": 4, "b": 4})
    for i in range(13):
        (root / "b" / f"bad{i:02d}.gif").write_bytes(b"GIF89a junk")
    f = load(root, tmp_path, bad_images="skip")
    assert len(f.skipped) == 13 and f.channels == 1
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("warning: skipped unreadable image") for line in err) == 10
    assert "warning: ... and 3 more unreadable images skipped" in err


# ---------------------------------------------------------------- the cache


def test_second_load_comes_from_the_cache_and_changes_invalidate_it(tmp_path, capsys):
    root = tmp_path / "data"
    make_classes(root, {"a": 5, "b": 5})
    first = load(root, tmp_path)
    second = load(root, tmp_path)
    assert not first.from_cache and second.from_cache
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(first, split)[0], getattr(second, split)[0])
        np.testing.assert_array_equal(getattr(first, split)[1], getattr(second, split)[1])
    err = capsys.readouterr().err
    assert "found 10 decoded images in the cache" in err
    assert all(len(line) < 100 for line in err.splitlines())
    assert sorted(p.suffix for p in (tmp_path / "cache" / "images").iterdir()) == [".json", ".npy"]  # no temp files

    stat = os.stat(root / "a" / "000.png")
    os.utime(root / "a" / "000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert not load(root, tmp_path).from_cache
    save(root / "b" / "new.png", 99)
    added = load(root, tmp_path)
    assert not added.from_cache and "(11 files)" in added.source
    (root / "a" / "001.png").unlink()
    assert not load(root, tmp_path).from_cache
    assert load(root, tmp_path).from_cache


def test_another_size_request_is_another_cache_entry(tmp_path):
    make_classes(tmp_path / "data", {"a": 3, "b": 3})
    assert not load(tmp_path / "data", tmp_path).from_cache
    assert not load(tmp_path / "data", tmp_path, image_size=(8, 6)).from_cache  # auto and (8, 6) differ as requests
    assert load(tmp_path / "data", tmp_path, image_size=(8, 6)).from_cache
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 2


def test_cache_env_variable_is_used_when_no_cache_dir_is_given(tmp_path, monkeypatch):
    make_classes(tmp_path / "data", {"a": 3, "b": 3})
    monkeypatch.setenv("TFTRAIN_CACHE_DIR", str(tmp_path / "env-cache"))
    load_folder(tmp_path / "data", progress=False)
    assert len(list((tmp_path / "env-cache" / "images").glob("images-*.npy"))) == 1


def test_an_unwritable_cache_folder_warns_and_keeps_images_in_memory(tmp_path, capsys):
    make_classes(tmp_path / "data", {"a": 4, "b": 4})
    (tmp_path / "not-a-folder").write_text("a file where the cache folder would go")
    for _ in range(2):
        f = load(tmp_path / "data", tmp_path, cache_dir=tmp_path / "not-a-folder")
        assert not f.from_cache and len(f.train[1]) == 4
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "cannot write the image cache in" in warnings[0]
    assert warnings[0].endswith("keeping images in memory only")


# ---------------------------------------------------------------- the parallel path


def test_worker_processes_decode_the_same_pixels_as_in_process(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for i in range(600):
        cls, colour = f"c{i % 3}", i % 50 == 0
        pixels = rng.integers(0, 256, (10, 8, 3) if colour else (10, 8), dtype=np.uint8)
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / cls / f"{i:03d}.png")
    (root / "c1" / "bad.png").write_bytes(b"\x89PNG broken")
    monkeypatch.setenv("TFTRAIN_DECODE_WORKERS", "2")
    parallel = load(root, tmp_path, cache_dir=tmp_path / "parallel", bad_images="skip")
    assert "(2 processes)" in capsys.readouterr().err
    monkeypatch.setenv("TFTRAIN_DECODE_WORKERS", "1")
    alone = load(root, tmp_path, cache_dir=tmp_path / "alone", bad_images="skip")
    assert "(in-process)" in capsys.readouterr().err
    assert (parallel.image_size, parallel.channels, parallel.skipped) == ((10, 8), 3, (str(root / "c1" / "bad.png"),))
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(parallel, split)[0], getattr(alone, split)[0])
        np.testing.assert_array_equal(getattr(parallel, split)[1], getattr(alone, split)[1])


def test_a_bad_worker_setting_is_a_user_error(tmp_path, monkeypatch):
    make_classes(tmp_path / "data", {"a": 2, "b": 2})
    monkeypatch.setenv("TFTRAIN_DECODE_WORKERS", "many")
    with pytest.raises(UserError, match="TFTRAIN_DECODE_WORKERS: received 'many'"):
        load(tmp_path / "data", tmp_path)


def test_classes_of_one_image_cannot_give_a_test_split(tmp_path):
    make_classes(tmp_path / "data", {"a": 1, "b": 1})
    with pytest.raises(
        UserError, match=r"test_split: received 0.1, but every class has only 1 image left \(2 images\)"
    ):
        load(tmp_path / "data", tmp_path)


def test_a_split_left_empty_by_skipped_files_is_named(tmp_path):
    root = tmp_path / "data"
    make_classes(root / "train", {"a": 3, "b": 3})
    for name in ("a", "b"):
        (root / "test" / name).mkdir(parents=True)
        (root / "test" / name / "0.png").write_bytes(b"broken")
    with pytest.raises(UserError, match=r"the test split of .* is empty \(4 train, 2 validation, 0 test images\)"):
        load(root, tmp_path, bad_images="skip")
