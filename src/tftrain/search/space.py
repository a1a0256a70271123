"""A sweep's search space: which `train` parameters each trial samples, and from what; checked whole before any
trial runs.

Inline, parts separated by `;`:

    learning_rate=loguniform(1e-4,1e-2);batch_size=choice(64,128,256);model=choice(mlp,cnn)

or a YAML file (`.yaml`/`.yml`) mapping each parameter to the same expression, a YAML list being a choice:

    learning_rate: loguniform(1e-4, 1e-2)
    batch_size: [64, 128, 256]

Distributions: `uniform(low, high)` and `loguniform(low, high)` for number parameters, `int(low, high[, step])`
for whole-number ones, `choice(a, b, ...)` for any. Every bound and every choice is checked as a value of the
parameter on the sweep's base configuration, so a value `train` would refuse fails here, not in trial 7.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tftrain.config import PARAMS, TrainConfig
from tftrain.errors import UserError, invalid
from tftrain.values import check_named

OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
_STUDY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_STORAGE = re.compile(r"^(sqlite:///.+|postgresql(\+psycopg2)?://.+)$")


def _opt(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class SweepConfig:
    """A sweep's own settings (every `train` parameter beside them is the base the space overrides). Each field
    is an option of `tftrain sweep` and a parameter of the MLproject's `sweep` entry point."""

    trials: int = _opt(20, "Trials in the study, counted over every process and rerun (pruned and failed ones too).")
    timeout: float = _opt(0.0, "Seconds after which no new trial starts (the running one finishes); 0: none.")
    space: str = _opt(
        "learning_rate=loguniform(1e-4,1e-2);batch_size=choice(64,128,256)",
        "What each trial samples: NAME=EXPR parts separated by ';' (EXPR: uniform(low,high), loguniform(low,high), "
        "int(low,high[,step]), choice(a,b,...)), or a .yaml file mapping names to them.",
    )
    objective: str = _opt(
        "val_accuracy", "Validation metric to optimise: val_accuracy maximised, val_loss minimised.", tuple(OBJECTIVES)
    )
    sampler: str = _opt("tpe", "Optuna sampler; grid needs choice(...) or int(...) for every parameter.", SAMPLERS)
    pruner: str = _opt(
        "median", "Stops trials behind the others at the same epoch; none: every trial runs out.", PRUNERS
    )
    study: str = _opt(
        "auto",
        "Study name; the same name (and storage) continues the same study. auto: one per command (model, dataset "
        "and a digest of the space, objective and fixed settings).",
    )
    storage: str = _opt(
        "",
        "Optuna storage URL shared by every process of the study (sqlite:///FILE, postgresql://USER:PASS@HOST/DB); "
        "empty: optuna.db beside a sqlite MLflow store, else in output_dir.",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise invalid(f.name, getattr(self, f.name), "one of " + ", ".join(choices))
        if self.trials < 1:
            raise invalid("trials", self.trials, "a whole number >= 1")
        if not (math.isfinite(self.timeout) and self.timeout >= 0):
            raise invalid("timeout", self.timeout, "seconds >= 0 (0: none)")
        if not _STUDY.match(self.study):
            raise invalid("study", self.study, "letters, digits, '.', '_' and '-', up to 120 characters, starting "
                          "with a letter or digit")  # fmt: skip
        if self.storage and not _STORAGE.match(self.storage):
            raise invalid("storage", self.storage, "empty, sqlite:///FILE or postgresql://USER:PASSWORD@HOST:"
                          "PORT/DATABASE")  # fmt: skip


def check_sweep(sw: SweepConfig, base: TrainConfig) -> tuple[Dimension, ...]:
    """The space against the base, what the base must be for a sweep, and the data and builders the space names
    as `train` checks its own before TensorFlow loads; the dimensions."""
    if base.runtime.launcher == "ray" and base.runtime.strategy != "auto":
        raise UserError(f"invalid value for strategy: received {base.runtime.strategy} with launcher=ray; a sweep on "
                        "Ray trains each trial in one process of one CPU; allowed: strategy auto")  # fmt: skip
    if base.runtime.strategy == "multi_worker":
        raise UserError("invalid value for strategy: received multi_worker; a sweep runs its trials one at a time in "
                        "each process; allowed: strategy auto, one_device or mirrored (launcher=ray with workers=N "
                        "runs N trial processes at once on a Ray cluster)")  # fmt: skip
    dims = parse_space(sw.space, base)
    from tftrain.checks import check_dataset, check_model

    for d in dims:  # a folder's layout, a builder's file: what train checks of its own before TensorFlow
        for value in d.args if d.name == "dataset" else ():
            check_dataset(value, base.data.data_dir)
        for value in d.args if d.name == "model" else ():
            check_model(value)
    if sw.sampler == "grid":
        for d in dims:
            d.grid()
    return dims


def storage_url(sw: SweepConfig, base: TrainConfig) -> str:
    """`storage` (postgresql:// meaning psycopg2, which tftrain[server] installs), or a sqlite file optuna.db beside
    a sqlite MLflow store, else in output_dir."""
    import mlflow

    if sw.storage:
        return re.sub(r"^postgresql://", "postgresql+psycopg2://", sw.storage)
    tracking = mlflow.get_tracking_uri()
    folder = Path(tracking.removeprefix("sqlite:///")).parent if tracking.startswith("sqlite:///") else None
    return f"sqlite:///{(folder or Path(base.tracking.output_dir)).resolve() / 'optuna.db'}"


def check_storage(url: str) -> None:
    """The study's database answers (a sqlite file's folder is made), before any trial runs."""
    import sqlalchemy

    try:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with sqlalchemy.create_engine(url).connect():
            pass
    except ModuleNotFoundError as e:
        raise UserError(f"invalid value for storage: received {_hidden(url)}; its driver {e.name} is not "
                        "installed; allowed: sqlite, or PostgreSQL after pip install 'tftrain[server]'") from None  # fmt: skip
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:300]
        raise UserError(f"cannot open the sweep storage {_hidden(url)}: {reason}; allowed: a database that "
                        "answers (sqlite:///FILE, postgresql://USER:PASSWORD@HOST:PORT/DATABASE)") from None  # fmt: skip


