"""A split of images left on disk: rows of the decoded cache (.npy) read a batch at a time, so a folder larger than
memory trains with memory that does not grow with the folder.

Reads use os.preadv (positioned reads, no shared file offset, the GIL released), not a memory map: the pages a map
touches count in the process's resident memory until the kernel takes them back, so an epoch over a 5 GB cache
would look like (and under memory pressure behave like) a 5 GB process; read pages stay in the page cache, where
the next epoch finds them. Picklable (a Ray worker reopens the file by name). No TensorFlow here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np


class DiskImages:
    """Rows `rows` (sorted positions in the cache file) of the uint8 images in an .npy file: the parts of the numpy
    interface the trainer, evaluation and export use (len, shape, dtype, indexing by int, slice or int array,
    np.asarray), every access a read of just those rows."""

    def __init__(self, path: str | Path, offset: int, row_shape: tuple[int, ...], rows: np.ndarray):
        self.path, self.offset = str(path), int(offset)
        self.row_shape, self.rows = tuple(row_shape), np.asarray(rows, dtype=np.int64)
        self.row_bytes = int(np.prod(self.row_shape))
        self._fd: int | None = None
        self._opening = threading.Lock()  # tf.data reads on two threads: one descriptor

    @classmethod
    def of(cls, array: np.memmap, rows: np.ndarray) -> DiskImages:
        """The rows `rows` of a memory-mapped .npy (np.load(..., mmap_mode="r")), read without the map."""
        return cls(array.filename, array.offset, array.shape[1:], rows)

    # the numpy interface ----------------------------------------------------------------------------------

    dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.row_bytes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self.rows))[key])
        key = np.asarray(key)
        return self.read(np.flatnonzero(key) if key.dtype == bool else key)  # a mask, as numpy takes it

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self.read(np.arange(len(self.rows)))
        return images if dtype is None else images.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def __repr__(self) -> str:
        return f"DiskImages({len(self.rows):,} images of {self.row_shape} in {self.path})"

    # reading ----------------------------------------------------------------------------------------------

    def subset(self, positions: np.ndarray) -> DiskImages:
        """The images at `positions` of this split, still on disk (a worker's shard)."""
        return DiskImages(self.path, self.offset, self.row_shape, self.rows[positions])

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The images at `positions` (of this split, any order) as one array, in that order: one read for
        consecutive rows of the file (a validation batch, a slice), else one read per image."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        out = np.empty((len(positions), *self.row_shape), np.uint8)
        if not len(positions):
            return out
        rows = self.rows[positions]  # IndexError for positions out of range, as numpy's
        flat, fd = out.reshape(len(rows), self.row_bytes), self._file()
        if len(rows) == 1 or np.all(np.diff(rows) == 1):
            _read_exactly(fd, memoryview(flat).cast("B"), self.offset + int(rows[0]) * self.row_bytes, self.path)
            return out
        for slot, row in enumerate(rows.tolist()):
            _read_exactly(fd, memoryview(flat[slot]).cast("B"), self.offset + row * self.row_bytes, self.path)
        return out

    def _file(self) -> int:
        with self._opening:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_opening")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _fd=None, _opening=threading.Lock())

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def _read_exactly(fd: int, target: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
            raise OSError(f"the image cache {path} ended early (truncated while in use?)")
        done += got
