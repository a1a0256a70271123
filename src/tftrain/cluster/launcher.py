"""launcher=ray: the training command as a Ray Train job.

The command's process (the driver: it trains nothing) starts a Ray cluster of this machine or joins one, takes
the command's MLflow run (`mlflow run`'s) or makes it, and has Ray Train's TensorflowTrainer start `workers`
workers, each given the TF_CONFIG of MultiWorkerMirroredStrategy. Each worker runs tftrain's own training (the
custom engine: Keras 3's fit cannot run under that strategy) in the driver's folder, with its environment; rank 0
logs into the command's run, the others log nothing and print nothing. When a worker dies, Ray stops the others
and starts the group again, up to `max_failures` times (not for a UserError, the same on every try): each worker
goes on from its backup (resume.py), after the workers agree on the epoch (resume.agree_on_backups), and rank 0
goes on in the same run, each epoch logged once.
Files the command names (data, builders, output_dir) must be at the same paths on every node, as for any
TF_CONFIG job: the same machine, or a shared filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from ray.train import UserCallback

from tftrain import log as console
from tftrain import quiet
from tftrain.cluster import ray_cluster
from tftrain.config import TrainConfig
from tftrain.env import hand_over, mlflow_run_id
from tftrain.errors import INTERRUPTS, TrainingFailed, UserError
from tftrain.tracking import runs
from tftrain.tracking.logged_models import LoggedModel
from tftrain.training.run_state import command_state
from tftrain.values import default_run_name

log = logging.getLogger(__name__)

def train_on_ray(cfg: TrainConfig, run_id: str | None = None) -> LoggedModel:
    """Train as `cfg` says on cfg.runtime.workers Ray Train workers, logging into `run_id` (the main job's run, which
    the caller ends), else MLFLOW_RUN_ID's run (`mlflow run`'s), else a new one."""
    workers, output = cfg.runtime.workers, Path(cfg.tracking.output_dir).resolve()
    import ray
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    with quiet.forwarded_lines(verbose=_verbose()):  # also while Ray shuts down: the workers' last lines come then
        _start(cfg)
        try:
            resources = ray.cluster_resources()
            cpus, gpus = resources.get("CPU", 0), int(resources.get("GPU", 0))
            if cfg.runtime.ray_address:  # auto joins whichever cluster runs here: say which
                nodes = sum(n["Alive"] for n in ray.nodes())
                log.info(f"joined the Ray cluster at {ray.get_runtime_context().gcs_address}: {_count(nodes, 'node')}, "
                         f"{_count(cpus, 'CPU')}, {_count(gpus, 'GPU')}")  # fmt: skip
            elif workers > (os.cpu_count() or 1):
                log.info(f"note: {workers} workers on this machine's {os.cpu_count()} CPUs: they share them, each "
                         "step waits on the slowest; fine for trying, not for speed")  # fmt: skip
            if cpus < workers:
                log.info(f"note: the Ray cluster has {cpus:g} CPUs for {workers} workers of 1 CPU each; Ray Train "
                         "waits for more (an autoscaling cluster adds nodes)")  # fmt: skip
            mine = run_id or mlflow_run_id()
            previous = command_state(cfg).interrupted_run()  # the same command stopped before: its run goes on
            if not mine and previous and runs.continuable(previous):
                run_id = previous
                log.info(f"continuing run {run_id} from where it stopped")
            else:
                run_id = mine or runs.new_run(default_run_name(cfg))
            each = "1 GPU" if gpus >= workers else "1 CPU"
            trainer = TensorflowTrainer(
                _worker,
                train_loop_config={"cfg": cfg.flat(), "run_id": run_id, "cwd": os.getcwd()},
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=each == "1 GPU",
                                             resources_per_worker=None if each == "1 GPU" else {"CPU": 1}),
                run_config=RunConfig(name=f"tftrain-{run_id}", storage_path=str(output / "ray"),
                                     failure_config=FailureConfig(max_failures=cfg.runtime.max_failures),
                                     callbacks=[_Failures(cfg.runtime.max_failures)],
                                     logging_config=LoggingConfig(log_level="INFO" if _verbose() else "CRITICAL")),
            )  # fmt: skip
            log.info(f"training on Ray: {workers} workers ({each} each), logging to run {run_id}; up to "
                  f"{cfg.runtime.max_failures} restarts")  # fmt: skip
            interrupted, previous = [], signal.getsignal(signal.SIGINT)

            def on_ctrl_c(signum, frame):
                interrupted.append(True)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(signal.SIGINT, on_ctrl_c)
            try:
                trainer.fit()
            except BaseException as e:
                # Ctrl-C: Ray Train takes the signal itself and ends the job with its processes' SystemExit
                stop = KeyboardInterrupt("Ctrl-C") if interrupted or _interrupt(e) else _failure(e, cfg)
                if not mine:
                    _end_failed(run_id, stop)
                    if isinstance(stop, KeyboardInterrupt):
                        log.info(f"run {run_id} stopped; the same command goes on in it from the workers' last "
                              "completed epoch")  # fmt: skip
                raise stop from None
            finally:
                signal.signal(signal.SIGINT, previous)
        finally:
            ray.shutdown()
    return _logged(run_id)


class _Failures(UserCallback):
    """What Ray Train's controller does when workers fail, said in a line (its own log, a traceback for each, is
    off unless --verbose). A worker's UserError (a mistake in the command, its files or the user's code: the same
    on every try) ends the job at once, where Ray Train would start the workers again max_failures times: raised
    here, in the controller, it is a controller error, which Ray does not retry."""

    def __init__(self, max_failures: int):
        self.max_failures, self.failures = max_failures, 0

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        causes = {rank: getattr(e, "cause", None) or e for rank, e in sorted(worker_exceptions.items())}
        for cause in causes.values():
            if isinstance(cause, UserError):
                raise cause
        self.failures += 1
        what = "; ".join(f"rank {rank}: {_first_line(cause)}" for rank, cause in causes.items())
        then = (f"Ray starts the workers again ({self.failures} of {self.max_failures} restarts)"
                if self.failures <= self.max_failures else "no restarts left")  # fmt: skip
        console.setup()  # this runs in Ray Train's controller, a process of Ray's: its lines reach the driver's
        log.info(f"worker failed ({what}); {then}")


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())  # (TensorFlow's start "Graph execution error:" and go on below)
    text = text.split(". ")[0][:160]  # the first sentence: Ray's go on with pages of the worker's metadata
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _start(cfg: TrainConfig) -> None:
    # the workers' environment from their start (Ray's TensorFlow backend imports TensorFlow before _worker runs)
    env = ray_cluster.forwarded_env()
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # Ray Train's print patch logs each line again, on every rank
    ray_cluster.connect(cfg.runtime.ray_address, max(os.cpu_count() or 1, cfg.runtime.workers), env)


def _verbose() -> bool:
    return os.environ.get("TFTRAIN_VERBOSE") == "1"


def _worker(config: dict) -> None:
    """One Ray Train worker: the driver's folder and environment, then tftrain's training; rank 0 in the command's
    run, the others silent (their lines would repeat rank 0's)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    hand_over(config["run_id"] if rank == 0 else None)
    ray_cluster.worker_setup(config["cwd"])
    from tftrain.training.trainer import train

    with _silenced() if rank else contextlib.nullcontext():  # its errors still reach the driver, as Ray's
        train(TrainConfig.from_flat(**config["cfg"]))


@contextlib.contextmanager
def _silenced():
    """This process's stdout and stderr to /dev/null, at the descriptors: TensorFlow's C++ logs too (a peer's
    death has every other worker print a page of collective-op errors)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _causes(error: BaseException) -> list[BaseException]:
    """The errors behind Ray Train's: each worker's in rank order, then the controller's, as their processes raised
    them (Ray's wrapper's `cause`)."""
    failures = [f for _, f in sorted((getattr(error, "worker_failures", None) or {}).items())]
    if controller := getattr(error, "controller_failure", None):
        failures.append(controller)
    return [getattr(f, "cause", None) or f for f in failures]


def _interrupt(error: BaseException) -> bool:
    """Whether the job ended on an interrupt: its own, or behind a worker's or the controller's error."""
    return any(isinstance(c, INTERRUPTS) for c in [error, *_causes(error)])


def _failure(error: BaseException, cfg: TrainConfig) -> BaseException:
    """The workers' error as tftrain's: a user's mistake (UserError) or a one-line TrainingFailed."""
    cause = next(iter(_causes(error)), error)
    if isinstance(cause, (UserError, TrainingFailed)):
        return cause
    reason = str(cause).strip().splitlines()[-1][:500] if str(cause).strip() else type(cause).__name__
    return TrainingFailed(f"training on Ray failed (restarts allowed: max_failures={cfg.runtime.max_failures}): {reason}; "
                          "backups are kept: run the same command to continue from the last completed epoch")  # fmt: skip


def _end_failed(run_id: str, error: BaseException) -> None:
    import mlflow

    with contextlib.suppress(Exception):
        if mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING":
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            runs.end_other_run(run_id, status, f"{type(error).__name__}: {error}")


def _logged(run_id: str) -> LoggedModel:
    """The model rank 0 logged into the run, and its registered version."""
    import mlflow

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    experiment = client.get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    if not models:
        raise TrainingFailed(f"training on Ray finished, but run {run_id} holds no model; see its rank 0's lines")
    version = max(versions, key=lambda v: int(v.version), default=None)
    return LoggedModel(models[0].model_uri, models[0].model_id, run_id, version and version.name,
                       version and version.version)  # fmt: skip
