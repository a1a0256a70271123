"""Lineage MLflow shows: the data a run trained and was evaluated on, logged with `mlflow.log_input` as one
dataset per split (`<data>-train`, `<data>-validation`, `<data>-test`, contexts training, validation and test),
each with its digest (data/fingerprint.py: it changes when the data's files, classes, split counts or image shape
do), its source (the folder or file the data came from), its schema (the images' shape) and its profile (images and
classes); and scores linked to the model and the split they were measured on.

MLflow keeps one input per dataset name and digest in a run (a second log_input of the same is ignored), so a run
that trains, evaluates and exports holds each split once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput
from mlflow.exceptions import MlflowException
from mlflow.types import Schema, TensorSpec

from tftrain.tracking.logged_models import LoggedModel
from tftrain.values import name_label

log = logging.getLogger(__name__)

CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
PYTHON_ARRAYS = "arrays made in Python"
# what an evaluation in a run of its own also gives the model's training run: the figures runs are compared on
HEADLINE = ("test_accuracy", "test_loss", "test_macro_f1")


class SplitData(Protocol):
    """What lineage reads of a TaskData or a Task (tracking imports neither: data/ and training/ are its peers)."""

    name: str
    class_names: tuple[str, ...]
    source: str
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


class ImageSplit(MetaDataset):
    """A split's metadata without its pixels, with a profile (images, classes) the UI shows beside the schema."""

    def __init__(self, source, name: str, digest: str, schema: Schema, profile: dict):
        self._profile = profile
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict:
        return self._profile


def _source(where: str):
    """A folder or file as a local source (its path shows in the UI), anything else (keras.datasets.mnist,
    tfds:NAME, module:function, arrays) as a code source naming it."""
    if where and Path(where).exists():
        # MLflow registers this class twice, and resolving a path through the registry warns that it is ambiguous
        local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        return local(str(Path(where).resolve()))
    return CodeDatasetSource({"mlflow.source.name": where or PYTHON_ARRAYS})


def split_datasets(data: SplitData, digests: dict[str, str], where: str = "") -> dict[str, ImageSplit]:
    """The three splits of `data` as MLflow datasets, named after the data's label; `digests` per split
    (fingerprint.split_digests); `where`: the data's folder or name (empty: the data's own source)."""
    source = _source(where or data.source)
    label = name_label(data.name)  # as run and registered model names take it
    splits = {}
    for split in CONTEXTS:
        x, _ = getattr(data, split)
        schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, *x.shape[1:]), "image")])
        profile = {"images": len(x), "classes": len(data.class_names)}
        splits[split] = ImageSplit(source, f"{label}-{split}", digests[split], schema, profile)
    return splits


def log_splits(splits: dict[str, ImageSplit], which: tuple[str, ...], run_id: str | None = None) -> None:
    """The splits `which` as inputs of `run_id` (None: the active run), each with its context."""
    inputs = [
        DatasetInput(DatasetEntity(**splits[s].to_dict()), [InputTag("mlflow.data.context", CONTEXTS[s])])
        for s in which
    ]
    mlflow.MlflowClient().log_inputs(run_id or mlflow.active_run().info.run_id, datasets=inputs)


def log_model_input(model_id: str) -> None:
    """The model a step used (an evaluation's), as an input of the active run: the UI links the two."""
    mlflow.log_input(model=LoggedModelInput(model_id))


def log_scores(
    metrics: dict[str, float], model_id: str | None, splits: dict[str, ImageSplit], run_id: str | None = None
) -> None:
    """`metrics` measured on the test split, in `run_id` (None: the active run; else the training run of a model
    evaluated in a run of its own), linked to the model (None: not linked) and to the test split, which becomes
    an input of that run."""
    log_splits(splits, ("test",), run_id)
    mlflow.log_metrics(metrics, run_id=run_id, model_id=model_id, dataset=splits["test"])


def log_evaluation(
    ref: LoggedModel, metrics: dict[str, float], own: bool, splits: dict[str, ImageSplit], prefix: str = ""
) -> None:
    """An evaluation's scores, in the active run under `prefix` (the main job's LiteRT model: litert_), linked to
    the test split they were measured on and, when that split is the model's own (`own`), to the model. An
    evaluation in a run of its own (`tftrain evaluate`) also names the model as its input and, for a Keras model
    scored on its own test split, gives the model's training run the HEADLINE scores, so that training runs compare
    on them (the main job evaluates in the training run)."""
    log_scores({prefix + k: v for k, v in metrics.items()}, ref.model_id if own else None, splits)
    active = mlflow.active_run().info.run_id
    if prefix or not ref.model_id or not ref.run_id or ref.run_id == active:
        return
    log_model_input(ref.model_id)
    if own and ref.quantization is None:  # a LiteRT model's run keeps the Keras model's test_accuracy
        try:
            log_scores({k: metrics[k] for k in HEADLINE}, ref.model_id, splits, run_id=ref.run_id)
        except MlflowException as e:  # its training run deleted since: the evaluation stands on its own
            log.warning(f"test accuracy not logged in the model's training run {ref.run_id}: {str(e)[:300]}")
            return
        log.info(f"test accuracy also logged in the model's training run {ref.run_id}")
