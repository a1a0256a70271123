"""Which MLflow run a training command continues: running the same command again after a crash continues its
interrupted run. No TensorFlow here (the Ray driver reads it too).

A command's state lives in <output_dir>/.resume/<key>/, where the key is a digest of every config value but
`resume` itself and, for a task made in Python, of the task (its name, classes and arrays): two tasks trained with
one config do not share state. run.json names its MLflow run, beside the backups (resume.py). Training that ends
(finished, or stopped early) removes the state, so a finished run is never continued by accident; one that was
killed, interrupted or failed leaves it, and the same command picks it up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tftrain.config import TrainConfig

STATE_FOLDER = ".resume"


@dataclass(frozen=True)
class CommandState:
    folder: Path
    resume: bool  # False: resume=never, the command starts afresh

    def interrupted_run(self) -> str | None:
        """The MLflow run this command left unfinished, if it should be continued."""
        if not self.resume:
            self.forget()
            return None
        try:
            return json.loads((self.folder / "run.json").read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    def remember(self, run_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "run.json").write_text(json.dumps({"run_id": run_id}))

    def forget(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def backup_folder(self, worker: str = "chief") -> Path:
        """The chief's backup is in the command's state; another worker's beside it (the chief removes its state
        when it is done)."""
        return self.folder / "backup-chief" if worker == "chief" else Path(f"{self.folder}-{worker}")


def command_state(cfg: TrainConfig, task_identity: str = "") -> CommandState:
    """The state of the command `cfg` (and a Python task's `task_identity`, training.task.Task.identity) names."""
    settings = {k: v for k, v in cfg.flat().items() if k != "resume"}
    if task_identity:
        settings["task"] = task_identity
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return CommandState(Path(cfg.tracking.output_dir) / STATE_FOLDER / key, cfg.tracking.resume == "auto")
