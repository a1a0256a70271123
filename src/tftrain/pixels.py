"""Image files to pixels: the one decode and resize that training, `predict` and the served model share, so a file
gives the same pixels, and so the same answer, on every road. Pillow and numpy only: a logged model carries a copy
of this module beside serving.py (serving.write_code), so keep it free of other imports."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

Native = tuple[int, int, bool]  # a file's own height, width and whether it is gray

# What Pillow raises on a damaged or hostile file (struct.error for a cut header, EOFError for cut frames).
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
               Image.DecompressionBombError)  # fmt: skip


def form(shape: tuple[int, ...]) -> tuple[tuple[int, int], int] | None:
    """(size, channels) to read pictures at for a model taking `shape`: (H, W) gray, (H, W, 1) or (H, W, 3);
    None for any other shape."""
    if len(shape) == 2 and min(shape) > 0:
        return (shape[0], shape[1]), 1
    if len(shape) == 3 and min(shape) > 0 and shape[2] in (1, 3):
        return (shape[0], shape[1]), shape[2]
    return None


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


def decode(
    source: Path | str | BinaryIO, size: tuple[int, int], channels: int, max_pixels: int = 0
) -> tuple[np.ndarray, Native]:
    """An image file (PNG, JPEG, BMP or GIF; a GIF's first frame), by path or as an open binary file, as uint8
    pixels of `size` and `channels` (see `to_pixels`), and the file's own (height, width, gray) from its header.
    A JPEG is decoded at a reduced scale when that still covers `size` (Pillow's draft mode). `max_pixels`
    (0: Pillow's own bomb limit only) refuses a larger picture from its header, before it is decoded. Raises one of
    READ_ERRORS for a file Pillow cannot decode."""
    with Image.open(source) as image:
        width, height = image.size
        if max_pixels and width * height > max_pixels:
            raise Image.DecompressionBombError(
                f"{width}x{height} pixels is over the limit of {max_pixels / 1e6:g} megapixels"
            )
        native = (height, width, image.mode in GRAY_MODES)
        if image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (size[1], size[0]))  # decode at reduced scale
        image.load()
        return to_pixels(image, size, channels), native


def reason(error: Exception, source: Path | str | BinaryIO) -> str:
    """Pillow's message on one line, without the file name or file object it repeats (the caller names the file)."""
    text = " ".join(str(error).replace(f" {str(source)!r}", "").replace(f" {source!r}", "").split())
    return text or type(error).__name__
