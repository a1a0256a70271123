"""Image files sent to a served model: base64-encoded under "b64", any size and mode, decoded and resized in the
model exactly as training and `tftrain predict` read files (same file, same probabilities), in-process and behind a
real `mlflow models serve`; files that are not images, are cut short or are too big get a 400 with the reason first."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import REPO, mlflow_store
from tftrain.bench.photos import write_photo_folder
from tftrain.serving import MAX_FILE_BYTES, MAX_FILE_PIXELS
from tftrain.ship.predict import answers, read_inputs


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Real photographs (JPEG and PNG crops of mixed sizes, some gray) and the modes users' files come in."""
    folder = tmp_path_factory.mktemp("files")
    photos = sorted(write_photo_folder(folder / "photos", 2, classes=3, seed=3).rglob("*.*"))
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (90, 61, 3), dtype=np.uint8))
    made = {
        "cmyk.jpg": rgb.convert("CMYK"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.gif": rgb.convert("P"),
        "gray16.png": Image.fromarray(rng.integers(0, 65535, (33, 47), dtype=np.uint16)),
        "tiny.bmp": rgb.resize((7, 5)),
    }
    for name, image in made.items():
        image.save(folder / name)
    return photos + [folder / name for name in made]


def pixel_answers(model, paths: list[Path], shape) -> list[dict]:
    """What `tftrain predict` answers for the files: read by predict, then pixels to the model."""
    return answers(model, read_inputs([str(p) for p in paths], shape)[1])


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_files_answer_as_tftrain_predict_reads_them_in_every_request_form(colour, kind, files):
    with mlflow_store(colour.store):
        model = mlflow.pyfunc.load_model(colour.uris[kind])
    expected = pixel_answers(model, files, tuple(colour.keras_model.input_shape[1:]))
    encoded = [b64(p) for p in files]
    forms = {
        "b64 column of values": {"b64": np.array(encoded)},
        "list of b64 objects": [{"b64": np.array(e)} for e in encoded],
        "table with a b64 column": pd.DataFrame({"b64": encoded}),
        "raw bytes from Python": {"b64": [p.read_bytes() for p in files]},
        "data URLs": {"b64": [f"data:image/png;base64,{e}" for e in encoded]},
    }
    for name, request in forms.items():
        rows = model.predict(request)
        assert [r["class_name"] for r in rows] == [r["class_name"] for r in expected], name
        np.testing.assert_array_equal([r["probabilities"] for r in rows], [r["probabilities"] for r in expected])


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with no pixel data: refused from its header, before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def refusals(photo: Path) -> dict[str, tuple[object, str]]:
    jpeg = photo.read_bytes()
    side = int(MAX_FILE_PIXELS**0.5) + 1
    huge = png_header_claiming(side, side)
    return {
        "not base64": ({"b64": ["this is not base64!"]}, "image file 0: b64 is not base64"),
        "not an image": ({"b64": [base64.b64encode(b"hello, world").decode()]}, "image file 0 (12 bytes) cannot be decoded: cannot identify image file"),
        "cut short": ({"b64": [b64(photo), base64.b64encode(jpeg[: len(jpeg) // 2]).decode()]}, f"image file 1 ({len(jpeg) // 2} bytes) cannot be decoded: image file is truncated"),
        "too many pixels": ({"b64": [base64.b64encode(huge).decode()]}, f"image file 0 ({len(huge)} bytes) cannot be decoded: {side}x{side} pixels is over the limit of {MAX_FILE_PIXELS / 1e6:g} megapixels"),
        "not a string": ({"b64": [12]}, "image file 0: b64 must be a base64 string; received int"),
        "empty": ({"b64": []}, "the batch is empty"),
        "another name": ({"image": [b64(photo)]}, 'unknown input name(s) image: image files go under "b64"'),
    }  # fmt: skip


def test_bad_files_are_refused_with_the_reason_first(colour, files):
    with mlflow_store(colour.store):
        model = mlflow.pyfunc.load_model(colour.uris["litert"])
    for name, (request, reason) in refusals(files[0]).items():
        with pytest.raises(MlflowException) as caught:
            model.predict(request)
        assert str(caught.value).startswith(reason), (name, str(caught.value))
        assert 'base64-encoded as {"b64": "..."}' in str(caught.value), name  # then what the model takes
    with pytest.raises(MlflowException, match=f"image file 0 is over the limit of {MAX_FILE_BYTES // 1_000_000} MB"):
        model.predict({"b64": ["A" * (MAX_FILE_BYTES * 4 // 3 + 8)]})


def readme_snippet(language: str) -> str:
    """The docs' example of sending an image file to a served model, in `language` (bash or python)."""
    text = (REPO / "docs" / "serving.md").read_text()
    (block,) = [b for b in re.findall(rf"```{language}\n(.*?)```", text, re.S) if "b64" in b]
    return block
