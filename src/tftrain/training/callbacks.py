"""The write-up's callbacks, built from the config: early stopping, best checkpoints, LR on plateau, TensorBoard,
and an epoch summary like the write-up's custom callback."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras

from tftrain.config import TrainConfig
from tftrain.errors import TrainingFailed
from tftrain.keras_hooks import should_save
from tftrain.tracking.epoch_metrics import current_lr

log = logging.getLogger(__name__)


def chance_warning(logs: dict, classes: int) -> str:
    """A warning when validation accuracy sits near chance (1/classes) while training accuracy is far above it: a
    model that does not carry over to held-out images must not pass for a success. Empty otherwise."""
    chance = 1.0 / max(classes, 1)
    accuracy, validation = logs.get("accuracy"), logs.get("val_accuracy")
    if accuracy is None or validation is None:
        return ""
    if validation > chance + 0.1 * (1 - chance) or accuracy < chance + 0.4 * (1 - chance):
        return ""
    return (
        f"warning: val_accuracy {validation:.2f} is near chance ({chance:.2f} for {classes} classes) while accuracy "
        f"is {accuracy:.2f}: the model does not carry over to held-out images (a validation split unlike the "
        "training data, or a model that memorizes)"
    )


class EpochSummary(keras.callbacks.Callback):
    """One line per epoch: every metric, the learning rate and the wall time, and what Keras' early stopping and
    LR-on-plateau callbacks did at that epoch (they are built silent when this summary is on, so that their own
    messages do not break the lines). Its place in the list: build_callbacks."""

    def __init__(self, epochs: int, early_stopping=None, plateau=None, classes: int = 0):
        super().__init__()
        self.epochs, self.classes = epochs, classes
        self.early_stopping, self.plateau = early_stopping, plateau

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._lr = current_lr(self.model)

    def on_epoch_end(self, epoch, logs=None):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
        seconds = time.perf_counter() - self._start
        lr = f"lr {current_lr(self.model):.2e}"
        if self.plateau is not None and current_lr(self.model) < self._lr:
            lr = f"lr {self._lr:.2e} -> {current_lr(self.model):.2e} ({self.plateau.monitor} plateau)"
        line = f"epoch {epoch + 1}/{self.epochs}  {metrics}  {lr}  {seconds:.1f}s{self._stopping_note(epoch)}"
        if self.classes and (warning := chance_warning(logs or {}, self.classes)):
            line += "  " + warning.split(":")[0]  # the whole warning ends the training
        log.info(line)

    def _stopping_note(self, epoch: int) -> str:
        """Early stopping's messages: that it stopped here, and whose weights training ends with."""
        es = self.early_stopping
        if es is None or not (self.model.stop_training or epoch + 1 == self.epochs):
            return ""
        note = (
            f"  early stop: no {es.monitor} improvement in {es.patience} epochs"
            if es.stopped_epoch == epoch > 0
            else ""
        )
        if es.restore_best_weights and es.best_weights is not None and es.best_epoch != epoch:
            note += f"  (keeping epoch {es.best_epoch + 1}'s weights)"
        return note


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


class SaveClock(keras.callbacks.Callback):
    """Decides, at each epoch's end, whether this is a save point: `interval` seconds of training have passed since
    the last one (0: every epoch). The callbacks that write files or call the tracking server (the best checkpoint,
    the resume backup, epoch metrics) write at save points, when training ends, and when it fails: those holding
    something back until then say so (`wait_for`), and `flush_pending` writes it. A tuned MLP epoch here takes
    about 0.12 s, and writing all three about 60 ms: every epoch, they would add half to it."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self.due = True
        self._last = time.perf_counter()
        self._waiting: list = []  # (callback with a flush() of what waits for a save point, when_interrupted)

    def wait_for(self, callback, when_interrupted: bool = True) -> None:
        """`callback.flush()` writes what it holds back, when training ends or fails; `when_interrupted`: also when
        it is interrupted (Ctrl-C, a stop), after which the same command goes on from the last save point."""
        self._waiting.append((callback, when_interrupted))

    def flush_pending(self, interrupted: bool = False) -> None:
        """Training failed or was interrupted: write what waits for the next save point (best checkpoint, metrics)."""
        for callback, when_interrupted in self._waiting:
            if when_interrupted or not interrupted:
                callback.flush()

    def on_train_begin(self, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.due = now - self._last >= self.interval
        if self.due:
            self._last = now


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint(save_best_only=True), written at save points: an improvement's weights and file name
    are kept in memory, and the best not yet on disk is written at the next save point, when training ends, or
    when it fails. Files and names are ModelCheckpoint's own. `start_from_epoch`: epochs before it watches, as
    early stopping's, so that the best checkpoint is the epoch training ends with."""

    def __init__(self, filepath: str, clock: SaveClock, start_from_epoch: int = 0, **kwargs):
        super().__init__(filepath, save_best_only=True, **kwargs)
        self.clock, self.start_from_epoch = clock, start_from_epoch
        self._pending = None  # (epoch, file path, weights) of a best not yet written
        clock.wait_for(self)

    def on_epoch_end(self, epoch, logs=None):
        filepath = checkpoint_path(self.filepath, epoch, logs)
        if epoch >= self.start_from_epoch and should_save(self, epoch, logs, filepath):
            self._pending = (epoch, filepath, self.model.get_weights())
        if self.clock.due:
            self.flush(epoch)

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self, epoch: int | None = None) -> None:
        """Write the pending best; `epoch`: the epoch whose weights the model holds now (no swap needed)."""
        if self._pending is None:
            return
        best_epoch, filepath, weights = self._pending
        self._pending = None
        Path(filepath).parent.mkdir(parents=True, exist_ok=True)
        if best_epoch == epoch:
            self.model.save(filepath, overwrite=True)
            return
        current = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            self.model.save(filepath, overwrite=True)
        finally:
            self.model.set_weights(current)


