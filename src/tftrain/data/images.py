"""One image file read into uint8 pixels of a size and channels with Pillow, its header read alone, and a chunk
of files decoded into rows: what folders.py runs in its decoding worker processes, and what `predict` and the
tfds and function sources use to make images of one shape. No TensorFlow here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from tftrain.pixels import GRAY_MODES, READ_ERRORS, Native, decode, reason, to_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class UnreadableImage(Exception):
    """An image file that Pillow cannot decode: `path` and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


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
        return decode(path, size, channels)
    except READ_ERRORS as e:
        raise UnreadableImage(Path(path), reason(e, path)) from None


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
