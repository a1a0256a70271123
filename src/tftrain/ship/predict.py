"""The `predict` step: batch prediction with any logged model on image files (PNG, JPEG, BMP, GIF), folders of
them, or IDX image files; each image resized and converted to the model's size and channels; one row per image
(input, class, class_name, probability) as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tftrain.data.datasets import read_idx
from tftrain.data.images import IMAGE_SUFFIXES, UnreadableImage, read_image, to_pixels
from tftrain.data.layout import image_files
from tftrain.errors import UserError
from tftrain.log import progress_log
from tftrain.pixels import form
from tftrain.serving import MAX_BATCH, describe
from tftrain.tracking import logged_models

log = logging.getLogger(__name__)

CSV_COLUMNS = ("input", "class", "class_name", "probability")


def image_form(shape: tuple[int, ...]) -> tuple[tuple[int, int], int]:
    """(size, channels) to read pictures at for a model taking `shape`: (H, W) gray, (H, W, 1) or (H, W, 3)."""
    if found := form(shape):
        return found
    raise UserError(f"the model takes images of shape {describe(shape)}; predict reads (N, H, W) or (N, H, W, 1|3)")


def read_picture(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One image file as uint8 pixels of `shape`; a file that cannot be decoded is a one-line user error."""
    size, channels = image_form(shape)
    try:
        return read_image(path, size, channels).reshape(shape)
    except UnreadableImage as e:
        raise UserError(f"cannot read image {e.path}: {' '.join(e.reason.split())}") from None  # on one line


def read_idx_images(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The images of an IDX file (N, H, W), converted one by one to `shape` when they differ from it."""
    images = read_idx(path, 3)  # says what is wrong if `path` is not an IDX image file
    if images.shape[1:] == shape:
        return images
    size, channels = image_form(shape)
    return np.stack([to_pixels(Image.fromarray(image), size, channels).reshape(shape) for image in images])


def idx_like(path: Path) -> bool:
    """Whether a file starts as an IDX file of unsigned bytes does (00 00 08), or is gzipped (1f 8b): the rest are
    read as pictures, so a text file is "not an image", not "not an IDX file"."""
    with open(path, "rb") as f:
        head = f.read(3)
    return head[:2] == b"\x1f\x8b" or head == b"\x00\x00\x08"


def read_inputs(paths: list[str], shape: tuple[int, ...]) -> tuple[list[str], np.ndarray]:
    """Names and uint8 images (N, *shape) from image files, folders of them (recursively) and IDX image files."""
    image_form(shape)  # a shape predict cannot produce fails before any file is read
    names, images = [], []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise UserError(f"input folder {path} has no image files ({', '.join(IMAGE_SUFFIXES)})")
            names += [str(p) for p in files]
            images += [read_picture(p, shape) for p in files]
        elif not path.is_file():
            raise UserError(f"input {path} does not exist")
        elif path.suffix.lower() in IMAGE_SUFFIXES or not idx_like(path):  # any file Pillow reads: WebP, TIFF, ...
            names.append(str(path))
            images.append(read_picture(path, shape))
        else:  # an IDX image file (gzipped or not)
            idx = read_idx_images(path, shape)
            names += [f"{path}[{i}]" for i in range(len(idx))]
            images += list(idx)
    return names, np.stack(images) if images else np.zeros((0, *shape), np.uint8)


def answers(model, images: np.ndarray, progress: bool = False) -> list[dict]:
    """Rows {class, class_name, probability, probabilities} from any pyfunc model, MAX_BATCH images per call.
    tftrain's models answer in rows already; a model answering a plain probability array gets class indexes as
    names."""
    rows = []
    for start in range(0, len(images), MAX_BATCH):
        answer = model.predict(images[start : start + MAX_BATCH].astype(np.float32))
        if not (isinstance(answer, list) and answer and isinstance(answer[0], dict)):
            probabilities = np.asarray(answer, dtype=np.float32)
            answer = [
                {"class": int(c), "class_name": str(c), "probability": float(p[c]), "probabilities": p.tolist()}
                for c, p in zip(probabilities.argmax(1), probabilities, strict=True)
            ]
        rows += answer
        if progress and len(images) > MAX_BATCH:
            progress_log.info(f"  predicted {len(rows)}/{len(images)} images")
    return rows


def render(names: list[str], rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        lines = [json.dumps({"input": n, **r}) for n, r in zip(names, rows, strict=True)]
        return "[\n" + ",\n".join(lines) + "\n]\n"  # a JSON array, one image per line
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name, row in zip(names, rows, strict=True):
        writer.writerow([name, row["class"], row["class_name"], f"{row['probability']:.6f}"])
    return out.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Write beside the target, then rename: an interrupted write never leaves half a file in its place."""
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            try:
                f.write(text)
            except OSError:
                os.unlink(f.name)
                raise
        os.replace(f.name, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def predict(model_uri: str, inputs: list[str], output: str = "-", fmt: str = "csv") -> list[dict]:
    # the shape from the model's MLmodel file: a missing model or a bad image fails before the weights load
    names, images = read_inputs(inputs, logged_models.model_input_shape(model_uri))
    model = logged_models.load_pyfunc(model_uri)
    rows = answers(model, images, progress=True)
    text = render(names, rows, fmt)
    if output == "-":
        sys.stdout.write(text)
    else:
        write_atomically(Path(output), text)
        progress_log.info(f"{len(rows)} predictions written to {output}")
    return rows
