"""Two more kinds of `dataset`: a prepared tensorflow-datasets dataset read offline (`tfds:NAME[:VERSION]`) and a
user function (`module:function` or `path/to/file.py:function`).

Both are read once into numpy (uint8 images, int32 labels), as image folders are, so an epoch never decodes again.
tensorflow-datasets is optional (`pip install tftrain[tfds]`) and imported only here, only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tftrain.config import IN_MEMORY_MB, parse_function
from tftrain.data.cache import CACHE_VERSION, Rows, cache_folder, cache_key, load_cache, over_budget, short_path
from tftrain.data.disk import DiskImages
from tftrain.data.images import conform
from tftrain.errors import UserError, invalid
from tftrain.log import progress_log
from tftrain.user_code import first_line, load_function

log = logging.getLogger(__name__)

_TFDS_SPEC = re.compile(r"tfds:(?P<name>[a-z][a-z0-9_]*)(:(?P<version>\d+\.\d+\.\d+))?")
_VERSION_DIR = re.compile(r"\d+\.\d+\.\d+")
_PROGRESS_EVERY = 2.0  # seconds between progress lines on stderr

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SourceData:
    class_names: tuple[str, ...]
    train: Split  # images uint8 (N, H, W) for 1 channel or (N, H, W, 3); labels int32 (N,)
    test: Split
    validation: Split | None  # when the source has its own
    source: str  # human-readable, e.g. "tfds mnist 3.0.1 from /path"


# --- tensorflow-datasets ---------------------------------------------------------------------------------------


def load_tfds(
    spec: str,
    data_dir: str,
    image_size: tuple[int, int] | None,
    channels: int | None,
    in_memory_mb: float = IN_MEMORY_MB,
    cache_dir: Path | None = None,
) -> SourceData:
    """`tfds:NAME[:VERSION]` prepared under `data_dir` (empty: TFDS_DATA_DIR or ~/tensorflow_datasets), read with
    `tfds.builder_from_directory` (no builder class, no download). VERSION defaults to the highest one present.
    Needs `train` and `test` splits; `validation` is used when present. Over `in_memory_mb` of images (and their
    size and channels known up front: asked for, or fixed by the dataset), kept on disk (see _on_disk)."""
    path = check_tfds(spec, data_dir)
    name = path.parent.name
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(str(path))
    except Exception as e:  # a folder that is not a prepared dataset: missing or broken dataset_info.json
        raise UserError(f"cannot read tfds dataset {spec} from {path}: {first_line(e)}") from e
    splits = list(builder.info.splits.keys())
    if "train" not in splits or "test" not in splits:
        raise invalid("dataset", spec, f"a dataset with 'train' and 'test' splits; {path} has: {', '.join(splits)}")
    image_key, label_key = _image_and_label(spec, builder.info)
    class_names = tuple(builder.info.features[label_key].names)
    what = f"tfds {name} {path.name}"
    read = {s: _tfds_split(builder, s, image_key, label_key) for s in ("train", "test", "validation") if s in splits}
    source = f"{what} from {path.parent.parent}"
    target = _known_target(builder.info.features[image_key].shape, image_size, channels)
    counts = {s: int(builder.info.splits[s].num_examples) for s in read}
    if target and over_budget(sum(counts.values()) * np.prod(target[0]) * (3 if target[1] == 3 else 1), in_memory_mb):
        return _on_disk(path, read, what, class_names, target, counts, source, cache_dir, in_memory_mb)
    return _materialize(read, what, class_names, image_size, channels, source)


def _known_target(shape, image_size, channels) -> tuple[tuple[int, int], int] | None:
    """The size and channels the images will have, when known before reading them: asked for, or the same for
    every image of the dataset (its Image feature's shape)."""
    height, width, depth = (tuple(shape) + (None, None, None))[:3]
    size = image_size or ((height, width) if None not in (height, width) else None)
    depth = channels or (None if depth is None else 1 if depth == 1 else 3)
    return (tuple(size), depth) if size and depth else None


def _on_disk(path: Path, read, what, class_names, target, counts, source, cache_dir, in_memory_mb) -> SourceData:
    """A tfds dataset over the in-memory budget: read once into the image cache (cache.py), its splits then read
    from there a batch at a time (disk.DiskImages), as a large image folder's are. Keyed by the prepared files'
    names, sizes and times and the target size and channels."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    rels = [str(f.relative_to(path)) for f in files]
    stats = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key, (size, depth) = "tfds-" + cache_key([str(path), *rels], [(0, 0), *stats], *target), target
    folder = cache_folder(cache_dir)
    cached = load_cache(folder, key, rels, progress_log.info, sum(counts.values()))
    if cached is None:
        shape = (sum(counts.values()), *size, *(() if depth == 1 else (3,)))
        rows = Rows(folder / key, shape, in_memory_mb)
        try:
            meta = {"version": CACHE_VERSION, "paths": rels, "splits": {}, "labels": {}}
            for split, pairs in read.items():
                first = rows.done
                _, labels = _read(pairs, f"{what} {split}", len(class_names), target, None, keep=rows.add)
                if rows.done - first != counts[split]:
                    raise UserError(f"{what} {split}: read {rows.done - first} images, its dataset_info says "
                                    f"{counts[split]}; prepare the dataset again")  # fmt: skip
                meta["splits"][split], meta["labels"][split] = [first, rows.done], labels.tolist()
            images, where = rows.finish(meta)
        finally:
            rows.close()
        progress_log.info(f"{what}: {len(images):,} images kept in {short_path(where)}, read a batch at a time")
    else:
        images, meta = cached
    done = {}
    for split, (first, end) in meta["splits"].items():
        x = DiskImages.of(images, np.arange(first, end)) if isinstance(images, np.memmap) else images[first:end]
        done[split] = (x, np.asarray(meta["labels"][split], np.int32))  # (in memory: the cache could not be written)
    return SourceData(tuple(class_names), done["train"], done["test"], done.get("validation"), source)


def check_tfds(spec: str, data_dir: str) -> Path:
    """The folder of the prepared dataset `tfds:NAME[:VERSION]` names, found without importing tensorflow-datasets
    (or TensorFlow): a missing package, folder, dataset or version is a user error."""
    match = _TFDS_SPEC.fullmatch(spec)
    if not match:
        raise invalid("dataset", spec, "tfds:NAME or tfds:NAME:VERSION (e.g. tfds:mnist:3.0.1)")
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise UserError(
            f"dataset {spec} needs tensorflow-datasets, which is not installed: "
            "pip install tftrain[tfds] (or pip install tensorflow-datasets)"
        )
    return _tfds_folder(spec, match["name"], match["version"], data_dir)


def _tfds_folder(spec: str, name: str, version: str | None, data_dir: str) -> Path:
    root = Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()
    if not root.is_dir():
        raise invalid("data_dir", str(root), "an existing folder of prepared tensorflow-datasets datasets")
    if not (root / name).is_dir():
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "downloads" and p.name[0] != ".")
        there = ", ".join(names) or "none there"
        raise invalid(
            "dataset", spec, f"a dataset prepared in {root}: {there} (online: tfds build {name} --data_dir {root})"
        )
    versions = sorted(
        (p.name for p in (root / name).iterdir() if p.is_dir() and _VERSION_DIR.fullmatch(p.name)),
        key=lambda v: tuple(int(part) for part in v.split(".")),
    )
    if version is None and versions:
        version = versions[-1]
    if version not in versions:
        found = ", ".join(versions) or "none (a dataset with configs is not supported)"
        raise invalid("dataset", spec, f"a version of {name} prepared in {root}: {found}")
    return root / name / version


def _image_and_label(spec: str, info) -> tuple[str, str]:
    """The names of the image and the class-label features: the supervised keys if they are those, else the only
    (or the `image`/`label`) Image and ClassLabel features."""
    import tensorflow_datasets as tfds

    features = info.features
    kinds = {key: type(feature) for key, feature in features.items()}
    keys = info.supervised_keys
    simple = isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)
    if simple and kinds.get(keys[0]) is tfds.features.Image and kinds.get(keys[1]) is tfds.features.ClassLabel:
        return keys
    images = [k for k, kind in kinds.items() if kind is tfds.features.Image]
    labels = [k for k, kind in kinds.items() if kind is tfds.features.ClassLabel]
    if not images or not labels:
        found = ", ".join(f"{k} ({kind.__name__})" for k, kind in kinds.items())
        raise invalid(
            "dataset", spec, f"an image classification dataset (an Image and a ClassLabel feature); has {found}"
        )
    return ("image" if "image" in images else images[0]), ("label" if "label" in labels else labels[0])


def _tfds_split(builder, split: str, image_key: str, label_key: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) batches of one split; batched (fast) when every image has the same shape."""
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (ex[image_key][..., :3], ex[label_key]))  # [..., :3] drops an alpha channel
    if None not in builder.info.features[image_key].shape:
        ds = ds.batch(1024)
    return ds.as_numpy_iterator()


