"""Resuming after a crash: running the same training command again continues its interrupted run.

A command's state lives in <output_dir>/.resume/<key>/, where the key is a digest of every config value but
`resume` itself: run.json names its MLflow run, and backup/ holds Keras' BackupAndRestore files (weights,
optimizer state and the number of completed epochs), rewritten at the end of every epoch. Training that ends
(finished, or stopped early) removes the state, so a finished run is never continued by accident; one that was
killed, interrupted or failed leaves it, and the same command picks it up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import keras

from tftrain.config import TrainConfig
from tftrain.errors import UserError

STATE_FOLDER = ".resume"


def state_dir(cfg: TrainConfig) -> Path:
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.output_dir) / STATE_FOLDER / key


def interrupted_run(cfg: TrainConfig) -> str | None:
    """The MLflow run this command left unfinished, if it should be continued."""
    state = state_dir(cfg)
    if cfg.resume == "never":
        forget(cfg)
        return None
    try:
        return json.loads((state / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def check_backup(cfg: TrainConfig) -> None:
    """A backup torn by a crash: Keras falls back to the copy before it; if that one is unreadable too, say which
    files and what to do, rather than fail inside Keras."""
    weights = state_dir(cfg) / "backup-chief" / "latest.weights.h5"
    copies = [p for p in (weights, Path(f"{weights}.bkp")) if p.exists()]
    readable = [p for p in copies if _readable(p)]
    if copies and not readable:
        raise UserError(
            f"cannot resume: the backup {copies[0]} is corrupt, and so is the copy before it; delete "
            f"{state_dir(cfg)} to lose it and start afresh, or run with resume=never"
        )
    if weights in copies and weights not in readable:
        print(f"note: the latest backup {weights} is corrupt; resuming from the one before it")


def _readable(path: Path) -> bool:
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def remember(cfg: TrainConfig, run_id: str) -> None:
    state = state_dir(cfg)
    state.mkdir(parents=True, exist_ok=True)
    (state / "run.json").write_text(json.dumps({"run_id": run_id}))


def forget(cfg: TrainConfig) -> None:
    shutil.rmtree(state_dir(cfg), ignore_errors=True)


def backup_callback(cfg: TrainConfig, worker: str = "chief") -> keras.callbacks.BackupAndRestore:
    """Weights, optimizer state and epoch at each epoch's end; restored when training begins. Two copies are kept,
    so a backup torn by a kill mid-write falls back to the one before."""
    state = state_dir(cfg)
    # another worker's backup sits beside the chief's state, which the chief removes when it is done
    folder = state / "backup-chief" if worker == "chief" else Path(f"{state}-{worker}")
    return keras.callbacks.BackupAndRestore(str(folder), double_checkpoint=True)
