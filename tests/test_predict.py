"""tftrain predict: image files of any size and colour, folders of them and IDX files in, converted to the model's
shape; CSV or JSON out; bad files named."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import activated_env, mlflow_store, tiny_images, write_idx
from test_serving import COLOUR_NAMES, COLOUR_SHAPE, colour_images
from tftrain.data.datasets import CLASS_NAMES
from tftrain.data.images import read_image, to_pixels
from tftrain.errors import UserError
from tftrain.ship.predict import image_form, predict, read_inputs, write_atomically
from tftrain.tracking import logged_models

NAMES = CLASS_NAMES["fashion_mnist"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Five images as a folder of PNGs, one more PNG on its own, and an IDX file of three."""
    folder = tmp_path_factory.mktemp("inputs")
    images = tiny_images(9, seed=7)[0]
    (folder / "pngs").mkdir()
    for i in range(5):
        Image.fromarray(images[i]).save(folder / "pngs" / f"image{i}.png")
    Image.fromarray(images[5]).convert("RGB").save(folder / "single.png")  # colour is read as grayscale
    write_idx(folder / "more-images-idx3-ubyte.gz", images[6:9])
    return folder, images


def test_inputs_are_read_in_order(inputs):
    folder, images = inputs
    names, read = read_inputs(
        [str(folder / "pngs"), str(folder / "single.png"), str(folder / "more-images-idx3-ubyte.gz")], (28, 28)
    )
    assert names[:5] == [str(folder / "pngs" / f"image{i}.png") for i in range(5)]
    assert names[5] == str(folder / "single.png") and names[8] == f"{folder / 'more-images-idx3-ubyte.gz'}[2]"
    np.testing.assert_array_equal(read, images)


def test_csv_and_json_agree_with_the_model(trained, inputs, tmp_path, capsys):
    result, _ = trained
    folder, images = inputs
    assert logged_models.model_input_shape(result.model.uri) == (28, 28)
    expected = result.keras_model.predict(images.astype(np.float32), verbose=0)
    sources = [str(folder / "pngs"), str(folder / "single.png"), str(folder / "more-images-idx3-ubyte.gz")]
    predict(result.model.uri, sources, str(tmp_path / "p.csv"), "csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [int(r["class"]) for r in rows] == list(expected.argmax(axis=1))
    assert [r["class_name"] for r in rows] == [NAMES[c] for c in expected.argmax(axis=1)]
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected.max(axis=1), atol=1e-5)
    predict(result.model.uri, sources, "-", "json")
    answer = json.loads(capsys.readouterr().out)
    assert [a["input"] for a in answer] == [r["input"] for r in rows]
    np.testing.assert_allclose([a["probabilities"] for a in answer], expected, atol=1e-5)


def corrupt_in_a_nested_folder(p: Path) -> None:
    (p / "d" / "e").mkdir(parents=True)
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(p / "d" / "a.png")
    (p / "d" / "e" / "x.JPG").write_bytes(b"\xff\xd8\xff\xe0 cut short\nmid-line")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "x.png").write_text("not a picture"), "cannot read image"),
        (corrupt_in_a_nested_folder, r"cannot read image .*/d/e/x\.JPG: "),
        (lambda p: write_idx(p / "x.png.idx", np.zeros(4, np.uint8)), "is not an IDX file of uint8 with 3 dimension"),
        (lambda p: (p / "empty").mkdir(), r"has no image files \(\.png, \.jpg, \.jpeg, \.bmp, \.gif\)"),
        (lambda p: (p / "notes.txt").write_text("hello"), r"cannot read image .*notes\.txt: cannot identify image"),
    ],
)
def test_bad_inputs_are_named_on_one_line(tmp_path, make, message):
    make(tmp_path)
    (given,) = list(tmp_path.iterdir())
    with pytest.raises(UserError, match=message) as caught:
        read_inputs([str(given)], (28, 28))
    assert str(given) in str(caught.value) and "\n" not in str(caught.value)


def test_any_picture_pillow_reads_is_read_as_the_served_model_reads_it(tmp_path):
    """WebP and TIFF files named on the command line (a served model takes them too): read as pictures, not as
    IDX files, with the pixels of the same picture as PNG."""
    picture = Image.fromarray(colour_images([1], shape=(40, 30, 3))[0])
    for suffix in ("png", "webp", "tif"):
        picture.save(tmp_path / f"p.{suffix}", **({"lossless": True} if suffix == "webp" else {}))
    names, images = read_inputs([str(tmp_path / f"p.{s}") for s in ("png", "webp", "tif")], (28, 28, 3))
    assert len(names) == 3 and (images[1] == images[0]).all() and (images[2] == images[0]).all()


@pytest.mark.parametrize("shape", [(28, 28, 4), (28,), (0, 28), (-1, 28, 3)])
def test_a_model_shape_predict_cannot_make_is_a_user_error(shape):
    with pytest.raises(UserError, match=r"the model takes images of shape \(N, .*predict reads"):
        image_form(shape)


