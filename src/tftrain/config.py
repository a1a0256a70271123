"""The training configuration: five frozen groups by concern (data, model, trainer, runtime, tracking) in one
`TrainConfig`, their defaults, and the validation of each value, in one place. Nothing here touches the
filesystem or the environment: what a value names outside tftrain (a folder, a file, a module, a Python function)
is checked where it is resolved (values.py; checks.py before TensorFlow loads).

Flat for the CLI and the MLproject: each field is an option of `tftrain train` (and `pipeline`, `sweep`) and a
parameter of the MLproject's `main`, `train` and `sweep` entry points under its flat name, the field's own (the
model group's `name` is `model`). `TrainConfig.from_flat` builds a config from flat names, `flat` gives them back;
scripts/params.py writes the MLproject and docs/parameters.md from `PARAMS`, and tests/test_project_files.py keeps
the three in step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from tftrain.errors import UserError, invalid

DATASETS = ("fashion_mnist", "mnist")  # built in; also an image folder, tfds:NAME[:VERSION] or a user function
MODELS = ("mlp", "cnn", "cnn_bn")  # built in; also a keras.applications name, a user builder or a .keras file
# keras.applications architectures by snake-case name (models/build.py maps them to their constructors)
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
# accuracy (docs/benchmarks.md); other models (keras.applications, a builder, a .keras file) keep 128.
AUTO_BATCH = {"mlp": (1024, 0.008), "cnn": (256, 0.004), "cnn_bn": (256, 0.003)}
AUTO_BATCH_OTHER = (128, 0.002)
AUTO_MIN_STEPS = 20  # an automatic batch size is halved (down to 8) until an epoch has this many steps


# decoded images up to this many MB train from memory; larger data from the image cache on disk, a batch at a time
IN_MEMORY_MB = 256

# The groups, in the order the CLI's help, the MLproject and the docs list them.
GROUPS = ("data", "model", "trainer", "runtime", "tracking")


def _opt(default, help: str, choices: tuple[str, ...] | None = None, *, param: str = ""):
    """A field with its help and allowed values; `param`: its flat name when not the field's own."""
    return field(default=default, metadata={"help": help, "choices": choices, "param": param})


def _check_choices(group) -> None:
    for f in dataclasses.fields(group):
        choices = f.metadata["choices"]
        if choices and getattr(group, f.name) not in choices:
            raise invalid(f.metadata["param"] or f.name, getattr(group, f.name), "one of " + ", ".join(choices))


def _at_least(group, name: str, low: int) -> None:
    value = getattr(group, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(name, value, f"an integer >= {low}")


def _open_interval(group, name: str, low: float, high: float) -> None:
    value = getattr(group, name)
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low < value < high):
        raise invalid(name, value, f"a number strictly between {low:g} and {high:g}")