# --- a user function -----------------------------------------------------------------------------------------


def load_function_source(spec: str, image_size: tuple[int, int] | None, channels: int | None) -> SourceData:
    """A user function `module:function` or `path/to/file.py:function` that returns the data.

    Contract: the function is called with no arguments and returns `(train, test, class_names)`.
    - `train` and `test`: `tf.data.Dataset`s (or any iterables) of `(image, label)` pairs, unbatched or batched.
    - `image`: shape (H, W) or (H, W, C) with C 1 or 3 (a batch adds a leading N), values 0..255, any numeric
      dtype (floats are rounded). Images of another size than the rest are resized to the most common size.
    - `label`: an int in 0..len(class_names)-1 (a batch: a 1-D array of them).
    - `class_names`: a sequence of at least 2 strings.
    The validation split is then held out of `train` (the function returns none).
    """
    parsed = parse_function(spec)
    if parsed is None:
        raise invalid("dataset", spec, "module:function or path/to/file.py:function")
    fn = load_function(spec, "dataset function")
    try:
        returned = fn()
    except Exception as e:
        raise UserError(f"dataset function {spec} raised {type(e).__name__}: {first_line(e)}") from e
    if not isinstance(returned, (tuple, list)) or len(returned) != 3:
        raise UserError(f"dataset function {spec} returned {_describe(returned)}; allowed: (train, test, class_names)")
    train, test, class_names = returned
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Iterable):
        raise UserError(f"dataset function {spec} returned class_names {_describe(class_names)}; allowed: 2+ strings")
    class_names = tuple(class_names)
    if len(class_names) < 2 or not all(isinstance(c, str) for c in class_names):
        raise UserError(f"dataset function {spec} returned class_names {class_names!r:.80}; allowed: 2+ strings")
    splits = {"train": _pairs(spec, "train", train), "test": _pairs(spec, "test", test)}
    return _materialize(splits, f"{parsed[1]}()", class_names, image_size, channels, f"function {spec}", spec)


