"""Real servers for tests and scripts: `mlflow models serve` on a free port of 127.0.0.1 for as long as a block
runs, the checks that a server answers, and multi-worker processes started as a scheduler starts them. Not part
of the package: users get `tftrain serve` and launcher=ray."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tftrain.ship.serve import serve_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_uri: str, log_path: Path, timeout: float = 180.0) -> Iterator[str]:
    """`mlflow models serve` on a free port of 127.0.0.1, until the block ends; yields its base URL. For scripts
    and tests that drive the real server; the output goes to `log_path`, quoted when it does not come up."""
    port = free_port()
    command, env = serve_command(model_uri, "127.0.0.1", port)
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


def tf_config_workers(n: int, command: list[str], **popen) -> list[subprocess.Popen]:
    """`command` as `n` workers on free ports of 127.0.0.1, each with its TF_CONFIG, as a scheduler (a Kubernetes
    operator, a Slurm script) starts a multi-worker job; `popen` goes to each subprocess.Popen (env: its base)."""
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(n)]
    base = popen.pop("env", None) or os.environ
    return [
        subprocess.Popen(
            command,
            env={
                **base,
                "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}),
            },
            **popen,
        )  # fmt: skip
        for i in range(n)
    ]
