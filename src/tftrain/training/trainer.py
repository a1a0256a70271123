"""The `train` step: a task (data and how to build its model) -> `model.fit` or the custom loop with the write-up's
callbacks -> a tracked, registered model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftrain.config import TrainConfig, check_output_dir, default_run_name, model_label
from tftrain.data.augment import batch_augmenter, has_random_layers
from tftrain.data.augment import resolve as resolve_augment
from tftrain.data.datasets import make_dataset
from tftrain.errors import TrainingFailed, UserError
from tftrain.models.build import portable_copy
from tftrain.tracking import runs
from tftrain.tracking.epoch_metrics import EpochMetrics, log_timings
from tftrain.tracking.journal import Journal
from tftrain.tracking.logged_models import LoggedModel, Provenance, log_keras_model
from tftrain.training import batchnorm, resume, run_state
from tftrain.training.callbacks import SaveClock, build_callbacks, chance_warning, checkpoint_dir, flush_pending, mode
from tftrain.training.loop import fit_custom
from tftrain.training.runtime import Runtime, barrier, build_runtime, gathered, worker_index
from tftrain.training.schedules import build_learning_rate
from tftrain.training.task import Task, resolve_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str | None  # None on a non-chief worker, which logs nothing
    model: LoggedModel | None
    history: dict[str, list[float]]
    out_dir: Path  # a non-chief worker's was temporary and is gone
    keras_model: keras.Model
    fit_seconds: float  # the engine's wall time (every epoch, its validation, every callback) and the uploads
    tracking_seconds: float  # of which in MLflow calls: epoch metrics, TensorBoard logs and checkpoint uploads
    model_logging_seconds: float  # after training: logging and registering the model

    @property
    def epochs_run(self) -> int:
        return len(self.history["loss"])


def steps_per_execution(cfg: TrainConfig, rt: Runtime) -> int:
    """Keras 3's fit fails with steps_per_execution > 1 under a multi-replica strategy ("You must feed a value for
    placeholder tensor", keras-team/keras#19246): there, fit runs one step per call, and says so."""
    if cfg.engine == "fit" and rt.replicas > 1 and cfg.steps_per_execution > 1:
        log.info(f"note: engine=fit with {rt.replicas} replicas runs steps_per_execution=1 (keras-team/keras#19246)")
        return 1
    return cfg.steps_per_execution


