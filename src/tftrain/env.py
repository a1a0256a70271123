"""The run `mlflow run` made: MLflow starts an entry point's process with MLFLOW_RUN_ID naming the run it holds
open, and a step that finds it logs into that run. This module is the one place that reads or sets it; the run a
step logs into is then decided once, where a command starts (training/context.py), and passed down."""

from __future__ import annotations

import os

_VARIABLE = "MLFLOW_RUN_ID"


def mlflow_run_id() -> str | None:
    """The run `mlflow run` made for this process, if it runs under `mlflow run` (or a Ray worker handed it)."""
    return os.environ.get(_VARIABLE) or None


def hand_over(run_id: str | None) -> None:
    """In a Ray worker: the chief logs into the command's run as `mlflow run`'s process would; the others into none."""
    if run_id:
        os.environ[_VARIABLE] = run_id
    else:
        os.environ.pop(_VARIABLE, None)
