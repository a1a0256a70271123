"""Image folders: find the classes and files, decode every image once into a uint8 cache, split it.

No TensorFlow here (numpy and Pillow only), so a folder's structure is checked in well under a second, before
TensorFlow loads. Decoding runs in worker processes started by "forkserver" (never fork: the parent may hold
TensorFlow's threads), and its result is kept as one .npy array per folder state, so later runs decode nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tftrain.config import BAD_IMAGES
from tftrain.errors import UserError, invalid
from tftrain.log import progress_log

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
Native = tuple[int, int, bool]  # a file's own height, width and whether it is gray
LAYOUTS = "PATH/<class>/<images>, or PATH/train/<class>/... with PATH/test/<class>/... and optionally PATH/val/"
IMAGES_ALLOWED = "PNG, JPEG, BMP or GIF files (.png .jpg .jpeg .bmp .gif) in it or its subfolders"
CACHE_VERSION = 2  # part of the key: bump when the decoded pixels or the json change meaning (2: size_rule)
# Measured on 2 shared cores, whole load_folder calls: 2,000 28x28 PNGs take 0.20 s in-process and 0.26 s with
# 2 forkserver workers (0.15-0.3 s to start the first pool); 20,000 take 1.7 s and 1.1 s; 16 12-megapixel JPEGs
# to 224x224, 0.26 s and 0.48 s. With the cores busy, 2 workers only break even at 20,000. So in-process below
# an estimated PARALLEL_SECONDS of in-process work: ~100 us per small file, ~15 ns per JPEG byte.
SECONDS_PER_FILE, SECONDS_PER_BYTE, PARALLEL_SECONDS = 100e-6, 15e-9, 1.5
CHUNK_FILES = 256  # files per task: amortizes the ~1 ms round trip per task, small enough to balance the workers
CHUNK_BYTES = 16 << 20  # decoded bytes per task, so a chunk of big images does not pile up in the pipe
AUTO_SIDES = (1, 64)  # an "auto" square side for photos of many sizes, at least and at most (task.auto_sides)
SAMPLE_FILES = 64  # headers read to guess an "auto" size and channels before the one decoding pass
PROGRESS_EVERY = 2.0  # seconds between progress lines
# What Pillow raises on a damaged or hostile file (struct.error for a cut header, EOFError for cut frames).
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
               Image.DecompressionBombError)  # fmt: skip


class UnreadableImage(Exception):
    """An image file that Pillow cannot decode: `path` and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Listing:
    """What `scan` found: class names (sorted folder names) and per split, (path relative to root, label)."""

    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]  # "all" (flat layout), or "train", "test" and maybe "val"
    ignored: int  # files that are not images by suffix (or hidden, like .DS_Store and macOS ._ files)
    stats: dict[str, tuple[int, int]]  # path relative to root -> (size, mtime_ns); (-1, -1) for a dangling link


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


# ---------------------------------------------------------------- decoding one file (also run in the workers)


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
    return _read(path, size, channels)[0]


def _read(path: Path | str, size: tuple[int, int], channels: int) -> tuple[np.ndarray, Native]:
    """`read_image`, and the file's own (height, width, gray) as its header says."""
    try:
        with Image.open(path) as image:
            native = (image.size[1], image.size[0], image.mode in GRAY_MODES)
            if image.format == "JPEG":
                image.draft("L" if channels == 1 else "RGB", (size[1], size[0]))  # decode at reduced scale
            image.load()
            return to_pixels(image, size, channels), native
    except READ_ERRORS as e:
        raise UnreadableImage(Path(path), _reason(e, path)) from None


def _reason(error: Exception, path: Path | str) -> str:
    """Pillow's message on one line, without the file name it repeats (the caller names the file)."""
    text = " ".join(str(error).replace(f" {str(path)!r}", "").split())
    return text or type(error).__name__


def _read_headers(root: str, rels: list[str]) -> list[Native | str]:
    """(height, width, gray) of each file from its header alone (no pixels decoded), or why it cannot be read."""
    out: list[Native | str] = []
    for rel in rels:
        try:
            with Image.open(os.path.join(root, rel)) as image:
                out.append((image.size[1], image.size[0], image.mode in GRAY_MODES))
        except READ_ERRORS as e:
            out.append(_reason(e, os.path.join(root, rel)))
    return out


