"""The write-up's callbacks, built from the config: early stopping, best checkpoints, LR on plateau, TensorBoard,
and an epoch summary like the write-up's custom callback."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import keras

from tftrain.config import TrainConfig
from tftrain.errors import TrainingFailed


def current_lr(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class EpochSummary(keras.callbacks.Callback):
    """One line per epoch: every metric, the learning rate and the wall time."""

    def __init__(self, epochs: int, stream=sys.stdout):
        super().__init__()
        self.epochs, self.stream = epochs, stream

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
        seconds = time.perf_counter() - self._start
        line = f"epoch {epoch + 1}/{self.epochs}  {metrics}  lr {current_lr(self.model):.2e}  {seconds:.1f}s"
        print(line, file=self.stream, flush=True)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """A NaN or infinite loss ends training with an error (not a quiet stop): the run is marked FAILED with the
    reason, and the checkpoints and resume backup of the last good epoch stay (on_train_end never runs)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingFailed(
                f"training stopped: the loss became {float(loss)} in epoch {self._epoch + 1}, step {batch + 1}; "
                "the run is marked FAILED and the last good epoch's checkpoints are kept; try a lower learning_rate"
            )


def mode(monitor: str) -> str:
    """Said, not guessed: Keras guesses from compiled metrics, which the custom loop never builds."""
    return "max" if "accuracy" in monitor else "min"


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def build_callbacks(cfg: TrainConfig, out_dir: Path) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [StopOnNonFiniteLoss()]
    if cfg.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=cfg.early_stopping_monitor,
                mode=mode(cfg.early_stopping_monitor),
                patience=cfg.early_stopping_patience,
                restore_best_weights=cfg.restore_best_weights,
                verbose=1,
            )
        )
    if cfg.checkpoint:
        template = checkpoint_dir(out_dir) / "model_{epoch:02d}_{val_accuracy:.4f}.keras"
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(template), monitor=cfg.checkpoint_monitor, mode=mode(cfg.checkpoint_monitor), save_best_only=True
            )
        )
    if cfg.plateau_enabled:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=cfg.plateau_monitor,
                mode=mode(cfg.plateau_monitor),
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                min_lr=cfg.plateau_min_lr,
                verbose=1,
            )
        )
    if cfg.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(out_dir / "tensorboard"), histogram_freq=cfg.histogram_freq)
        )
    if cfg.epoch_summary:
        callbacks.append(EpochSummary(cfg.epochs))
    return callbacks
