"""Models in MLflow: logging a trained Keras model (MLflow's Keras flavor, served by tftrain's pyfunc) and a LiteRT
twin, registering them, and looking a model up or loading it by URI."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema

from tftrain import serving
from tftrain.errors import UserError
from tftrain.tracking.journal import Journal, remote
from tftrain.tracking.store import model_info

MODEL_ARTIFACT = "model"
LITERT_ARTIFACT = "litert"
OUTPUT_SCHEMA = Schema(
    [
        ColSpec("long", "class"),
        ColSpec("string", "class_name"),
        ColSpec("float", "probability"),
        ColSpec(Array("float"), "probabilities"),
    ]
)


# One row per image out. No input schema: MLflow checks an input schema strictly before the model sees a request
# (one dtype, a fixed rank), which would refuse uint8 pixels and a single image, and answer a wrong shape with a
# print-out of the request before the reason; the model's own checks (serving.check_images) say what it takes.
# What it takes is in the MLmodel file's metadata (`accepts`, `image_shape`) and in its serving input example.
SIGNATURE = ModelSignature(outputs=OUTPUT_SCHEMA)


@dataclass(frozen=True)
class Provenance:
    """What a logged model carries about its training, in its MLmodel metadata: the classes it answers, the data
    settings that load its splits again (TaskData.settings; empty: arrays made in Python) and the registered
    name its training used (the LiteRT twin registers as NAME-litert). Evaluate and export read these, never the
    run's params (`mlflow run` rewrites values: an empty string is logged as '')."""

    class_names: tuple[str, ...]
    data: dict = field(default_factory=dict)
    registered_name: str | None = None


def _metadata(input_shape: tuple[int, ...], made: Provenance) -> dict:
    return {
        "image_shape": list(input_shape),
        "accepts": serving.accepted(input_shape),
        "class_names": list(made.class_names),
        "training_data": made.data,
        "registered_model_name": made.registered_name or "",
    }


@dataclass(frozen=True)
class LoggedModel:
    uri: str  # models:/m-<id>
    model_id: str
    run_id: str
    registered_name: str | None = None
    version: str | None = None
    input_shape: tuple[int, ...] | None = None  # (H, W[, C]), when resolve_model looked it up
    class_names: tuple[str, ...] | None = None  # from the MLmodel metadata (models logged before it: None)
    training_data: dict | None = None  # Provenance.data, from the MLmodel metadata (None: not said)
    trained_name: str | None = None  # Provenance.registered_name, from the MLmodel metadata
    quantization: str | None = None  # a LiteRT model's TFLite mode, from the MLmodel metadata (Keras: None)

    @property
    def version_uri(self) -> str:
        """models:/<registered name>/<version>, for a registered model."""
        return f"models:/{self.registered_name}/{self.version}"

    @property
    def readable_uri(self) -> str:
        """The URI people read in titles and tags: the registered version's when there is one, else models:/m-<id>."""
        return self.version_uri if self.version else self.uri


def _requirements(runtime: str) -> list[str]:
    """What a server needs for this model: this environment's versions, the runtime's package included (Pillow
    decodes the image files a request sends)."""
    return [f"{p}=={metadata.version(p)}" for p in (runtime, "mlflow", "numpy", "pillow")]


def _logged(info, registered_name: str | None) -> LoggedModel:
    version = str(info.registered_model_version) if registered_name else None
    return LoggedModel(info.model_uri, info.model_id, info.run_id, registered_name, version)


def log_keras_model(
    model,
    registered_name: str | None,
    example: np.ndarray,
    made: Provenance,
    journal: Journal | None = None,
) -> LoggedModel | None:
    """Log the Keras `model` (MLflow's Keras flavor, served by tftrain's pyfunc) with `example` (uint8 images) as
    its serving input example and `made` in its metadata, register it as `registered_name` (None: not), and log
    the same request beside the run (serving_example.json). With the tracking server gone, the model goes to the
    training's `journal` instead (None back); `tftrain sync` logs it."""
    mlflow.flush_async_logging()
    example = np.asarray(example, dtype=np.uint8)
    request = {"inputs": example.tolist()}
    logged: list[LoggedModel] = []

    def log() -> None:
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=serving,
            keras_model=model,
            class_names=list(made.class_names),
            signature=SIGNATURE,
            input_example=example,
            metadata=_metadata(tuple(model.input_shape[1:]), made),
            registered_model_name=registered_name,
            pip_requirements=_requirements("tensorflow"),
        )
        mlflow.log_dict(request, "serving_example.json")
        logged.append(_logged(info, registered_name))

    entry = {"model": "model.keras", "registered_name": registered_name, "class_names": list(made.class_names),
             "training_data": made.data, "trained_name": made.registered_name, "example": request}  # fmt: skip
    if not remote(journal, log, entry):
        model.save(journal.folder / "model.keras")
    return logged[0] if logged else None


