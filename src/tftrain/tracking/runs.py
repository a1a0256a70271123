"""A step's MLflow run: started, continued or adopted, ended with its status (journaled when the server is gone);
what goes into it (params, tags, metrics, artifacts); and where to look at it afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from tftrain.config import TrainConfig
from tftrain.env import mlflow_run_id
from tftrain.tracking.journal import Journal, remote

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tftrain"


@dataclass
class StepRun:
    """The run a step logs into. `journal`: the training's offline journal, set once its output folder is known;
    the run's end goes there too if the server went away."""

    run_id: str
    journal: Journal | None = None


@contextlib.contextmanager
def step_run(name: str, resume_run_id: str | None = None, within: StepRun | None = None) -> Iterator[StepRun]:
    """`within` if given (left open), else the active run if there is one (left open), else MLFLOW_RUN_ID's run
    (`mlflow run` made it), else the interrupted run `resume_run_id` if it still exists, else a new run; a run
    started here is ended here.

    An exception marks the run FAILED and propagates, so a crash never looks like success in the UI.
    """
    if within is not None:
        yield within
        return
    active = mlflow.active_run()
    if active is not None:
        yield StepRun(active.info.run_id)
        return
    if not mlflow_run_id() and resume_run_id and continuable(resume_run_id):
        started = mlflow.start_run(run_id=resume_run_id, log_system_metrics=_system_metrics())
        log.info(f"continuing run {resume_run_id} from where it stopped")
    else:
        started = mlflow.start_run(
            experiment_id=None if mlflow_run_id() else _experiment_id(),
            log_system_metrics=_system_metrics(),
        )
        mlflow.set_tag("mlflow.runName", name)
    if failure := started.data.tags.get("tftrain.failure"):  # continued after that failure: not the run's end now
        mlflow.set_tag("tftrain.earlier_failure", failure)
        mlflow.MlflowClient().delete_tag(started.info.run_id, "tftrain.failure")
    with _ended(StepRun(started.info.run_id)) as run:
        yield run


@contextlib.contextmanager
def child_run(parent_run_id: str, name: str, tags: dict[str, str], killed: tuple = ()) -> Iterator[StepRun]:
    """A new run nested under `parent_run_id` (in its experiment), active for the block and ended by it: FINISHED,
    KILLED for KeyboardInterrupt or an exception of a `killed` type (a pruned trial), else FAILED with the
    reason. Made with the client, so MLFLOW_RUN_ID (`mlflow run`'s own run) is not taken for it."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    created = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_run_id, **tags})
    mlflow.start_run(run_id=created.info.run_id, log_system_metrics=_system_metrics())
    with _ended(StepRun(created.info.run_id), killed) as run:
        yield run


@contextlib.contextmanager
def _ended(run: StepRun, killed: tuple = ()) -> Iterator[StepRun]:
    """The active run `run` ends with the block: FINISHED, or KILLED/FAILED with the reason (a crash never looks
    like success in the UI); the exception propagates."""
    try:
        yield run
    except BaseException as e:
        status = "KILLED" if isinstance(e, (KeyboardInterrupt, *killed)) else "FAILED"
        _end_run(run, status, f"{type(e).__name__}: {e}"[:5000])
        raise
    _end_run(run, "FINISHED")


def new_run(name: str) -> str:
    """A run in this process's experiment (see _experiment_id), not made active."""
    return mlflow.MlflowClient().create_run(_experiment_id(), run_name=name).info.run_id


def reopen_run(run_id: str) -> None:
    """A run that ended (a sweep's parent, killed with its process) is RUNNING again while work goes on in it."""
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")


def running_runs_tagged(tags: dict[str, str]) -> list[str]:
    """The RUNNING runs, in any experiment, that carry all of `tags`."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = mlflow.search_runs(search_all_experiments=True, filter_string=f"{where} and attributes.status = 'RUNNING'",
                               output_format="list")  # fmt: skip
    return [r.info.run_id for r in found]


def end_other_run(run_id: str, status: str, failure: str | None = None) -> None:
    """End a run that is not this process's active one (a dead process's trial, a sweep's parent)."""
    if failure:
        tag_run(run_id, {"tftrain.failure": failure[:5000]})
    mlflow.MlflowClient().set_terminated(run_id, status)


@contextlib.contextmanager
def reopened(run_id: str) -> Iterator[StepRun]:
    """A finished run active again for the block (the steps log into it), and FINISHED again after."""
    mlflow.start_run(run_id=run_id)
    with _ended(StepRun(run_id)) as run:
        yield run


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    mlflow.MlflowClient().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def log_params_to(run_id: str, params: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    existing = client.get_run(run_id).data.params  # `mlflow run` logged its own already
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items() if k not in existing])


def log_to(run_id: str, metrics: dict[str, float], tags: dict[str, str], step: int) -> None:
    stamp = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


def log_files_to(run_id: str, files: list[Path], artifact_path: str) -> None:
    for path in files:
        mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path)


