"""The `train` step: a task (data and how to build its model) -> `model.fit` or the custom loop with the write-up's
callbacks -> a tracked, registered model."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tftrain.config import PARAMS, TrainConfig
from tftrain.data.augment import has_random_layers
from tftrain.data.augment import resolve as resolve_augment
from tftrain.data.fingerprint import location, split_digests
from tftrain.errors import INTERRUPTS, TrainingFailed, UserError
from tftrain.models.build import portable_copy, with_fused_batch_norms
from tftrain.tracking import lineage, runs
from tftrain.tracking.epoch_metrics import EpochMetrics, log_timings
from tftrain.tracking.journal import Journal
from tftrain.tracking.logged_models import LoggedModel, Provenance, log_keras_model
from tftrain.training import batchnorm, resume
from tftrain.training.callbacks import SaveClock, build_callbacks, chance_warning, checkpoint_dir, mode
from tftrain.training.context import RunContext, open_context
from tftrain.training.loop import fit_custom
from tftrain.training.plan import Plan, datasets, plan_steps
from tftrain.training.runtime import Runtime, barrier, build_runtime, gathered, precision_in_force, worker_index
from tftrain.training.schedules import build_learning_rate
from tftrain.training.task import Task, resolve_task
from tftrain.values import model_label, registered_model_name

log = logging.getLogger(__name__)

# found in the data rather than chosen, and long (an absolute path) or uninformative to compare runs on: tags
DATA_FACTS = ("dataset_resolved", "bad_images_skipped", "ignored_files")


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


def compile_model(model: keras.Model, task: Task, learning_rate, steps_per_execution: int) -> None:
    """Adam with the given rate or schedule, the task's loss and metrics; under mixed_float16 compile wraps the
    optimizer in a LossScaleOptimizer. Call it inside the strategy's scope."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, name="adam"),  # a fixed name: runs compare equal
        loss=task.build_loss(),
        metrics=task.build_metrics(),
        steps_per_execution=steps_per_execution,
    )
    # Built now, inside the caller's strategy scope: building it inside the first distributed step fails
    # ("You must feed a value for placeholder tensor") under MirroredStrategy with loss scaling.
    model.optimizer.build(model.trainable_variables)


def build_model(cfg: TrainConfig, rt: Runtime, task: Task, plan: Plan) -> tuple[keras.Model, float | None]:
    """The task's model (its batch norms on the fused kernel), checked and compiled in the strategy's scope, and its
    batch norms' momentum set for the run's length (batchnorm.py); the momentum, None when the model has no batch
    norm to train."""
    with rt.strategy.scope():
        model = check_model(with_fused_batch_norms(task.build_model()), task)
        compile_model(model, task, build_learning_rate(cfg, plan.steps_per_epoch, plan.learning_rate),
                      plan.steps_per_execution)  # fmt: skip
    momentum = batchnorm.momentum_for(plan.steps_per_epoch)
    return model, momentum if batchnorm.set_momentum(model, momentum) else None


def _fit_verbosity(cfg: TrainConfig) -> int:
    """A live progress bar on a terminal; in logs, one line per epoch (ours, or Keras' own)."""
    if sys.stdout.isatty():
        return 1
    return 0 if cfg.tracking.epoch_summary else 2


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


def _engine(cfg, rt, task, model, train_data, val_data, callbacks, plan: Plan) -> keras.callbacks.History:
    if cfg.runtime.resolved_engine == "custom":
        return fit_custom(
            model, task, rt.strategy, train_data, val_data, epochs=cfg.trainer.epochs,
            steps_per_epoch=plan.steps_per_epoch, global_batch=plan.global_batch,
            steps_per_execution=model.steps_per_execution, callbacks=callbacks, verbose=_fit_verbosity(cfg),
        )  # fmt: skip
    return model.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.trainer.epochs,
        callbacks=callbacks,
        verbose=_fit_verbosity(cfg),
        shuffle=False,  # train_data shuffles itself, seeded, every epoch
    )


