"""Is the tracking store there? Asked before any work starts, in a few seconds, without importing MLflow: a
training job must not run for an hour and then find it has nowhere to log."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tftrain.errors import UserError

TIMEOUT_SECONDS = 5.0


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
            raise UserError(
                f"tracking store {uri} cannot be written (folder {folder}); set MLFLOW_TRACKING_URI to a writable "
                "sqlite:///path/mlflow.db or a tracking server's http:// address"
            )


def _unreachable(uri: str, reason: str) -> UserError:
    return UserError(
        f"tracking server {uri} is not reachable ({reason}); start it, or set MLFLOW_TRACKING_URI to one that is "
        "(nothing was trained or changed)"
    )
