"""What the CLI checks before a step imports TensorFlow (7-10 s): everything a user can get wrong that can be told
from the parameters, the files and the tracking store alone, so a mistake is the first line the user sees, within
a couple of seconds. The steps check again what they use; these only make the answer early.
tests/test_cli.py runs every check path in a process that must end without TensorFlow imported."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import socket
from pathlib import Path

from tftrain.config import NO_TF_CONFIG, TrainConfig
from tftrain.errors import UserError, invalid
from tftrain.values import check_named, dataset_kind, model_kind


def check_dataset(dataset: str, data_dir: str) -> None:
    """A built-in's IDX files (their headers), an image folder's layout, a tfds dataset's folder, a dataset
    function's source: whatever the dataset names, as far as it can be told without running anything."""
    kind = dataset_kind(dataset)
    if kind == "builtin":
        from tftrain.data.datasets import builtin_folder, check_idx_folder

        folder = builtin_folder(dataset, data_dir)
        if folder is not None:
            check_idx_folder(folder)
    elif kind == "folder":
        from tftrain.data.layout import scan

        scan(dataset)
    elif kind == "tfds":
        from tftrain.data.sources import check_tfds

        check_tfds(dataset, data_dir)
    else:
        from tftrain.user_code import check_source

        check_source(dataset, "dataset function")


def check_training(cfg: TrainConfig) -> None:
    """The data, for a user's builder that its file parses and defines the function, and with launcher=ray that
    Ray is installed and the cluster's head answers."""
    check_named(cfg)
    check_dataset(cfg.data.dataset, cfg.data.data_dir)
    check_model(cfg.model.name)
    if (
        cfg.runtime.strategy == "multi_worker"
        and cfg.runtime.launcher != "ray"
        and not os.environ.get("TF_CONFIG", "").strip()
    ):
        raise UserError(NO_TF_CONFIG)
    if cfg.runtime.launcher == "ray":
        if importlib.util.find_spec("ray") is None:
            raise UserError("invalid value for launcher: received ray, which is not installed; allowed: none, or ray "
                            "after pip install 'tftrain[ray]'")  # fmt: skip
        check_ray_address(cfg.runtime.ray_address)


def check_ray_address(address: str) -> str:
    """The HOST:PORT of the cluster head `address` names (for auto, the one Ray would join), checked to answer and
    to speak gRPC as a Ray head's GCS does (Ray's own client retries a port where something else answers, or
    nothing does, without end); empty (a new cluster) as it is."""
    if address == "":
        return address
    allowed = ("allowed: the HOST:PORT that `ray start --head` printed, auto for the cluster of this machine, or "
               "empty for a new one")  # fmt: skip
    received = address
    if address == "auto":
        address = _auto_address(allowed)
        received = f"auto, which found the cluster at {address} (RAY_ADDRESS, or the last `ray start` here)"
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as head:
            if os.environ.get("RAY_USE_TLS", "0") not in ("0", "") or _speaks_grpc(head):  # (TLS: no plain preface)
                return address
    except OSError as e:
        raise UserError(f"invalid value for ray_address: received {received}; nothing answers there "
                        f"({e.strerror or e}); {allowed}") from None  # fmt: skip
    raise UserError(f"invalid value for ray_address: received {received}; something answers there, but not a Ray "
                    f"cluster's head (no gRPC); {allowed}")  # fmt: skip


def _auto_address(allowed: str) -> str:
    """The HOST:PORT that ray.init(address="auto") would join, found as Ray finds it (RAY_ADDRESS, the cluster
    `ray start` last ran on this machine, any running here): Ray's private lookup, as Ray has no public one."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"invalid value for ray_address: received auto; {reason}; {allowed}") from None


def _speaks_grpc(connection: socket.socket) -> bool:
    """Whether the server answers an HTTP/2 client's preface with its SETTINGS frame, as every gRPC server does."""
    connection.settimeout(5)
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5))  # + empty SETTINGS
    frame = b""
    with contextlib.suppress(OSError):
        while len(frame) < 9 and (chunk := connection.recv(9 - len(frame))):
            frame += chunk
    return len(frame) == 9 and frame[3] == 0x04


def check_model(model: str) -> None:
    """A user's builder: its file parses and defines the function."""
    if model_kind(model) == "builder":
        from tftrain.user_code import check_source

        check_source(model, "model builder")


def check_address(host: str, port: int) -> None:
    """The address can be listened on now (the server would fail with a traceback)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        hint = "; pick another port with --port" if e.errno == errno.EADDRINUSE else ""
        where = f"{host}:{port}" if host.isprintable() else f"{host!r}:{port}"
        raise UserError(f"cannot listen on {where}: {e.strerror or e}{hint}") from None
    except (TypeError, ValueError) as e:  # a host name that cannot be encoded, a NUL byte
        raise UserError(f"invalid value for --host: received {host!r}; cannot listen there: {e}") from None


def check_inputs(inputs: tuple[str, ...]) -> None:
    """Every INPUT of predict exists, and a folder holds image files."""
    from tftrain.data.images import IMAGE_SUFFIXES
    from tftrain.data.layout import image_files

    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise invalid("INPUT", given, "existing image files (PNG, JPEG, BMP, GIF), folders of them, or IDX files")
        if path.is_dir() and not image_files(path):
            raise UserError(f"input folder {path} has no image files ({', '.join(IMAGE_SUFFIXES)})")


def journal_run(given: str) -> tuple[Path, str]:
    """The offline journal folder `tftrain sync` was given (or the run folder holding it) and its run id."""
    folder = Path(given)
    if (folder / "offline").is_dir():
        folder = folder / "offline"  # the run's output folder was given
    try:
        run_id = json.loads((folder / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise invalid("FOLDER", given, "an offline journal folder that training named (with run.json)") from None
    return folder, run_id
