"""Joining a Ray cluster, or starting one of this machine, as every Ray command of tftrain does (launcher=ray,
`tftrain serve --engine ray`): the address checked first, Ray's own retry lines kept back unless joining fails,
then said in one line."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
from pathlib import Path

from tftrain.checks import check_ray_address
from tftrain.errors import UserError

# the environment a job's processes take from the command: where to log, how to behave, what the user set for
# TensorFlow
FORWARDED = ("MLFLOW_", "TFTRAIN_", "TF_", "KERAS_", "CUDA_", "OMP_", "PYTHONPATH")


def forwarded_env() -> dict[str, str]:
    """This process's FORWARDED variables, PYTHONPATH made absolute (a worker starts in its node's folder; the
    MLproject's is PYTHONPATH=src)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
    if "PYTHONPATH" in env:
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def worker_setup(cwd: str) -> None:
    """A process Ray started for tftrain: the command's folder (where the node has it), tftrain's quiet output and
    logger, and TensorFlow's and MLflow's INFO lines off (Ray's logging setup shows them)."""
    from tftrain import log as console
    from tftrain import quiet

    with contextlib.suppress(OSError):
        os.chdir(cwd)
    quiet.setup(verbose=False)
    console.setup()
    for name in ("tensorflow", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(address: str, num_cpus: int, env: dict[str, str], log_to_driver: bool = True) -> None:
    """ray.init: join the cluster at `address` (HOST:PORT, auto), or with "" start one of this machine with
    `num_cpus`; every process of the job gets `env` (and RAY_ADDRESS); `log_to_driver` shows what its workers
    print here."""
    import ray

    env = dict(env)
    # ERROR: not the warning that a cluster of this machine uses token authentication (the right thing)
    quiet = {"logging_level": logging.ERROR, "runtime_env": {"env_vars": env}, "log_to_driver": log_to_driver}
    # RAY_ADDRESS, for every process of the job: Ray Train's placement group cleaner asks the state API of the
    # cluster it finds by it, else of the newest `ray start` cluster on the machine (another one, where there are
    # several: it would take the job's controller for dead and remove the workers' placement group)
    if address:
        env["RAY_ADDRESS"] = head = check_ray_address(address)  # auto: the cluster Ray would join
        try:
            with _stderr_kept() as said:  # Ray's C++ client says there, once a second, why it cannot join
                ray.init(address=head, **quiet)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
            reason = " ".join(str(e).split())[:400]
            if "InvalidAuthToken" in said.getvalue():
                reason = f"{reason}: it refused this command's token (RAY_AUTH_TOKEN, or the token file), or none"
            raise UserError(f"invalid value for ray_address: received {address}; cannot join a Ray cluster "
                            f"there ({reason}); allowed: the HOST:PORT of a running cluster's head, with "
                            "RAY_AUTH_MODE=token and its token (ray get-auth-token) if it uses token "
                            "authentication, auto for one started on this machine, or empty for a new one") from None  # fmt: skip
    else:  # a cluster of this machine alone, a worker per CPU at least (its minimal dashboard: the state API that
        # Ray Train's placement group cleaner asks; without it, the cleaner timed out and printed a traceback),
        # its GCS on a port chosen here to be known beforehand (RAY_GCS_SERVER_PORT: Ray's, not documented)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        with _environ(RAY_GCS_SERVER_PORT=str(port)):
            ray.init(address="local", num_cpus=num_cpus, **quiet)


@contextlib.contextmanager
def _stderr_kept():
    """What this process writes to its stderr descriptor in the block, kept (in the StringIO yielded) instead of
    shown, unless the block ends well: then it is shown after all."""
    import tempfile

    said = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+", errors="replace") as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            said.write(kept.read())
    sys.stderr.write(said.getvalue())  # (only when the block ended well)


@contextlib.contextmanager
def _environ(**values: str):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