def _decode_rows(root: str, rels: list[str], size: tuple[int, int], channels: int):
    """A chunk of files decoded into consecutive rows, in the listing's order, with each file's own
    (height, width, gray); an unreadable file stays a zero row, its reason in place of those."""
    shape = (len(rels), *size) if channels == 1 else (len(rels), *size, 3)
    rows, natives = np.zeros(shape, np.uint8), []
    for j, rel in enumerate(rels):
        try:
            rows[j], native = _read(os.path.join(root, rel), size, channels)
            natives.append(native)
        except UnreadableImage as e:
            natives.append(e.reason)
    return rows, natives


# ---------------------------------------------------------------- scan: layout, classes, files


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, at any depth, sorted; hidden files and folders (.DS_Store, ._x.png) left
    out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan(path: str | Path) -> Listing:
    """The classes and image files of a folder in one of the LAYOUTS, checked before anything is decoded."""
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise UserError(
            f"image folder not found: received {str(path)!r}; allowed: an existing folder laid out as {LAYOUTS}"
        )
    if not root.is_dir():
        raise UserError(
            f"image folder expected: received the file {str(path)!r}; allowed: a folder laid out as {LAYOUTS}"
        )
    if not any(os.scandir(root)):
        raise UserError(f"image folder {root} is empty; allowed: a folder laid out as {LAYOUTS}")
    train = root / "train"
    if train.is_dir() and _subfolders(train):
        parts = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    else:
        parts = {"all": root}
    found = {name: _scan_classes(folder, root, name in ("train", "all")) for name, folder in parts.items()}
    loose = 0 if "all" in parts else sum(1 for e in os.scandir(root) if not _is_dir(e))  # e.g. a README
    class_names = tuple(found.get("train", found.get("all"))[0])
    for name in [name for name in parts if name in ("val", "test")]:
        _check_same_classes(root, name, class_names, tuple(found[name][0]))
    label = {name: k for k, name in enumerate(class_names)}
    splits = {
        name: [(rel, label[c]) for c, images in classes.items() for rel in sorted(images)]
        for name, (classes, _) in found.items()
    }
    stats = {rel: stat for classes, _ in found.values() for images in classes.values() for rel, stat in images.items()}
    return Listing(root, class_names, splits, loose + sum(ignored for _, ignored in found.values()), stats)


def _subfolders(folder: Path) -> list[str]:
    """Visible subfolder names, sorted (symlinks to folders count; .git, .ipynb_checkpoints and such do not)."""
    return sorted(e.name for e in os.scandir(folder) if _is_dir(e) and not e.name.startswith((".", "__MACOSX")))


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder, or a link to one; False for a link this process may not follow (/proc/1/cwd), as os.walk does."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _scan_classes(folder: Path, root: Path, primary: bool) -> tuple[dict[str, dict[str, tuple[int, int]]], int]:
    """Class name -> its image files (relative to root) with their (size, mtime), and the count of other files,
    for one split.
    Only the primary split (train/ or the folder itself) must have 2 classes: test/ and val/ must match it."""
    classes = _subfolders(folder)
    where = folder if folder == root else f"{root}/{folder.name}"
    loose = sum(1 for e in os.scandir(folder) if not _is_dir(e))  # files next to the class folders: ignored
    if primary and len(classes) < 2:
        extra = f" and {loose} files directly in it" if loose else ""
        raise UserError(
            f"image folder {where} has {len(classes)} class folder(s) ({_names(classes) or 'none'}){extra}; "
            f"allowed: at least 2 class folders, one per class, named after it ({LAYOUTS})"
        )
    found = {name: _walk_images(folder / name, root) for name in classes}
    empty = [name for name, (images, _) in found.items() if not images]
    if empty:
        others = sum(found[name][1] for name in empty)
        raise UserError(
            f"class folder(s) with no images in {where}: {_names(empty)} (received {others} other files); "
            f"allowed: {IMAGES_ALLOWED}"
        )
    return {name: images for name, (images, _) in found.items()}, loose + sum(n for _, n in found.values())