def _runtime_params(cfg: TrainConfig, rt: Runtime, plan: Plan, augment: str, momentum: float | None) -> dict[str, str]:
    """What training resolved, logged as params; `momentum`: the batch norms' (None: the model has none)."""
    return {
        "augment_resolved": augment,
        **({"batch_norm_momentum": f"{momentum:.4g}"} if momentum is not None else {}),
        "engine_resolved": cfg.runtime.resolved_engine,  # engine=auto, as `mlflow run` logs it, resolves in TrainConfig
        "batch_size_resolved": str(plan.batch),
        "learning_rate_resolved": f"{plan.learning_rate:g}",
        "steps_per_execution_used": str(plan.steps_per_execution),
        "strategy_resolved": rt.strategy_name,
        "replicas": str(rt.replicas),
        "workers_resolved": str(rt.worker_count),  # the processes training together (TF_CONFIG's workers)
        "global_batch_size": str(plan.global_batch),
        "precision_resolved": rt.precision,
    }


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
    """Train `task` (None: the one the config's dataset and model name) as `cfg` says; `rt` the runtime already
    built (None: built here, first thing); `extra_callbacks` (the benchmark's) run after all of tftrain's own; `run` the
    caller's open run to train in (None: the active run, MLFLOW_RUN_ID's, the interrupted one's, or a new one);
    `register` False logs the model without registering it (a sweep registers its best trial's only).

    The phases, in order: runtime, task, compile, run context, callbacks, engine (fit or the custom loop), log."""
    # runtime: devices and strategy are set up before TensorFlow runs any op
    rt = rt or build_runtime(cfg)
    with precision_in_force(rt):  # the global dtype policy as it was, once training is done
        # task: the data and how to build its model; then the plan, which needs the training split's size
        task = task or resolve_task(cfg)
        plan = plan_steps(cfg, rt, len(task.train[0]))
        # compile
        model, momentum = build_model(cfg, rt, task, plan)
        augment = resolve_augment(cfg.data.augment, cfg.model.name, cfg.data.dataset, has_random_layers(model))
        resolved = {**_runtime_params(cfg, rt, plan, augment, momentum), **task.resolved}
        # run context: the run, the output folder, the journal, the command state
        with open_context(cfg, task, rt, run) as ctx:
            (ctx.out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
            if ctx.run_id:
                _log_run_start(cfg, task, resolved)
            # callbacks, then the engine
            callbacks, clock, epoch_metrics = _callbacks(cfg, rt, task, plan, ctx, momentum, extra_callbacks)
            log.info(_start_line(cfg, rt, task, plan, augment))
            data = datasets(cfg, rt, task.train, task.validation, plan.global_batch, augment)
            history, fit_seconds, upload_seconds = _run_engine(cfg, rt, task, model, data, callbacks, plan, clock, ctx)
            _check_outcome(cfg, rt, task, model, history, ctx.run_id)
            # log: the model, the timings; the command is done
            tracking_seconds = (epoch_metrics.seconds if epoch_metrics else 0.0) + upload_seconds
            logged, model_logging_seconds = None, 0.0
            if ctx.run_id:
                logged, model_logging_seconds = _log_model(cfg, task, model, ctx.journal, register)
                log_timings(ctx.journal, fit_seconds, tracking_seconds, model_logging_seconds)
                ctx.state.forget()  # finished: the same command would now start a new run
        barrier(rt)  # no worker exits while the chief still logs
        if ctx.journal and ctx.journal.active:
            raise TrainingFailed(
                f"training finished, but the tracking server went away during the run: its metrics, logs, checkpoints "
                f"and model are kept in {ctx.journal.folder}; when the server is back, upload them with: "
                f"tftrain sync {ctx.journal.folder}"
            )
        return TrainResult(
            ctx.run_id, logged, history, ctx.out_dir, model, fit_seconds, tracking_seconds, model_logging_seconds
        )


def _log_run_start(cfg: TrainConfig, task: Task, resolved: dict[str, str]) -> None:
    """The environment, the config's values and what was resolved from them, as params; what was found in the data
    (DATA_FACTS), as tags; the training and validation splits, as the run's datasets (tracking/lineage.py). The
    task is the one source for what the data is: for a task made in Python, its name stands for the config's data
    settings."""
    runs.log_environment()
    params = cfg.as_params()
    if task.identity:  # the task's data and model, not the config's
        params = {k: v for k, v in params.items() if PARAMS[k].group not in ("data", "model")}
        params |= {"dataset": task.name, "model": task.model_label or "the task's"}
    chosen = {k: v for k, v in resolved.items() if k not in DATA_FACTS}
    runs.log_config(cfg, params | {"registered_model_name": registered_model_name(cfg, task.label)} | chosen)
    digests = split_digests(task)
    facts = {k: v for k, v in resolved.items() if k in DATA_FACTS}
    runs.set_tags({"dataset_source": task.source, "train_examples": str(len(task.train[0])),
                   "classes": str(task.num_classes), "data_digests": " ".join(f"{k} {v}" for k, v in digests.items()),
                   **facts})  # fmt: skip
    lineage.log_splits(lineage.split_datasets(task, digests, location(task)), ("train", "validation"))


def _callbacks(cfg, rt, task, plan, ctx: RunContext, momentum, extra) -> tuple[list, SaveClock, object]:
    """The one ordered list (callbacks.build_callbacks), with the parts that need the run: precise batch norm
    statistics while the model has batch norms, epoch metrics when there is a run, the resume backups always."""
    # every worker of a multi-worker job must back up the same epochs: their own clocks would not agree
    clock = SaveClock(cfg.tracking.save_interval if rt.worker_count == 1 else 0.0)
    statistics = None
    if momentum is not None:
        statistics = batchnorm.PreciseStatistics(
            task.train[0], plan.batch, plan.steps_per_epoch, momentum, cfg.runtime.seed
        )
    epoch_metrics = None
    if ctx.run_id:
        epoch_metrics = EpochMetrics(
            clock, ctx.journal, cfg.tracking.log_lr_every_n_steps, runs.logged_steps(ctx.run_id)
        )
    worker = "chief" if rt.is_chief else worker_index()
    if rt.worker_count > 1:
        agreed = resume.agree_on_backups(ctx.state.backup_folder(worker), lambda value: gathered(rt, value))
        if agreed and rt.is_chief:
            log.info(f"the workers go on after epoch {agreed}, from their backups")
    callbacks = build_callbacks(
        cfg, ctx.out_dir, clock, task.num_classes, statistics=statistics, epoch_metrics=epoch_metrics,
        backups=lambda before: resume.backup_callbacks(ctx.state, before, clock, worker), extra=tuple(extra),
    )  # fmt: skip
    return callbacks, clock, epoch_metrics


def _start_line(cfg: TrainConfig, rt: Runtime, task: Task, plan: Plan, augment: str) -> str:
    model = "the task's model" if task.identity else model_label(cfg.model.name)
    return (
        f"training {model} ({cfg.runtime.resolved_engine}, {rt.strategy_name} x{rt.replicas}, "
        f"{rt.precision}) on "
        f"{task.source or task.name}: {len(task.train[0])} train / {len(task.validation[0])} validation images of "
        f"{'x'.join(map(str, task.input_shape))}, {task.num_classes} classes, global batch {plan.global_batch}, "
        f"learning rate {plan.learning_rate:g} ({cfg.trainer.lr_schedule}), augment {augment}"
    )


def _run_engine(cfg, rt, task, model, datasets, callbacks, plan, clock, ctx: RunContext):
    """fit or the custom loop; what waits for a save point is written if it fails, the outputs are uploaded
    either way. Returns the history, the wall time and the part of it spent uploading."""
    started = time.perf_counter()
    try:
        try:
            history = _engine(cfg, rt, task, model, *datasets, callbacks, plan)
        except BaseException as stopped:
            # the best checkpoint and epoch metrics not yet written (SaveClock.wait_for); if that fails too (a full
            # disk), the first failure is the one to report
            with contextlib.suppress(OSError):
                clock.flush_pending(interrupted=isinstance(stopped, INTERRUPTS))
            if isinstance(stopped, KeyboardInterrupt) and ctx.run_id:
                log.info(f"run {ctx.run_id} stopped; the same command goes on from its last backup")
            raise
    except OSError as e:  # a checkpoint, backup or log that could not be written: a full disk, a lost mount
        _set_aside_partial_checkpoints(ctx.out_dir)
        if e.errno == errno.ENOENT:  # read, not written: a file of the command's state that should be there
            raise TrainingFailed(
                f"training stopped: {e.filename} is missing ({e.strerror}); files written before are kept; run "
                f"with resume=never to start afresh"
            ) from None
        raise TrainingFailed(
            f"training stopped: cannot write {e.filename or ctx.out_dir}: {e.strerror or e}; files written before "
            "are kept; make room and run the same command to continue from the last completed epoch"
        ) from None
    finally:
        uploading = time.perf_counter()
        if ctx.run_id:
            _log_outputs(ctx.out_dir, ctx.journal)
        uploaded = time.perf_counter()
    return history.history, uploaded - started, uploaded - uploading


def _check_outcome(cfg, rt, task, model, history, run_id) -> None:
    """A model kept at chance is said and tagged; multi-worker, the workers' weights are compared."""
    if warning := _kept_epoch_warning(history, task.num_classes, cfg):
        log.info(warning)
        if run_id:
            runs.set_tags({"tftrain.warning": warning})
    if rt.worker_count > 1:
        sums = gathered(rt, float(sum(np.sum(w, dtype=np.float64) for w in model.get_weights())))
        if run_id:
            _check_workers_agree(sums)


def _log_model(cfg, task, model, journal, register) -> tuple[LoggedModel, float]:
    started = time.perf_counter()
    made = Provenance(task.class_names, task.data_settings, registered_model_name(cfg, task.label))
    name = made.registered_name if register else None
    logged = log_keras_model(portable_copy(model), name, task.validation[0][:2], made, journal)
    return logged, time.perf_counter() - started


def _kept_epoch_warning(history: dict[str, list[float]], classes: int, cfg: TrainConfig) -> str:
    """callbacks.chance_warning for the epoch whose weights training ends with (the best by the early-stopping
    monitor when restore_best_weights, else the last)."""
    monitored = history.get(cfg.trainer.early_stopping_monitor) or []
    start = min(cfg.trainer.early_stopping_start, len(monitored) - 1)  # the epochs early stopping watched
    if not monitored:
        return ""
    kept = len(monitored) - 1
    if cfg.trainer.early_stopping and cfg.trainer.restore_best_weights:
        watched = monitored[start:]
        kept = start + int(
            np.argmin(watched) if mode(cfg.trainer.early_stopping_monitor) == "min" else np.argmax(watched)
        )
    return chance_warning({k: v[kept] for k, v in history.items() if len(v) > kept}, classes)


def _check_workers_agree(sums: list[float]) -> None:
    """Multi-worker: every worker ends with the same weights (one model trained in step); the run says so, with
    each worker's sum of its weights."""
    agree = len(set(sums)) == 1
    runs.set_tags({"tftrain.workers_agree": str(agree).lower(), "tftrain.worker_weight_sums": json.dumps(sums)})
    if not agree:
        log.warning(f"the workers ended with different weights (sums {sums}); the logged model is the chief's")
