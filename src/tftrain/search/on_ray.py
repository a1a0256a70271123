"""launcher=ray for a sweep: `workers` trial processes at once, as Ray tasks across the cluster.

Each task is one of the study's processes (sweep.run_trials), as a `tftrain sweep` started by hand on another
machine would be: the same Optuna study in the shared storage, trials nested under its parent run, pruning
against every process's trials, and the process that finishes last summarizing and gating the best model. Ray
places a task where a CPU is free (a GPU, where the cluster has one for each); each trains its trials in that
process with as many TensorFlow threads as the CPUs it was given. The command's own process (the driver) trains
nothing: it starts the tasks, shows their lines and returns the summary.

Failures: a task whose process dies (killed, a lost node) is started again by Ray, up to `max_failures` times; it
finds its trial dead, queues it again and goes on from the trial's last backup (sweep._objective), so a death
costs that trial's epochs since its backup. Ctrl-C cancels the tasks, each stopping as Ctrl-C stops a sweep (its
trial queued again, its run KILLED). The driver killed: its tasks die with it, and the same command continues
the study, as after any kill. The storage and `output_dir` must be reachable from every node (PostgreSQL, or a
shared filesystem) for the tasks to share the study and a retried trial to find its backup.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from tftrain import quiet
from tftrain.cluster import ray_cluster
from tftrain.config import TrainConfig
from tftrain.errors import TrainingFailed, UserError
from tftrain.search.space import SweepConfig
from tftrain.search.summary import SweepResult

log = logging.getLogger(__name__)

CANCEL_WAIT = 60.0  # seconds the driver waits for cancelled tasks to record their interrupted trials


def sweep_on_ray(base: TrainConfig, sw: SweepConfig) -> SweepResult:
    # every trial process's lines as written: Ray's deduplication folds look-alike lines of different trials into
    # one "[repeated 8x across cluster]" (read when Ray is imported)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    from tftrain.training.task import load_data

    workers = base.runtime.workers
    verbose = os.environ.get("TFTRAIN_VERBOSE") == "1"
    load_data(base)  # a folder decoded once, here, into the cache the processes read: not by each at once
    with quiet.forwarded_lines(verbose=verbose):
        ray_cluster.connect(base.runtime.ray_address, max(os.cpu_count() or 1, workers), ray_cluster.forwarded_env())
        try:
            resources = ray.cluster_resources()
            cpus, gpus = resources.get("CPU", 0), int(resources.get("GPU", 0))
            each = {"num_gpus": 1, "num_cpus": 1} if gpus >= workers else {"num_cpus": 1}
            if cpus < workers:
                log.info(f"note: the Ray cluster has {cpus:g} CPUs for {workers} trial processes of 1 CPU each: "
                         "the others start as CPUs free up")  # fmt: skip
            log.info(f"sweep on Ray: {workers} trial processes at once ({'1 GPU' if 'num_gpus' in each else '1 CPU'} "
                     f"each) on {len(ray.nodes())} node(s); up to {base.runtime.max_failures} restarts each")  # fmt: skip
            task = ray.remote(max_retries=base.runtime.max_failures, retry_exceptions=False, **each)(sweep_process)
            fields = dataclasses.asdict(sw)
            refs = [task.options(name=f"tftrain-sweep-{i}").remote(base.flat(), fields, os.getcwd())
                    for i in range(workers)]  # fmt: skip
            try:
                results = ray.get(refs)
            except KeyboardInterrupt:
                _cancel(refs)
                raise
            except ray.exceptions.RayError as e:  # a task's error, or its process dead past its restarts
                raise _reason(e) from None
        finally:
            ray.shutdown()
    return next((r for r in results if r.summarized), results[-1])


def sweep_process(flat: dict, fields: dict, cwd: str) -> SweepResult:
    """One trial process, on whichever node Ray chose: the driver's folder, TensorFlow's threads to this task's
    CPUs, then sweep.run_trials."""
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(variable, "1")  # one CPU a task: TensorFlow's pools would take every core of the node
    ray_cluster.worker_setup(cwd)
    from tftrain.search.space import parse_space
    from tftrain.search.sweep import run_trials

    base, sw = TrainConfig.from_flat(**flat), SweepConfig(**fields)
    return run_trials(base, sw, parse_space(sw.space, base))


def _cancel(refs: list) -> None:
    """Ctrl-C: each task gets a KeyboardInterrupt (its trial queued again, its runs marked), and a little time."""
    import ray

    for ref in refs:
        ray.cancel(ref)
    ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT)


def _reason(error) -> Exception:
    """A task's error as tftrain's: a UserError (the same in every task) as it is, else one line."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, UserError):
        return cause
    first = " ".join(str(cause).split())[:300]
    return TrainingFailed(f"a trial process failed on Ray: {type(cause).__name__}: {first}; finished trials are kept: "
                          "run the same command to continue the study")
