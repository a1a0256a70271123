"""Datasets: every kind of `dataset` as the same three uint8 splits, and the tf.data input pipelines.

The built-ins (IDX files: `data_dir` if given, then known local copies, then the Keras cache or download), image
folders (folders.py), tensorflow-datasets and user functions (sources.py) all end as `TaskData`: uint8 images
(N, H, W) for one channel or (N, H, W, 3), int labels, class names. Images stay uint8 (0..255) all the way into the
model: scaling lives inside the model, so a served model takes raw pixels.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tftrain.data.disk import DiskImages
from tftrain.errors import UserError

CLASS_NAMES = {
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
}  # fmt: skip
# Debian's dataset-fashion-mnist package installs the real Fashion-MNIST here.
KNOWN_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ()}
# Where keras.datasets.<name>.load_data() caches its download (under KERAS_HOME or ~/.keras).
KERAS_CACHE = {"fashion_mnist": "datasets/fashion-mnist", "mnist": "datasets/mnist.npz"}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08  # IDX magic: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions


@dataclass(frozen=True)
class Dataset:
    """The standard splits as uint8 images (N, 28, 28) and uint8 labels (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.name]


def _idx_shape(path: Path, raw: bytes, ndim: int) -> tuple[int, ...]:
    """The shape in an IDX header (the file's first 4 + 4 * ndim bytes), after checking its magic number."""
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"corrupt data file {path}: {len(raw)} bytes is shorter than an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        raise UserError(
            f"corrupt data file {path}: magic number {raw[:4].hex()} is not an IDX file of uint8 with {ndim} dimension(s)"
        )
    return struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])


