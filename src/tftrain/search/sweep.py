"""The `sweep` step: a hyperparameter search with Optuna, each trial a full tftrain training run nested under one
parent run per study; losers pruned by epoch; resumable and shareable between processes through Optuna's storage.

- The study lives in Optuna's RDB storage (sqlite beside a sqlite MLflow store, else in output_dir; a team's
  PostgreSQL when `storage` names it). The process that creates the study (the storage's unique study name decides,
  so two processes starting together agree) creates the parent run and records it in the study.
- Each process runs trials until `trials` of them are done or running (completed, pruned, or failed by
  themselves); one that asked for a trial beyond that gives it back unrun (a race of two processes), so the
  total is `trials`.
- A trial whose process died (SIGKILL, a lost machine) is failed and queued again with the same values: at once
  when its process was on this host and is gone, otherwise when its heartbeat is older than study.HEARTBEAT_GRACE. Its
  child run ends KILLED, saying so.
- When the study is done and no trial runs anywhere, the process that finished last registers the best trial's
  model (one version even if two processes get there together: the later version is removed), evaluates it on
  the test split, exports it and puts it through the registry gate, all in the best trial's run, and the parent
  gets the summary: best value and values, counts per state, and the plots.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import keras
import mlflow
import optuna
import tensorflow as tf
from optuna.trial import TrialState

from tftrain.config import PARAMS, TrainConfig
from tftrain.data.datasets import make_dataset
from tftrain.env import mlflow_run_id
from tftrain.errors import INTERRUPTS, TrainingFailed, UserError
from tftrain.search import trials
from tftrain.search.space import OBJECTIVES, Dimension, SweepConfig, storage_url
from tftrain.search.study import ATTR, PLACEMENT, open_storage, refuse_other, settings, study_name
from tftrain.search.summary import SweepResult, shown, summarize
from tftrain.tracking import runs
from tftrain.tracking.logged_models import mark_gated, register_once
from tftrain.training.run_state import command_state
from tftrain.training.runtime import build_runtime
from tftrain.training.task import auto_sides, load_data, resolve_task
from tftrain.values import registered_model_name

log = logging.getLogger(__name__)

PARENT_WAIT = 60.0  # seconds a joining process waits for the study's creator to record the parent run
# a trial trains in its own process, wherever that runs (with launcher=ray, a Ray task: search/on_ray.py)
LOCAL_RUNTIME = {name: PARAMS[name].default for name in PLACEMENT}


def _data_key(cfg: TrainConfig) -> tuple:
    """What the loaded data depends on: the data settings and, for image_size=auto, the model's size bounds."""
    return (*dataclasses.astuple(cfg.data), auto_sides(cfg.model.name))


class _Surplus(Exception):
    """A trial asked for beyond `trials` (another process took the last one first): given back unrun."""


def _sampler(sw: SweepConfig, dims: tuple[Dimension, ...], seed: int) -> optuna.samplers.BaseSampler:
    if sw.sampler == "grid":
        return optuna.samplers.GridSampler({d.name: d.grid() for d in dims}, seed=seed)
    if sw.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(sw: SweepConfig, base: TrainConfig) -> optuna.pruners.BasePruner:
    if sw.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if sw.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.trainer.epochs)
    return optuna.pruners.NopPruner()