def _finite_non_negative(group, name: str) -> None:
    value = getattr(group, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise invalid(name, value, "a finite number >= 0")


@dataclass(frozen=True)
class DataConfig:
    """What to train on: the dataset, how it is split, the size and colour the model sees, augmentation."""

    dataset: str = _opt(
        "fashion_mnist",
        "fashion_mnist or mnist; a folder of class folders (PATH/<class>/<images>, or PATH/train/<class>/... with "
        "PATH/test/ and PATH/val/); tfds:NAME[:VERSION] (prepared in data_dir); or a function, module:function or "
        "file.py:function, returning (train, test, class_names).",
    )
    data_dir: str = _opt(
        "",
        "fashion_mnist/mnist: folder with the four IDX .gz files (empty: look in known places, then download); "
        "tfds: the tensorflow-datasets data folder.",
    )
    validation_split: float = _opt(
        0.2,
        "Fraction of the training data held out for validation (built-ins: its last part, as Keras does; folders: "
        "stratified; ignored when the folder has val/).",
    )
    test_split: float = _opt(
        0.1,
        "Image folders without test/: the fraction of each class held out as the test split (fixed, seedless).",
    )
    image_size: str = _opt(
        "auto",
        "HxW (or one number: a square) the model sees, every image resized to it; auto: the size most files have, "
        "else (photos of many sizes) a square of their median shorter side: 96 to 224 for keras.applications "
        "models, at most 64 for others.",
    )
    channels: str = _opt("auto", "Colour channels the model sees; auto: 1 if every image is gray, else 3.", CHANNELS)
    bad_images: str = _opt(
        "fail",
        "An unreadable image in a folder: fail names it and stops; skip leaves it out.",
        BAD_IMAGES,
    )
    in_memory_mb: int = _opt(
        IN_MEMORY_MB,
        "Image folders and tfds datasets: decoded images up to this many MB train from memory; larger ones stay in "
        "the decoded cache on disk and stream a batch at a time (memory then does not grow with them). 0: always "
        "stream.",
    )
    augment: str = _opt(
        "auto",
        "Random changes to training images, in the input pipeline (never in the served model): flip (left-right), "
        "standard (flip, shifts and zooms up to 10%), strong (standard, rotations up to 18 degrees, contrast); auto: "
        "none for mlp, cnn, mnist and models with random layers of their own, else flip.",
        AUGMENTS,
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        if not isinstance(self.dataset, str) or not self.dataset:
            raise invalid("dataset", self.dataset, DATASET_FORMS)
        parse_image_size(self.image_size)
        _open_interval(self, "validation_split", 0.0, 1.0)
        _open_interval(self, "test_split", 0.0, 1.0)
        _at_least(self, "in_memory_mb", 0)


@dataclass(frozen=True)
class ModelConfig:
    """What is trained: a built-in, a keras.applications architecture, a user's builder or a .keras file."""

    name: str = _opt(
        "mlp",
        "mlp, cnn (the write-up's), cnn_bn (three stages of convolutions with batch norm); a keras.applications name ("
        + ", ".join(APPLICATIONS)
        + "); a builder, module:function or file.py:function, called as "
        "build(input_shape, num_classes); or a .keras file to continue training.",
        param="model",
    )
    weights: str = _opt(
        "",
        "keras.applications models: a local weights file for the backbone, or imagenet (downloads); empty: none.",
    )
    freeze_backbone: bool = _opt(False, "keras.applications models: train the new head only (fine-tuning).")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise invalid("model", self.name, MODEL_FORMS)
        if self.weights and self.name not in APPLICATIONS:
            raise invalid(
                "weights", self.weights, f"empty with model={self.name}; weights go with keras.applications models"
            )
        if self.freeze_backbone and self.name not in APPLICATIONS:
            raise invalid(
                "freeze_backbone", "true", f"false with model={self.name}; it freezes a keras.applications backbone"
            )


@dataclass(frozen=True)
class TrainerConfig:
    """How long and how fast: epochs, batch, the learning-rate schedule (steps are optimizer steps) and the
    write-up's callbacks (early stopping, the best checkpoint, the LR plateau rule)."""

    epochs: int = _opt(20, "Maximum number of epochs (early stopping may end sooner).")
    batch_size: int = _opt(
        0,
        "Examples per step per replica; the global batch is this times the replicas. 0: by model, a global batch of "
        "1024 for mlp, 256 for cnn and cnn_bn, 128 for other models (keras.applications, builders, .keras files), "
        "smaller (down to 8 per replica) where an epoch would be under 20 steps.",
    )
    learning_rate: float = _opt(
        0.0,
        "Adam's learning rate; the peak of a schedule. 0: by model, 0.008 for mlp at batch 1024, 0.004 for cnn "
        "and 0.003 for cnn_bn at 256, 0.002 for others at 128, times the square root of the batch's ratio to that.",
    )
    steps_per_execution: int = _opt(50, "Training steps per graph call: fewer Python round trips, same updates.")
    lr_schedule: str = _opt("warmup_cosine", "Learning-rate schedule.", LR_SCHEDULES)
    lr_boundaries: str = _opt("", "piecewise: comma-separated step boundaries; empty: 50% and 75% of all steps.")
    lr_values: str = _opt("", "piecewise: one more value than boundaries; empty: learning_rate x 1, 0.1, 0.01, ...")
    decay_steps: int = _opt(0, "cosine, warmup_cosine: steps of the decay; 0: all training steps.")
    warmup_steps: int = _opt(0, "warmup_cosine: steps from 0 up to learning_rate; 0: one epoch.")
    cosine_alpha: float = _opt(0.0, "cosine, warmup_cosine: the final learning rate as a fraction of the peak.")
    early_stopping: bool = _opt(
        True,
        "Stop when the monitored metric stops improving; under a decaying lr_schedule (the default), watched in the "
        "last quarter of the epochs only.",
    )
    early_stopping_monitor: str = _opt("val_loss", "Metric early stopping watches.", MONITORS)
    early_stopping_patience: int = _opt(3, "Epochs without improvement before stopping.")
    restore_best_weights: bool = _opt(True, "On early stop, go back to the best epoch's weights.")
    checkpoint: bool = _opt(True, "Save the best model as model_{epoch}_{val_accuracy}.keras.")
    checkpoint_monitor: str = _opt(
        "auto",
        "Metric that decides the best checkpoint; auto: early_stopping_monitor, so the best checkpoint is the "
        "epoch whose weights training ends with and registers.",
        ("auto", *MONITORS),
    )
    reduce_lr_on_plateau: str = _opt(
        "auto",
        "Cut the learning rate when the monitored metric stalls (the write-up's rule); auto: on with "
        "lr_schedule=constant only, off under a schedule (the default); true needs lr_schedule=constant.",
        SWITCH,
    )
    plateau_monitor: str = _opt("val_loss", "Metric the plateau rule watches.", MONITORS)
    plateau_factor: float = _opt(0.2, "Multiply the learning rate by this on a plateau.")
    plateau_patience: int = _opt(2, "Epochs without improvement before cutting the learning rate.")
    plateau_min_lr: float = _opt(1e-6, "Lower bound for the learning rate.")

    def __post_init__(self) -> None:
        _check_choices(self)
        for name, low in (("epochs", 1), ("batch_size", 0), ("steps_per_execution", 1), ("decay_steps", 0),
                          ("warmup_steps", 0), ("early_stopping_patience", 0), ("plateau_patience", 0)):  # fmt: skip
            _at_least(self, name, low)
        if isinstance(self.cosine_alpha, bool) or not (0.0 <= self.cosine_alpha <= 1.0):
            raise invalid("cosine_alpha", self.cosine_alpha, "a number from 0 to 1")
        if self.reduce_lr_on_plateau == "true" and self.lr_schedule != "constant":
            raise UserError(
                f"invalid combination: reduce_lr_on_plateau=true with lr_schedule={self.lr_schedule}; Keras cannot "
                "change a scheduled learning rate; allowed: lr_schedule=constant, or reduce_lr_on_plateau=false/auto"
            )
        self.piecewise_values()
        _open_interval(self, "plateau_factor", 0.0, 1.0)
        for name in ("learning_rate", "plateau_min_lr"):
            _finite_non_negative(self, name)

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


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the steps run: the engine, the tf.distribute strategy, Ray's workers, precision, the seed."""

    engine: str = _opt(
        "auto",
        "fit: Keras model.fit; custom: the write-up's GradientTape loop under tf.function; auto: custom with "
        "strategy=multi_worker or launcher=ray (where fit cannot run), else fit.",
        ENGINES,
    )
    strategy: str = _opt(
        "auto",
        "tf.distribute strategy; auto: multi_worker under TF_CONFIG, mirrored on several devices, else TF's default.",
        STRATEGIES,
    )
    cpu_replicas: int = _opt(0, "On a CPU-only host, split the CPU into N logical devices for mirrored; 0: no split.")
    launcher: str = _opt(
        "none",
        "none: this process trains (under a scheduler's TF_CONFIG, as one of its workers); ray: `workers` Ray Train "
        "workers, each the custom engine under multi_worker, restarted from the last backup when one fails.",
        LAUNCHERS,
    )
    workers: int = _opt(2, "With launcher=ray: how many workers (one process each, 1 CPU or 1 GPU).")
    ray_address: str = _opt(
        "",
        "With launcher=ray: empty: a Ray cluster of this machine alone, started and stopped by the command; auto: the "
        "cluster `ray start` runs here; HOST:PORT: that cluster's head.",
    )
    max_failures: int = _opt(
        2, "With launcher=ray: times Ray restarts the workers after a worker failure before giving up."
    )
    precision: str = _opt(
        "auto",
        "Keras dtype policy; mixed_* keep the output layer float32. auto: mixed_bfloat16 on NVIDIA GPUs of compute "
        "capability 8.0+, for cnn and cnn_bn on CPUs with AMX or AVX512-BF16, and for mlp on CPUs with AMX; "
        "mixed_float16 on 7.x GPUs; else float32.",
        PRECISIONS,
    )
    seed: int = _opt(42, "Seed for weights, dropout and shuffling.")

    def __post_init__(self) -> None:
        _check_choices(self)
        for name, low in (("cpu_replicas", 0), ("workers", 1), ("max_failures", 0), ("seed", 0)):
            _at_least(self, name, low)
        self._check_launcher()

    @property
    def resolved_engine(self) -> str:
        """fit or custom: engine=auto takes custom where fit cannot run (several workers), else fit."""
        if self.engine != "auto":
            return self.engine
        return "custom" if self.launcher == "ray" or self.strategy == "multi_worker" else "fit"

    def _check_launcher(self) -> None:
        if self.launcher != "ray":  # the Ray options would be ignored: a user who set one meant launcher=ray
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("workers", "ray_address", "max_failures"):
                if (value := getattr(self, name)) != defaults[name]:
                    default = f"{name}={defaults[name]}" if defaults[name] != "" else f"{name} empty"
                    raise UserError(f"invalid combination: {name}={value!r} with launcher={self.launcher}; {name} is "
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


@dataclass(frozen=True)
class TrackingConfig:
    """What is logged and kept, where, and how an interrupted run continues."""

    tensorboard: bool = _opt(True, "Write TensorBoard logs (logged to MLflow as artifacts).")
    histogram_freq: int = _opt(
        0, "TensorBoard weight histograms every N epochs (about 15% of a default MLP epoch); 0: none."
    )
    epoch_summary: bool = _opt(True, "Print one summary line per epoch.")
    log_lr_every_n_steps: int = _opt(0, "Also log the learning rate every N optimizer steps; 0: once per epoch.")
    save_interval: float = _opt(
        10.0,
        "Seconds of training between writes of the best checkpoint, the resume backup and epoch metrics (each "
        "also written when training ends or fails; on Ctrl-C the checkpoint alone); 0: every epoch.",
    )
    output_dir: str = _opt("outputs", "Local folder for checkpoints, TensorBoard logs and exports.")
    model_name: str = _opt("auto", "Registered model name; auto: tftrain-<dataset>.")
    allow_shape_change: bool = _opt(
        False,
        "Let the registry gate move @champion to a model of another input shape (image size or channels); clients "
        "sending pixels of the old shape are refused from then on, image files keep working.",
    )
    run_name: str = _opt("auto", "MLflow run name; auto: built from model, dataset and batch size.")
    resume: str = _opt(
        "auto",
        "auto: continue this same command's interrupted run from its last completed epoch; never: start afresh.",
        RESUME,
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        _at_least(self, "histogram_freq", 0)
        _at_least(self, "log_lr_every_n_steps", 0)
        _finite_non_negative(self, "save_interval")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise invalid("output_dir", self.output_dir, "a folder path")
        check_model_name(self.model_name)


@dataclass(frozen=True)
class Param:
    """A config field under its flat name (a CLI option, an MLproject parameter, an MLflow param), with the
    field's type, default and metadata."""

    name: str
    group: str
    attribute: str  # the field's name in its group
    type: str
    default: object
    metadata: dict


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _check_application_size(self)

    @classmethod
    def from_flat(cls, **params) -> TrainConfig:
        """A config from flat names (`epochs=3, model="cnn"`); the rest default. An unknown name is refused."""
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise UserError(f"unknown config parameter {unknown[0]}; allowed: " + ", ".join(PARAMS))
        groups: dict[str, dict] = {group: {} for group in GROUPS}
        for name, value in params.items():
            p = PARAMS[name]
            groups[p.group][p.attribute] = value
        return cls(**{group: _GROUP_CLASSES[group](**values) for group, values in groups.items()})

    @classmethod
    def from_dict(cls, groups: dict[str, dict]) -> TrainConfig:
        """A config from its groups as `dataclasses.asdict` writes them (the runs' config.json)."""
        return cls(**{group: _GROUP_CLASSES[group](**values) for group, values in groups.items()})

    def flat(self) -> dict[str, object]:
        """Every value under its flat name, in PARAMS order."""
        return {name: getattr(getattr(self, p.group), p.attribute) for name, p in PARAMS.items()}

    def replace(self, **params) -> TrainConfig:
        """A copy with these flat values changed."""
        return TrainConfig.from_flat(**{**self.flat(), **params})

    def as_params(self) -> dict[str, str]:
        """Flat string parameters, as logged to MLflow."""
        return {k: str(v) for k, v in self.flat().items()}

    def training_batch(self, examples: int, replicas: int) -> tuple[int, float]:
        """(batch size per replica, peak learning rate) for `examples` training images over `replicas`: the given
        ones; for 0, the model's (AUTO_BATCH), the batch shared among the replicas and halved while an epoch would
        have fewer than AUTO_MIN_STEPS steps (down to 8 per replica), the rate scaled by the square root of the change
        of the batch a step really sees (Adam)."""
        reference_batch, reference_rate = AUTO_BATCH.get(self.model.name, AUTO_BATCH_OTHER)
        batch = self.trainer.batch_size
        if not batch:
            batch = max(1, reference_batch // replicas)
            while batch > 8 and batch * replicas * AUTO_MIN_STEPS > examples:
                batch //= 2
        # the batch a step really sees: a batch larger than the data is the data
        used = min(batch * replicas, max(examples, 1))
        rate = self.trainer.learning_rate or reference_rate * math.sqrt(used / reference_batch)
        return batch, rate


_GROUP_CLASSES = {"data": DataConfig, "model": ModelConfig, "trainer": TrainerConfig, "runtime": RuntimeConfig,
                  "tracking": TrackingConfig}  # fmt: skip
# every field by its flat name, group by group in GROUPS order
PARAMS: dict[str, Param] = {
    (f.metadata["param"] or f.name): Param(f.metadata["param"] or f.name, group, f.name, f.type, f.default, f.metadata)
    for group in GROUPS
    for f in dataclasses.fields(_GROUP_CLASSES[group])
}


def grouped_params() -> dict[str, list[Param]]:
    """The flat parameters by group, in GROUPS order."""
    return {group: [p for p in PARAMS.values() if p.group == group] for group in GROUPS}


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


def _check_application_size(cfg: TrainConfig) -> None:
    """keras.applications models need images of 32x32 or more: known now for built-in data and a given image_size
    (a folder's most common size is known once its images are read)."""
    size = parse_image_size(cfg.data.image_size)
    if size is None and cfg.data.dataset in DATASETS:
        size = BUILTIN_IMAGE_SIZE
    if cfg.model.name in APPLICATIONS and size and min(size) < MIN_APPLICATION_SIZE:
        raise UserError(
            f"invalid combination: model={cfg.model.name} with images of {size[0]}x{size[1]}; allowed: images of at "
            f"least {MIN_APPLICATION_SIZE}x{MIN_APPLICATION_SIZE} (pass image_size=HxW, e.g. image_size=96x96)"
        )


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_model_name(name: str) -> None:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise invalid("model_name", name, "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
