"""Everything MLflow about runs: starting, resuming and ending them, params, the Keras metrics callback, model
logging and registration, model loading, and the offline journal's upload.

The modules that import mlflow are this one, registry.py (the model registry), serving.py (the pyfunc flavor)
and journal.py (offline logging). Each step (train, evaluate, export) logs into the run that is already active
(the pipeline's, or the one `mlflow run` created and named in MLFLOW_RUN_ID), or else starts its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

from tftrain import serving
from tftrain.callbacks import current_lr
from tftrain.config import TrainConfig
from tftrain.errors import TrainingFailed, UserError
from tftrain.journal import Journal, entries, lost_connection

DEFAULT_EXPERIMENT = "tftrain"
MODEL_ARTIFACT = "model"
LITERT_ARTIFACT = "litert"
OUTPUT_SCHEMA = Schema(
    [
        ColSpec("long", "class"),
        ColSpec("string", "class_name"),
        ColSpec("float", "probability"),
        ColSpec(Array("float"), "probabilities"),
    ]
)


def signature(input_shape: tuple[int, ...]) -> ModelSignature:
    """Raw pixels of the task's shape in (an unnamed tensor, so requests send a plain array: {"inputs": [...]}),
    one row per image out."""
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))]), outputs=OUTPUT_SCHEMA)


@dataclass(frozen=True)
class LoggedModel:
    uri: str  # models:/m-<id>
    model_id: str
    run_id: str
    registered_name: str | None = None
    version: str | None = None
    input_shape: tuple[int, ...] | None = None  # (H, W[, C]) from the signature, when resolve_model looked it up


_journal: Journal | None = None  # this process's training run, ready to go offline


def open_journal(run_dir: Path, run_id: str) -> None:
    global _journal
    _journal = Journal(run_dir, run_id)


def offline_journal() -> Path | None:
    """Where this run's unlogged work went, if the tracking server went away during it."""
    return _journal.folder if _journal and _journal.active else None


def _remote(call, *entries: dict) -> bool:
    """Do `call` against the tracking server; if the server is gone (now or before), journal `entries` instead."""
    if not (_journal and _journal.active):
        try:
            call()
            return True
        except MlflowException as e:
            if _journal is None or not lost_connection(e):
                raise
            _journal.go_offline(e)
    for entry in entries:
        _journal.add(entry)
    return False


def _end_run(status: str, failure: str | None = None) -> None:
    """End the active run; offline, journal how it ended."""
    if failure:
        _remote(lambda: mlflow.set_tag("tftrain.failure", failure), {"tags": {"tftrain.failure": failure}})
    if _journal and _journal.active:
        _journal.add({"end": status})
        with contextlib.suppress(MlflowException):
            mlflow.end_run(status)  # pops the run; the server it then tells is gone
        return
    mlflow.end_run(status)