class _NoRetracingWarning(logging.Filter):
    """Each trial builds a new model, whose train step TensorFlow counts as a retracing of the last trial's and
    warns about from the fifth trial on: expected in a sweep, and no help to its user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def sweep(base: TrainConfig, sw: SweepConfig, dims: tuple[Dimension, ...]) -> SweepResult:
    """The sweep `sw` over `dims` on `base`: in this process, or with launcher=ray in `workers` processes at once on
    the Ray cluster (search/on_ray.py), each running run_trials."""
    if base.runtime.launcher == "ray":
        from tftrain.search.on_ray import sweep_on_ray

        return sweep_on_ray(base, sw)
    return run_trials(base, sw, dims)


def run_trials(base: TrainConfig, sw: SweepConfig, dims: tuple[Dimension, ...]) -> SweepResult:
    """This process's part of the study: trials until `trials` are done or taken, then, if it is the last one
    running, the summary and the gate (see the module docstring)."""
    # Optuna logs each failed trial with its traceback; tftrain says in one line what happened to every trial
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tf.get_logger().addFilter(_NoRetracingWarning())
    name = study_name(sw, base, dims)
    storage = open_storage(storage_url(sw, base), on_stale=trials.interrupted)
    study, parent, created = _open_study(name, storage, sw, base, dims, _pruner(sw, base))
    # the study's creator samples with the seed; a process joining it (or continuing it) with its own, or it
    # would propose the values the creator did. Except on a grid: its seed orders the grid, which every process
    # must see alike (grid points are told apart by their number in it)
    same_seed = created or sw.sampler == "grid"
    study.sampler = _sampler(sw, dims, base.runtime.seed if same_seed else base.runtime.seed + os.getpid())
    started = time.monotonic()
    data: dict[tuple, object] = {}
    log.info(f"study {name}: {sw.trials} trials over {', '.join(str(d) for d in dims)}; parent run {parent}")
    out_of_time = False
    try:
        while True:
            trials.fail_dead_trials(study)
            if trials.taken(study) >= sw.trials:
                break
            if trials.exhausted(study):
                log.info(
                    f"the grid's {_grid_size(dims)} points are all tried: the study ends before {sw.trials} trials"
                )
                break
            if sw.timeout and time.monotonic() - started >= sw.timeout:
                out_of_time = True
                log.info(f"timeout: {sw.timeout:g} s passed; no new trial starts")
                break
            study.optimize(
                lambda trial: _objective(trial, study, base, sw, dims, parent, data),
                n_trials=1,
                catch=(TrainingFailed, _Surplus),
            )
    except BaseException as e:
        _stopped(study, parent, e)
        raise
    return _finish(study, name, parent, base, sw, data, out_of_time)


def _grid_size(dims: tuple[Dimension, ...]) -> int:
    return math.prod(len(d.grid()) for d in dims)


def _stopped(study: optuna.Study, parent: str, error: BaseException) -> None:
    """The sweep stops on an interrupt (Ctrl-C) or an error: an interrupted trial (Optuna has failed it) is queued
    again with its values, for the same command to run; the parent ends KILLED or FAILED with the reason unless
    trials still run elsewhere (`mlflow run` ends its own run itself)."""
    stopped = isinstance(error, INTERRUPTS)  # Ctrl-C, or Ray ending a dead driver's process
    if stopped:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            mine = trials.own_record(trial).get("pid") == os.getpid()
            if mine and not trials.counted(trial) and "surplus" not in trial.user_attrs:
                trials.interrupted(study, trial, "Ctrl-C" if isinstance(error, KeyboardInterrupt) else "stopped")
    if _own_run() != parent and not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        status = "KILLED" if stopped else "FAILED"
        runs.end_other_run(parent, status, f"{type(error).__name__}: {error}; run the same command to continue")


def _open_study(name, storage, sw, base, dims, pruner) -> tuple[optuna.Study, str, bool]:
    """Create the study and its parent run, or join them (False); refuse a study that searches something else."""
    given = settings(sw, base, dims)
    try:
        study = optuna.create_study(study_name=name, storage=storage, pruner=pruner, direction=OBJECTIVES[sw.objective])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        return study, _join(study, name, given), False
    parent = _own_run() or runs.new_run(name)
    runs.tag_run(parent, {"tftrain.study": name, "tftrain.sweep": "parent", "mlflow.runName": name})
    study.set_user_attr(ATTR, {**given, "parent_run_id": parent})
    runs.log_params_to(parent, {"study": name, "space": ";".join(given["space"]), "objective": sw.objective,
                                "sampler": sw.sampler, "pruner": sw.pruner, **base.as_params()})  # fmt: skip
    return study, parent, True


def _join(study: optuna.Study, name: str, given: dict) -> str:
    deadline = time.monotonic() + PARENT_WAIT
    while ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)  # the creator is recording the parent run
    recorded = study.user_attrs.get(ATTR)
    if recorded is None:
        raise UserError(f"study {name} exists in the storage but names no parent run (its creator stopped before "
                        "recording it); allowed: another study name")  # fmt: skip
    refuse_other(name, recorded, given)
    parent = recorded["parent_run_id"]
    runs.reopen_run(parent)
    own = _own_run()
    if own and own != parent:  # `mlflow run` made a run for this process: it goes under the parent
        runs.tag_run(own, {"mlflow.parentRunId": parent, "tftrain.study": name, "tftrain.sweep": "worker",
                           "mlflow.note.content": f"A process that worked on study {name}; its trials are the "
                           f"parent run {parent}'s children."})  # fmt: skip
    log.info(f"continuing study {name} (parent run {parent})")
    return parent


def _own_run() -> str | None:
    """The run `mlflow run` started for this process, if any."""
    return mlflow_run_id()


def _objective(trial, study, base, sw, dims, parent, data) -> float:
    # a trial queued again after an interruption goes on from its first try's backup (the same run name, so the
    # same command state), and its run takes over the interrupted one's epochs
    first = trials.first_try(study, trial.number)
    trial.set_user_attr(ATTR, trials.owner(trial))
    taken = sorted(t.number for t in study.get_trials(deepcopy=False) if trials.taking(t))
    if trial.number not in taken[: sw.trials]:
        trial.set_user_attr("surplus", True)
        raise _Surplus(f"trial {trial.number}: the study has its {sw.trials} trials")
    values = {d.name: d.suggest(trial) for d in dims}
    resume = "never" if first == trial.number else "auto"
    cfg = base.replace(**values, **LOCAL_RUNTIME, run_name=f"trial-{first:03d}", resume=resume)
    log.info(f"\ntrial {trial.number} ({len(trials.done(study)) + 1} of {sw.trials}): {shown(values)}")
    key = _data_key(cfg)
    tags = {"tftrain.study": study.study_name, "tftrain.trial": str(trial.number), "tftrain.sweep": "trial",
            **({"tftrain.first_try": str(first)} if first != trial.number else {})}  # fmt: skip
    pruning = PruneLosers(trial, sw.objective)
    started = time.perf_counter()
    try:
        with runs.child_run(parent, cfg.tracking.run_name, tags, killed=(optuna.TrialPruned,)) as run:
            trial.set_user_attr(ATTR, {**trials.owner(trial), "run_id": run.run_id})
            mlflow.log_params({"trial_number": trial.number, **{f"trial_{k}": v for k, v in values.items()}})
            from tftrain.training.trainer import train

            rt = build_runtime(cfg)
            if key not in data:
                data[key] = load_data(cfg)
            task = resolve_task(cfg, data[key])
            result = train(cfg, task, rt, extra_callbacks=(pruning,), run=run, register=False)
            value = _kept_value(result.keras_model, task, sw.objective)
            mlflow.log_metric(f"trial_{sw.objective}", value)
            trial.set_user_attr("model_uri", result.model.uri if result.model else "")
            trial.set_user_attr("epochs", result.epochs_run)
    except optuna.TrialPruned:
        trial.set_user_attr("epochs", pruning.epochs)
        runs.tag_run(run.run_id, {"tftrain.pruned_at_epoch": str(pruning.epochs)})
        log.info(f"trial {trial.number}: pruned after epoch {pruning.epochs} ({sw.objective} "
              f"{pruning.last:.4f}, behind the other trials at that epoch)")  # fmt: skip
        command_state(cfg).forget()
        raise
    except TrainingFailed as e:
        trial.set_user_attr("failure", str(e))
        trial.set_user_attr("epochs", pruning.epochs)
        log.info(f"trial {trial.number}: failed: {e}; the sweep goes on")
        command_state(cfg).forget()
        raise
    # ended (finished, pruned or failed by itself): its backups go; interrupted any other way (Ctrl-C, the process
    # stopped by Ray when its driver died, a crash): they stay, for its retry to go on from
    command_state(cfg).forget()
    log.info(f"trial {trial.number}: {sw.objective} {value:.4f} after {result.epochs_run} epochs, "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    return value


def _kept_value(model: keras.Model, task, objective: str) -> float:
    """The objective for the weights training ended with (early stopping may have gone back to an earlier epoch):
    the validation split scored again."""
    x, y = task.validation
    scores = model.evaluate(make_dataset(x, y, 1024, shuffle=False), verbose=0, return_dict=True)
    key = {"val_accuracy": "accuracy", "val_loss": "loss"}[objective]
    value = float(scores[key])
    if not math.isfinite(value):
        raise TrainingFailed(f"training ended with {objective} {value}")
    return value


class PruneLosers(keras.callbacks.Callback):
    """Reports the objective to the trial at each epoch's end (step = the epoch, from 1) and stops the trial when
    the pruner says it is behind. Goes after tftrain's own callbacks: the epoch is logged and backed up first."""

    def __init__(self, trial: optuna.Trial, monitor: str):
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.epochs, self.last = 0, math.nan

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.last = float(value)
        self.trial.report(self.last, self.epochs)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {self.epochs}: {self.monitor} {self.last:.4f}")