def test_a_gray_model_reads_colour_and_odd_sizes_as_its_own(tmp_path):
    Image.fromarray(colour_images([0], shape=(50, 20, 3))[0]).save(tmp_path / "wide.png")
    names, images = read_inputs([str(tmp_path / "wide.png")], (28, 28, 1))
    assert images.shape == (1, 28, 28, 1)
    np.testing.assert_array_equal(images[0, ..., 0], read_image(tmp_path / "wide.png", (28, 28), 1))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, list[tuple[str, str | None]]]:
    """Image files of several formats, sizes and colour modes in nested folders, as (relative path, the colour
    it shows: None for gray) in the order predict reads them (sorted by folder, then name); plus a hidden corrupt
    file and a text file that predict passes over."""
    root = tmp_path_factory.mktemp("pictures")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    files = [
        ("gray.png", None, lambda path: Image.fromarray(tiny_images(1, seed=3)[0][0]).save(path)),
        ("sub/deeper/blue.BMP", "blue", lambda path: Image.fromarray(colour_images([2], 1, (50, 50, 3))[0]).save(path)),
        ("sub/deeper/green.gif", "green", lambda path: Image.fromarray(colour_images([1], 2, (17, 33, 3))[0]).save(path)),
        ("sub/green.jpg", "green", lambda path: Image.fromarray(colour_images([1], 3, (20, 15, 3))[0]).save(path, quality=90)),
        ("top.PNG", "red", lambda path: Image.fromarray(colour_images([0], 4, (80, 60, 3))[0]).save(path)),
    ]  # fmt: skip
    for relative, _, save in files:
        save(root / relative)
    (root / ".hidden" / "x.png").write_text("not a picture")
    (root / "sub" / "notes.txt").write_text("not an image suffix")
    return root, [(relative, shown) for relative, shown, _ in files]


def test_a_colour_model_labels_any_picture_converted_to_its_shape(colour, pictures, tmp_path):
    root, files = pictures
    write_idx(tmp_path / "gray-idx3-ubyte.gz", tiny_images(2, seed=9)[0])
    sources = [str(root), str(tmp_path / "gray-idx3-ubyte.gz")]
    names, images = read_inputs(sources, COLOUR_SHAPE)
    assert names == [str(root / relative) for relative, _ in files] + [f"{sources[1]}[{i}]" for i in range(2)]
    assert images.shape == (len(files) + 2, *COLOUR_SHAPE) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[1], read_image(root / files[1][0], (40, 30), 3))
    idx_image = to_pixels(Image.fromarray(tiny_images(2, seed=9)[0][1]), (40, 30), 3)
    np.testing.assert_array_equal(images[-1], idx_image)

    for kind in ("keras", "litert"):
        with mlflow_store(colour.store):
            rows = predict(colour.uris[kind], sources, str(tmp_path / f"{kind}.json"), "json")
        assert [row["class_name"] for row in rows[1 : len(files)]] == [shown for _, shown in files[1:]]
        for gray in (rows[0], *rows[len(files) :]):  # equal channels: no colour wins
            np.testing.assert_allclose(gray["probabilities"], [1 / 3] * 3, atol=1e-5)
        assert {row["class_name"] for row in rows} <= set(COLOUR_NAMES)
        expected = colour.keras_model.predict(images.astype(np.float32), verbose=0)
        np.testing.assert_allclose([row["probabilities"] for row in rows], expected, atol=1e-5)
        written = json.loads((tmp_path / f"{kind}.json").read_text())
        assert [row["input"] for row in written] == names


def test_a_corrupt_picture_among_good_ones_is_one_line_naming_it(colour, pictures, tmp_path):
    root, _ = pictures
    broken = tmp_path / "album" / "2024" / "broken.gif"
    broken.parent.mkdir(parents=True)
    for relative in ("album/a.png", "album/2024/z.jpg"):
        Image.fromarray(colour_images([0], shape=(10, 10, 3))[0]).save(tmp_path / relative)
    broken.write_bytes(b"GIF89a" + bytes(10))
    with mlflow_store(colour.store):  # the command's environment names the colour model's store
        done = subprocess.run(
            [sys.executable, "-m", "tftrain", "predict", "--model-uri", colour.uris["keras"], str(root),
             str(tmp_path / "album")],
            capture_output=True, text=True, cwd=tmp_path, env=activated_env(), timeout=300,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"tftrain: error: cannot read image {broken}: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stderr.count("tftrain: error") == 1, done.stderr[-3000:]


def test_cli_writes_json_by_suffix(trained, inputs, tmp_path):
    result, store = trained
    folder, _ = inputs
    done = subprocess.run(
        [sys.executable, "-m", "tftrain", "predict", "--model-uri", result.model.uri, str(folder / "pngs"),
         "--output", str(tmp_path / "out.json")],
        capture_output=True, text=True, cwd=store, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads((tmp_path / "out.json").read_text())) == 5
    assert "5 predictions written to" in done.stderr


def test_an_unwritable_output_is_a_user_error_and_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match=r"cannot write /proc/predictions.csv"):
        write_atomically(Path("/proc/predictions.csv"), "input,class\n")
    target = tmp_path / "p.csv"
    target.write_text("earlier predictions\n")
    write_atomically(target, "input,class\n")
    assert target.read_text() == "input,class\n" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]
