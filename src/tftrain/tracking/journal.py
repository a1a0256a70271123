"""When the tracking server goes away in the middle of a run: what could not be logged is written to a journal
on local disk instead (metrics, artifact folders, the model), training goes on, and `tftrain sync` uploads the
journal into the same run once the server is back (sync.py).

A journal is <output_dir>/<run_id>/offline/: run.json (run id, tracking URI) and journal.jsonl, one entry a line,
each written and flushed before training goes on. A training run holds its Journal as a value (runs.StepRun) and
hands it to whatever logs for it; the folder appears only once the server is gone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

FOLDER = "offline"


def lost_connection(error: Exception) -> bool:
    """MLflow's REST client gave up on the server (refused, timed out, reset), rather than refusing the request."""
    return isinstance(error, MlflowException) and str(error).startswith("API request to ")


class Journal:
    def __init__(self, run_dir: Path, run_id: str):
        self.folder = run_dir / FOLDER
        self.run_id = run_id
        self.active = False  # true once the server went away

    def call(self, call: Callable[[], object], *entries: dict) -> bool:
        """Do `call` against the tracking server; if the server is gone (now or before), journal `entries` instead.
        True if the server took it."""
        if not self.active:
            try:
                call()
                return True
            except MlflowException as e:
                if not lost_connection(e):
                    raise
                self.go_offline(e)
        for entry in entries:
            self.add(entry)
        return False

    def go_offline(self, error: Exception) -> None:
        if self.active:
            return
        self.active = True
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"run_id": self.run_id, "tracking_uri": mlflow.get_tracking_uri()}
        (self.folder / "run.json").write_text(json.dumps(record))
        log.warning(
            f"the tracking server stopped answering ({str(error).splitlines()[0][:200]}); training goes "
            f"on and keeps what it would log in {self.folder}; upload it later with: tftrain sync {self.folder}"
        )

    def add(self, entry: dict) -> None:
        with open(self.folder / "journal.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def remote(journal: Journal | None, call: Callable[[], object], *entries: dict) -> bool:
    """`journal.call`, or, for a step that keeps no journal (evaluate, export), the plain call."""
    if journal is None:
        call()
        return True
    return journal.call(call, *entries)


def entries(folder: Path) -> tuple[dict, list[dict]]:
    record = json.loads((folder / "run.json").read_text())
    path = folder / "journal.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return record, [json.loads(line) for line in lines if line.strip()]