def _read(path: Path, size: int = -1) -> bytes:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read data file {path}: {e}") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the magic number and that the size matches the header."""
    raw = _read(path)
    shape = _idx_shape(path, raw, ndim)
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise UserError(
            f"corrupt data file {path}: header says shape {shape} ({int(np.prod(shape))} bytes), body has {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_paths(folder: Path) -> dict[str, Path]:
    paths = {key: _find_idx_file(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] + ".gz" for k, p in paths.items() if p is None]
    if missing:
        from tftrain.data.images import IMAGE_SUFFIXES

        hint = ""
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            hint = f"; it holds images: a folder of class folders is a dataset (--dataset {folder}, -P dataset=...)"
        raise UserError(f"data folder {folder} lacks {', '.join(missing)}{hint}")
    return paths


def _check_shapes(paths: dict[str, Path], shapes: dict[str, tuple[int, ...]]) -> None:
    for split in ("train", "test"):
        x, y = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if x[1:] != (28, 28):
            raise UserError(f"data file {paths[f'x_{split}']}: images are {x[1:]}, expected (28, 28)")
        if x[0] != y[0]:
            raise UserError(f"data file {paths[f'y_{split}']}: {y[0]} labels for {x[0]} images")


def check_idx_folder(folder: Path) -> None:
    """The four IDX files are there and their headers agree: read from the first bytes of each, in milliseconds,
    so a wrong data_dir is said before TensorFlow loads."""
    paths = _idx_paths(folder)
    ndims = {k: 3 if k.startswith("x") else 1 for k in paths}
    _check_shapes(paths, {k: _idx_shape(p, _read(p, 4 + 4 * ndims[k]), ndims[k]) for k, p in paths.items()})


def read_idx_folder(name: str, folder: Path) -> Dataset:
    """The four standard IDX files of `folder`, checked against each other."""
    paths = _idx_paths(folder)
    arrays = {k: read_idx(p, 3 if k.startswith("x") else 1) for k, p in paths.items()}
    _check_shapes(paths, {k: a.shape for k, a in arrays.items()})
    for split in ("train", "test"):
        y, y_path = arrays[f"y_{split}"], paths[f"y_{split}"]
        if y.size and y.max() >= len(CLASS_NAMES[name]):
            raise UserError(f"data file {y_path}: label {y.max()} outside 0..{len(CLASS_NAMES[name]) - 1}")
    return Dataset(name=name, source=str(folder), **arrays)


def builtin_folder(name: str, data_dir: str = "") -> Path | None:
    """Where a built-in dataset's IDX files are: data_dir, else the first known local copy; None: Keras' turn."""
    if data_dir:
        return Path(data_dir)
    return next((Path(folder) for folder in KNOWN_DIRS[name] if Path(folder).is_dir()), None)


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def _from_keras(name: str) -> Dataset:
    """Keras' own loader: reads its cache, downloads when online."""
    import keras

    loader = {"fashion_mnist": keras.datasets.fashion_mnist, "mnist": keras.datasets.mnist}[name]
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    return Dataset(name, x_train, y_train, x_test, y_test, source=f"keras.datasets.{name}")


def load_dataset(name: str, data_dir: str = "") -> Dataset:
    """Find `name` in data_dir, else in known local copies, else through Keras; say everything tried if all fail."""
    folder = builtin_folder(name, data_dir)
    if folder is not None:
        return read_idx_folder(name, folder)
    tried = [f"{folder} (absent)" for folder in KNOWN_DIRS[name]]
    try:
        return _from_keras(name)
    except Exception as e:  # noqa: BLE001 - any download failure means "not found here"; we list it
        cache = _keras_home() / KERAS_CACHE[name]
        tried.append(f"Keras cache {cache} and download ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
    hint = " (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
    raise UserError(f"dataset {name} not found; tried: {'; '.join(tried)}; pass data_dir=FOLDER{hint}")


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task, whatever the source. `resolved`: what was worked out (image size, channels,
    images skipped), logged with the run."""

    name: str
    class_names: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    source: str
    resolved: dict[str, str] = field(default_factory=dict)
    # how to load the same splits again (dataset, data_dir, split fractions, bad_images): kept with the logged
    # model, so evaluate and export find the model's own test split without reading run params back
    settings: dict = field(default_factory=dict)
    # per split, when the source knows them cheaper than the arrays' (an image folder's files); fingerprint.py
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])


def _take(xy: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = xy
    return (x.subset(idx) if isinstance(x, DiskImages) else x[idx]), y[idx]


def load_task_data(
    dataset: str,
    data_dir: str = "",
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    test_split: float = 0.1,
    validation_split: float = 0.2,
    bad_images: str = "fail",
    auto_sides: tuple[int, int] | None = None,
    in_memory_mb: float | None = None,
) -> TaskData:
    """Any `dataset` (see config.dataset_kind) as train, validation and test splits of images of `image_size` and
    `channels` (None: as the data has them; for a folder, see folders.load_folder, with `auto_sides`)."""
    from tftrain.data.folders import hold_out
    from tftrain.data.images import conform
    from tftrain.values import dataset_kind, dataset_label, resolved_dataset

    kind, name = dataset_kind(dataset), dataset_label(dataset)
    settings = {"dataset": resolved_dataset(dataset), "data_dir": str(Path(data_dir).resolve()) if data_dir else "",
                "test_split": test_split, "validation_split": validation_split, "bad_images": bad_images,
                # as asked (None: auto), so that loading again finds a folder's decoded images in the same cache
                "image_size": image_size, "channels": channels, "auto_sides": auto_sides,
                # where the images live (memory or the cache on disk): evaluate and export load them the same way
                "in_memory_mb": in_memory_mb}  # fmt: skip
    memory = {"in_memory_mb": in_memory_mb} if in_memory_mb is not None else {}
    if kind == "folder":
        from tftrain.data.folders import load_folder

        sides = {"auto_sides": auto_sides} if auto_sides else {}
        f = load_folder(dataset, image_size, channels, test_split, validation_split, bad_images, **sides, **memory)
        resolved = {"bad_images_skipped": str(len(f.skipped)), "ignored_files": str(f.ignored),
                    "dataset_resolved": resolved_dataset(dataset)}  # fmt: skip
        data = TaskData(name, f.class_names, f.train, f.validation, f.test, f.source, digests=f.digests)
        return _resolved(data, resolved, settings)
    if kind == "builtin":
        d = load_dataset(dataset, data_dir)
        train, validation = split_validation(d.x_train, d.y_train, validation_split)
        test, class_names, source = (d.x_test, d.y_test), d.class_names, d.source
    else:
        from tftrain.data import sources

        s = (
            sources.load_tfds(dataset, data_dir, image_size, channels, **memory)
            if kind == "tfds"
            else sources.load_function_source(dataset, image_size, channels)
        )
        train, test, class_names, source = s.train, s.test, s.class_names, s.source
        if s.validation is not None:
            validation = s.validation
        else:
            kept, held = hold_out(np.arange(len(train[1])), train[1], validation_split, "validation_split")
            train, validation = _take(train, kept), _take(train, held)
    splits = [(conform(x, image_size, channels), y.astype(np.int32)) for x, y in (train, validation, test)]
    return _resolved(
        TaskData(name, tuple(class_names), *splits, source), {"dataset_resolved": resolved_dataset(dataset)}, settings
    )


def _resolved(data: TaskData, extra: dict[str, str], settings: dict) -> TaskData:
    shape = data.input_shape
    resolved = {
        "image_size_resolved": f"{shape[0]}x{shape[1]}",
        "channels_resolved": str(shape[2] if len(shape) == 3 else 1),
        # where training reads the images: memory, or the image cache on disk a batch at a time (in_memory_mb)
        "images_from": "disk" if isinstance(data.train[0], DiskImages) else "memory",
    }
    return dataclasses.replace(data, resolved={**resolved, **extra}, settings=settings)


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float):
    """Hold out the last `fraction` of the examples, as Keras' validation_split does: deterministic, seed-free."""
    n_val = int(round(len(x) * fraction))
    if n_val < 1 or n_val >= len(x):
        raise UserError(
            f"invalid value for validation_split: received {fraction} leaves {n_val} of {len(x)} examples "
            "for validation; allowed: a fraction that leaves at least one example on each side"
        )
    cut = len(x) - n_val
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    shard: tuple[int, int] = (1, 0),
    drop_remainder: bool = False,
    augment=None,
):
    """uint8 images and labels -> (seeded, reshuffled each epoch) batches of uint8 images and int32 labels.

    Images on disk (DiskImages, a folder over the in_memory_mb budget) stream from the cache file, see
    _disk_epochs: the same order for the same seed. Arrays stay in memory as two tensors. Each epoch draws one permutation of the example indices and gathers
    the whole epoch in that order in one op (37 MB for Fashion-MNIST's 48,000 training images); its batches are
    then slices of one tensor. Per batch, tf.data only hands over a slice: shuffling element by element (tf.data's
    shuffle) cost about 0.1 s an epoch, and a gather per batch about 0.03 s, on an MLP epoch of 0.15 s. Without
    shuffling, the batches are cut once. Images stay uint8 (a quarter of the bytes); the model casts them.
    `shard` = (count, index) keeps every count-th example: one worker's part under multi-worker training (on
    disk, each worker reads only its own rows).
    `drop_remainder`: full batches only (the rest of a shuffled epoch is drawn in a later one). `augment`: a map
    function over batches (augment.batch_augmenter), run on two threads ahead of the training step."""
    import tensorflow as tf

    count, index = shard
    indices = tf.range(index, len(x), count, dtype=tf.int64)
    size = int(indices.shape[0])
    if isinstance(x, DiskImages):
        epoch_in = _disk_epochs(x, y, batch_size, drop_remainder)
    else:
        images, labels = tf.constant(x), tf.constant(y.astype(np.int32))

        def epoch_in(order):
            return _batches(tf.gather(images, order), tf.gather(labels, order), batch_size, drop_remainder)

    if shuffle:
        # one fresh seed per pass over the data: Dataset.random draws a new stream for every iterator
        epochs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        ds = epochs.flat_map(lambda s: epoch_in(tf.random.experimental.stateless_shuffle(indices, seed=[seed, s])))
    else:
        ds = epoch_in(indices)
    batches = size // batch_size if drop_remainder else -(-size // batch_size)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=2, deterministic=True)
    ds = ds.prefetch(2).apply(tf.data.experimental.assert_cardinality(batches))  # for progress bars
    # tf.data's autotuner, left on, doubled one epoch in three on 2 cores (its threads took the training's core)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _disk_epochs(x: DiskImages, y: np.ndarray, batch_size: int, drop_remainder: bool):
    """For images on disk: an epoch's order (positions in the split) batched, each batch's images read from the
    cache file on two threads (DiskImages.read), its labels gathered from memory. Only the order (8 bytes an image)
    and the batches in flight are in memory: the shuffle is a whole permutation, not a buffer's."""
    import tensorflow as tf

    labels, row_shape = tf.constant(y.astype(np.int32)), x.row_shape

    def read(positions):
        images = tf.numpy_function(x.read, [positions], tf.uint8, stateful=False)
        return tf.ensure_shape(images, (None, *row_shape)), tf.gather(labels, positions)

    def epoch_in(order):
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
        return batches.map(read, num_parallel_calls=2, deterministic=True)

    return epoch_in


def _batches(images, labels, batch_size: int, drop_remainder: bool):
    """Consecutive batches of two tensors: the full ones cut by one reshape, then the smaller rest, if any and
    wanted."""
    import tensorflow as tf

    full = int(images.shape[0]) // batch_size
    cut = full * batch_size
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.reshape(images[:cut], (full, batch_size, *images.shape[1:])), tf.reshape(labels[:cut], (full, batch_size)))
    )
    if cut < int(images.shape[0]) and not drop_remainder:
        ds = ds.concatenate(tf.data.Dataset.from_tensors((images[cut:], labels[cut:])))
    return ds