def _walk_images(folder: Path, root: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Image files anywhere under `folder` (following symlinks, each real folder once so a link loop ends),
    relative to root, with their (size, mtime) for the cache key; and the number of other files."""
    images, ignored, seen, todo, start = {}, 0, set(), [str(folder)], len(str(root)) + 1
    while todo:
        here = todo.pop()
        try:
            real = os.path.realpath(here)  # raises on a link it may not read (/proc/1/cwd)
            if real in seen:
                continue
            seen.add(real)
            entries = list(os.scandir(here))
        except OSError:  # unreadable folder: skipped, as os.walk does
            continue
        for e in entries:
            if _is_dir(e):
                if not e.name.startswith("."):
                    todo.append(e.path)
            elif e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith("."):
                images[e.path[start:]] = _stat(e)
            else:
                ignored += 1
    return images, ignored


def _check_same_classes(root: Path, split: str, train: tuple[str, ...], other: tuple[str, ...]) -> None:
    """test/ or val/ must name exactly train/'s classes: a label means the same class in every split."""
    if other != train:
        only_train, only_other = sorted(set(train) - set(other)), sorted(set(other) - set(train))
        raise UserError(
            f"class folders of {root}/{split} differ from train/: only in train/: {_names(only_train) or 'none'}; "
            f"only in {split}/: {_names(only_other) or 'none'}; allowed: the same class folders in train/ and {split}/"
        )


def _names(names: list[str], limit: int = 10) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------- load_folder


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
) -> FolderData:
    """An image folder as train, validation and test arrays, decoded once and cached (see the module docstring).
    image_size (height, width) None: the size at least half the files have (enlarged, aspect kept, to a shorter
    side of at least auto_sides[0]), else (photos of many sizes) a square of the files' median shorter side,
    rounded down to a multiple of 8 (from 16 up) within `auto_sides` (the model's: see task.auto_sides).
    channels None: 1 if every image is gray, else 3."""
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
    key = _cache_key(rels, stats, image_size or ["auto", *auto_sides], channels)
    folder = _cache_folder(cache_dir)
    cached = _load_cache(folder, key, rels, say)
    if cached is None:
        images, meta = _decode_folder(
            listing, rels, stats, (image_size, auto_sides), channels, bad_images, folder / key, say
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
    parts = [(_gather(images, r), labels[r]) for r in rows]
    source = f"image folder {listing.root} ({len(rels)} files)"
    skipped = tuple(str(listing.root / rel) for rel in unreadable)
    return FolderData(listing.class_names, size, depth, *parts, skipped, cached is not None, source, listing.ignored)


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


def _short(path: Path | str, limit: int = 48) -> str:
    """A path cut from the left to keep progress lines under 100 characters."""
    text = str(path)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


# ---------------------------------------------------------------- the cache


def _stat(entry: os.DirEntry) -> tuple[int, int]:
    try:
        st = entry.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:  # a dangling symlink: listed, then reported unreadable by the decode
        return -1, -1


def _cache_key(rels: list[str], stats: list[tuple[int, int]], image_size, channels) -> str:
    """sha256 of every file's relative path, size and mtime, and of the request (so "auto" needs no header pass)."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, list(image_size), channels or "auto"]).encode())
    for rel, (size, mtime) in zip(rels, stats, strict=True):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def _cache_folder(cache_dir: Path | None) -> Path:
    base = cache_dir or os.environ.get("TFTRAIN_CACHE_DIR")
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tftrain"
    return Path(base).expanduser() / "images"


def _load_cache(folder: Path, key: str, rels: list[str], say) -> tuple[np.ndarray, dict] | None:
    """The cached array and its json, or None when missing, stale or damaged (then it is decoded again)."""
    start, npy = time.monotonic(), folder / f"images-{key}.npy"
    try:
        meta = json.loads((folder / f"images-{key}.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("paths") != rels:
            return None
        images, mapped = _open_npy(npy)
    except (OSError, ValueError, KeyError):
        return None
    if len(images) != len(rels):
        return None
    how = ", memory-mapped" if mapped else ""
    say(f"loaded {len(rels):,} images from the cache {_short(npy)} ({time.monotonic() - start:.1f} s{how})")
    return images, meta


def _open_npy(npy: Path) -> tuple[np.ndarray, bool]:
    """Into memory when under half the free memory (the splits are copies, so twice the size is needed), else
    memory-mapped: the split copies then are the only resident copy."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        free = 1 << 62
    mapped = npy.stat().st_size > free / 2
    return np.load(npy, mmap_mode="r" if mapped else None), mapped


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `path` and rename over it, so a killed run never leaves half a file under the final name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Rows:
    """Where decoded rows go, in listing order: a temporary .npy in the cache folder, or memory if it cannot be
    written there (one warning line)."""

    def __init__(self, stem: Path, shape: tuple[int, ...]):
        self.npy, self.shape, self.done, self.array = stem.with_name(f"images-{stem.name}.npy"), shape, 0, None
        self.tmp, self.file = self.npy.with_name(f".{self.npy.name}.{os.getpid()}.tmp"), None
        try:
            self.npy.parent.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.npy.parent).free < np.prod(shape) + (64 << 20):
                raise OSError(f"needs {np.prod(shape) / 1e9:.1f} GB free")
            self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish() or close()
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(self.file, header)
        except OSError as e:
            self.close()
            log.warning(f"cannot write the image cache in {self.npy.parent} ({e}); keeping images in memory only")
            self.array = np.zeros(shape, np.uint8)

    def add(self, rows: np.ndarray) -> None:
        if self.file:
            try:
                self.file.write(rows.tobytes())
            except OSError as e:  # the disk filled up after the check in __init__
                raise UserError(
                    f"cannot write the image cache {self.tmp}: {e}; allowed: a cache folder with "
                    f"{np.prod(self.shape) / 1e9:.1f} GB free (cache_dir, or env TFTRAIN_CACHE_DIR)"
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
        _write_atomic(self.npy.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta)))
        return _open_npy(self.npy)[0], str(self.npy)

    def close(self) -> None:
        """Drop the temporary file, if this run made one and it was not renamed into place."""
        if self.file:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
        self.file = None