def compile_model(model: keras.Model, learning_rate, steps_per_execution: int) -> None:
    """Adam with the given rate or schedule; under mixed_float16 compile wraps it in a LossScaleOptimizer."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, name="adam"),  # a fixed name: runs compare equal
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    # Built now, inside the caller's strategy scope: building it inside the first distributed step fails
    # ("You must feed a value for placeholder tensor") under MirroredStrategy with loss scaling.
    model.optimizer.build(model.trainable_variables)


def _fit_verbosity(cfg: TrainConfig) -> int:
    """A live progress bar on a terminal; in logs, one line per epoch (ours, or Keras' own)."""
    if sys.stdout.isatty():
        return 1
    return 0 if cfg.epoch_summary else 2


def _set_aside_partial_checkpoints(out_dir: Path) -> None:
    """A checkpoint cut short by a failed write is not a valid .keras (zip) file: rename it *.keras.partial, so
    neither the run's artifacts nor a user picks it up as a model."""
    for path in checkpoint_dir(out_dir).glob("*.keras"):
        if not zipfile.is_zipfile(path):
            path.rename(path.with_name(path.name + ".partial"))


def _log_outputs(out_dir: Path, journal: Journal) -> None:
    """TensorBoard logs and the best checkpoint go to the run; every checkpoint stays on local disk."""
    runs.log_folder(out_dir / "tensorboard", "tensorboard", journal)
    checkpoints = sorted(checkpoint_dir(out_dir).glob("*.keras"), key=lambda p: p.stat().st_mtime)
    if checkpoints:
        runs.log_file(checkpoints[-1], "checkpoints", journal)


def _datasets(cfg: TrainConfig, rt: Runtime, train_xy, val_xy, global_batch: int, augment: str):
    """fit takes global batches and splits them itself; the custom loop takes per-replica batches, sharded per
    worker, through distribute_datasets_from_function. The `augment` preset changes training batches only."""
    augmenter = batch_augmenter(augment, cfg.seed)
    if cfg.engine == "fit":
        return (
            make_dataset(*train_xy, global_batch, shuffle=True, seed=cfg.seed, augment=augmenter),
            make_dataset(*val_xy, global_batch, shuffle=False),
        )

    def per_worker(xy, shuffle):
        def fn(ctx: tf.distribute.InputContext):
            shard = (ctx.num_input_pipelines, ctx.input_pipeline_id)
            batch = ctx.get_per_replica_batch_size(global_batch)
            # training: full batches only with several replicas (see _full_batches_only)
            drop = shuffle and _full_batches_only(cfg, rt)
            return make_dataset(*xy, batch, shuffle=shuffle, seed=cfg.seed, shard=shard, drop_remainder=drop,
                                augment=augmenter if shuffle else None)  # fmt: skip

        return rt.strategy.distribute_datasets_from_function(fn)

    return per_worker(train_xy, True), per_worker(val_xy, False)


def _full_batches_only(cfg: TrainConfig, rt: Runtime) -> bool:
    """The custom engine over several replicas trains on full global batches only: an epoch's last, smaller batch
    left a replica an empty one, whose gradient fails in TensorFlow (ReluGrad shapes [0,19,14,32] != [0,20,15,3],
    the CNN on 40x30 images), and workers whose shards end at different steps would wait on each other. Each
    epoch is reshuffled, so what one epoch leaves out another trains on."""
    return cfg.engine == "custom" and rt.replicas > 1


def _steps_per_epoch(cfg: TrainConfig, rt: Runtime, examples: int, batch: int) -> int:
    global_batch = batch * rt.replicas
    if not _full_batches_only(cfg, rt):
        return math.ceil(examples / global_batch)
    if examples < global_batch:
        raise UserError(
            f"invalid value for batch_size: received {batch}; with {rt.replicas} replicas the global batch "
            f"is {global_batch}, more than the {examples} training images; allowed: at most {examples // rt.replicas}"
        )
    return examples // global_batch


def _run_engine(cfg, rt, model, train_data, val_data, callbacks, steps_per_epoch, global_batch):
    if cfg.engine == "custom":
        return fit_custom(
            model, rt.strategy, train_data, val_data, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
            global_batch=global_batch, steps_per_execution=model.steps_per_execution, callbacks=callbacks,
            verbose=_fit_verbosity(cfg),
        )  # fmt: skip
    return model.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=_fit_verbosity(cfg),
        shuffle=False,  # train_data shuffles itself, seeded, every epoch
    )


def _runtime_params(
    cfg: TrainConfig, rt: Runtime, batch: int, rate: float, spe: int, augment: str, momentum: float | None
) -> dict[str, str]:
    """What training resolved, logged as params; `momentum`: the batch norms' (None: the model has none)."""
    return {
        "augment_resolved": augment,
        **({"batch_norm_momentum": f"{momentum:.4g}"} if momentum is not None else {}),
        "engine_resolved": cfg.engine,  # engine=auto, as `mlflow run` logs it, resolves in TrainConfig
        "batch_size_resolved": str(batch),
        "learning_rate_resolved": f"{rate:g}",
        "steps_per_execution_used": str(spe),
        "strategy_resolved": rt.strategy_name,
        "replicas": str(rt.replicas),
        "workers_resolved": str(rt.worker_count),  # the processes training together (TF_CONFIG's workers)
        "global_batch_size": str(batch * rt.replicas),
        "precision_resolved": rt.precision,
    }