def log_litert_model(
    tflite: Path, made: Provenance, registered_name: str | None, example: np.ndarray, quantization: str
) -> LoggedModel:
    """Log a TFLite file (as data/litert/model.tflite, beside class_names.json) as a pyfunc model that runs in the LiteRT interpreter, with
    `example` (uint8 images) as its serving input example and `made` in its metadata, and register it."""
    example = np.asarray(example, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        # the class names in a file beside the network, as for Keras models: as model_config, MLflow would also
        # log them as a run param (a long JSON list on the compare page)
        data = serving.write_data(Path(tmp, "litert"), list(made.class_names))
        shutil.copy(tflite, data / serving.LITERT_FILE)
        info = mlflow.pyfunc.log_model(
            name=LITERT_ARTIFACT,
            loader_module=serving.__name__,
            data_path=str(data),
            code_paths=[str(serving.write_code(Path(tmp, "code")))],
            signature=SIGNATURE,
            input_example=example,
            metadata={**_metadata(example.shape[1:], made), "quantization": quantization},
            registered_model_name=registered_name,
            pip_requirements=_requirements("ai-edge-litert"),
        )
    return _logged(info, registered_name)


def resolve_model(uri: str) -> LoggedModel:
    """Look the model up (nothing downloaded but its MLmodel file); a model that is not there is a user error."""
    info = model_info(uri)
    meta = info.metadata or {}
    names = meta.get("class_names")
    return LoggedModel(uri, info.model_id, info.run_id, input_shape=_image_shape(info),
                       class_names=tuple(names) if names else None, training_data=meta.get("training_data"),
                       trained_name=meta.get("registered_model_name") or None,
                       quantization=meta.get("quantization"))  # fmt: skip


def _image_shape(info) -> tuple[int, ...] | None:
    """From the MLmodel metadata; a model logged before tftrain wrote it has the shape in its input signature."""
    if shape := (info.metadata or {}).get("image_shape"):
        return tuple(int(d) for d in shape)
    inputs = info.signature.inputs if info.signature else None
    if inputs is not None and inputs.is_tensor_spec() and len(inputs.inputs) == 1:
        return tuple(int(d) for d in inputs.inputs[0].shape[1:])
    return None


def image_shape(ref: LoggedModel) -> tuple[int, ...]:
    """The image shape, (H, W) or (H, W, C), in a resolved model's signature; none is a user error."""
    if ref.input_shape is None:
        raise UserError(
            f"model_uri {ref.uri!r} says no image shape (MLmodel metadata or signature): not a tftrain model"
        )
    return ref.input_shape


def model_input_shape(uri: str) -> tuple[int, ...]:
    """The image shape of the model at `uri`, read from its MLmodel file before any weights load. A missing model,
    or one without a tensor signature, is a user error."""
    return image_shape(resolve_model(uri))


def load_pyfunc(uri: str):
    return mlflow.pyfunc.load_model(uri)


def load_keras(uri: str):
    info = mlflow.models.get_model_info(uri)
    if "keras" not in info.flavors:
        raise UserError(
            f"model_uri {uri!r} is not a Keras model (flavors: {', '.join(info.flavors)}); export needs one"
        )
    return mlflow.keras.load_model(uri)


CLAIM_TAG = "tftrain.gating"  # on a registered version: the process scoring and gating it (JSON), or "done"


def register_once(model_uri: str, name: str, run_id: str, claim: dict, held: Callable[[dict], bool]) -> str | None:
    """Register `model_uri` (logged by run `run_id`) under `name` once, and claim the version for this process to
    gate: None if another process has it (registered at the same moment: the lower version stays and the higher
    is deleted; or registered before and claimed by a process that `held` says still works on it, or gated)."""
    client = mlflow.MlflowClient()
    query = f"name = '{name}' and run_id = '{run_id}'"
    existing = sorted(client.search_model_versions(query), key=lambda v: int(v.version))
    if existing:
        version = existing[0]
        owner = version.tags.get(CLAIM_TAG)
        if owner == "done" or (owner and held(json.loads(owner))):
            return None
        mine = str(version.version)
    else:
        mine = str(mlflow.register_model(model_uri, name).version)
        lowest = min(int(v.version) for v in client.search_model_versions(query))
        if str(lowest) != mine:
            client.delete_model_version(name, mine)
            return None
    client.set_model_version_tag(name, mine, CLAIM_TAG, json.dumps(claim))
    return mine


def mark_gated(name: str, version: str) -> None:
    mlflow.MlflowClient().set_model_version_tag(name, version, CLAIM_TAG, "done")