def _hidden(url: str) -> str:
    """A URL without its password."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


KINDS = ("uniform", "loguniform", "int", "choice")
FORMS = "uniform(low, high), loguniform(low, high), int(low, high[, step]) or choice(a, b, ...)"
# Not searchable: where the data is and how it is split (trials must be scored on the same validation images),
# and the tracking group (where and how runs are recorded, not how well they train).
# Not searchable either: the strategy and the CPU's logical devices, set up once per process, and the launcher.
FIXED = (
    "data_dir",
    "validation_split",
    "test_split",
    "strategy",
    "cpu_replicas",
    "launcher",
    "workers",
    "ray_address",
    "max_failures",
)
SEARCHABLE = tuple(name for name, p in PARAMS.items() if p.group != "tracking" and name not in FIXED)
_EXPRESSION = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.DOTALL)
_BOOLS = {"true": True, "false": False}


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: its name, the distribution's kind, and its arguments typed as the parameter
    ((low, high), (low, high, step), or the choices)."""

    name: str
    kind: str
    args: tuple

    def suggest(self, trial):
        """The value an Optuna trial samples for this parameter."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.args))
        if self.kind == "int":
            low, high, step = self.args
            return trial.suggest_int(self.name, low, high, step=step)
        return trial.suggest_float(self.name, *self.args, log=self.kind == "loguniform")

    def grid(self) -> list:
        """Every value, for the grid sampler: a choice's values, or an int range's."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "int":
            low, high, step = self.args
            return list(range(low, high + 1, step))
        raise UserError(
            f"invalid value for space: received {self.name}={self.kind}(...) with sampler=grid; allowed with grid: "
            "choice(...) or int(...) for every parameter (a grid has no points of a continuous range)"
        )

    def __str__(self) -> str:
        return f"{self.name}={self.kind}({', '.join(str(a) for a in self.args)})"


def parse_space(text: str, base: TrainConfig) -> tuple[Dimension, ...]:
    """The dimensions of an inline space or a YAML file's, every value checked against `base` (see the module)."""
    text = (text or "").strip()
    if text.lower().endswith((".yaml", ".yml")):
        parts = _read_yaml(text)
    else:
        parts = [_split_part(part) for part in text.split(";") if part.strip()]
    if not parts:
        raise UserError(
            f"invalid value for space: received {text!r}; allowed: NAME=EXPR parts separated by ';' (EXPR one of "
            f"{FORMS}), or a .yaml file mapping names to them"
        )
    names = [name for name, _ in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"invalid value for space: {', '.join(twice)} given twice; allowed: each parameter once")
    return tuple(_dimension(name, expression, base) for name, expression in parts)


def _read_yaml(path: str) -> list[tuple[str, str | list]]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"invalid value for space: received {path!r}, no such file; allowed: an existing .yaml file "
                        "or an inline space")  # fmt: skip
    try:
        loaded = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise UserError(f"invalid value for space: {path} is not readable YAML{at}; allowed: a mapping of "
                        f"parameter names to {FORMS}") from None  # fmt: skip
    if not isinstance(loaded, dict):
        raise UserError(f"invalid value for space: {path} holds a {type(loaded).__name__}, not a mapping; allowed: "
                        f"a mapping of parameter names to {FORMS}")  # fmt: skip
    return [(str(name), value if isinstance(value, list) else str(value)) for name, value in loaded.items()]