def _pairs(spec: str, split: str, data) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The user's (image, label) elements as numpy; their own errors (a generator that raises) name the function."""
    if isinstance(data, (str, bytes, np.ndarray)) or not (
        hasattr(data, "as_numpy_iterator") or isinstance(data, Iterable)
    ):
        raise UserError(
            f"dataset function {spec} returned {split} as {_describe(data)}; allowed: a tf.data.Dataset or iterable of (image, label)"
        )
    iterator = iter(data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data)
    while True:
        try:
            element = next(iterator)
        except StopIteration:
            return
        except Exception as e:
            raise UserError(
                f"dataset function {spec}: reading {split} raised {type(e).__name__}: {first_line(e)}"
            ) from e
        if not isinstance(element, (tuple, list)) or len(element) != 2:
            raise UserError(
                f"dataset function {spec}: an element of {split} is {_describe(element)}; allowed: (image, label)"
            )
        yield _as_array(spec, element[0], f"an image of {split}"), _as_array(spec, element[1], f"a label of {split}")


def _as_array(spec: str, value, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise UserError(f"dataset function {spec}: {what} has differing shapes: {first_line(e)}") from e
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UserError(f"dataset function {spec}: {what} is {array.dtype} data; allowed: numbers")
    return array


# --- reading into numpy --------------------------------------------------------------------------------------


def _materialize(splits, what, class_names, image_size, channels, source, spec=None) -> SourceData:
    """Read every split once, then bring all images to one size and channel count (see `_target`)."""
    target = (image_size, channels) if image_size and channels else None  # known now: convert while reading
    read = {split: _read(pairs, f"{what} {split}", len(class_names), target, spec) for split, pairs in splits.items()}
    size, channels = _target(read, image_size, channels)
    done = {split: (_fit_all(chunks, size, channels), labels) for split, (chunks, labels) in read.items()}
    return SourceData(tuple(class_names), done["train"], done["test"], done.get("validation"), source)


def _read(pairs, what: str, n_classes: int, target, spec, keep=None) -> tuple[list[np.ndarray], np.ndarray]:
    """One split as chunks of uint8 images ((n, H, W) or (n, H, W, 3)) and all its labels; `keep`: where each chunk
    goes instead of the list returned (the image cache's rows)."""
    who = f"dataset function {spec}: " if spec else f"{what}: "
    chunks, labels, count, shown, last = [], [], 0, False, time.monotonic()
    keep = keep or chunks.append
    for images, y in pairs:
        if y.ndim == 0:  # one example, not a batch
            images, y = images[None], y[None]
        chunk = _pixels(images, y, who, what)
        labels.append(_labels(y, n_classes, who, what))
        keep(conform(chunk, *target) if target else chunk)
        count += len(y)
        if time.monotonic() - last > _PROGRESS_EVERY:
            progress_log.info(f"reading {what}: {count:,} images")
            shown, last = True, time.monotonic()
    if not count:
        raise UserError(f"{who}the {what.rsplit(' ', 1)[-1]} split is empty; allowed: at least one image")
    if shown:
        progress_log.info(f"reading {what}: {count:,} images, done")
    return chunks, np.concatenate(labels)


def _pixels(images: np.ndarray, y: np.ndarray, who: str, what: str) -> np.ndarray:
    shape = images.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)) or y.shape != shape[:1]:
        raise UserError(
            f"{who}{what} has an image of shape {shape[1:]} with labels {y.shape}; allowed: images (H, W) or (H, W, C) with C 1 or 3, one int label each"
        )
    if images.dtype != np.uint8:
        if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0 and images.max() <= 255):
            raise UserError(f"{who}{what} has pixel values {images.min()}..{images.max()}; allowed: 0..255")
        images = np.rint(images).astype(np.uint8)
    return images[..., 0] if len(shape) == 4 and shape[3] == 1 else images


