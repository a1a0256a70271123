"""Image folders: find the classes and files, decode every image once into a uint8 cache, split it.

No TensorFlow here (numpy and Pillow only), so a folder's structure is checked in well under a second, before
TensorFlow loads. Decoding runs in worker processes started by "forkserver" (never fork: the parent may hold
TensorFlow's threads), and its result is kept as one .npy array per folder state, so later runs decode nothing.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tftrain.config import BAD_IMAGES, IN_MEMORY_MB
from tftrain.data.cache import (
    CACHE_VERSION,
    Rows,
    cache_folder,
    cache_key,
    load_cache,
    megabytes,
    over_budget,
    short_path,
)
from tftrain.data.disk import DiskImages
from tftrain.data.fingerprint import SPLITS, files_digest
from tftrain.data.images import IMAGE_SUFFIXES, Native, decode_rows, read_headers
from tftrain.data.layout import Listing, scan
from tftrain.errors import UserError, invalid
from tftrain.log import progress_log

log = logging.getLogger(__name__)

# Measured on 2 shared cores, whole load_folder calls: 2,000 28x28 PNGs take 0.20 s in-process and 0.26 s with
# 2 forkserver workers (0.15-0.3 s to start the first pool); 20,000 take 1.7 s and 1.1 s; 16 12-megapixel JPEGs
# to 224x224, 0.26 s and 0.48 s. With the cores busy, 2 workers only break even at 20,000. So in-process below
# an estimated PARALLEL_SECONDS of in-process work: ~100 us per small file, ~15 ns per JPEG byte.
SECONDS_PER_FILE, SECONDS_PER_BYTE, PARALLEL_SECONDS = 100e-6, 15e-9, 1.5
CHUNK_FILES = 256  # files per task: amortizes the ~1 ms round trip per task, small enough to balance the workers
CHUNK_BYTES = 16 << 20  # decoded bytes per task, so a chunk of big images does not pile up in the pipe
IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker ahead of the writer: enough to keep every worker busy
AUTO_SIDES = (1, 64)  # an "auto" square side for photos of many sizes, at least and at most (task.auto_sides)
SAMPLE_FILES = 64  # headers read to guess an "auto" size and channels before the one decoding pass
PROGRESS_EVERY = 2.0  # seconds between progress lines


@dataclass(frozen=True)
class FolderData:
    """An image folder decoded and split: uint8 images (N, H, W) or (N, H, W, 3) and int32 labels per split."""

    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    channels: int
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    skipped: tuple[str, ...]  # unreadable files left out (bad_images="skip")
    from_cache: bool  # nothing was decoded
    source: str
    ignored: int = 0  # files that are not images by suffix, or hidden
    digests: dict[str, str] = field(default_factory=dict)  # per split, from its files (fingerprint.files_digest)


def load_folder(
    path: str | Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    test_split: float = 0.1,
    validation_split: float = 0.2,
    bad_images: str = "fail",
    cache_dir: Path | None = None,
    progress: bool = True,
    auto_sides: tuple[int, int] = AUTO_SIDES,
    in_memory_mb: float = IN_MEMORY_MB,
) -> FolderData:
    """An image folder as train, validation and test arrays, decoded once and cached (see the module docstring).
    image_size (height, width) None: the size at least half the files have (enlarged, aspect kept, to a shorter
    side of at least auto_sides[0]), else (photos of many sizes) a square of the files' median shorter side,
    rounded down to a multiple of 8 (from 16 up) within `auto_sides` (the model's: see task.auto_sides).
    channels None: 1 if every image is gray, else 3. Decoded images over `in_memory_mb` stay on disk, the splits
    read from the cache a batch at a time (disk.DiskImages); under it (or with no cache file), in memory."""
    _check_args(image_size, channels, test_split, validation_split, bad_images)
    image_size = tuple(int(v) for v in image_size) if image_size is not None else None
    channels = int(channels) if channels is not None else None
    say = _printer(progress)
    listing = scan(path)
    if listing.ignored:
        say(f"ignoring {listing.ignored:,} file(s) in {listing.root} that are not {', '.join(IMAGE_SUFFIXES)} images")
    rels = [rel for part in listing.splits.values() for rel, _ in part]
    labels = np.array([k for part in listing.splits.values() for _, k in part], np.int32)
    stats = [listing.stats[rel] for rel in rels]
    key = cache_key(rels, stats, image_size or ["auto", *auto_sides], channels)
    folder = cache_folder(cache_dir)
    cached = load_cache(folder, key, rels, say)
    if cached is None:
        images, meta = _decode_folder(
            listing, rels, stats, (image_size, auto_sides), channels, bad_images, folder / key, say, in_memory_mb
        )
    else:
        images, meta = cached
    if image_size is None and meta.get("size_rule"):
        say(f"image_size auto: {meta['image_size'][0]}x{meta['image_size'][1]}, {meta['size_rule']}; pass "
            "image_size=HxW to choose (larger sees more detail, costs time as its area)")  # fmt: skip
    unreadable = {rel: reason for rel, reason in meta["unreadable"]}
    _check_unreadable(listing.root, unreadable, bad_images)
    keep = np.array([rel not in unreadable for rel in rels])
    rows = _split_rows(listing, labels, keep, test_split, validation_split)
    size, depth = tuple(meta["image_size"]), meta["channels"]
    on_disk = isinstance(images, np.memmap) and over_budget(images.nbytes, in_memory_mb)
    if on_disk:
        say(f"{megabytes(images.nbytes)} of images, over in_memory_mb={in_memory_mb:g}: reading them from the "
            "cache a batch at a time")  # fmt: skip
    parts = [(DiskImages.of(images, r) if on_disk else _gather(images, r), labels[r]) for r in rows]
    source = f"image folder {listing.root} ({len(rels)} files)"
    skipped = tuple(str(listing.root / rel) for rel in unreadable)
    digests = _split_digests(listing.class_names, rels, stats, labels, rows, parts[0][0].shape[1:])
    return FolderData(listing.class_names, size, depth, *parts, skipped, cached is not None, source, listing.ignored,
                      digests)  # fmt: skip


def _split_digests(class_names, rels, stats, labels, rows, shape) -> dict[str, str]:
    """Each split's digest from the listing of its files: names, sizes, times and labels, no pixels."""
    return {
        split: files_digest(class_names, tuple(shape), [(rels[i], *stats[i], int(labels[i])) for i in index])
        for split, index in zip(SPLITS, rows, strict=True)
    }


def _check_args(image_size, channels, test_split, validation_split, bad_images) -> None:
    if image_size is not None and not (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in image_size)
    ):
        raise invalid("image_size", image_size, "None (auto: the most common size), or (height, width), each >= 1")
    if channels not in (None, 1, 3):
        raise invalid("channels", channels, "None (auto: 1 if every image is gray, else 3), 1 or 3")
    for name, value in (("test_split", test_split), ("validation_split", validation_split)):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise invalid(name, value, "a fraction between 0 and 1 (exclusive)")
    if bad_images not in BAD_IMAGES:
        raise invalid("bad_images", bad_images, " or ".join(BAD_IMAGES))


