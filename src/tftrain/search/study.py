"""A sweep's study in Optuna's storage, without TensorFlow: its name, what every process of it must agree on, and
the check that a study the command continues is the one it describes (the CLI runs it before TensorFlow loads)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings

import optuna

from tftrain.config import PARAMS, TrainConfig
from tftrain.errors import UserError
from tftrain.search.space import Dimension, SweepConfig, storage_url
from tftrain.values import dataset_label, model_label

ATTR = "tftrain"  # the study's and each trial's user attribute holding tftrain's records
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats in the storage
HEARTBEAT_GRACE = 60  # a trial of another host whose last heartbeat is older than this is taken as dead
# where trials run and how data is held, not how they train: the same study goes on with other workers, locally, or
# with another memory budget
PLACEMENT = ("launcher", "workers", "ray_address", "max_failures")
_TRAINING_FIELDS = tuple(
    name for name, p in PARAMS.items() if p.group != "tracking" and name not in (*PLACEMENT, "in_memory_mb")
)


def study_name(sw: SweepConfig, base: TrainConfig, dims: tuple[Dimension, ...]) -> str:
    """`study`, or for auto a name from the model, the dataset and a digest of what defines the search (space,
    objective, fixed settings, sampler, pruner): the same command continues its study, another starts its own."""
    if sw.study != "auto":
        return sw.study
    identity = {**settings(sw, base, dims), "pruner": sw.pruner}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    searched = {d.name for d in dims}
    model = "models" if "model" in searched else model_label(base.model.name)
    data = "datasets" if "dataset" in searched else dataset_label(base.data.dataset)
    return f"sweep-{model}-{data}-{digest}"


def settings(sw: SweepConfig, base: TrainConfig, dims: tuple[Dimension, ...]) -> dict:
    """What every process of one study must agree on: the space, the objective, the sampler (a grid's points are
    numbered by it) and the fixed training settings (not the tracking ones: where files go, how often)."""
    fixed = {k: v for k, v in base.flat().items() if k in _TRAINING_FIELDS}
    return {"space": [str(d) for d in dims], "objective": sw.objective, "sampler": sw.sampler, "base": fixed}


def open_storage(url: str, on_stale=None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url` (checked reachable by space.check_storage), with heartbeats and `on_stale`
    called for a trial whose heartbeat stopped, when given. Two processes opening a new database together both
    create Optuna's tables, and one fails on PostgreSQL's unique type names (measured here): it tries again, and
    finds them."""
    import sqlalchemy.exc

    for attempt in range(3):
        with contextlib.suppress(sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            return _rdb_storage(url, on_stale)
        time.sleep(1.0 + attempt)
    return _rdb_storage(url, on_stale)


def _rdb_storage(url: str, on_stale) -> optuna.storages.RDBStorage:
    if on_stale is None:
        return optuna.storages.RDBStorage(url)
    with warnings.catch_warnings():  # heartbeats: an experimental argument, stable since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE,
            heartbeat_stale_trial_callback=on_stale,
        )  # fmt: skip


def check_study(sw: SweepConfig, base: TrainConfig, dims: tuple[Dimension, ...]) -> None:
    """A study of this name already in the storage must search what the command describes (refused otherwise)."""
    name = study_name(sw, base, dims)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url(sw, base)))
    except KeyError:  # a new study
        return
    recorded = study.user_attrs.get(ATTR)
    if recorded:
        refuse_other(name, recorded, settings(sw, base, dims))


def refuse_other(name: str, recorded: dict, given: dict) -> None:
    """A study recorded with other settings than `given` is refused, saying what differs."""
    for key in ("space", "objective", "sampler", "base"):
        if recorded.get(key) != given[key]:
            what = _difference(key, recorded[key], given[key])
            raise UserError(f"invalid value for study: received {name}, which {what}; allowed: the same settings to "
                            "continue it, or another study name (study=auto names one per command)")  # fmt: skip


def _difference(key: str, recorded, given) -> str:
    if key == "base":
        changed = sorted(k for k in given if recorded.get(k) != given[k])
        return "was run with " + ", ".join(f"{k}={recorded.get(k)} (now {given[k]})" for k in changed[:4])
    if key == "space":
        recorded, given = ";".join(recorded), ";".join(given)
    return f"has {key} {recorded} (now {given})"
