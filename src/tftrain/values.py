"""The values users pass that name things outside tftrain: a dataset (built-in, folder, tfds, function), a model
(built-in, keras.applications, builder, .keras file), files and folders, MLflow model URIs and aliases. Parsed and
checked here, once, with the filesystem where a value names a path; and the names runs and models get from them.
"""

from __future__ import annotations

import difflib
import os
import re
from datetime import datetime
from pathlib import Path

from tftrain.config import APPLICATIONS, DATASET_FORMS, DATASETS, MODEL_FORMS, MODELS, TrainConfig, parse_function
from tftrain.env import mlflow_run_id
from tftrain.errors import UserError, invalid


def _missing(path: str, what: str = "file") -> str:
    """What a refusal says of a path that is not there: where it was looked for, and under `mlflow run` (which
    starts its entry points in the project folder) that a relative path means the project's."""
    where = Path(path).resolve()
    if mlflow_run_id() and not Path(path).is_absolute():
        return f"no {what} {where}: mlflow run resolves relative paths in the project folder; give an absolute path"
    return f"no {what} {where}"


def _close(value: str, names: tuple[str, ...]) -> str:
    matches = difflib.get_close_matches(value, names, n=2, cutoff=0.7)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def _check_function(name: str, value: str, forms: str) -> None:
    source, _ = parse_function(value)
    if source.endswith(".py") and not Path(source).is_file():
        raise invalid(name, value, f"{forms} ({_missing(source)})")


def dataset_kind(value: str) -> str:
    """builtin, tfds, function or folder; anything else is refused with every form allowed."""
    if value in DATASETS:
        return "builtin"
    if value.startswith("tfds:"):
        if not re.fullmatch(r"tfds:[a-z][a-z0-9_]*(:\d+\.\d+\.\d+)?", value):
            raise invalid("dataset", value, "tfds:NAME or tfds:NAME:VERSION (e.g. tfds:mnist:3.0.1)")
        return "tfds"
    if parse_function(value) and not Path(value).is_dir():
        _check_function("dataset", value, DATASET_FORMS)
        return "function"
    if value and Path(value).is_dir():
        return "folder"
    looks_like_path = "/" in value or value.startswith(".")
    detail = f" ({_missing(value, 'folder')})" if looks_like_path else _close(value, DATASETS)
    raise UserError(f"invalid value for dataset: received {value!r}; allowed: {DATASET_FORMS}{detail}")


def dataset_label(value: str) -> str:
    """A short name for the data, for run and registered model names: the built-in or tfds name, the folder's
    name, the function's name; letters, digits and '-' only."""
    kind = dataset_kind(value)
    if kind == "tfds":
        label = value.split(":")[1]
    elif kind == "function":
        label = parse_function(value)[1]
    elif kind == "folder":
        label = Path(value).resolve().name
    else:
        label = value
    return name_label(label)


def name_label(text: str) -> str:
    """`text` as run and registered model names take it: letters, digits and '-', at most 60."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "data"


def resolved_dataset(value: str) -> str:
    """The dataset as another folder can find it again: folders and .py files as absolute paths."""
    kind = dataset_kind(value)
    if kind == "folder":
        return str(Path(value).resolve())
    if kind == "function" and parse_function(value)[0].endswith(".py"):
        source, name = parse_function(value)
        return f"{Path(source).resolve()}:{name}"
    return value


def model_label(value: str) -> str:
    """A short name for the model, for run names: the built-in or application name, the builder's file stem (or
    last module name) and function name (`my_nets.py:build` -> my_nets-build), the .keras file's stem."""
    kind = model_kind(value)
    if kind == "builder":
        source, name = parse_function(value)
        return f"{Path(source).stem if source.endswith('.py') else source.rpartition('.')[2]}-{name}"
    return Path(value).stem if kind == "file" else value


def model_kind(value: str) -> str:
    """builtin, application, builder or file; anything else is refused with every form allowed."""
    if value in MODELS:
        return "builtin"
    if value in APPLICATIONS:
        return "application"
    if value.endswith(".keras"):
        if not Path(value).is_file():
            raise invalid("model", value, f"{MODEL_FORMS} ({_missing(value)})")
        return "file"
    if parse_function(value):
        _check_function("model", value, MODEL_FORMS)
        return "builder"
    raise UserError(
        f"invalid value for model: received {value!r}; allowed: {MODEL_FORMS}{_close(value, MODELS + APPLICATIONS)}"
    )


