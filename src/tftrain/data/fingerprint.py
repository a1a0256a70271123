"""Digests of a task's data, one per split: what the runs' dataset lineage in MLflow shows (tracking/lineage.py),
so that runs on two states of the same data are told apart.

A split's digest changes when its images do, when the classes do, and when the images' shape does:
- an image folder's splits: the files of the split (path, size, modification time, label), from the listing
  `load_folder` scans anyway (no second walk of the folder, no hashing of pixels);
- everything else (built-in IDX files, tensorflow-datasets, a user's function, arrays made in Python): the split's
  labels whole and up to SAMPLE_ROWS of its images, evenly spaced (about 0.8 MB for 28x28 images: milliseconds,
  whatever the split's size).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")
SAMPLE_ROWS = 1024  # images hashed per split for array data: enough to see any change of a real data set's state
DIGEST_CHARS = 16  # MLflow's dataset digest column holds 36


def _start(class_names: tuple[str, ...], shape: tuple[int, ...], count: int):
    return hashlib.blake2b(json.dumps([list(class_names), list(shape), count]).encode(), digest_size=16)


def files_digest(class_names: tuple[str, ...], shape: tuple[int, ...], files: list[tuple[str, int, int, int]]) -> str:
    """One split of an image folder: `files` as (path relative to the folder, size, mtime_ns, label); `shape` the
    images' (H, W[, C]) once decoded."""
    digest = _start(class_names, shape, len(files))
    for rel, size, mtime, label in files:
        digest.update(f"{rel}\0{size}\0{mtime}\0{label}\n".encode())
    return digest.hexdigest()[:DIGEST_CHARS]


def array_digest(class_names: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> str:
    """One split held as arrays: its labels and up to SAMPLE_ROWS evenly spaced images."""
    digest = _start(class_names, tuple(x.shape[1:]), len(x))
    digest.update(np.ascontiguousarray(y, dtype=np.int64).data)
    rows = np.linspace(0, len(x) - 1, min(len(x), SAMPLE_ROWS)).astype(np.int64) if len(x) else []
    digest.update(np.ascontiguousarray(x[rows]).data)
    return digest.hexdigest()[:DIGEST_CHARS]


def split_digests(data) -> dict[str, str]:
    """Each split's digest of a TaskData or Task: the ones the data came with (an image folder's, from its files),
    else computed from the arrays."""
    known = getattr(data, "digests", None) or {}
    return {split: known.get(split) or array_digest(data.class_names, *getattr(data, split)) for split in SPLITS}


def location(data) -> str:
    """Where a TaskData's or Task's data is: its folder (an image folder), else its source as loading it said
    (the IDX folder, keras.datasets.NAME, the tfds or function source; empty for arrays made in Python)."""
    settings = getattr(data, "settings", None) or getattr(data, "data_settings", None) or {}
    dataset = str(settings.get("dataset", ""))
    return dataset if dataset and Path(dataset).is_dir() else data.source
