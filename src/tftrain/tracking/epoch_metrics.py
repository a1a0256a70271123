"""The Keras callback that logs each epoch to MLflow, and the training's timings after it."""

from __future__ import annotations

import contextlib
import json
import time

import keras
import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from tftrain.errors import TrainingFailed
from tftrain.tracking.journal import Journal
from tftrain.tracking.runs import active_run_id


def current_lr(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's metrics at step = epoch number (1-based, as printed), with the learning rate, the loss scale
    (mixed_float16) and the epoch's wall time; the optimizer's settings as params and the model summary when
    training begins. With `lr_every_n_steps`, also `learning_rate_step` at optimizer steps.

    A plain Keras callback, not a subclass of mlflow.keras.MlflowCallback: that class's metaclass turns every
    exception of its subclasses' methods into a warning, so a metrics write that failed would vanish. Here a write
    the server refuses stops training with the reason (TrainingFailed), and a server that went away sends the
    metrics to the run's offline `journal`; nothing is dropped.

    Epoch metrics wait for a save point (`clock`), the end of training or a failure, not an interrupt (`flush`),
    then go to MLflow in one synchronous call, before the save point's resume backup is written (this callback
    runs first): every epoch a backup says is done is logged. An epoch in `already_logged` (logged before a crash, then replayed) is
    not logged twice. `seconds` adds up the time spent in this callback: what tracking costs the training."""

    def __init__(self, clock, journal: Journal, lr_every_n_steps: int = 0, already_logged: set[int] | None = None):
        super().__init__()
        self.clock = clock
        self.journal = journal
        self.lr_every_n_steps = lr_every_n_steps
        self.already_logged = already_logged or set()
        self._last_step = 0
        self._pending: list[dict] = []
        self.seconds = 0.0
        # a failure flushes what waits; an interrupt does not: the same command goes on from the last backup, and
        # trains and logs the epochs since then again (logged now, their new values would be skipped as logged)
        clock.wait_for(self, when_interrupted=False)

    def on_train_begin(self, logs=None):
        with self._timed():
            # an artifact, not 16 params: mostly None, and the schedule as one long dict (runs compare on
            # learning_rate_resolved and lr_schedule)
            config = json.loads(json.dumps(self.model.optimizer.get_config(), default=str))
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            summary = "\n".join(lines)
            self._log(
                lambda: (mlflow.log_dict(config, "optimizer.json"), mlflow.log_text(summary, "model_summary.txt"))
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        with self._timed():
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            metrics["learning_rate"] = current_lr(self.model)
            metrics["epoch_seconds"] = time.perf_counter() - self._start
            if isinstance(self.model.optimizer, keras.optimizers.LossScaleOptimizer):
                metrics["loss_scale"] = float(keras.ops.convert_to_numpy(self.model.optimizer.dynamic_scale))
            if epoch + 1 not in self.already_logged:
                self._pending.append({"metrics": metrics, "step": epoch + 1, "timestamp": int(time.time() * 1000)})
            if self.clock.due:
                self.flush()

    def on_train_end(self, logs=None):
        with self._timed():
            self.flush()

    def flush(self) -> None:
        """Log the epochs waiting for a save point, in one call."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        batch = [Metric(k, v, e["timestamp"], e["step"]) for e in pending for k, v in e["metrics"].items()]
        client, run_id = mlflow.MlflowClient(), active_run_id()

        def log():
            for start in range(0, len(batch), 1000):  # MLflow takes up to 1000 metrics a call
                client.log_batch(run_id, metrics=batch[start : start + 1000])

        self._log(log, *pending)

    def on_train_batch_end(self, batch, logs=None):
        """Batches arrive steps_per_execution at a time: log when a multiple of N was passed."""
        n = self.lr_every_n_steps
        if not n:
            return
        with self._timed():
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if step // n > self._last_step // n:
                mlflow.log_metric("learning_rate_step", current_lr(self.model), step=step, synchronous=False)
            self._last_step = step

    def _log(self, call, *entries: dict) -> None:
        """A tracking call the server refused (not one it never answered: that one is journaled) ends training
        with the reason, in one line."""
        try:
            self.journal.call(call, *entries)
        except MlflowException as e:
            raise TrainingFailed(
                f"training stopped: the tracking store refused to log ({str(e).splitlines()[0][:300]}); checkpoints "
                "and the resume backup are kept"
            ) from None

    @contextlib.contextmanager
    def _timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


def log_timings(journal: Journal, fit_seconds: float, tracking_seconds: float, model_logging_seconds: float) -> None:
    """The training's wall time, the part of it spent in MLflow calls, and the time to log the model after."""
    metrics = {"fit_seconds": fit_seconds, "tracking_seconds": tracking_seconds,
               "model_logging_seconds": model_logging_seconds}  # fmt: skip
    journal.call(lambda: mlflow.log_metrics(metrics), {"metrics": metrics, "step": 0})
