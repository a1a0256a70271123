"""Which MLflow run a training command continues: running the same command again after a crash continues its
interrupted run. No TensorFlow here (the Ray driver reads it too).

A command's state lives in <output_dir>/.resume/<key>/, where the key is a digest of every config value but
`resume` itself: run.json names its MLflow run, beside the backups (resume.py). Training that ends (finished, or
stopped early) removes the state, so a finished run is never continued by accident; one that was killed,
interrupted or failed leaves it, and the same command picks it up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from tftrain.config import TrainConfig

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


def remember(cfg: TrainConfig, run_id: str) -> None:
    state = state_dir(cfg)
    state.mkdir(parents=True, exist_ok=True)
    (state / "run.json").write_text(json.dumps({"run_id": run_id}))


def forget(cfg: TrainConfig) -> None:
    shutil.rmtree(state_dir(cfg), ignore_errors=True)