def _end_run(run: StepRun, status: str, failure: str | None = None) -> None:
    """End the active run; offline, journal how it ended."""
    journal = run.journal
    if failure:
        remote(journal, lambda: mlflow.set_tag("tftrain.failure", failure), {"tags": {"tftrain.failure": failure}})
    if journal and journal.active:
        journal.add({"end": status})
        with contextlib.suppress(MlflowException):
            mlflow.end_run(status)  # pops the run; the server it then tells is gone
        return
    mlflow.end_run(status)


def continuable(run_id: str) -> bool:
    """A run that exists here, not deleted and not finished: one a command can go on in."""
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        return False  # deleted from the store, or another store
    return run.info.lifecycle_stage == "active" and run.info.status != "FINISHED"


def _system_metrics() -> bool | None:
    """On when NVIDIA GPUs are visible; otherwise as MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says (None)."""
    return True if _nvidia_gpus() else None


def _nvidia_gpus() -> int:
    """NVIDIA GPUs that MLflow's system metrics can watch: needs nvidia-ml-py (and psutil), which the GPU image
    installs. Asks the driver, not TensorFlow, so no device is set up before the runtime is configured."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:  # no nvidia-ml-py, no driver, no device: no GPU metrics
        return 0


def _experiment_id() -> str:
    """MLFLOW_EXPERIMENT_ID, else MLFLOW_EXPERIMENT_NAME, else "tftrain"; created if missing. Looked up on every run
    rather than set process-wide, so a process may switch tracking stores."""
    if experiment_id := os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return experiment_id
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name)


def logged_steps(run_id: str, key: str = "loss") -> set[int]:
    """Steps at which the run already holds metric `key`: for epoch metrics, the (1-based) epochs."""
    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def adopt_run(old_run_id: str) -> None:
    """Continue an interrupted run inside the active one (`mlflow run` always makes a new run): copy its metric
    history over, say so in a tag, and delete the old run, so the experiment shows one run with each epoch once."""
    client = mlflow.MlflowClient()
    new_run_id = active_run_id()
    try:
        old = client.get_run(old_run_id)
    except MlflowException:
        return
    for key in old.data.metrics:
        history = client.get_metric_history(old_run_id, key)
        for start in range(0, len(history), 1000):
            client.log_batch(new_run_id, metrics=history[start : start + 1000])
    mlflow.set_tag("tftrain.continues_run", old_run_id)
    client.set_tag(old_run_id, "tftrain.continued_in", new_run_id)
    client.delete_run(old_run_id)
    log.info(f"continuing run {old_run_id} (interrupted) in run {new_run_id}; the old one is deleted")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def log_environment() -> None:
    import keras  # imported by training already; not at module import, which the CLI's checks do without
    import tensorflow as tf

    mlflow.set_tags(
        {
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "mlflow_version": mlflow.__version__,
            "python_version": platform.python_version(),
            "git_commit": _git_commit(),
        }
    )


def log_params_once(params: dict[str, str]) -> None:
    """Log params the run does not have yet. `mlflow run` has logged its entry-point parameters already, in the
    user's spelling (`1e-3`); logging another spelling (`0.001`) of the same key would fail the run."""
    existing = mlflow.get_run(active_run_id()).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def log_config(cfg: TrainConfig, params: dict[str, str]) -> None:
    """`params` (the config's flat values and what was resolved at run time: strategy picked, replicas, global
    batch), and the config itself, by group, as config.json."""
    log_params_once(params)
    mlflow.log_dict(dataclasses.asdict(cfg), "config.json")


def log_folder(folder: Path, artifact_path: str, journal: Journal | None = None) -> None:
    if folder.is_dir() and any(folder.iterdir()):
        entry = {"artifacts": str(folder.resolve()), "artifact_path": artifact_path}
        remote(journal, lambda: mlflow.log_artifacts(str(folder), artifact_path), entry)


def log_file(path: Path, artifact_path: str | None = None, journal: Journal | None = None) -> None:
    entry = {"artifact_file": str(path.resolve()), "artifact_path": artifact_path}
    remote(journal, lambda: mlflow.log_artifact(str(path), artifact_path), entry)


def log_metrics(metrics: dict[str, float], model_id: str | None = None) -> None:
    mlflow.log_metrics(metrics, model_id=model_id)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_figure(figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_dict(data: dict, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def active_run_id() -> str:
    return mlflow.active_run().info.run_id


def run_link(run_id: str) -> dict[str, str]:
    """Where to look at a run: its name, the UI command for this tracking store, and the run's page."""
    run = mlflow.get_run(run_id)
    uri = mlflow.get_tracking_uri()
    command = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"open {uri}"
    base = "http://127.0.0.1:5000" if uri.startswith("sqlite") else uri.rstrip("/")
    return {
        "run_name": run.info.run_name,
        "ui_command": command,
        "run_page": f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}",
    }