def _finish(study, name, parent, base, sw, data, out_of_time) -> SweepResult:
    counts = trials.counts(study)
    best = _best(study)
    finished = len(trials.done(study))
    if not (finished >= sw.trials or trials.exhausted(study) or out_of_time) or counts["running"]:
        where = f"{counts['running']} trial(s) still running elsewhere" if counts["running"] else "not done"
        log.info(f"study {name}: {finished} of {sw.trials} trials done, {where}; the process that finishes "
              "last summarizes it")  # fmt: skip
        return SweepResult(name, parent, best, False, counts)
    decisions = _gate(study, best, base, data) if best else []
    summarize(study, parent, best, sw, counts, decisions)
    runs.end_other_run(parent, "FINISHED")
    return SweepResult(name, parent, best, True, counts, decisions)


def _best(study: optuna.Study):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return study.best_trial if complete else None


def _gate(study, best, base, data) -> list:
    """The best trial's model: registered once, scored on the test split, exported and gated like the main job's,
    in the best trial's run."""
    from tftrain.ship.evaluate import evaluate
    from tftrain.ship.export import export
    from tftrain.ship.registry import promote

    model_uri = best.user_attrs.get("model_uri")
    run_id = trials.own_record(best)["run_id"]
    if not model_uri:
        log.info(f"the best trial {best.number}'s model was not logged (the tracking server was away); nothing to gate")
        return []
    cfg = base.replace(**best.params)
    claim = {**trials.owner(best), "at": time.time()}
    version = register_once(model_uri, registered_model_name(cfg), run_id, claim, trials.still_gating)
    if version is None:
        log.info(f"the best trial {best.number}'s model is registered and gated already, or another process gates it")
        return []
    task_data = data.get(_data_key(cfg)) or load_data(cfg)
    uri = f"models:/{registered_model_name(cfg)}/{version}"
    with runs.reopened(run_id):
        evaluate(uri, data=task_data)
        exported = export(uri, output_dir=base.tracking.output_dir, data=task_data)
        uris = [uri] + ([exported.litert.version_uri] if exported.litert.version else [])
        decisions = [promote(u, allow_shape_change=base.tracking.allow_shape_change) for u in uris]
    mark_gated(registered_model_name(cfg), version)
    return decisions  # said once, in the report (summary.report) of the process that gated or the Ray driver
