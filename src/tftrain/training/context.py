"""The run context of a training command: its MLflow run, its output folder, its offline journal and its command
state (where the resume key keeps the run to continue and the backups). Opened once, where the command starts
training, and passed down as one value: by `train` for the CLI's `train` and a direct call, inside the run the
caller passes for the main job (pipeline.py) and a sweep's trial (search/sweep.py); in a Ray worker, rank 0 finds
the command's run that the driver handed over (env.hand_over)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tftrain.config import TrainConfig
from tftrain.tracking import runs
from tftrain.tracking.journal import Journal
from tftrain.training import resume
from tftrain.training.run_state import CommandState, command_state
from tftrain.training.runtime import Runtime
from tftrain.training.task import Task, run_name
from tftrain.values import check_output_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    run_id: str | None  # None on another worker of a multi-worker job, which logs nothing
    out_dir: Path  # outputs/<run_id>; another worker's is temporary
    journal: Journal | None  # what the run would log, kept here while the tracking server is away
    state: CommandState


@contextlib.contextmanager
def open_context(cfg: TrainConfig, task: Task, rt: Runtime, within: runs.StepRun | None = None) -> Iterator[RunContext]:
    """The chief (any single-process run): `within`, or the run step_run picks (the active one, `mlflow run`'s,
    the command's interrupted one, or a new one), outputs/<run_id> and the run's journal there. Another worker of a
    multi-worker job: no run, no journal, and a temporary folder, deleted after: it runs the same callbacks (so
    collective ops stay in step across workers) but keeps nothing and logs nothing."""
    output_root = check_output_dir(cfg.tracking.output_dir)
    state = command_state(cfg, task.identity)
    if not rt.is_chief:
        with tempfile.TemporaryDirectory(prefix="tftrain-worker-") as folder:
            yield RunContext(None, Path(folder), None, state)
        return
    previous = state.interrupted_run()
    restored = resume.check_backup(state) if previous else 0
    with runs.step_run(run_name(cfg, task), resume_run_id=previous, within=within) as run:
        out_dir = output_root / run.run_id
        if previous and previous != run.run_id:  # `mlflow run` made a new run: the interrupted one moves into it
            runs.adopt_run(previous)
            if (output_root / previous).is_dir() and not out_dir.exists():
                (output_root / previous).rename(out_dir)
        if previous and rt.worker_count == 1:  # several workers agree on their epoch later and say it then
            log.info(f"training goes on after epoch {restored}, from its backup" if restored else
                     "it stopped before its first backup: training starts again at epoch 1")  # fmt: skip
        state.remember(run.run_id)
        run.journal = Journal(out_dir, run.run_id)  # the run's end is journaled too, if the server goes away
        out_dir.mkdir(parents=True, exist_ok=True)
        yield RunContext(run.run_id, out_dir, run.journal, state)
