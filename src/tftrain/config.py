"""The training configuration: one frozen dataclass, its defaults, and the validation that runs before any work.

Every field is a CLI option of `tftrain train` (and `tftrain pipeline`) and a parameter of the MLproject's
`main` and `train` entry points, under the same name; `tests/test_project_files.py` keeps the three in step.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tftrain.errors import UserError, invalid

DATASETS = ("fashion_mnist", "mnist")  # built in; also an image folder, tfds:NAME[:VERSION] or a user function
MODELS = ("mlp", "cnn", "cnn_bn")  # built in; also a keras.applications name, a user builder or a .keras file
# keras.applications architectures by snake-case name (models.py maps them to their constructors)
APPLICATIONS = (
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_b0", "resnet50",
)  # fmt: skip
MIN_APPLICATION_SIZE = 32  # keras.applications refuse smaller images
BUILTIN_IMAGE_SIZE = (28, 28)  # fashion_mnist and mnist
CHANNELS = ("auto", "1", "3")
BAD_IMAGES = ("fail", "skip")
AUGMENTS = ("auto", "none", "flip", "standard", "strong")  # augment.py says what each does
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
ENGINES = ("auto", "fit", "custom")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
LAUNCHERS = ("none", "ray")
# why multi-worker training takes the custom engine, and what to ask for instead (config and runtime refuse fit)
FIT_CANNOT_RUN = (
    "Keras 3's fit cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585); allowed: engine=custom"
)
NO_TF_CONFIG = (
    "invalid value for TF_CONFIG: received no cluster; allowed: JSON naming the workers, as a scheduler writes it "
    "(strategy=multi_worker needs it), or launcher=ray, which starts the workers and writes it"
)
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
QUANTIZATIONS = ("float32", "dynamic_range", "float16", "int8")  # TFLite export modes
LR_SCHEDULES = ("constant", "piecewise", "cosine", "warmup_cosine")
SWITCH = ("auto", "true", "false")
RESUME = ("auto", "never")
DEFAULT_BOUNDARY_FRACTIONS = (0.5, 0.75)  # piecewise without lr_boundaries: drop at 50% and 75% of all steps
# batch_size=0 and learning_rate=0, the defaults, choose by model (`TrainConfig.training_batch`): the global batch
# that measured fastest on 2 CPU cores at full accuracy, and the peak learning rate picked for it by validation
# accuracy (README, "Measured figures"); other models (keras.applications, a builder, a .keras file) keep 128.
AUTO_BATCH = {"mlp": (1024, 0.008), "cnn": (256, 0.004), "cnn_bn": (256, 0.003)}
AUTO_BATCH_OTHER = (128, 0.002)
AUTO_MIN_STEPS = 20  # an automatic batch size is halved (down to 8) until an epoch has this many steps


# Each field's group, by concern; scripts/params.py writes the MLproject's main/train parameters and the README's
# parameter tables from the fields, a table per group in this order (the class keeps each group's fields together).
GROUPS = ("data", "model", "trainer", "runtime", "tracking")


def _opt(default, help: str, choices: tuple[str, ...] | None = None, *, group: str):
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}; received: group={group!r}")
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


@dataclass(frozen=True)
class TrainConfig:
    # data: what to train on
    dataset: str = _opt(
        "fashion_mnist",
        "fashion_mnist or mnist; a folder of class folders (PATH/<class>/<images>, or PATH/train/<class>/... with "
        "PATH/test/ and PATH/val/); tfds:NAME[:VERSION] (prepared in data_dir); or a function, module:function or "
        "file.py:function, returning (train, test, class_names).",
        group="data",
    )
    data_dir: str = _opt(
        "",
        "fashion_mnist/mnist: folder with the four IDX .gz files (empty: look in known places, then download); "
        "tfds: the tensorflow-datasets data folder.",
        group="data",
    )
    validation_split: float = _opt(
        0.2,
        "Fraction of the training data held out for validation (built-ins: its last part, as Keras does; folders: "
        "stratified; ignored when the folder has val/).",
        group="data",
    )
    test_split: float = _opt(
        0.1,
        "Image folders without test/: the fraction of each class held out as the test split (fixed, seedless).",
        group="data",
    )
    image_size: str = _opt(
        "auto",
        "HxW (or one number: a square) the model sees, every image resized to it; auto: the size most files have, "
        "else (photos of many sizes) a square of their median shorter side: 96 to 224 for keras.applications "
        "models, at most 64 for others.",
        group="data",
    )
    channels: str = _opt(
        "auto", "Colour channels the model sees; auto: 1 if every image is gray, else 3.", CHANNELS, group="data"
    )
    bad_images: str = _opt(
        "fail",
        "An unreadable image in a folder: fail names it and stops; skip leaves it out.",
        BAD_IMAGES,
        group="data",
    )
    augment: str = _opt(
        "auto",
        "Random changes to training images, in the input pipeline (never in the served model): flip (left-right), "
        "standard (flip, shifts and zooms up to 10%), strong (standard, rotations up to 18 degrees, contrast); auto: "
        "none for mlp, cnn, mnist and models with random layers of their own, else flip.",
        AUGMENTS,
        group="data",
    )
    # model: what is trained
    model: str = _opt(
        "mlp",
        "mlp, cnn (the write-up's), cnn_bn (three stages of convolutions with batch norm); a keras.applications name ("
        + ", ".join(APPLICATIONS)
        + "); a builder, module:function or file.py:function, called as "
        "build(input_shape, num_classes); or a .keras file to continue training.",
        group="model",
    )
    weights: str = _opt(
        "",
        "keras.applications models: a local weights file for the backbone, or imagenet (downloads); empty: none.",
        group="model",
    )
    freeze_backbone: bool = _opt(
        False, "keras.applications models: train the new head only (fine-tuning).", group="model"
    )
    # trainer: how long and how fast, the learning-rate schedule (steps are optimizer steps), the write-up's callbacks
    epochs: int = _opt(20, "Maximum number of epochs (early stopping may end sooner).", group="trainer")
    batch_size: int = _opt(
        0,
        "Examples per step per replica; the global batch is this times the replicas. 0: by model, a global batch of "
        "1024 for mlp, 256 for cnn and cnn_bn, 128 for other models (keras.applications, builders, .keras files), "
        "smaller (down to 8 per replica) where an epoch would be under 20 steps.",
        group="trainer",
    )
    learning_rate: float = _opt(
        0.0,
        "Adam's learning rate; the peak of a schedule. 0: by model, 0.008 for mlp at batch 1024, 0.004 for cnn "
        "and 0.003 for cnn_bn at 256, 0.002 for others at 128, times the square root of the batch's ratio to that.",
        group="trainer",
    )
    steps_per_execution: int = _opt(
        50, "Training steps per graph call: fewer Python round trips, same updates.", group="trainer"
    )
    lr_schedule: str = _opt("warmup_cosine", "Learning-rate schedule.", LR_SCHEDULES, group="trainer")
    lr_boundaries: str = _opt(
        "", "piecewise: comma-separated step boundaries; empty: 50% and 75% of all steps.", group="trainer"
    )
    lr_values: str = _opt(
        "", "piecewise: one more value than boundaries; empty: learning_rate x 1, 0.1, 0.01, ...", group="trainer"
    )
    decay_steps: int = _opt(0, "cosine, warmup_cosine: steps of the decay; 0: all training steps.", group="trainer")
    warmup_steps: int = _opt(0, "warmup_cosine: steps from 0 up to learning_rate; 0: one epoch.", group="trainer")
    cosine_alpha: float = _opt(
        0.0, "cosine, warmup_cosine: the final learning rate as a fraction of the peak.", group="trainer"
    )
    early_stopping: bool = _opt(
        True,
        "Stop when the monitored metric stops improving; under a decaying lr_schedule (the default), watched in the "
        "last quarter of the epochs only.",
        group="trainer",
    )
    early_stopping_monitor: str = _opt("val_loss", "Metric early stopping watches.", MONITORS, group="trainer")
    early_stopping_patience: int = _opt(3, "Epochs without improvement before stopping.", group="trainer")
    restore_best_weights: bool = _opt(True, "On early stop, go back to the best epoch's weights.", group="trainer")
    checkpoint: bool = _opt(True, "Save the best model as model_{epoch}_{val_accuracy}.keras.", group="trainer")
    checkpoint_monitor: str = _opt(
        "auto",
        "Metric that decides the best checkpoint; auto: early_stopping_monitor, so the best checkpoint is the "
        "epoch whose weights training ends with and registers.",
        ("auto", *MONITORS),
        group="trainer",
    )
    reduce_lr_on_plateau: str = _opt(
        "auto",
        "Cut the learning rate when the monitored metric stalls (the write-up's rule); auto: on with "
        "lr_schedule=constant only, off under a schedule (the default); true needs lr_schedule=constant.",
        SWITCH,
        group="trainer",
    )
    plateau_monitor: str = _opt("val_loss", "Metric the plateau rule watches.", MONITORS, group="trainer")
    plateau_factor: float = _opt(0.2, "Multiply the learning rate by this on a plateau.", group="trainer")
    plateau_patience: int = _opt(2, "Epochs without improvement before cutting the learning rate.", group="trainer")
    plateau_min_lr: float = _opt(1e-6, "Lower bound for the learning rate.", group="trainer")
    # runtime: where and how the steps run
    engine: str = _opt(
        "auto",
        "fit: Keras model.fit; custom: the write-up's GradientTape loop under tf.function; auto: custom with "
        "strategy=multi_worker or launcher=ray (where fit cannot run), else fit.",
        ENGINES,
        group="runtime",
    )
    strategy: str = _opt(
        "auto",
        "tf.distribute strategy; auto: multi_worker under TF_CONFIG, mirrored on several devices, else TF's default.",
        STRATEGIES,
        group="runtime",
    )
    cpu_replicas: int = _opt(
        0, "On a CPU-only host, split the CPU into N logical devices for mirrored; 0: no split.", group="runtime"
    )
    launcher: str = _opt(
        "none",
        "none: this process trains (under a scheduler's TF_CONFIG, as one of its workers); ray: `workers` Ray Train "
        "workers, each the custom engine under multi_worker, restarted from the last backup when one fails.",
        LAUNCHERS,
        group="runtime",
    )
    workers: int = _opt(2, "With launcher=ray: how many workers (one process each, 1 CPU or 1 GPU).", group="runtime")
    ray_address: str = _opt(
        "",
        "With launcher=ray: empty: a Ray cluster of this machine alone, started and stopped by the command; auto: the "
        "cluster `ray start` runs here; HOST:PORT: that cluster's head.",
        group="runtime",
    )
    max_failures: int = _opt(
        2, "With launcher=ray: times Ray restarts the workers after a worker failure before giving up.", group="runtime"
    )
    precision: str = _opt(
        "auto",
        "Keras dtype policy; mixed_* keep the output layer float32. auto: mixed_bfloat16 on NVIDIA GPUs of compute "
        "capability 8.0+, for cnn and cnn_bn on CPUs with AMX or AVX512-BF16, and for mlp on CPUs with AMX; "
        "mixed_float16 on 7.x GPUs; else float32.",
        PRECISIONS,
        group="runtime",
    )
    seed: int = _opt(42, "Seed for weights, dropout and shuffling.", group="runtime")
    # tracking: what is logged and kept, where, and how an interrupted run continues
    tensorboard: bool = _opt(True, "Write TensorBoard logs (logged to MLflow as artifacts).", group="tracking")
    histogram_freq: int = _opt(
        0, "TensorBoard weight histograms every N epochs (about 15% of a default MLP epoch); 0: none.", group="tracking"
    )
    epoch_summary: bool = _opt(True, "Print one summary line per epoch.", group="tracking")
    log_lr_every_n_steps: int = _opt(
        0, "Also log the learning rate every N optimizer steps; 0: once per epoch.", group="tracking"
    )
    save_interval: float = _opt(
        10.0,
        "Seconds of training between writes of the best checkpoint, the resume backup and epoch metrics (each "
        "also written when training ends or fails); 0: every epoch.",
        group="tracking",
    )
    output_dir: str = _opt("outputs", "Local folder for checkpoints, TensorBoard logs and exports.", group="tracking")
    model_name: str = _opt("auto", "Registered model name; auto: tftrain-<dataset>.", group="tracking")
    run_name: str = _opt("auto", "MLflow run name; auto: built from model, dataset and batch size.", group="tracking")
    resume: str = _opt(
        "auto",
        "auto: continue this same command's interrupted run from its last completed epoch; never: start afresh.",
        RESUME,
        group="tracking",
    )

    def __post_init__(self) -> None:
        if self.engine == "auto":  # resolved here: everything after sees fit or custom
            several = self.launcher == "ray" or self.strategy == "multi_worker"
            object.__setattr__(self, "engine", "custom" if several else "fit")
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise invalid(f.name, getattr(self, f.name), "one of " + ", ".join(choices))
        _at_least(self, "epochs", 1)
        _at_least(self, "batch_size", 0)
        _at_least(self, "steps_per_execution", 1)
        _at_least(self, "seed", 0)
        _at_least(self, "early_stopping_patience", 0)
        _at_least(self, "plateau_patience", 0)
        _at_least(self, "histogram_freq", 0)
        for name in ("cpu_replicas", "decay_steps", "warmup_steps", "log_lr_every_n_steps", "max_failures"):
            _at_least(self, name, 0)
        _at_least(self, "workers", 1)
        self._check_launcher()
        if not (0.0 <= self.cosine_alpha <= 1.0):
            raise invalid("cosine_alpha", self.cosine_alpha, "a number from 0 to 1")
        if self.reduce_lr_on_plateau == "true" and self.lr_schedule != "constant":
            raise UserError(
                f"invalid combination: reduce_lr_on_plateau=true with lr_schedule={self.lr_schedule}; Keras cannot "
                "change a scheduled learning rate; allowed: lr_schedule=constant, or reduce_lr_on_plateau=false/auto"
            )
        self.piecewise_values()
        _open_interval(self, "validation_split", 0.0, 1.0)
        _open_interval(self, "plateau_factor", 0.0, 1.0)
        for name in ("learning_rate", "plateau_min_lr", "save_interval"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise invalid(name, getattr(self, name), "a finite number >= 0")
        if self.data_dir and not Path(self.data_dir).is_dir():
            raise invalid("data_dir", self.data_dir, "an existing folder, or empty")
        dataset_kind(self.dataset)
        parse_image_size(self.image_size)
        _open_interval(self, "test_split", 0.0, 1.0)
        kind = model_kind(self.model)
        if self.weights and kind != "application":
            raise invalid(
                "weights", self.weights, f"empty with model={self.model}; weights go with keras.applications models"
            )
        if self.freeze_backbone and kind != "application":
            raise invalid(
                "freeze_backbone", "true", f"false with model={self.model}; it freezes a keras.applications backbone"
            )
        _check_application_size(self, kind)
        if self.weights not in ("", "imagenet") and not Path(self.weights).is_file():
            raise invalid("weights", self.weights, "an existing weights file (.weights.h5 or .h5), imagenet, or empty")
        if not self.output_dir:
            raise invalid("output_dir", self.output_dir, "a folder path")
        check_model_name(self.model_name)

    def _check_launcher(self) -> None:
        if self.launcher != "ray":  # the Ray options would be ignored: a user who set one meant launcher=ray
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("workers", "ray_address", "max_failures"):
                if (value := getattr(self, name)) != defaults[name]:
                    default = f"{name}={defaults[name]}" if defaults[name] != "" else f"{name} empty"
                    raise UserError(f"invalid combination: {name}={value} with launcher={self.launcher}; {name} is "
                                    f"an option of launcher=ray; allowed: launcher=ray, or {default} (its "
                                    "default)")  # fmt: skip
            return
        if self.strategy not in ("auto", "multi_worker"):
            raise UserError(f"invalid combination: launcher=ray with strategy={self.strategy}; Ray's workers train "
                            "together under multi_worker; allowed: strategy=multi_worker or auto")  # fmt: skip
        if self.engine == "fit":
            raise UserError(f"invalid combination: engine=fit with launcher=ray; {FIT_CANNOT_RUN}")
        if self.ray_address not in ("", "auto") and not (
            _HOST_PORT.match(self.ray_address) and 0 < int(self.ray_address.rpartition(":")[2]) < 65536
        ):
            raise invalid("ray_address", self.ray_address, "empty, auto, or HOST:PORT of a Ray cluster's head")

    @property
    def early_stopping_start(self) -> int:
        """The epochs early stopping lets pass before it watches: under a learning rate that decays over the whole
        run (cosine, warmup_cosine, piecewise), the last quarter only; at a constant rate, none (the write-up's).
        Stopping mid-schedule stops at a high rate on a noisy validation: measured on small folders (2,000
        Fashion-MNIST PNGs, 1,430 photo crops; cnn_bn, 15 epochs) it stopped at epochs 8-10 with test accuracy
        0.80 and 0.67-0.81, against 0.836 and 0.825 when the schedule ran out."""
        return 0 if self.lr_schedule == "constant" else self.epochs * 3 // 4

    @property
    def best_monitor(self) -> str:
        """The metric the best checkpoint is chosen by (checkpoint_monitor, auto resolved)."""
        return self.early_stopping_monitor if self.checkpoint_monitor == "auto" else self.checkpoint_monitor

    @property
    def plateau_enabled(self) -> bool:
        return self.reduce_lr_on_plateau == "true" or (
            self.reduce_lr_on_plateau == "auto" and self.lr_schedule == "constant"
        )

    def piecewise_boundaries(self) -> list[int]:
        """The explicit boundaries (empty list when left to the default)."""
        try:
            bounds = [int(b) for b in self.lr_boundaries.split(",")] if self.lr_boundaries.strip() else []
        except ValueError:
            bounds = [-1]
        if any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise invalid("lr_boundaries", self.lr_boundaries, "increasing positive step numbers, comma-separated")
        return bounds

    def piecewise_values(self, peak: float = 0.0) -> list[float]:
        """One learning rate more than there are boundaries (explicit or default): the explicit ones, or
        `peak` (the learning rate in use) x 1, 0.1, 0.01, ..."""
        expected = len(self.piecewise_boundaries() or DEFAULT_BOUNDARY_FRACTIONS) + 1
        if not self.lr_values.strip():
            return [peak * 0.1**k for k in range(expected)]
        try:
            values = [float(v) for v in self.lr_values.split(",")]
        except ValueError:
            values = [-1.0]
        if any(not (math.isfinite(v) and v > 0) for v in values):
            raise invalid("lr_values", self.lr_values, "positive numbers, comma-separated")
        if len(values) != expected:
            raise invalid("lr_values", self.lr_values, f"{expected} values, one more than the boundaries")
        return values

    def training_batch(self, examples: int, replicas: int) -> tuple[int, float]:
        """(batch size per replica, peak learning rate) for `examples` training images over `replicas`: the given
        ones; for 0, the model's (AUTO_BATCH), the batch shared among the replicas and halved while an epoch would
        have fewer than AUTO_MIN_STEPS steps (down to 8 per replica), the rate scaled by the square root of the change
        of the batch a step really sees (Adam)."""
        reference_batch, reference_rate = AUTO_BATCH.get(self.model, AUTO_BATCH_OTHER)
        batch = self.batch_size
        if not batch:
            batch = max(1, reference_batch // replicas)
            while batch > 8 and batch * replicas * AUTO_MIN_STEPS > examples:
                batch //= 2
        # the batch a step really sees: a batch larger than the data is the data
        used = min(batch * replicas, max(examples, 1))
        rate = self.learning_rate or reference_rate * math.sqrt(used / reference_batch)
        return batch, rate

    @property
    def registered_model_name(self) -> str:
        if self.model_name == "auto":
            return "tftrain-" + dataset_label(self.dataset)
        return self.model_name

    def as_params(self) -> dict[str, str]:
        """Flat string parameters, as logged to MLflow."""
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}


def grouped_fields() -> dict[str, list[dataclasses.Field]]:
    """TrainConfig's fields by group: the groups in GROUPS order, each group's fields in class order."""
    fields = dataclasses.fields(TrainConfig)
    return {group: [f for f in fields if f.metadata["group"] == group] for group in GROUPS}


_FUNCTION = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<name>[A-Za-z_]\w*)$")
DATASET_FORMS = (
    "fashion_mnist, mnist, an existing folder of class folders, tfds:NAME[:VERSION], module:function or "
    "file.py:function"
)
MODEL_FORMS = (
    ", ".join(MODELS + APPLICATIONS) + ", a builder module:function or file.py:function, or an existing .keras file"
)


def parse_function(value: str) -> tuple[str, str] | None:
    """module:function or path/to/file.py:function -> (module or file, function name); None if neither form."""
    match = _FUNCTION.match(value)
    return (match["module"], match["name"]) if match else None


def _missing(path: str, what: str = "file") -> str:
    """What a refusal says of a path that is not there: where it was looked for, and under `mlflow run` (which
    starts its entry points in the project folder) that a relative path means the project's."""
    where = Path(path).resolve()
    if "MLFLOW_RUN_ID" in os.environ and not Path(path).is_absolute():
        return f"no {what} {where}: mlflow run resolves relative paths in the project folder; give an absolute path"
    return f"no {what} {where}"


def _close(value: str, names: tuple[str, ...]) -> str:
    matches = difflib.get_close_matches(value, names, n=2, cutoff=0.7)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def _check_function(name: str, value: str, forms: str) -> None:
    source, _ = parse_function(value)
    if source.endswith(".py") and not Path(source).is_file():
        raise invalid(name, value, f"{forms} ({_missing(source)})")


def dataset_kind(value: str) -> str:
    """builtin, tfds, function or folder; anything else is refused with every form allowed."""
    if value in DATASETS:
        return "builtin"
    if value.startswith("tfds:"):
        if not re.fullmatch(r"tfds:[a-z][a-z0-9_]*(:\d+\.\d+\.\d+)?", value):
            raise invalid("dataset", value, "tfds:NAME or tfds:NAME:VERSION (e.g. tfds:mnist:3.0.1)")
        return "tfds"
    if parse_function(value) and not Path(value).is_dir():
        _check_function("dataset", value, DATASET_FORMS)
        return "function"
    if value and Path(value).is_dir():
        return "folder"
    looks_like_path = "/" in value or value.startswith(".")
    detail = f" ({_missing(value, 'folder')})" if looks_like_path else _close(value, DATASETS)
    raise UserError(f"invalid value for dataset: received {value!r}; allowed: {DATASET_FORMS}{detail}")


def dataset_label(value: str) -> str:
    """A short name for the data, for run and registered model names: the built-in or tfds name, the folder's
    name, the function's name; letters, digits and '-' only."""
    kind = dataset_kind(value)
    if kind == "tfds":
        label = value.split(":")[1]
    elif kind == "function":
        label = parse_function(value)[1]
    elif kind == "folder":
        label = Path(value).resolve().name
    else:
        label = value
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()[:60] or "data"


def resolved_dataset(value: str) -> str:
    """The dataset as another folder can find it again: folders and .py files as absolute paths."""
    kind = dataset_kind(value)
    if kind == "folder":
        return str(Path(value).resolve())
    if kind == "function" and parse_function(value)[0].endswith(".py"):
        source, name = parse_function(value)
        return f"{Path(source).resolve()}:{name}"
    return value


def model_label(value: str) -> str:
    """A short name for the model, for run names: the built-in or application name, the builder's file stem (or
    last module name) and function name (`my_nets.py:build` -> my_nets-build), the .keras file's stem."""
    kind = model_kind(value)
    if kind == "builder":
        source, name = parse_function(value)
        return f"{Path(source).stem if source.endswith('.py') else source.rpartition('.')[2]}-{name}"
    return Path(value).stem if kind == "file" else value


def model_kind(value: str) -> str:
    """builtin, application, builder or file; anything else is refused with every form allowed."""
    if value in MODELS:
        return "builtin"
    if value in APPLICATIONS:
        return "application"
    if value.endswith(".keras"):
        if not Path(value).is_file():
            raise invalid("model", value, f"{MODEL_FORMS} ({_missing(value)})")
        return "file"
    if parse_function(value):
        _check_function("model", value, MODEL_FORMS)
        return "builder"
    raise UserError(
        f"invalid value for model: received {value!r}; allowed: {MODEL_FORMS}{_close(value, MODELS + APPLICATIONS)}"
    )


def parse_image_size(value: str) -> tuple[int, int] | None:
    """auto -> None; HxW -> (height, width); a single N -> (N, N); each 1..4096."""
    if value == "auto":
        return None
    match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", value) or re.fullmatch(r"(\d{1,4})()", value)
    if match and not match[2]:
        match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", f"{value}x{value}")
    if not match or not all(1 <= int(v) <= 4096 for v in match.groups()):
        raise invalid(
            "image_size", value, "auto, HEIGHTxWIDTH in pixels (e.g. 128x96), or SIDE for a square, each 1 to 4096"
        )
    return int(match[1]), int(match[2])


def _check_application_size(cfg: TrainConfig, kind: str) -> None:
    """keras.applications models need images of 32x32 or more: known now for built-in data and a given image_size
    (a folder's most common size is known once its images are read)."""
    size = parse_image_size(cfg.image_size)
    if size is None and dataset_kind(cfg.dataset) == "builtin":
        size = BUILTIN_IMAGE_SIZE
    if kind == "application" and size and min(size) < MIN_APPLICATION_SIZE:
        raise UserError(
            f"invalid combination: model={cfg.model} with images of {size[0]}x{size[1]}; allowed: images of at least "
            f"{MIN_APPLICATION_SIZE}x{MIN_APPLICATION_SIZE} (pass image_size=HxW, e.g. image_size=96x96)"
        )


def _at_least(cfg: TrainConfig, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(name, value, f"an integer >= {low}")


def _open_interval(cfg: TrainConfig, name: str, low: float, high: float) -> None:
    value = getattr(cfg, name)
    if not (isinstance(value, (int, float)) and low < value < high):
        allowed = f"a number > {low:g}" if high == math.inf else f"a number strictly between {low:g} and {high:g}"
        raise invalid(name, value, allowed)


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_model_name(name: str) -> None:
    if not _MODEL_NAME.match(name):
        raise invalid("model_name", name, "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")


# runs:/<run id>/<path>, models:/<name>/<version>, models:/<name>@<alias>, models:/m-<id>
_MODEL_URI = re.compile(
    r"^(runs:/[0-9a-f]{32}/[^\s]+"
    r"|models:/m-[0-9a-f]{32}"
    r"|models:/[^/@\s][^/@]*/[0-9]+"
    r"|models:/[^/@\s][^/@]*@[A-Za-z0-9_-]+)$"
)
MODEL_URI_FORMS = "runs:/<run_id>/<path>, models:/<name>/<version>, models:/<name>@<alias>, models:/m-<model_id>"


def check_model_uri(uri: str) -> str:
    """Well-formed MLflow model URI, or a local folder that holds an MLmodel file."""
    if _MODEL_URI.match(uri) or (Path(uri) / "MLmodel").is_file():
        return uri
    raise invalid("model_uri", uri, MODEL_URI_FORMS + ", or a local MLflow model folder")


def check_data_dir(data_dir: str) -> str:
    if data_dir and not Path(data_dir).is_dir():
        raise invalid("data_dir", data_dir, "an existing folder, or empty")
    return data_dir


def check_output_dir(output_dir: str) -> Path:
    """Create the output folder now, before any training, or say why it cannot be written."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise UserError(f"invalid value for output_dir: received {output_dir!r}; cannot create it: {reason}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"invalid value for output_dir: received {output_dir!r}; allowed: a writable folder")
    return path


def check_output_file(output: str, name: str = "output") -> str:
    """A file that can be (over)written: its folder exists and is writable, and it is not a folder itself."""
    path = Path(output)
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise invalid(
            name, output, "a file path in an existing, writable folder" + (", or '-'" if name == "output" else "")
        )
    return output


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise invalid(name, value, "one of " + ", ".join(choices))
    return value


_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@\s][^/@]*)/(?P<version>[0-9]+)$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def parse_version_uri(uri: str) -> tuple[str, str]:
    """models:/<name>/<version> -> (name, version): the only form a registry alias can point at."""
    match = _VERSION_URI.match(uri)
    if not match:
        raise invalid("model_uri", uri, "a registered version, models:/<name>/<version>")
    return match["name"], match["version"]


def check_alias(alias: str) -> str:
    """MLflow's alias rules: no `latest`, no `v<N>` (they name versions)."""
    if not _ALIAS.match(alias) or re.fullmatch(r"v\d+", alias, re.IGNORECASE) or alias.lower() == "latest":
        raise invalid("alias", alias, "letters, digits, '_' or '-', starting with a letter or '_'; not latest or v<N>")
    return alias


def default_run_name(cfg: TrainConfig) -> str:
    if cfg.run_name != "auto":
        return cfg.run_name
    chosen = [f"bs{cfg.batch_size}"] * bool(cfg.batch_size) + [f"lr{cfg.learning_rate:g}"] * bool(cfg.learning_rate)
    return "-".join(
        [model_label(cfg.model), dataset_label(cfg.dataset), *chosen, datetime.now().strftime("%m%d-%H%M%S")]
    )
