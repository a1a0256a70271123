"""One image file read into uint8 pixels of a size and channels with Pillow, its header read alone, and a chunk
of files decoded into rows: what folders.py runs in its decoding worker processes, and what `predict` and the
tfds and function sources use to make images of one shape. No TensorFlow here."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


Native = tuple[int, int, bool]  # a file's own height, width and whether it is gray


# What Pillow raises on a damaged or hostile file (struct.error for a cut header, EOFError for cut frames).
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
               Image.DecompressionBombError)  # fmt: skip


class UnreadableImage(Exception):
    """An image file that Pillow cannot decode: `path` and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


def to_pixels(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """A decoded picture as uint8 pixels of `size` (height, width): (H, W) for 1 channel, (H, W, 3) for 3.
    Colour becomes gray as Pillow's "L" mode does; gray becomes three equal channels; transparency is dropped;
    16-bit and float gray are scaled to 0..255. Resized (bilinear, antialiased when shrinking) when the size
    differs, without keeping the aspect ratio, as Keras' image_dataset_from_directory does by default."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I") and values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / high), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when a palette with transparency goes straight to RGB
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def conform(images: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, C) resized to `size` and converted to `channels` (None: as they are),
    image by image with `to_pixels` only when they differ."""
    have_size, have_channels = images.shape[1:3], 1 if images.ndim == 3 else images.shape[3]
    size, channels = tuple(size or have_size), channels or have_channels
    if size == tuple(have_size) and channels == have_channels:
        return images
    if size == tuple(have_size) and have_channels == 1:  # gray to colour: three equal channels
        return np.repeat(images[..., None], 3, axis=-1)
    out = np.empty((len(images), *size, *(() if channels == 1 else (3,))), np.uint8)
    for i, image in enumerate(images):
        out[i] = to_pixels(
            Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image), size, channels
        )
    return out


def read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file (PNG, JPEG, BMP or GIF; a GIF's first frame) as uint8 pixels of `size` and `channels`
    (see `to_pixels`); UnreadableImage names the file if it cannot be decoded."""
    return read_with_header(path, size, channels)[0]


def read_with_header(path: Path | str, size: tuple[int, int], channels: int) -> tuple[np.ndarray, Native]:
    """`read_image`, and the file's own (height, width, gray) as its header says."""
    try:
        with Image.open(path) as image:
            native = (image.size[1], image.size[0], image.mode in GRAY_MODES)
            if image.format == "JPEG":
                image.draft("L" if channels == 1 else "RGB", (size[1], size[0]))  # decode at reduced scale
            image.load()
            return to_pixels(image, size, channels), native
    except READ_ERRORS as e:
        raise UnreadableImage(Path(path), reason(e, path)) from None


def reason(error: Exception, path: Path | str) -> str:
    """Pillow's message on one line, without the file name it repeats (the caller names the file)."""
    text = " ".join(str(error).replace(f" {str(path)!r}", "").split())
    return text or type(error).__name__


def read_headers(root: str, rels: list[str]) -> list[Native | str]:
    """(height, width, gray) of each file from its header alone (no pixels decoded), or why it cannot be read."""
    out: list[Native | str] = []
    for rel in rels:
        try:
            with Image.open(os.path.join(root, rel)) as image:
                out.append((image.size[1], image.size[0], image.mode in GRAY_MODES))
        except READ_ERRORS as e:
            out.append(reason(e, os.path.join(root, rel)))
    return out


def decode_rows(root: str, rels: list[str], size: tuple[int, int], channels: int):
    """A chunk of files decoded into consecutive rows, in the listing's order, with each file's own
    (height, width, gray); an unreadable file stays a zero row, its reason in place of those."""
    shape = (len(rels), *size) if channels == 1 else (len(rels), *size, 3)
    rows, natives = np.zeros(shape, np.uint8), []
    for j, rel in enumerate(rels):
        try:
            rows[j], native = read_with_header(os.path.join(root, rel), size, channels)
            natives.append(native)
        except UnreadableImage as e:
            natives.append(e.reason)
    return rows, natives