# ---------------------------------------------------------------- decoding a folder


def _decode_folder(listing, rels, stats, image_size, channels, bad_images, stem, say) -> tuple[np.ndarray, dict]:
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
            natives, out = _decode_pass(pool, workers, root, rels, size, depth, stem, say)
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
    say(f"decoded {len(rels):,} images in {time.monotonic() - start:.1f} s; cache: {_short(where, 50)}")
    return images, meta


def _decode_pass(pool, workers, root, rels, size, channels, stem, say) -> tuple[list[Native | str], _Rows]:
    """Every file decoded at `size` and `channels` into rows of the cache (not yet complete: the caller finishes
    or drops them), and each file's own (height, width, gray) or why it cannot be read."""
    shape = (len(rels), *size) if channels == 1 else (len(rels), *size, 3)
    how = f"{workers} processes" if workers > 1 else "in-process"
    say(f"decoding {len(rels):,} images from {_short(root, 40)} ({how})")
    out, natives = _Rows(stem, shape), []
    try:
        chunks = _chunks(rels, min(CHUNK_FILES, CHUNK_BYTES // int(np.prod(shape[1:]))), workers)
        for _, (rows, part) in _map(pool, _decode_rows, root, chunks, "decoding", say, size, channels):
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
    heads = _read_headers(root, rels[:: max(1, len(rels) // SAMPLE_FILES)])
    if image_size[0] is None and _dominant(_readable(heads)) is None:
        return None
    return _auto(heads, image_size, channels)


def _resolve(pool, workers, root, rels, image_size, channels, say) -> tuple[tuple[int, int], int]:
    """`_auto` from every file's header (no pixels decoded)."""
    say(f"reading the sizes of {len(rels):,} images from {_short(root, 40)}")
    chunks = _chunks(rels, CHUNK_FILES, workers)
    return _auto([h for _, part in _map(pool, _read_headers, root, chunks, "reading sizes", say) for h in part],
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


def _map(pool, fn, root: str, chunks: list[list], what: str, say, *args) -> Iterator[tuple[int, object]]:
    """fn(root, chunk, *args) for each chunk, in order, as (index of the chunk's first item, result); a progress
    line at most every PROGRESS_EVERY seconds."""
    if pool is None:
        results = (fn(root, chunk, *args) for chunk in chunks)
    else:
        results = (f.result() for f in [pool.submit(fn, root, chunk, *args) for chunk in chunks])
    first, total, last = 0, sum(map(len, chunks)), time.monotonic()
    for chunk, result in zip(chunks, results, strict=True):
        yield first, result
        first += len(chunk)
        if time.monotonic() - last >= PROGRESS_EVERY and first < total:
            say(f"{what} ... {first:,}/{total:,}")
            last = time.monotonic()


# ---------------------------------------------------------------- unreadable files and splits


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
    """The rows of `images`: a view when they are one consecutive run (test/ and val/ folders), else a copy."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return images[rows[0] : rows[-1] + 1]
    return images[rows]