# runs:/<run id>/<path>, models:/<name>/<version>, models:/<name>@<alias>, models:/m-<id>
_MODEL_URI = re.compile(
    r"^(runs:/[0-9a-f]{32}/[^\s]+"
    r"|models:/m-[0-9a-f]{32}"
    r"|models:/[^/@\s][^/@]*/[0-9]+"
    r"|models:/[^/@\s][^/@]*@[A-Za-z0-9_-]+)$"
)
MODEL_URI_FORMS = "runs:/<run_id>/<path>, models:/<name>/<version>, models:/<name>@<alias>, models:/m-<model_id>"


def check_model_uri(uri: str) -> str:
    """Well-formed MLflow model URI, or a local folder that holds an MLmodel file."""
    if _MODEL_URI.match(uri) or (Path(uri) / "MLmodel").is_file():
        return uri
    raise invalid("model_uri", uri, MODEL_URI_FORMS + ", or a local MLflow model folder")


def check_data_dir(data_dir: str) -> str:
    if data_dir and not Path(data_dir).is_dir():
        raise invalid("data_dir", data_dir, "an existing folder, or empty")
    return data_dir


def check_output_dir(output_dir: str) -> Path:
    """Create the output folder now, before any training, or say why it cannot be written."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise UserError(f"invalid value for output_dir: received {output_dir!r}; cannot create it: {reason}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"invalid value for output_dir: received {output_dir!r}; allowed: a writable folder")
    return path


def check_output_file(output: str, name: str = "output") -> str:
    """A file that can be (over)written: its folder exists and is writable, and it is not a folder itself."""
    path = Path(output)
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise invalid(
            name, output, "a file path in an existing, writable folder" + (", or '-'" if name == "output" else "")
        )
    return output


_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@\s][^/@]*)/(?P<version>[0-9]+)$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def parse_version_uri(uri: str) -> tuple[str, str]:
    """models:/<name>/<version> -> (name, version): the only form a registry alias can point at."""
    match = _VERSION_URI.match(uri)
    if not match:
        raise invalid("model_uri", uri, "a registered version, models:/<name>/<version>")
    return match["name"], match["version"]


def check_alias(alias: str) -> str:
    """MLflow's alias rules: no `latest`, no `v<N>` (they name versions)."""
    if not _ALIAS.match(alias) or re.fullmatch(r"v\d+", alias, re.IGNORECASE) or alias.lower() == "latest":
        raise invalid("alias", alias, "letters, digits, '_' or '-', starting with a letter or '_'; not latest or v<N>")
    return alias


def default_run_name(cfg: TrainConfig, data_label: str = "", model: str | None = None) -> str:
    """cfg's run_name, or for auto: the model (`model`, else cfg's; "": none), the data (`data_label`, else cfg's
    dataset's), the batch size and learning rate when given, and the time: `cnn_bn-photos-0412-153012`."""
    if cfg.tracking.run_name != "auto":
        return cfg.tracking.run_name
    t = cfg.trainer
    chosen = [f"bs{t.batch_size}"] * bool(t.batch_size) + [f"lr{t.learning_rate:g}"] * bool(t.learning_rate)
    data = data_label or dataset_label(cfg.data.dataset)
    model = model_label(cfg.model.name) if model is None else model
    return "-".join([*[model] * bool(model), data, *chosen, datetime.now().strftime("%m%d-%H%M%S")])


def registered_model_name(cfg: TrainConfig, data_label: str = "") -> str:
    """cfg's model_name, or for auto: tftrain-<data> (`data_label`, else cfg's dataset's)."""
    if cfg.tracking.model_name != "auto":
        return cfg.tracking.model_name
    return "tftrain-" + (data_label or dataset_label(cfg.data.dataset))


def check_named(cfg: TrainConfig) -> None:
    """What cfg's values name outside tftrain is there: the data folder, the dataset and the model (their forms,
    files and folders; checks.py looks deeper, before TensorFlow loads) and a weights file."""
    check_data_dir(cfg.data.data_dir)
    dataset_kind(cfg.data.dataset)
    model_kind(cfg.model.name)
    if cfg.model.weights not in ("", "imagenet") and not Path(cfg.model.weights).is_file():
        raise invalid("weights", cfg.model.weights, "an existing weights file (.weights.h5 or .h5), imagenet, or empty")
