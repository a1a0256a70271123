"""Who holds a trial of a study shared between processes: the process that runs it (host, pid, start time),
which trials count toward `trials`, and the trials of processes that died, failed and queued again with their
values."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings

import optuna
import psutil
from optuna.trial import TrialState

from tftrain.search.study import ATTR
from tftrain.tracking import runs

log = logging.getLogger(__name__)


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that counts toward `trials`: completed, pruned, or failed by itself (not one whose process died)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "failure" in trial.user_attrs


def taking(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that holds one of the `trials` places: counted, or running."""
    return counted(trial) or trial.state == TrialState.RUNNING


def taken(study: optuna.Study) -> int:
    return sum(map(taking, study.get_trials(deepcopy=False)))


def exhausted(study: optuna.Study) -> bool:
    """A grid with every point handed out and none queued again (an interrupted trial's point, waiting to run)."""
    sampler = study.sampler
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study) and not waiting


def owner(trial) -> dict:
    """This process, as a trial records it: host, pid and the pid's start time (a pid can be reused)."""
    return {"trial": trial.number, "host": socket.gethostname(), "pid": os.getpid(),
            "started": psutil.Process().create_time()}  # fmt: skip


def alive(owner: dict) -> bool:
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) < 1.0
    except psutil.Error:
        return False


def still_gating(claim: dict) -> bool:
    """A claim on the best model by a process alive on this host, or by another host within the hour."""
    if claim.get("host") == socket.gethostname():
        return alive(claim)
    return time.time() - claim.get("at", 0) < 3600


def own_record(trial: optuna.trial.FrozenTrial) -> dict:
    """What this trial's process recorded (ATTR): its owner and child run. Empty while a retried trial still
    carries its original's record, copied with its values, until its own process writes its own."""
    record = trial.user_attrs.get(ATTR, {})
    return record if record.get("trial") == trial.number else {}


def fail_dead_trials(study: optuna.Study) -> None:
    """Running trials of processes on this host that are gone: failed and queued again now (other hosts': by the
    heartbeat, in the storage's fail_stale_trials)."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = own_record(trial)
        if owner.get("host") != host or alive(owner):
            continue
        # told with a plain sampler: a grid's, once every point was handed out, stops the study in its after_trial,
        # which Optuna allows only inside optimize (RuntimeError: "Study.stop is supposed to be invoked inside an
        # objective function": a killed grid sweep run again with all its points taken)
        sampler, study.sampler = study.sampler, optuna.samplers.RandomSampler()
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process got there first
        finally:
            study.sampler = sampler
        interrupted(study, study.get_trials(deepcopy=False)[trial.number])


def interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str = "its process is gone") -> None:
    """A trial whose process died (or was interrupted: `why`): its child run ends KILLED, saying so, and the trial
    is queued again with its values."""
    # its run, as the trial recorded it, or (stopped between making the run and recording it) as tagged
    recorded = own_record(trial).get("run_id")
    tagged = {"tftrain.study": study.study_name, "tftrain.trial": str(trial.number)}
    epoch = max(trial.intermediate_values, default=0)
    for run_id in [recorded] if recorded else runs.running_runs_tagged(tagged):
        runs.end_other_run(
            run_id, "KILLED", f"interrupted: the sweep process stopped during epoch {epoch + 1} of trial "
            f"{trial.number}; the trial is run again with the same values"
        )  # fmt: skip
    with warnings.catch_warnings():  # experimental since Optuna 2.8, the one way to queue a trial with its values
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)
    done = f"{epoch} epoch{'s' * (epoch != 1)}"
    log.info(f"trial {trial.number} was interrupted ({why}) after {done}: queued again, with the same values")


def first_try(study: optuna.Study, number: int) -> int:
    """The number of the trial that trial `number` runs again (queued by `interrupted`), else `number` itself."""
    frozen = study.get_trials(deepcopy=False)[number]
    with warnings.catch_warnings():  # experimental since Optuna 2.8, like the callback that records it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return number if original is None else original


def done(study: optuna.Study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if counted(t)]


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and "failure" in t.user_attrs for t in trials),
        "interrupted": sum(
            t.state == TrialState.FAIL and "failure" not in t.user_attrs and "surplus" not in t.user_attrs
            for t in trials
        ),  # fmt: skip
        "running": sum(t.state == TrialState.RUNNING for t in trials),
    }