def _printer(progress: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if progress:
            progress_log.info(line)

    return say


def _decode_folder(listing, rels, stats, image_size, channels, bad_images, stem, say, in_memory_mb=IN_MEMORY_MB):
    """Every file decoded into one uint8 array (listing order) in the cache; the json lists the unreadable.
    An "auto" size or channels is taken from a sample's headers and checked against every file's own header
    during the decode, so a folder is read once; when the whole folder answers otherwise, it is decoded again at
    the right size. A sample with no dominant size (photos of all sizes) has every header read first instead."""
    root, start = str(listing.root), time.monotonic()
    workers = _workers(len(rels), sum(max(s, 0) for s, _ in stats))
    with _pool(workers) as pool:
        size, depth = image_size[0], channels
        if size is None or depth is None:
            size, depth = _guess(root, rels, image_size, channels) or _resolve(
                pool, workers, root, rels, image_size, channels, say
            )
        while True:
            natives, out = _decode_pass(pool, workers, root, rels, size, depth, stem, say, in_memory_mb)
            try:
                auto = _auto(natives, image_size, channels)
                if auto == (size, depth):
                    unreadable = {i: n for i, n in enumerate(natives) if isinstance(n, str)}
                    meta = _meta(listing, rels, size, depth, unreadable)
                    if image_size[0] is None:
                        meta["size_rule"] = _size_rule(natives, image_size[1])
                    images, where = out.finish(meta)
                    break
            finally:
                out.close()
            say(f"most images are {_describe(*auto)}, not {_describe(size, depth)} as sampled: decoding again")
            size, depth = auto
    say(f"decoded {len(rels):,} images in {time.monotonic() - start:.1f} s; cache: {short_path(where, 50)}")
    return images, meta


def _decode_pass(pool, workers, root, rels, size, channels, stem, say, in_memory_mb) -> tuple[list[Native | str], Rows]:
    """Every file decoded at `size` and `channels` into rows of the cache (not yet complete: the caller finishes
    or drops them), and each file's own (height, width, gray) or why it cannot be read."""
    shape = (len(rels), *size) if channels == 1 else (len(rels), *size, 3)
    how = f"{workers} processes" if workers > 1 else "in-process"
    say(f"decoding {len(rels):,} images from {short_path(root, 40)} ({how})")
    out, natives = Rows(stem, shape, in_memory_mb), []
    try:
        chunks = _chunks(rels, min(CHUNK_FILES, CHUNK_BYTES // int(np.prod(shape[1:]))), workers)
        for _, (rows, part) in _map(pool, workers, decode_rows, root, chunks, "decoding", say, size, channels):
            out.add(rows)
            natives.extend(part)
    except BaseException:
        out.close()
        raise
    return natives, out


def _describe(size: tuple[int, int], channels: int) -> str:
    return f"{size[0]}x{size[1]} {'gray' if channels == 1 else 'colour'}"


def _meta(listing: Listing, rels, image_size, channels, unreadable: dict[int, str]) -> dict:
    labels = [k for part in listing.splits.values() for _, k in part]
    bad = [[rels[i], reason] for i, reason in sorted(unreadable.items())]
    return {"version": CACHE_VERSION, "class_names": list(listing.class_names), "image_size": list(image_size),
            "channels": channels, "paths": rels, "labels": labels, "unreadable": bad}  # fmt: skip


def _readable(heads: list[Native | str]) -> list[Native]:
    return [h for h in heads if not isinstance(h, str)]


def _dominant(good: list[Native]) -> tuple[int, int] | None:
    """The size that at least half the files have (ties: first in listing order), if one does."""
    if not good:
        return None
    size, count = Counter((h, w) for h, w, _ in good).most_common(1)[0]
    return size if 2 * count >= len(good) else None


def _median_shorter_side(good: list[Native]) -> int:
    return int(np.median([min(h, w) for h, w, _ in good]))


def _median_side(good: list[Native], sides: tuple[int, int]) -> int:
    """The files' median shorter side, rounded down to a multiple of 8 from 16 up, within `sides`."""
    median = _median_shorter_side(good)
    return int(np.clip(median // 8 * 8 if median >= 16 else median, *sides))


def _auto(heads: list[Native | str], image_size, channels) -> tuple[tuple[int, int], int]:
    """The "auto" size and channels (see load_folder) of the readable files among `heads`, where not given;
    `image_size` is (requested size or None, auto_sides)."""
    size, sides = image_size
    good = _readable(heads)
    if not good:
        return tuple(size or (1, 1)), channels or 1
    if size is None:
        side = _median_side(good, sides)
        size = _at_least(_dominant(good), sides[0]) or (side, side)
    return tuple(size), channels or (1 if all(gray for _, _, gray in good) else 3)


def _at_least(size: tuple[int, int] | None, low: int) -> tuple[int, int] | None:
    """`size` enlarged, aspect kept, so that its shorter side is at least `low` (a keras.applications model's)."""
    if size is None or min(size) >= low:
        return size
    return round(size[0] * low / min(size)), round(size[1] * low / min(size))


def _size_rule(heads: list[Native | str], sides: tuple[int, int]) -> str:
    """Why "auto" chose its size, in words, for the line that says it."""
    good = _readable(heads)
    dominant = _dominant(good) if good else None
    if dominant and min(dominant) < sides[0]:
        return f"the size of most files ({dominant[0]}x{dominant[1]}) enlarged to at least {sides[0]} for this model"
    if not good or dominant:
        return ""
    median = _median_shorter_side(good)
    distinct = len({(h, w) for h, w, _ in good})
    bounds = f"at most {sides[1]}" if sides[0] == 1 else f"within {sides[0]} to {sides[1]}"
    return (f"a square of the files' median shorter side ({median} px; {distinct:,} sizes among {len(good):,} files), "
            f"{bounds} for this model")  # fmt: skip


def _guess(root: str, rels: list[str], image_size, channels) -> tuple[tuple[int, int], int] | None:
    """`_auto` of SAMPLE_FILES headers spread over the listing, or None when no size holds half of them (photos
    of many sizes: every header is read then, for a median of all)."""
    heads = read_headers(root, rels[:: max(1, len(rels) // SAMPLE_FILES)])
    if image_size[0] is None and _dominant(_readable(heads)) is None:
        return None
    return _auto(heads, image_size, channels)


def _resolve(pool, workers, root, rels, image_size, channels, say) -> tuple[tuple[int, int], int]:
    """`_auto` from every file's header (no pixels decoded)."""
    say(f"reading the sizes of {len(rels):,} images from {short_path(root, 40)}")
    chunks = _chunks(rels, CHUNK_FILES, workers)
    return _auto([h for _, part in _map(pool, workers, read_headers, root, chunks, "reading sizes", say) for h in part],
                 image_size, channels)  # fmt: skip


def _workers(count: int, total_bytes: int) -> int:
    """Worker processes: env TFTRAIN_DECODE_WORKERS if set (1: in-process), else 1 for folders small enough
    that starting a pool costs more than it saves, else one per usable CPU."""
    setting = os.environ.get("TFTRAIN_DECODE_WORKERS", "")
    if setting:
        if not (setting.isdigit() and int(setting) >= 1):
            raise invalid("TFTRAIN_DECODE_WORKERS", setting, "a whole number >= 1 (1: in-process), or unset for auto")
        return int(setting)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    estimate = count * SECONDS_PER_FILE + total_bytes * SECONDS_PER_BYTE
    return 1 if estimate < PARALLEL_SECONDS else cpus


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[cf.ProcessPoolExecutor | None]:
    """A process pool shared by the header and decode passes; on error or Ctrl-C, queued chunks are cancelled
    and only the running ones (a fraction of a second each) are waited for."""
    if workers < 2:
        yield None
        return
    context = multiprocessing.get_context("forkserver")  # not fork: the parent may run TensorFlow's threads
    # The server imports this module once, so each worker starts in ~0.05 s instead of importing numpy and Pillow.
    context.set_forkserver_preload(["__main__", __name__])
    pool = cf.ProcessPoolExecutor(workers, mp_context=context)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(items: list, per: int, workers: int) -> list[list]:
    """Consecutive chunks of at most `per` items, and at least 4 per worker so that none idles at the end."""
    per = max(1, min(per, -(-len(items) // (4 * workers))))
    return [items[i : i + per] for i in range(0, len(items), per)]


def _map(pool, workers, fn, root: str, chunks: list[list], what: str, say, *args) -> Iterator[tuple[int, object]]:
    """fn(root, chunk, *args) for each chunk, in order, as (index of the chunk's first item, result); a progress
    line at most every PROGRESS_EVERY seconds."""
    results = _in_flight(pool, workers, fn, root, chunks, args) if pool else (fn(root, c, *args) for c in chunks)
    first, total, last = 0, sum(map(len, chunks)), time.monotonic()
    for chunk, result in zip(chunks, results, strict=True):
        yield first, result
        first += len(chunk)
        if time.monotonic() - last >= PROGRESS_EVERY and first < total:
            say(f"{what} ... {first:,}/{total:,}")
            last = time.monotonic()


def _in_flight(pool, workers: int, fn, root: str, chunks: list[list], args: tuple) -> Iterator[object]:
    """The results of fn over `chunks`, in order, at most IN_FLIGHT_PER_WORKER chunks a worker ahead of the one
    being consumed, each dropped once handed over: decoded rows never pile up in memory (holding every future
    kept a whole folder's pixels, 4.9 GB for 100,000 images of 128x128, until the last was written)."""
    pending = collections.deque()
    for chunk in chunks:
        pending.append(pool.submit(fn, root, chunk, *args))
        if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _check_unreadable(root: Path, unreadable: dict[str, str], bad_images: str) -> None:
    """fail: the first unreadable file as a one-line error; skip: one warning line per file (at most 10)."""
    if not unreadable:
        return
    if bad_images == "fail":
        rel, reason = next(iter(unreadable.items()))
        more = f" ({len(unreadable) - 1} more unreadable)" if len(unreadable) > 1 else ""
        raise UserError(
            f"cannot read image {root / rel}: {reason}{more}; fix or remove it, or pass bad_images=skip to train without it"
        )
    for rel, reason in list(unreadable.items())[:10]:
        log.warning(f"skipped unreadable image {root / rel}: {reason}")
    if len(unreadable) > 10:
        log.warning(f"... and {len(unreadable) - 10} more unreadable images skipped")


def _split_rows(listing: Listing, labels, keep, test_split: float, validation_split: float) -> list[np.ndarray]:
    """Row indices of train, validation and test: the folder's own test/ and val/ when it has them, else
    stratified hold-outs (test first, then validation from the rest) that depend on no seed."""
    rows, first = {}, 0
    for name, part in listing.splits.items():
        index = np.arange(first, first + len(part))
        rows[name], first = index[keep[index]], first + len(part)
    train = rows.get("train", rows.get("all"))
    train, test = (train, rows["test"]) if "test" in rows else hold_out(train, labels, test_split, "test_split")
    if "val" in rows:
        validation = rows["val"]
    else:
        train, validation = hold_out(train, labels, validation_split, "validation_split")
    for name, index in (("train", train), ("validation", validation), ("test", test)):
        if len(index) == 0:
            raise UserError(
                f"the {name} split of {listing.root} is empty ({len(train)} train, {len(validation)} validation, "
                f"{len(test)} test images); allowed: at least one readable image in each split"
            )
    return [train, validation, test]


def hold_out(rows: np.ndarray, labels: np.ndarray, fraction: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) rows: per class (rows already sorted by path), a fixed permutation (default_rng(0)) picks
    round(fraction * n) images, at least 1 when the class has 2 or more, and always leaves one behind."""
    held = []
    for k in np.unique(labels[rows]):
        mine = rows[labels[rows] == k]
        take = min(len(mine) - 1, max(1, round(fraction * len(mine))))
        held.extend(mine[np.random.default_rng(0).permutation(len(mine))[:take]])
    if not held and len(rows):  # (no rows at all: _split_rows names the empty split)
        raise UserError(
            f"invalid value for {name}: received {fraction}, but every class has only 1 image left "
            f"({len(rows)} images); allowed: at least 2 images in some class (or, in an image folder, a folder of "
            "its own for that split)"
        )
    held = np.sort(np.array(held, dtype=np.int64))
    return np.setdiff1d(rows, held), held


def _gather(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of `images` in memory (one copy, whether `images` is mapped from the cache or not)."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return np.array(images[rows[0] : rows[-1] + 1])
    return images[rows]