def _few_steps_note(batch: int, rt: Runtime, examples: int, steps: int) -> str | None:
    """A word when an epoch is only a few optimizer steps (a small folder at the default batch size), which can
    leave a model at chance after all its epochs."""
    suggested = max(8, 2 ** int(math.log2(max(1, examples // (20 * rt.replicas)))))
    if steps >= 4 or suggested >= batch:
        return None
    return (
        f"note: {examples} training images in batches of {batch * rt.replicas} make {steps} step"
        f"{'s' if steps > 1 else ''} an epoch; a smaller batch_size (such as {suggested}) learns more per epoch"
    )


def check_model(model, task: Task) -> keras.Model:
    """The task's contract: raw pixels of its shape in, one float32 probability per class out."""
    if not isinstance(model, keras.Model):
        raise UserError(f"task {task.name}: build_model returned {type(model).__name__}, not a keras.Model")
    if tuple(model.input_shape[1:]) != task.input_shape or model.output_shape[-1] != task.num_classes:
        raise UserError(
            f"task {task.name}: build_model's model takes {model.input_shape} and answers {model.output_shape}; "
            f"allowed: images (None, {', '.join(map(str, task.input_shape))}) in, (None, {task.num_classes}) out"
        )
    return model


def train(
    cfg: TrainConfig,
    task: Task | None = None,
    rt: Runtime | None = None,
    extra_callbacks: tuple[keras.callbacks.Callback, ...] = (),
    run: runs.StepRun | None = None,
    register: bool = True,
) -> TrainResult:
    """Train `task` (None: the one cfg.dataset and cfg.model name) as `cfg` says; `rt` the runtime already built
    (None: built here, first thing); `extra_callbacks` (the benchmark's) run after all of tftrain's own; `run` the
    caller's open run to train in (None: the active run, MLFLOW_RUN_ID's, the interrupted one's, or a new one);
    `register` False logs the model without registering it (a sweep registers its best trial's only)."""
    output_root = check_output_dir(cfg.output_dir)
    rt = rt or build_runtime(cfg)  # first: devices and strategy must be set up before TensorFlow runs any op
    task = task or resolve_task(cfg)
    train_xy, val_xy = task.train, task.validation
    batch, rate = cfg.training_batch(len(train_xy[0]), rt.replicas)
    global_batch = batch * rt.replicas
    steps_per_epoch = _steps_per_epoch(cfg, rt, len(train_xy[0]), batch)
    if note := _few_steps_note(batch, rt, len(train_xy[0]), steps_per_epoch):
        log.info(note)
    spe = steps_per_execution(cfg, rt)
    with rt.strategy.scope():
        model = check_model(task.build_model(), task)
        compile_model(model, build_learning_rate(cfg, steps_per_epoch, rate), spe)
    augment = resolve_augment(cfg.augment, cfg.model, cfg.dataset, has_random_layers(model))
    momentum = batchnorm.momentum_for(steps_per_epoch)
    norms = batchnorm.set_momentum(model, momentum)
    train_data, val_data = _datasets(cfg, rt, train_xy, val_xy, global_batch, augment)

    with _run_and_folder(cfg, rt, output_root, run) as (run_id, out_dir, journal):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        # every worker of a multi-worker job must back up the same epochs: their own clocks would not agree
        clock = SaveClock(cfg.save_interval if rt.worker_count == 1 else 0.0)
        callbacks = build_callbacks(cfg, out_dir, clock, task.num_classes)
        if norms:  # first: the statistics are ready before any other callback sees a validation
            callbacks.insert(0, batchnorm.PreciseStatistics(train_xy[0], batch, steps_per_epoch, momentum, cfg.seed))
        epoch_metrics = None
        if run_id:
            runs.log_environment()
            resolved = _runtime_params(cfg, rt, batch, rate, spe, augment, momentum if norms else None)
            runs.log_config(cfg, {**resolved, **task.resolved})
            runs.set_tags({"dataset_source": task.source, "train_examples": str(len(train_xy[0])),
                           "classes": str(task.num_classes)})  # fmt: skip
            epoch_metrics = EpochMetrics(clock, journal, cfg.log_lr_every_n_steps, runs.logged_steps(run_id))
            callbacks.append(epoch_metrics)
        # last: an epoch's metrics are logged before its backup says it is done
        worker = "chief" if rt.is_chief else worker_index()
        callbacks += resume.backup_callbacks(cfg, callbacks, clock, worker)
        if rt.worker_count > 1:
            agreed = resume.agree_on_backups(resume.backup_folder(cfg, worker), lambda value: gathered(rt, value))
            if agreed and rt.is_chief:
                log.info(f"the workers go on after epoch {agreed}, from their backups")
        callbacks += extra_callbacks
        log.info(f"training {model_label(cfg.model)} ({cfg.engine}, {rt.strategy_name} x{rt.replicas}, {rt.precision}) on "
            f"{task.source}: {len(train_xy[0])} train / {len(val_xy[0])} validation images of "
            f"{'x'.join(map(str, task.input_shape))}, {task.num_classes} classes, global batch {global_batch}, "
            f"learning rate {rate:g} ({cfg.lr_schedule}), augment {augment}")
        started = time.perf_counter()
        try:
            try:
                history = _run_engine(cfg, rt, model, train_data, val_data, callbacks, steps_per_epoch, global_batch)
            except BaseException:
                # the best checkpoint and epoch metrics not yet written; if that fails too (a full disk), the
                # first failure is the one to report
                with contextlib.suppress(OSError):
                    flush_pending(callbacks)
                raise
        except OSError as e:  # a checkpoint, backup or log that could not be written: a full disk, a lost mount
            _set_aside_partial_checkpoints(out_dir)
            raise TrainingFailed(
                f"training stopped: cannot write {e.filename or out_dir}: {e.strerror or e}; files written before "
                "are kept; make room and run the same command to continue from the last completed epoch"
            ) from None
        finally:
            uploading = time.perf_counter()
            if run_id:
                _log_outputs(out_dir, journal)
            uploaded = time.perf_counter()
        fit_seconds = uploaded - started
        if warning := _kept_epoch_warning(history.history, task.num_classes, cfg):
            log.info(warning)
            if run_id:
                runs.set_tags({"tftrain.warning": warning})
        if rt.worker_count > 1:
            sums = gathered(rt, float(sum(np.sum(w, dtype=np.float64) for w in model.get_weights())))
            if run_id:
                _check_workers_agree(sums)
        tracking_seconds = (epoch_metrics.seconds if epoch_metrics else 0.0) + uploaded - uploading
        logged, model_logging_seconds = None, 0.0
        if run_id:
            made = Provenance(task.class_names, task.data_settings, cfg.registered_model_name)
            logged = log_keras_model(
                portable_copy(model), cfg.registered_model_name if register else None, val_xy[0][:2], made, journal
            )
            model_logging_seconds = time.perf_counter() - uploaded
            log_timings(journal, fit_seconds, tracking_seconds, model_logging_seconds)
            run_state.forget(cfg)  # finished: the same command would now start a new run
    barrier(rt)  # no worker exits while the chief still logs
    if journal and journal.active:
        raise TrainingFailed(
            f"training finished, but the tracking server went away during the run: its metrics, logs, checkpoints "
            f"and model are kept in {journal.folder}; when the server is back, upload them with: "
            f"tftrain sync {journal.folder}"
        )
    return TrainResult(
        run_id, logged, history.history, out_dir, model, fit_seconds, tracking_seconds, model_logging_seconds
    )


def _kept_epoch_warning(history: dict[str, list[float]], classes: int, cfg: TrainConfig) -> str:
    """callbacks.chance_warning for the epoch whose weights training ends with (the best by the early-stopping
    monitor when restore_best_weights, else the last)."""
    monitored = history.get(cfg.early_stopping_monitor) or []
    start = min(cfg.early_stopping_start, len(monitored) - 1)  # the epochs early stopping watched
    if not monitored:
        return ""
    kept = len(monitored) - 1
    if cfg.early_stopping and cfg.restore_best_weights:
        watched = monitored[start:]
        kept = start + int(np.argmin(watched) if mode(cfg.early_stopping_monitor) == "min" else np.argmax(watched))
    return chance_warning({k: v[kept] for k, v in history.items() if len(v) > kept}, classes)


def _check_workers_agree(sums: list[float]) -> None:
    """Multi-worker: every worker ends with the same weights (one model trained in step); the run says so, with
    each worker's sum of its weights."""
    agree = len(set(sums)) == 1
    runs.set_tags({"tftrain.workers_agree": str(agree).lower(), "tftrain.worker_weight_sums": json.dumps(sums)})
    if not agree:
        log.warning(f"the workers ended with different weights (sums {sums}); the logged model is the chief's")


@contextlib.contextmanager
def _run_and_folder(cfg: TrainConfig, rt: Runtime, output_root: Path, within: runs.StepRun | None):
    """The chief (any single-process run): its MLflow run, outputs/<run_id> and the run's offline journal there.
    Another worker of a multi-worker job: no run, no journal, and a temporary folder, deleted after: it runs the
    same callbacks (so collective ops stay in step across workers) but keeps nothing and logs nothing."""
    if not rt.is_chief:
        with tempfile.TemporaryDirectory(prefix="tftrain-worker-") as folder:
            yield None, Path(folder), None
        return
    previous = run_state.interrupted_run(cfg)
    if previous:
        resume.check_backup(cfg)
    with runs.step_run(default_run_name(cfg), resume_run_id=previous, within=within) as run:
        run_id = run.run_id
        out_dir = output_root / run_id
        if previous and previous != run_id:  # `mlflow run` made a new run: the interrupted one moves into it
            runs.adopt_run(previous)
            if (output_root / previous).is_dir() and not out_dir.exists():
                (output_root / previous).rename(out_dir)
        run_state.remember(cfg, run_id)
        run.journal = Journal(out_dir, run_id)  # the run's end is journaled too, if the server goes away
        yield run_id, out_dir, run.journal
