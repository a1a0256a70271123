"""The `predict` step: batch prediction with any logged model on PNG files, folders of them, or IDX image files;
one row per image (input, class, class_name, probability) as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tftrain import tracking
from tftrain.data import read_idx
from tftrain.errors import UserError
from tftrain.serving import IMAGE_SHAPE, MAX_BATCH

CSV_COLUMNS = ("input", "class", "class_name", "probability")


def read_png(path: Path) -> np.ndarray:
    """A 28x28 picture as grayscale uint8 pixels (colour is converted, as PIL's "L" mode does)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if pixels.shape != IMAGE_SHAPE:
        raise UserError(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model takes 28x28")
    return pixels


def read_inputs(paths: list[str]) -> tuple[list[str], np.ndarray]:
    """Names and uint8 images (N, 28, 28) from PNG files, folders of PNG files, and IDX image files."""
    names, images = [], []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            pngs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
            if not pngs:
                raise UserError(f"input folder {path} has no .png files")
            names += [str(p) for p in pngs]
            images += [read_png(p) for p in pngs]
        elif not path.is_file():
            raise UserError(f"input {path} does not exist")
        elif path.suffix.lower() == ".png":
            names.append(str(path))
            images.append(read_png(path))
        else:  # anything else must be an IDX image file (gzipped or not); read_idx says what is wrong if not
            idx = read_idx(path, 3)
            if idx.shape[1:] != IMAGE_SHAPE:
                raise UserError(f"data file {path}: images are {idx.shape[1:]}, the model takes (28, 28)")
            names += [f"{path}[{i}]" for i in range(len(idx))]
            images += list(idx)
    return names, np.stack(images) if images else np.zeros((0, *IMAGE_SHAPE), np.uint8)


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
            print(f"  predicted {len(rows)}/{len(images)} images", file=sys.stderr)
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
    names, images = read_inputs(inputs)
    tracking.resolve_model(model_uri)  # a missing model is a one-line error, before anything loads
    model = tracking.load_pyfunc(model_uri)
    rows = answers(model, images, progress=True)
    text = render(names, rows, fmt)
    if output == "-":
        sys.stdout.write(text)
    else:
        write_atomically(Path(output), text)
        print(f"{len(rows)} predictions written to {output}", file=sys.stderr)
    return rows
