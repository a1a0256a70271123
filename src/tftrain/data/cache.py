"""The image cache: a folder's decoded images kept as one .npy array (and a .json of what they are) per folder
state, keyed by the files' names, sizes and modification times and the size and channels asked for, so that
later runs decode nothing. Written beside its final name and renamed, so a crash never leaves half an entry."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tftrain.errors import UserError

log = logging.getLogger(__name__)


CACHE_VERSION = 2  # part of the key: bump when the decoded pixels or the json change meaning (2: size_rule)


def over_budget(size: float, in_memory_mb: float) -> bool:
    """Whether `size` bytes of decoded images are over the in-memory budget: they then train from the cache file."""
    return size > in_memory_mb * 1e6


def megabytes(size: int) -> str:
    """A size for messages, in MB with a decimal below 100 MB (5.4 MB is not "5 MB, over 5")."""
    return f"{size / 1e6:,.1f} MB" if size < 100e6 else f"{size / 1e6:,.0f} MB"


def short_path(path: Path | str, limit: int = 48) -> str:
    """A path cut from the left to keep progress lines under 100 characters."""
    text = str(path)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def cache_key(rels: list[str], stats: list[tuple[int, int]], image_size, channels) -> str:
    """sha256 of every file's relative path, size and mtime, and of the request (so "auto" needs no header pass)."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, list(image_size), channels or "auto"]).encode())
    for rel, (size, mtime) in zip(rels, stats, strict=True):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def cache_folder(cache_dir: Path | None) -> Path:
    base = cache_dir or os.environ.get("TFTRAIN_CACHE_DIR")
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tftrain"
    return Path(base).expanduser() / "images"


def load_cache(
    folder: Path, key: str, rels: list[str], say, count: int | None = None
) -> tuple[np.ndarray, dict] | None:
    """The cached array and its json, or None when missing, stale or damaged (then it is decoded again); `count`:
    the images it must hold (None: one per path)."""
    start, npy = time.monotonic(), folder / f"images-{key}.npy"
    try:
        meta = json.loads((folder / f"images-{key}.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("paths") != rels:
            return None
        images = open_npy(npy)
    except (OSError, ValueError, KeyError):
        return None
    if len(images) != (len(rels) if count is None else count):
        return None
    say(f"found {len(images):,} decoded images in the cache {short_path(npy)} ({time.monotonic() - start:.1f} s)")
    return images, meta


def open_npy(npy: Path) -> np.memmap:
    """The cached images, memory-mapped: the splits are then read from it, into memory or a batch at a time
    (folders.load_folder decides)."""
    return np.load(npy, mmap_mode="r")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `path` and rename over it, so a killed run never leaves half a file under the final name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Rows:
    """Where decoded rows go, in listing order: a temporary .npy in the cache folder, or memory if it cannot be
    written there (one warning line)."""

    def __init__(self, stem: Path, shape: tuple[int, ...], in_memory_mb: float = float("inf")):
        self.npy, self.shape, self.done, self.array = stem.with_name(f"images-{stem.name}.npy"), shape, 0, None
        self.tmp, self.file = self.npy.with_name(f".{self.npy.name}.{os.getpid()}.tmp"), None
        size = int(np.prod(shape))
        try:
            self.npy.parent.mkdir(parents=True, exist_ok=True)
            if (free := shutil.disk_usage(self.npy.parent).free) < size + (64 << 20):
                raise OSError(f"it needs {megabytes(size + (64 << 20))} free, has {megabytes(free)}")
            self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish() or close()
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(self.file, header)
        except OSError as e:
            self.close()
            if over_budget(size, in_memory_mb):  # they must stream from the file: in memory they may not fit
                raise UserError(
                    f"cannot write the image cache in {self.npy.parent} ({e}); the {megabytes(size)} of decoded "
                    f"images are over in_memory_mb={in_memory_mb:g}, so they train from that file; allowed: a cache "
                    "folder with room (env TFTRAIN_CACHE_DIR), or a larger in_memory_mb"
                ) from None
            log.warning(f"cannot write the image cache in {self.npy.parent} ({e}); keeping images in memory only")
            self.array = np.zeros(shape, np.uint8)

    def add(self, rows: np.ndarray) -> None:
        if self.file:
            try:
                self.file.write(rows.tobytes())
            except OSError as e:  # the disk filled up after the check in __init__
                raise UserError(
                    f"cannot write the image cache {self.tmp}: {e}; allowed: a cache folder with "
                    f"{megabytes(int(np.prod(self.shape)))} free (cache_dir, or env TFTRAIN_CACHE_DIR)"
                ) from None
        else:
            self.array[self.done : self.done + len(rows)] = rows
        self.done += len(rows)

    def finish(self, meta: dict) -> tuple[np.ndarray, str]:
        """The whole array, and where it is kept; the json (written last) marks the cache complete."""
        if self.array is not None:
            return self.array, "memory only"
        self.file.close()
        os.replace(self.tmp, self.npy)
        write_atomic(self.npy.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta)))
        return open_npy(self.npy), str(self.npy)

    def close(self) -> None:
        """Drop the temporary file, if this run made one and it was not renamed into place."""
        if self.file:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
        self.file = None