def _split_part(part: str) -> tuple[str, str]:
    name, sign, expression = part.partition("=")
    if not sign or not name.strip() or not expression.strip():
        raise UserError(f"invalid value for space: received the part {part.strip()!r}; allowed: NAME=EXPR with "
                        f"EXPR one of {FORMS}")  # fmt: skip
    return name.strip(), expression.strip()


def _dimension(name: str, expression: str | list, base: TrainConfig) -> Dimension:
    shown = f"{name}={expression}"
    if name not in SEARCHABLE:
        why = "fixed for every trial of a sweep" if name in FIXED or name in PARAMS else "not a train parameter"
        if near := difflib.get_close_matches(name, SEARCHABLE, n=1):
            why += f" (did you mean {near[0]}?)"
        raise UserError(f"invalid value for space: received {shown!r}: {name} is {why}; allowed: "
                        f"{', '.join(SEARCHABLE)}")  # fmt: skip
    if isinstance(expression, list):
        kind, args = "choice", [str(v).lower() if isinstance(v, bool) else str(v) for v in expression]
    else:
        match = _EXPRESSION.match(expression)
        if not match:
            raise UserError(f"invalid value for space: received {shown!r}; allowed: {name}=EXPR with EXPR one of "
                            f"{FORMS}")  # fmt: skip
        kind, inner = match.group(1), match.group(2)
        args = [a.strip().strip("'\"") for a in inner.split(",")] if inner.strip() else []
    if kind not in KINDS:
        raise UserError(f"invalid value for space: received {shown!r}: unknown distribution {kind!r}; allowed: "
                        f"{FORMS}")  # fmt: skip
    if any(a == "" for a in args):
        raise UserError(f"invalid value for space: received {shown!r}: an empty argument; allowed: {FORMS}")
    kind_of = _value_type(base, name)
    allowed = _allowed(kind_of)
    if kind not in allowed:
        raise UserError(f"invalid value for space: received {shown!r}: {name} is a {kind_of} parameter; allowed "
                        f"for it: {' or '.join(k + '(...)' for k in allowed)}")  # fmt: skip
    values = tuple(_typed(name, a, kind_of, shown) for a in args)
    values = _check_shape(name, kind, values, shown)
    for value in values[:2] if kind != "choice" else values:
        try:
            check_named(base.replace(**{name: value}))
        except UserError as e:
            raise UserError(f"invalid value for space: received {shown!r}: {e}") from None
    return Dimension(name, kind, values)


def _value_type(base: TrainConfig, name: str) -> str:
    default = base.flat()[name]
    return (
        "true/false" if isinstance(default, bool) else {int: "whole-number", float: "number"}.get(type(default), "text")
    )


def _allowed(kind_of: str) -> tuple[str, ...]:
    return {"whole-number": ("int", "choice"), "number": ("uniform", "loguniform", "choice")}.get(kind_of, ("choice",))


def _typed(name: str, arg: str, kind_of: str, shown: str):
    try:
        if kind_of == "whole-number":
            return int(arg)
        if kind_of == "number":
            value = float(arg)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind_of == "true/false":
            return _BOOLS[arg.lower()]
        return arg
    except (ValueError, KeyError):
        wanted = {"whole-number": "whole numbers", "number": "finite numbers", "true/false": "true or false"}[kind_of]
        raise UserError(f"invalid value for space: received {shown!r}: {arg!r} is not a value of {name}; allowed: "
                        f"{wanted}") from None  # fmt: skip


def _check_shape(name: str, kind: str, values: tuple, shown: str) -> tuple:
    if kind == "choice":
        if not values:
            raise UserError(f"invalid value for space: received {shown!r}: no choices; allowed: choice(a, b, ...)")
        if len(set(values)) < len(values):
            raise UserError(f"invalid value for space: received {shown!r}: a choice given twice; allowed: "
                            "distinct choices")  # fmt: skip
        return values
    wanted = "(low, high) or (low, high, step)" if kind == "int" else "(low, high)"
    if len(values) not in ((2, 3) if kind == "int" else (2,)):
        raise UserError(f"invalid value for space: received {shown!r}: {len(values)} arguments; allowed: "
                        f"{kind}{wanted}")  # fmt: skip
    low, high = values[:2]
    if not low < high:
        raise UserError(f"invalid value for space: received {shown!r}: low {low} is not below high {high}; "
                        "allowed: low < high")  # fmt: skip
    if kind == "loguniform" and low <= 0:
        raise UserError(f"invalid value for space: received {shown!r}: low {low} on a log scale; allowed: low > 0")
    if kind == "int":
        step = values[2] if len(values) == 3 else 1
        if step < 1 or (high - low) % step:
            raise UserError(f"invalid value for space: received {shown!r}: step {step}; allowed: a step >= 1 that "
                            f"divides high - low ({high - low})")  # fmt: skip
        return (low, high, step)
    return values
