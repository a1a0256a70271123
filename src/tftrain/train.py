"""The `train` step: data -> model -> `model.fit` with the write-up's callbacks -> a tracked, registered model."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras

from tftrain import tracking
from tftrain.callbacks import build_callbacks, checkpoint_dir
from tftrain.config import TrainConfig
from tftrain.data import load_dataset, make_dataset, split_validation
from tftrain.errors import UserError
from tftrain.models import build_model


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model: tracking.LoggedModel
    history: dict[str, list[float]]
    out_dir: Path

    @property
    def epochs_run(self) -> int:
        return len(self.history["loss"])


def default_run_name(cfg: TrainConfig) -> str:
    if cfg.run_name != "auto":
        return cfg.run_name
    stamp = datetime.now().strftime("%m%d-%H%M%S")
    return f"{cfg.model}-{cfg.dataset}-bs{cfg.batch_size}-lr{cfg.learning_rate:g}-{stamp}"


def compile_model(model: keras.Model, cfg: TrainConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate, name="adam"),  # a fixed name: runs compare equal
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
    )


def check_output_dir(output_dir: str) -> Path:
    """Fail before any training if the output folder cannot be written."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"invalid value for output_dir: received {output_dir!r}; cannot create it: {e.strerror}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"invalid value for output_dir: received {output_dir!r}; allowed: a writable folder")
    return path


def _fit_verbosity(cfg: TrainConfig) -> int:
    """A live progress bar on a terminal; in logs, one line per epoch (ours, or Keras' own)."""
    if sys.stdout.isatty():
        return 1
    return 0 if cfg.epoch_summary else 2


def _log_outputs(out_dir: Path) -> None:
    """TensorBoard logs and the best checkpoint go to the run; every checkpoint stays on local disk."""
    tracking.log_folder(out_dir / "tensorboard", "tensorboard")
    checkpoints = sorted(checkpoint_dir(out_dir).glob("*.keras"), key=lambda p: p.stat().st_mtime)
    if checkpoints:
        tracking.log_file(checkpoints[-1], "checkpoints")


def train(cfg: TrainConfig) -> TrainResult:
    output_root = check_output_dir(cfg.output_dir)
    keras.utils.set_random_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    (x_train, y_train), (x_val, y_val) = split_validation(data.x_train, data.y_train, cfg.validation_split)
    train_ds = make_dataset(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val_ds = make_dataset(x_val, y_val, cfg.batch_size, shuffle=False)
    model = build_model(cfg.model, num_classes=len(data.class_names))
    compile_model(model, cfg)

    with tracking.step_run(default_run_name(cfg)) as run:
        out_dir = output_root / run.info.run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        tracking.log_environment()
        tracking.log_config(cfg)
        tracking.set_tags({"dataset_source": data.source, "train_examples": str(len(x_train))})
        print(f"training {cfg.model} on {data.source}: {len(x_train)} train / {len(x_val)} validation examples")
        callbacks = [*build_callbacks(cfg, out_dir), tracking.EpochMetrics()]
        try:
            history = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=cfg.epochs,
                callbacks=callbacks,
                verbose=_fit_verbosity(cfg),
                shuffle=False,  # train_ds shuffles itself, seeded, every epoch
            )
        finally:
            _log_outputs(out_dir)
        logged = tracking.log_keras_model(model, cfg.registered_model_name, x_val[:2])
    return TrainResult(run.info.run_id, logged, history.history, out_dir)
