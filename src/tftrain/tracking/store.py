"""The tracking store, asked before any work starts and before TensorFlow loads: is it there (without importing
MLflow), is the model or run a command names in it (MLflow only: it imports no TensorFlow), and, under `mlflow
run`, marking the run MLflow made when tftrain refuses the command. A training job must not load TensorFlow, or
run for an hour, and then find it has nowhere to log or nothing to read."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tftrain.env import mlflow_run_id
from tftrain.errors import UserError

TIMEOUT_SECONDS = 5.0


class StoreError(UserError):
    """The tracking store itself cannot be used: nothing can be looked up or marked in it."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"  # MLflow 3's default


def check_tracking_store() -> None:
    """A server must answer /health; a sqlite file must be creatable or writable. Others are left to MLflow."""
    uri = tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        # MLflow retries a failed request 7 times over about 4 minutes; tftrain journals what it cannot log (see
        # journal.py), so it gives up after about 7 seconds unless told otherwise.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_SECONDS) as response:
                response.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise _unreachable(uri, f"HTTP {e.code} from /health") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _unreachable(uri, str(reason)) from None
    elif parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        folder = (path.parent if path and str(path) else Path(".")).resolve()
        target = path if path and path.exists() else folder
        if path is None or not folder.is_dir() or not os.access(target, os.W_OK):
            raise StoreError(
                f"tracking store {uri} cannot be written (folder {folder}); set MLFLOW_TRACKING_URI to a writable "
                "sqlite:///path/mlflow.db or a tracking server's http:// address"
            )


def _unreachable(uri: str, reason: str) -> StoreError:
    return StoreError(
        f"tracking server {uri} is not reachable ({reason}); start it, or set MLFLOW_TRACKING_URI to one that is "
        "(nothing was trained or changed)"
    )


def model_info(uri: str):
    """The model's MLmodel metadata (mlflow.models.ModelInfo: flavors, signature, run), nothing else downloaded; a
    model that is not in the store is a user error."""
    not_yet = _missing_store()
    if not_yet and not Path(uri).is_dir():
        raise UserError(f"model_uri {uri!r} cannot be opened: {not_yet}; set MLFLOW_TRACKING_URI to use another")
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as e:
        reason = str(e).splitlines()[0]
        if uri.startswith("runs:/") and "'MLmodel'" in reason:  # the run is there, no model at that path
            reason = f"the run has no model at {uri.split('/', 3)[-1]!r} (tftrain logs it at 'model')"
        raise UserError(
            f"model_uri {uri!r} cannot be opened: {reason} "
            f"(tracking store {mlflow.get_tracking_uri()}; set MLFLOW_TRACKING_URI to use another)"
        ) from None


def _missing_store() -> str | None:
    """Why nothing can be found in a sqlite store that does not exist yet, said without MLflow (which would create
    it and print its INFO lines first)."""
    uri = tracking_uri()
    path = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not path.exists():
        return f"tracking store {uri} does not exist yet (no file {path.resolve()})"
    return None


def check_keras_model(uri: str) -> None:
    """Export needs the Keras flavor (a LiteRT model cannot be exported again)."""
    flavors = model_info(uri).flavors
    if "keras" not in flavors:
        raise UserError(f"model_uri {uri!r} is not a Keras model (flavors: {', '.join(flavors)}); export needs one")


def check_run(run_id: str, what: str) -> None:
    not_yet = _missing_store()
    if not_yet:
        raise UserError(f"{what}: run {run_id} is not in {not_yet}")
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise UserError(
            f"{what}: run {run_id} is not in tracking store {mlflow.get_tracking_uri()}: {str(e).splitlines()[0]}"
        ) from None


def failed_run_name(reason: str, limit: int = 48) -> str:
    """failed-<what was refused>, whole words up to `limit` characters: failed-model-cnnn for "invalid value for
    model: received 'cnnn'; allowed: ...", failed-model_uri-models-nope-1-cannot-be-opened for a missing model."""
    head = re.sub(r"^invalid (value for |combination: )|received ", "", re.split(r"[;(,]", reason)[0])
    name = "failed"
    for word in re.sub(r"[^A-Za-z0-9_]+", " ", head).split():
        if len(name) + 1 + len(word) > limit:
            break
        name += "-" + word
    return name


def mark_refused(reason: str) -> str | None:
    """Under `mlflow run` (MLFLOW_RUN_ID names the run it made and still holds open): tag that run with why tftrain
    refused the command (tftrain.failure) and name it failed-<what>; mark it FAILED (mlflow run marks it again
    when the entry point exits). Returns why it could not, or None. A run tftrain already ended is left alone:
    it carries its own reason. The run is kept, not deleted: mlflow run then sets the terminal status of a
    deleted run and dies with a traceback (mlflow 3.17, projects._maybe_set_run_terminated)."""
    run_id = mlflow_run_id()
    if not run_id:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return None
        client.set_tag(run_id, "tftrain.failure", reason[:5000])
        client.set_tag(run_id, "mlflow.runName", failed_run_name(reason))
        client.set_terminated(run_id, "FAILED")
    except (MlflowException, OSError) as e:
        return f"run {run_id} could not be marked as refused: {str(e).splitlines()[0][:200]}"
    return None
