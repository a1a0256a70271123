"""The `serve` step: check the model and the address, then become `mlflow models serve` (MLflow's scoring server,
uvicorn) running in this environment."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tftrain.checks import check_address
from tftrain.tracking.logged_models import resolve_model

log = logging.getLogger(__name__)


def serve_command(model_uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` of this environment, and an environment whose PATH finds its uvicorn."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    return [*command, "-h", host, "-p", str(port)], env


def serve(model_uri: str, host: str, port: int) -> None:
    resolve_model(model_uri)
    check_address(host, port)
    log.info(
        f"serving {model_uri} at http://{host}:{port}/invocations: loading the model (about 10-20 s; ready when the "
        "server says 'Application startup complete')"
    )
    command, env = serve_command(model_uri, host, port)
    os.execve(command[0], command, env)