def _labels(y: np.ndarray, n_classes: int, who: str, what: str) -> np.ndarray:
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
        raise UserError(f"{who}{what} has labels {y.ravel()[:5].tolist()}; allowed: ints 0..{n_classes - 1}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        bad = y[(y < 0) | (y >= n_classes)][0]
        raise UserError(f"{who}{what} has label {bad}; allowed: 0..{n_classes - 1} ({n_classes} class names)")
    return y.astype(np.int32)


def _target(read, image_size, channels) -> tuple[tuple[int, int], int]:
    """The size and channels asked for; None means what the data has: its most common size, 3 channels if any
    image has colour."""
    sizes = Counter()
    for chunks, _ in read.values():
        for chunk in chunks:
            sizes[chunk.shape[1:3]] += len(chunk)
    size = image_size or sizes.most_common(1)[0][0]
    colour = any(chunk.ndim == 4 for chunks, _ in read.values() for chunk in chunks)
    if image_size is None and len(sizes) > 1:
        moved = sum(n for s, n in sizes.items() if s != size)
        progress_log.info(f"images differ in size: resizing {moved:,} to the most common, {size[0]}x{size[1]}")
    return tuple(size), channels or (3 if colour else 1)


def _fit_all(chunks: list[np.ndarray], size: tuple[int, int], channels: int) -> np.ndarray:
    return np.concatenate([conform(chunk, size, channels) for chunk in chunks])


def _describe(value) -> str:
    """A value in a few words on one line: its type, its length or a short repr."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = " ".join(f"{type(value).__name__} {value!r}".split())
    return text if len(text) <= 80 else text[:77] + "..."
