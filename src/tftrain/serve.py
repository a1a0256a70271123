"""The `serve` step: check the model and the address, then become `mlflow models serve` (MLflow's scoring server,
uvicorn) running in this environment."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tftrain import tracking
from tftrain.errors import UserError


def check_address(host: str, port: int) -> None:
    """Fail now, in one line, if the address cannot be listened on (the server would fail with a traceback)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _serve_command(model_uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` of this environment, and an environment whose PATH finds its uvicorn."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    return [*command, "-h", host, "-p", str(port)], env


def serve(model_uri: str, host: str, port: int) -> None:
    tracking.resolve_model(model_uri)
    check_address(host, port)
    print(f"serving {model_uri} at http://{host}:{port}/invocations", flush=True)
    command, env = _serve_command(model_uri, host, port)
    os.execve(command[0], command, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_uri: str, log_path: Path, timeout: float = 180.0) -> Iterator[str]:
    """`mlflow models serve` on a free port of 127.0.0.1, until the block ends; yields its base URL. For scripts
    and tests that drive the real server; the output goes to `log_path`, quoted when it does not come up."""
    port = free_port()
    command, env = _serve_command(model_uri, "127.0.0.1", port)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not responds(url + "/ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow models serve for {model_uri} did not come up; its output:\n{tail}")
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def responds(url: str) -> bool:
    """Whether `url` answers 200 within 2 seconds (a server's /ping or /health)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