def checkpoint_path(template: str, epoch: int, logs: dict) -> str:
    """ModelCheckpoint's file name for `epoch` (0-based), by its documented contract: `template` formatted with
    `epoch` counted from 1 and the epoch's logs."""
    try:
        return template.format(epoch=epoch + 1, **logs)
    except KeyError as e:
        raise KeyError(f'Failed to format this callback filepath: "{template}". Reason: {e}') from e


def mode(monitor: str) -> str:
    """Said, not guessed: Keras guesses from compiled metrics, which the custom loop never builds."""
    return "max" if "accuracy" in monitor else "min"


def checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def build_callbacks(
    cfg: TrainConfig,
    out_dir: Path,
    clock: SaveClock,
    classes: int = 0,
    *,
    statistics: keras.callbacks.Callback | None = None,
    epoch_metrics: keras.callbacks.Callback | None = None,
    backups: Callable[[list], list] | None = None,
    extra: tuple[keras.callbacks.Callback, ...] = (),
) -> list[keras.callbacks.Callback]:
    """tftrain's callbacks as one list, in the order Keras calls them at every hook. The order is the contract:

    1. `statistics` (batchnorm.PreciseStatistics): the batch norms' averages are ready before anything validates.
    2. the save clock: whether this epoch is a save point, decided before any callback that saves.
    3. the stop on a non-finite loss.
    4. Keras' rules (early stopping, the best checkpoint, the LR plateau) and TensorBoard.
    5. the epoch summary: after the rules, so that its line says what they did.
    6. `epoch_metrics` (tracking.EpochMetrics): the epoch goes to MLflow.
    7. `backups(callbacks_so_far)` (resume.backup_callbacks): an epoch's metrics are logged before its backup
       says the epoch is done, and the backup holds the counters of the rules above.
    8. `extra`: the caller's (the benchmark's timers, a sweep's pruning), after everything of tftrain's.
    """
    rules, early_stopping, plateau = _rules(cfg, out_dir, clock)
    summary = None
    if cfg.tracking.epoch_summary:
        summary = EpochSummary(cfg.trainer.epochs, early_stopping=early_stopping, plateau=plateau, classes=classes)
    ordered = [statistics, clock, StopOnNonFiniteLoss(), *rules, summary, epoch_metrics]
    callbacks = [c for c in ordered if c is not None]
    if backups is not None:
        callbacks += backups(callbacks)
    return callbacks + list(extra)


def _rules(cfg: TrainConfig, out_dir: Path, clock: SaveClock) -> tuple[list, object, object]:
    """Early stopping, the best checkpoint, the LR plateau and TensorBoard, as cfg enables them; with the early
    stopping and plateau callbacks themselves (None when off) for the epoch summary to read."""
    callbacks: list[keras.callbacks.Callback] = []
    verbose = 0 if cfg.tracking.epoch_summary else 1  # Keras' own messages when there is no epoch summary to carry them
    early_stopping = plateau = None
    if cfg.trainer.early_stopping:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=cfg.trainer.early_stopping_monitor,
            mode=mode(cfg.trainer.early_stopping_monitor),
            patience=cfg.trainer.early_stopping_patience,
            restore_best_weights=cfg.trainer.restore_best_weights,
            start_from_epoch=cfg.trainer.early_stopping_start,
            verbose=verbose,
        )
        callbacks.append(early_stopping)
    if cfg.trainer.checkpoint:
        # the epochs early stopping watches, when it decides the best too (checkpoint_monitor=auto)
        start = (
            cfg.trainer.early_stopping_start
            if cfg.trainer.early_stopping and cfg.trainer.checkpoint_monitor == "auto"
            else 0
        )
        template = checkpoint_dir(out_dir) / "model_{epoch:02d}_{val_accuracy:.4f}.keras"
        callbacks.append(
            BestCheckpoint(
                str(template), clock, start, monitor=cfg.trainer.best_monitor, mode=mode(cfg.trainer.best_monitor)
            )
        )
    if cfg.trainer.plateau_enabled:
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor=cfg.trainer.plateau_monitor,
            mode=mode(cfg.trainer.plateau_monitor),
            factor=cfg.trainer.plateau_factor,
            patience=cfg.trainer.plateau_patience,
            min_lr=cfg.trainer.plateau_min_lr,
            verbose=verbose,
        )
        callbacks.append(plateau)
    if cfg.tracking.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=str(out_dir / "tensorboard"), histogram_freq=cfg.tracking.histogram_freq
            )
        )
    return callbacks, early_stopping, plateau