@contextlib.contextmanager
def step_run(name: str, resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The active run if there is one (left open), else MLFLOW_RUN_ID's run (`mlflow run` made it), else the
    interrupted run `resume_run_id` if it still exists, else a new run; a run started here is ended here.

    An exception marks the run FAILED and propagates, so a crash never looks like success in the UI.
    """
    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    if "MLFLOW_RUN_ID" not in os.environ and resume_run_id and _continuable(resume_run_id):
        run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=_system_metrics())
        print(f"continuing run {resume_run_id} from where it stopped")
    else:
        run = mlflow.start_run(
            experiment_id=None if "MLFLOW_RUN_ID" in os.environ else _experiment_id(),
            log_system_metrics=_system_metrics(),
        )
        mlflow.set_tag("mlflow.runName", name)
    try:
        yield run
    except BaseException as e:
        _end_run("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", f"{type(e).__name__}: {e}"[:5000])
        raise
    _end_run("FINISHED")


def _continuable(run_id: str) -> bool:
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        return False  # deleted from the store, or another store
    return run.info.lifecycle_stage == "active" and run.info.status != "FINISHED"


def _system_metrics() -> bool | None:
    """On when NVIDIA GPUs are visible; otherwise as MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says (None)."""
    return True if _nvidia_gpus() else None


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
    print(f"continuing run {old_run_id} (interrupted) in run {new_run_id}; the old one is deleted")


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


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def log_environment() -> None:
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
    run_id = mlflow.active_run().info.run_id
    existing = mlflow.get_run(run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def log_config(cfg: TrainConfig, resolved: dict[str, str]) -> None:
    """Every config field, plus what was resolved at run time (strategy picked, replicas, global batch)."""
    log_params_once({**cfg.as_params(), "registered_model_name": cfg.registered_model_name, **resolved})
    mlflow.log_dict(dataclasses.asdict(cfg), "config.json")


@contextlib.contextmanager
def _timed(callback):
    start = time.perf_counter()
    try:
        yield
    finally:
        callback.seconds += time.perf_counter() - start


def log_timings(fit_seconds: float, tracking_seconds: float, model_logging_seconds: float) -> None:
    """The training's wall time, the part of it spent in MLflow calls, and the time to log the model after."""
    metrics = {"fit_seconds": fit_seconds, "tracking_seconds": tracking_seconds,
               "model_logging_seconds": model_logging_seconds}  # fmt: skip
    _remote(lambda: mlflow.log_metrics(metrics), {"metrics": metrics, "step": 0})


class EpochMetrics(keras.callbacks.Callback):
    """Each epoch's metrics at step = epoch number (1-based, as printed), with the learning rate, the loss scale
    (mixed_float16) and the epoch's wall time; the optimizer's settings as params and the model summary when
    training begins. With `lr_every_n_steps`, also `learning_rate_step` at optimizer steps.

    A plain Keras callback, not a subclass of mlflow.keras.MlflowCallback: that class's metaclass turns every
    exception of its subclasses' methods into a warning, so a metrics write that failed would vanish. Here a write
    the server refuses stops training with the reason (TrainingFailed), and a server that went away sends the
    metrics to the offline journal; nothing is dropped.

    Epoch metrics wait for a save point (`clock`), the end of training or a failure (`flush`), then go to MLflow
    in one synchronous call, before the save point's resume backup is written (this callback runs first): every
    epoch a backup says is done is logged. An epoch in `already_logged` (logged before a crash, then replayed) is
    not logged twice. `seconds` adds up the time spent in this callback: what tracking costs the training."""

    def __init__(self, clock, lr_every_n_steps: int = 0, already_logged: set[int] | None = None):
        super().__init__()
        self.clock = clock
        self.lr_every_n_steps = lr_every_n_steps
        self.already_logged = already_logged or set()
        self._last_step = 0
        self._pending: list[dict] = []
        self.seconds = 0.0

    def on_train_begin(self, logs=None):
        with _timed(self):
            config = {f"optimizer_{k}": str(v) for k, v in self.model.optimizer.get_config().items()}
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            summary = "\n".join(lines)
            _refused_stops(
                lambda: _remote(lambda: (log_params_once(config), mlflow.log_text(summary, "model_summary.txt")))
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        with _timed(self):
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
        with _timed(self):
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

        _refused_stops(lambda: _remote(log, *pending))

    def on_train_batch_end(self, batch, logs=None):
        """Batches arrive steps_per_execution at a time: log when a multiple of N was passed."""
        n = self.lr_every_n_steps
        if not n:
            return
        with _timed(self):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if step // n > self._last_step // n:
                mlflow.log_metric("learning_rate_step", current_lr(self.model), step=step, synchronous=False)
            self._last_step = step


def _refused_stops(call) -> None:
    """A tracking call the server refused (not one it never answered: that one is journaled) ends training with
    the reason, in one line."""
    try:
        call()
    except MlflowException as e:
        raise TrainingFailed(
            f"training stopped: the tracking store refused to log ({str(e).splitlines()[0][:300]}); checkpoints and "
            "the resume backup are kept"
        ) from None


def _requirements(runtime: str) -> list[str]:
    """What a server needs for this model: this environment's versions, the runtime's package included."""
    return [f"{p}=={metadata.version(p)}" for p in (runtime, "mlflow", "numpy")]


def _logged(info, registered_name: str | None) -> LoggedModel:
    version = str(info.registered_model_version) if registered_name else None
    return LoggedModel(info.model_uri, info.model_id, info.run_id, registered_name, version)


def log_keras_model(
    model: keras.Model, registered_name: str | None, example: np.ndarray, class_names: tuple[str, ...]
) -> LoggedModel | None:
    """Log the model (MLflow's Keras flavor, served by tftrain's pyfunc) with the signature, register it, and log
    an example request beside the run. With the tracking server gone, the model goes to the journal instead
    (None back); `tftrain sync` logs it."""
    mlflow.flush_async_logging()
    request = {"inputs": example.astype(int).tolist()}
    logged: list[LoggedModel] = []

    def log() -> None:
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=serving,
            keras_model=model,
            class_names=list(class_names),
            signature=signature(tuple(model.input_shape[1:])),
            registered_model_name=registered_name,
            pip_requirements=_requirements("tensorflow"),
        )
        # input_example= would crash log_model (MLflow #16183), so the example request is a run artifact instead.
        mlflow.log_dict(request, "serving_example.json")
        logged.append(_logged(info, registered_name))

    entry = {"model": "model.keras", "registered_name": registered_name, "class_names": list(class_names),
             "example": request}  # fmt: skip
    if not _remote(log, entry):
        model.save(_journal.folder / "model.keras")
    return logged[0] if logged else None


def log_litert_model(
    tflite: Path, class_names: tuple[str, ...], registered_name: str | None, input_shape: tuple[int, ...]
) -> LoggedModel:
    """Log a TFLite file as a pyfunc model that runs in the LiteRT interpreter, and register it."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the example request is serving_example.json of the training run, as for the Keras model
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info = mlflow.pyfunc.log_model(
            name=LITERT_ARTIFACT,
            loader_module=serving.__name__,
            data_path=str(serving.write_data(Path(tmp, "data"), class_names, tflite)),
            code_paths=[str(serving.write_code(Path(tmp, "code")))],
            signature=signature(input_shape),
            registered_model_name=registered_name,
            pip_requirements=_requirements("ai-edge-litert"),
        )
    return _logged(info, registered_name)


def log_folder(folder: Path, artifact_path: str) -> None:
    if folder.is_dir() and any(folder.iterdir()):
        entry = {"artifacts": str(folder.resolve()), "artifact_path": artifact_path}
        _remote(lambda: mlflow.log_artifacts(str(folder), artifact_path), entry)


def log_file(path: Path, artifact_path: str | None = None) -> None:
    entry = {"artifact_file": str(path.resolve()), "artifact_path": artifact_path}
    _remote(lambda: mlflow.log_artifact(str(path), artifact_path), entry)


def log_metrics(metrics: dict[str, float], model_id: str | None = None) -> None:
    mlflow.log_metrics(metrics, model_id=model_id)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_figure(figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_dict(data: dict, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def replay_journal(folder: Path) -> str:
    """Upload an offline journal into its run (metrics not there yet, artifacts, the model), end the run as it
    ended offline, and remove the journal. Returns the run id."""
    record, items = entries(folder)
    run_id = record["run_id"]
    status = "FAILED"  # unless the journal says how the run ended
    mlflow.start_run(run_id=run_id)
    for item in items:
        if "metrics" in item:  # skip what reached the server after all
            fresh = {k: v for k, v in item["metrics"].items() if item["step"] not in logged_steps(run_id, k)}
            mlflow.log_metrics(fresh, step=item["step"])
        elif "artifacts" in item:
            mlflow.log_artifacts(item["artifacts"], item["artifact_path"])
        elif "artifact_file" in item:
            mlflow.log_artifact(item["artifact_file"], item["artifact_path"])
        elif "tags" in item:
            mlflow.set_tags(item["tags"])
        elif "model" in item:
            model = keras.saving.load_model(folder / item["model"], safe_mode=True)
            example = np.asarray(item["example"]["inputs"])
            logged = log_keras_model(model, item["registered_name"], example, tuple(item["class_names"]))
            print(f"model {logged.uri}" + (f", registered as version {logged.version}" if logged.version else ""))
        elif "end" in item:
            status = item["end"]
    mlflow.end_run(status)
    shutil.rmtree(folder)
    return run_id


def resolve_model(uri: str) -> LoggedModel:
    """Look the model up (nothing downloaded but its MLmodel file); a model that is not there is a user error."""
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as e:
        raise UserError(
            f"model_uri {uri!r} cannot be opened: {str(e).splitlines()[0]} "
            f"(tracking store {mlflow.get_tracking_uri()}; set MLFLOW_TRACKING_URI to use another)"
        ) from None
    signature = info.signature
    one_tensor = signature is not None and signature.inputs.is_tensor_spec() and len(signature.inputs.inputs) == 1
    shape = tuple(int(d) for d in signature.inputs.inputs[0].shape[1:]) if one_tensor else None
    return LoggedModel(uri, info.model_id, info.run_id, input_shape=shape)


def image_shape(ref: LoggedModel) -> tuple[int, ...]:
    """The image shape, (H, W) or (H, W, C), in a resolved model's signature; none is a user error."""
    if ref.input_shape is None:
        raise UserError(f"model_uri {ref.uri!r} has no signature of one image tensor, so its image shape is unknown")
    return ref.input_shape


def model_input_shape(uri: str) -> tuple[int, ...]:
    """The image shape of the model at `uri`, read from its MLmodel file before any weights load. A missing model,
    or one without a tensor signature, is a user error."""
    return image_shape(resolve_model(uri))


def training_params(ref: LoggedModel) -> dict[str, str]:
    """The params of the run that logged the model (empty for a model with no run, e.g. a local folder)."""
    return dict(mlflow.get_run(ref.run_id).data.params) if ref.run_id else {}


def registered_name(ref: LoggedModel) -> str | None:
    """The registered model name the source run used, if it registered its model."""
    if not ref.run_id:
        return None
    return mlflow.get_run(ref.run_id).data.params.get("registered_model_name") or None


def load_pyfunc(uri: str):
    return mlflow.pyfunc.load_model(uri)


def load_keras(uri: str) -> keras.Model:
    info = mlflow.models.get_model_info(uri)
    if "keras" not in info.flavors:
        raise UserError(
            f"model_uri {uri!r} is not a Keras model (flavors: {', '.join(info.flavors)}); export needs one"
        )
    return mlflow.keras.load_model(uri)


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
