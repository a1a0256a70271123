"""tftrain predict: PNG files, folders of them and IDX files in; CSV or JSON out; bad files named."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_images, write_idx
from tftrain.data import CLASS_NAMES
from tftrain.errors import UserError
from tftrain.predict import predict, read_inputs, write_atomically

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
        [str(folder / "pngs"), str(folder / "single.png"), str(folder / "more-images-idx3-ubyte.gz")]
    )
    assert names[:5] == [str(folder / "pngs" / f"image{i}.png") for i in range(5)]
    assert names[5] == str(folder / "single.png") and names[8] == f"{folder / 'more-images-idx3-ubyte.gz'}[2]"
    np.testing.assert_array_equal(read, images)


def test_csv_and_json_agree_with_the_model(trained, inputs, tmp_path, capsys):
    result, _ = trained
    folder, images = inputs
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


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: Image.fromarray(np.zeros((30, 28), np.uint8)).save(p / "x.png"),
            "is 28x30 pixels; the model takes 28x28",
        ),
        (lambda p: (p / "x.png").write_text("not a picture"), "cannot read image"),
        (lambda p: write_idx(p / "x.png.idx", np.zeros(4, np.uint8)), "is not an IDX file of uint8 with 3 dimension"),
        (lambda p: (p / "empty").mkdir(), "has no .png files"),
    ],
)
def test_bad_inputs_are_named(tmp_path, make, message):
    make(tmp_path)
    (given,) = list(tmp_path.iterdir())
    with pytest.raises(UserError, match=message) as caught:
        read_inputs([str(given)])
    assert str(given) in str(caught.value)


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
