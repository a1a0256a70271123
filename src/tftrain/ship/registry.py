"""The `promote` step: the model registry's gate. A registered version gets an alias (champion by default) only
when its test accuracy is at least the current holder's and at least a threshold, and it takes the holder's input
shape (unless the move to another shape is asked for: `allow_shape_change`); otherwise the alias stays.

One of the modules that import mlflow (see tracking/__init__.py): this one for the registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from tftrain.errors import UserError
from tftrain.tracking import logged_models
from tftrain.values import parse_version_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    name: str
    version: str
    alias: str
    promoted: bool
    reason: str
    test_accuracy: float
    previous_version: str | None  # who held the alias before
    previous_accuracy: float | None
    shape_change: str | None = None  # the alias moved to another input shape: "from (..) to (..)"


def version_accuracy(model_uri: str) -> float | None:
    """The latest test_accuracy that `evaluate` linked to the model, or None if it was never evaluated."""
    return _accuracy(logged_models.resolve_model(model_uri))


def gate_metric(ref: logged_models.LoggedModel) -> str:
    """The score the gate compares, as linked to the model on its own test split: evaluate's test_accuracy for a
    Keras model; for a LiteRT model, export's score of the TFLite file it serves (tflite_<mode>_test_accuracy)."""
    return f"tflite_{ref.quantization}_test_accuracy" if ref.quantization else "test_accuracy"


def _accuracy(ref: logged_models.LoggedModel) -> float | None:
    key = gate_metric(ref)
    metrics = [m for m in mlflow.get_logged_model(ref.model_id).metrics or [] if m.key == key]
    return max(metrics, key=lambda m: m.timestamp).value if metrics else None


def _holder(name: str, alias: str) -> str | None:
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None  # nobody holds the alias yet


def shape_change_command(model_uri: str, alias: str) -> str:
    """The command that moves `alias` to `model_uri` though its input shape differs from the holder's."""
    named = "" if alias == "champion" else f" --alias {alias}"
    return f"tftrain promote --model-uri {model_uri}{named} --allow-shape-change (main job: -P allow_shape_change=true)"


def _shape_refusal(model_uri: str, alias: str, holder: str | None, shapes: tuple, allowed: bool) -> str | None:
    """Why the version may not have the alias for the images it takes: `shapes`, its own and the holder's (None:
    no holder). A champion of another shape breaks every client of the alias that sends pixels, so it moves only
    when `allowed`."""
    shape, holder_shape = shapes
    if holder_shape is None or shape == holder_shape or allowed:
        return None
    return (
        f"input shape {shape} differs from version {holder}'s {holder_shape}, which clients of the alias send as "
        f"pixels; to move the alias anyway: {shape_change_command(model_uri, alias)}; or register it under another "
        "model_name"
    )


def _judge(
    accuracy: float, min_accuracy: float, holder: str | None, holder_accuracy: float | None, classes: int | None
) -> str | None:
    """Why the version may not have the alias by its score, or None if it may. `classes`: how many the version
    answers (None: not known), for the floor every model must pass: better than guessing."""
    if accuracy < min_accuracy:
        return f"test accuracy {accuracy:.4f} is below the threshold {min_accuracy:.4f}"
    if holder_accuracy is not None and accuracy < holder_accuracy:
        return f"test accuracy {accuracy:.4f} is below version {holder}'s {holder_accuracy:.4f}"
    if classes and accuracy <= 1.0 / classes:
        return f"test accuracy {accuracy:.4f} is no better than chance (1/{classes} = {1.0 / classes:.4f})"
    return None


def promote(
    model_uri: str, alias: str = "champion", min_accuracy: float = 0.0, allow_shape_change: bool = False
) -> Decision:
    """Judge the version against the alias' holder; `allow_shape_change`: let it move the alias to another input
    shape (recorded on the version as its shape_change tag, with a warning)."""
    name, version = parse_version_uri(model_uri)
    ref = logged_models.resolve_model(model_uri)
    accuracy = _accuracy(ref)
    if accuracy is None:
        step = "export --model-uri <its Keras model>" if ref.quantization else f"evaluate --model-uri {model_uri}"
        raise UserError(f"{model_uri} has no {gate_metric(ref)} yet; run: tftrain {step}")
    holder = _holder(name, alias)
    holder_accuracy = version_accuracy(f"models:/{name}/{holder}") if holder and holder != version else None
    holder_shape = logged_models.model_input_shape(f"models:/{name}/{holder}") if holder and holder != version else None
    shape = logged_models.image_shape(ref)
    classes = len(ref.class_names) if ref.class_names else None
    refusal = _shape_refusal(model_uri, alias, holder, (shape, holder_shape), allow_shape_change) or _judge(
        accuracy, min_accuracy, holder, holder_accuracy, classes
    )
    changed = holder_shape is not None and shape != holder_shape
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "test_accuracy", f"{accuracy:.6f}")
    client.set_model_version_tag(name, version, "source_run_id", ref.run_id)
    client.set_model_version_tag(name, version, f"gate_{alias}", refusal or "promoted")
    shape_change = f"from {holder_shape} (version {holder}) to {shape}" if changed and refusal is None else None
    if refusal is None:
        client.set_registered_model_alias(name, alias, version)
        reason = f"{name}@{alias} is now version {version} (test accuracy {accuracy:.4f})"
    elif holder:
        reason = f"{name}@{alias} stays at version {holder}: version {version}'s {refusal}"
    else:
        reason = f"{name}@{alias} stays unassigned: version {version}'s {refusal}"
    if shape_change:
        client.set_model_version_tag(name, version, f"shape_change_{alias}", shape_change)
        log.warning(f"{name}@{alias} changed input shape {shape_change}: a server of {name}@{alias} serves it once "
                    "restarted; from then on, clients sending pixels of the old shape are refused, clients sending "
                    "image files get them resized")  # fmt: skip
    return Decision(name, version, alias, refusal is None, reason, accuracy, holder, holder_accuracy, shape_change)
