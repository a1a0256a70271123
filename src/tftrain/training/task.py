"""The task: what to learn and how to build the model for it, the one seam between data and models.

`resolve_task` makes one from the config's `dataset` and `model` (`train` calls it when given none; the main job
and a sweep resolve it once and pass it); the built-ins, an image folder, a tensorflow-datasets dataset, a user
function, a keras.applications architecture, a user's builder and a .keras file all take the same road. A Python
user can make their own:

    task = Task("flowers", ("daisy", "rose"), (x_train, y_train), (x_val, y_val), (x_test, y_test),
                build_model=lambda: my_keras_model_taking_raw_pixels())
    train(TrainConfig.from_flat(...), task)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from tftrain.config import TrainConfig
from tftrain.errors import UserError
from tftrain.values import check_named, default_run_name, name_label


@dataclass(frozen=True)
class Task:
    """Splits of uint8 images, (N, H, W) gray or (N, H, W, 3), with int labels in 0..len(class_names)-1, and
    `build_model`: called with no arguments inside the strategy's scope and under the precision policy, it returns
    a Keras model that takes float32 raw pixels (0..255) of shape (H, W[, 3]) and answers float32 probabilities."""

    name: str  # for run and registered model names
    class_names: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    build_model: Callable
    source: str = ""
    resolved: dict[str, str] = field(default_factory=dict)  # what was worked out, logged as params
    # how evaluate and export load these splits again (TaskData.settings); empty for arrays made in Python, whose
    # models are evaluated with an explicit dataset
    data_settings: dict = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # per split, when the data knew them (TaskData.digests)

    def __post_init__(self) -> None:
        shape = self.input_shape
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
            raise UserError(f"task {self.name}: images must be (N, H, W) or (N, H, W, 3); received (N, {shape})")
        for split, (x, y) in (("train", self.train), ("validation", self.validation), ("test", self.test)):
            if x.shape[1:] != shape or len(x) != len(y) or not len(x):
                raise UserError(
                    f"task {self.name}: the {split} split has {len(x)} images of shape {x.shape[1:]} and {len(y)} "
                    f"labels; allowed: at least one image, shape {shape}, one label per image"
                )
            if y.size and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise UserError(
                    f"task {self.name}: {split} labels run from {y.min()} to {y.max()}; allowed: 0 to "
                    f"{len(self.class_names) - 1}, one per class name"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label(self) -> str:
        """The task's name as run and registered model names take it: letters, digits and '-'."""
        return name_label(self.name)

    @property
    def model_label(self) -> str:
        """For a task made in Python, its build function's name as run names take it (empty for a lambda or a
        callable object); a task the config names is named by the config's model instead."""
        name = getattr(self.build_model, "__name__", "")
        return name_label(name) if name.isidentifier() else ""

    @functools.cached_property  # hashing the arrays once (a frozen dataclass keeps its __dict__ for this)
    def identity(self) -> str:
        """Empty for a task the config names (its settings are the config's); for one made in Python, a digest of
        its name, classes and arrays, so that two such tasks trained with one config are two commands."""
        if self.data_settings:
            return ""
        digest = hashlib.blake2b(repr((self.name, self.class_names)).encode(), digest_size=16)
        for x, y in (self.train, self.validation, self.test):
            digest.update(np.ascontiguousarray(x).data)
            digest.update(np.ascontiguousarray(y).data)
        return digest.hexdigest()

    def build_loss(self, reduction: str | None = "sum_over_batch_size") -> keras.losses.Loss:
        """Cross-entropy of the model's probabilities against the integer labels. fit takes the batch mean; the
        custom loop asks for one value per example (reduction None) and averages over the global batch itself."""
        return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)

    def build_metrics(self, prefix: str = "") -> list[keras.metrics.Metric]:
        """What each epoch reports besides the loss, named as fit names them (`prefix` "val_" for validation)."""
        return [keras.metrics.SparseCategoricalAccuracy(name=f"{prefix}accuracy")]


def resolve_task(cfg: TrainConfig, data=None) -> Task:
    """The task `cfg.data.dataset` and `cfg.model.name` name: data loaded (decoded once, cached), the model's builder
    checked to exist; `data` the TaskData already loaded for the same data settings (a sweep's trials share it).
    TensorFlow may run here (tfds, user functions): call it after the runtime is set up."""
    from tftrain.models.build import model_builder

    check_named(cfg)
    data = data or load_data(cfg)
    build = model_builder(
        cfg.model.name, len(data.class_names), data.input_shape, cfg.model.weights, cfg.model.freeze_backbone
    )
    return Task(data.name, data.class_names, data.train, data.validation, data.test, build, data.source, data.resolved,
                data.settings, data.digests)  # fmt: skip


# image_size=auto on photos of many sizes: the square side's bounds by model kind. keras.applications
# architectures were designed (and their weights trained) at 96 to 224; the built-ins and builders stay at most
# 64, so that a CPU trains them in minutes, and small images are never enlarged for them.
AUTO_SIDES = {"application": (96, 224)}
AUTO_SIDES_OTHER = (1, 64)  # never enlarged


def auto_sides(model: str) -> tuple[int, int]:
    """The bounds of an "auto" square side for `model` (see folders.load_folder)."""
    from tftrain.values import model_kind

    return AUTO_SIDES.get(model_kind(model), AUTO_SIDES_OTHER)


def load_data(cfg: TrainConfig):
    """The TaskData of cfg's data settings (the data group of TrainConfig), sized for cfg's model."""
    from tftrain.config import parse_image_size
    from tftrain.data.datasets import load_task_data

    d = cfg.data
    return load_task_data(
        d.dataset, d.data_dir, image_size=parse_image_size(d.image_size),
        channels=None if d.channels == "auto" else int(d.channels), test_split=d.test_split,
        validation_split=d.validation_split, bad_images=d.bad_images, auto_sides=auto_sides(cfg.model.name),
        in_memory_mb=d.in_memory_mb,
    )  # fmt: skip


def run_name(cfg: TrainConfig, task: Task) -> str:
    """The name of the run training `task` gets: cfg's run_name, or for auto, the model and the data (a task made
    in Python: its build function's name, if it has one, and the task's name)."""
    return default_run_name(cfg, task.label, model=task.model_label if task.identity else None)
