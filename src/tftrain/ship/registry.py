"""The `promote` step: the model registry's gate. A registered version gets an alias (champion by default) only
when its test accuracy is at least the current holder's and at least a threshold; otherwise the alias stays.

One of the modules that import mlflow (see tracking/__init__.py): this one for the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from tftrain.errors import UserError
from tftrain.tracking import logged_models
from tftrain.values import parse_version_uri


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


def _judge(
    accuracy: float,
    min_accuracy: float,
    holder: str | None,
    holder_accuracy: float | None,
    shapes: tuple,
    classes: int | None,
) -> str | None:
    """Why the version may not have the alias, or None if it may. `shapes`: the images the version and the holder
    take; a champion that takes other images would break every client of the alias. `classes`: how many the
    version answers (None: not known), for the floor every model must pass: better than guessing."""
    shape, holder_shape = shapes
    if holder_shape is not None and shape != holder_shape:
        return (
            f"input shape {shape} differs from version {holder}'s {holder_shape}, which clients of the alias send; "
            "register it under another model_name"
        )
    if accuracy < min_accuracy:
        return f"test accuracy {accuracy:.4f} is below the threshold {min_accuracy:.4f}"
    if holder_accuracy is not None and accuracy < holder_accuracy:
        return f"test accuracy {accuracy:.4f} is below version {holder}'s {holder_accuracy:.4f}"
    if classes and accuracy <= 1.0 / classes:
        return f"test accuracy {accuracy:.4f} is no better than chance (1/{classes} = {1.0 / classes:.4f})"
    return None


def promote(model_uri: str, alias: str = "champion", min_accuracy: float = 0.0) -> Decision:
    name, version = parse_version_uri(model_uri)
    ref = logged_models.resolve_model(model_uri)
    accuracy = _accuracy(ref)
    if accuracy is None:
        step = "export --model-uri <its Keras model>" if ref.quantization else f"evaluate --model-uri {model_uri}"
        raise UserError(f"{model_uri} has no {gate_metric(ref)} yet; run: tftrain {step}")
    holder = _holder(name, alias)
    holder_accuracy = version_accuracy(f"models:/{name}/{holder}") if holder and holder != version else None
    holder_shape = logged_models.model_input_shape(f"models:/{name}/{holder}") if holder and holder != version else None
    shapes = (logged_models.image_shape(ref), holder_shape)
    classes = len(ref.class_names) if ref.class_names else None
    refusal = _judge(accuracy, min_accuracy, holder, holder_accuracy, shapes, classes)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "test_accuracy", f"{accuracy:.6f}")
    client.set_model_version_tag(name, version, "source_run_id", ref.run_id)
    client.set_model_version_tag(name, version, f"gate_{alias}", refusal or "promoted")
    if refusal is None:
        client.set_registered_model_alias(name, alias, version)
        reason = f"{name}@{alias} is now version {version} (test accuracy {accuracy:.4f})"
    elif holder:
        reason = f"{name}@{alias} stays at version {holder}: version {version}'s {refusal}"
    else:
        reason = f"{name}@{alias} stays unassigned: version {version}'s {refusal}"
    return Decision(name, version, alias, refusal is None, reason, accuracy, holder, holder_accuracy)
