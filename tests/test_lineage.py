"""Lineage: the data a run trained and was evaluated on, as MLflow datasets whose digests follow the data's state;
scores linked to the model and the split; the training run carrying its model's test accuracy; run names."""

from __future__ import annotations

import dataclasses
import json
import os

import mlflow
import numpy as np
import pytest

from conftest import run_tagged, tiny_config
from test_folders import load, make_classes
from tftrain.data.datasets import load_task_data
from tftrain.data.fingerprint import array_digest, split_digests
from tftrain.ship.evaluate import evaluate
from tftrain.training.task import Task, run_name

SPLITS = ("train", "validation", "test")


def test_a_folders_digests_follow_its_files_classes_and_split_counts(tmp_path):
    root = tmp_path / "photos"
    make_classes(root, {"cat": 8, "dog": 8})
    first = load(root, tmp_path).digests
    assert set(first) == set(SPLITS) and len(set(first.values())) == 3
    assert load(root, tmp_path).digests == first  # the same state: the same digests (from the cache, too)
    stat = (root / "cat" / "000.png").stat()
    os.utime(root / "cat" / "000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: a new state
    touched = load(root, tmp_path).digests
    assert sum(touched[s] != first[s] for s in SPLITS) == 1  # the split that holds the file, only
    assert load(root, tmp_path, test_split=0.25).digests["test"] != touched["test"]  # other counts
    make_classes(root, {"owl": 4}, first_id=100)
    added = load(root, tmp_path).digests
    assert all(added[s] != touched[s] for s in SPLITS)  # another class list: every split


def test_array_digests_follow_labels_images_classes_and_shape():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (5000, 8, 8), dtype=np.uint8), rng.integers(0, 3, 5000)
    classes = ("a", "b", "c")
    digest = array_digest(classes, x, y)
    assert array_digest(classes, x.copy(), y.copy()) == digest
    relabelled, brighter = y.copy(), x.copy()
    relabelled[1234] = (y[1234] + 1) % 3
    brighter[0] ^= 1  # the first image is always in the sample
    others = [array_digest(classes, x, relabelled), array_digest(classes, brighter, y),
              array_digest(("a", "b", "d"), x, y), array_digest(classes, x.reshape(5000, 4, 16), y),
              array_digest(classes, x[:-1], y[:-1])]  # fmt: skip
    assert digest not in others and len(set(others)) == len(others)


@pytest.fixture(scope="module")
def evaluated(trained, tiny_data):
    """The session's model evaluated by `tftrain evaluate` (a run of its own), in this module's store."""
    result, _ = trained
    return result, evaluate(result.model.uri, data_dir=str(tiny_data))


def inputs_of(run_id: str) -> dict[str, tuple[str, str, str]]:
    """A run's datasets by name: (digest, context, source uri)."""
    run = mlflow.get_run(run_id)
    return {
        i.dataset.name: (i.dataset.digest, i.tags[0].value, json.loads(i.dataset.source).get("uri", ""))
        for i in run.inputs.dataset_inputs
    }


def test_runs_hold_the_splits_they_trained_and_were_evaluated_on(evaluated, tiny_data):
    result, _ = evaluated
    data = load_task_data("fashion_mnist", str(tiny_data))
    digests = split_digests(data)
    trained = inputs_of(result.run_id)
    # trained on train and validation; `tftrain evaluate` added the test split it scored the model on
    assert trained == {
        "fashion-mnist-train": (digests["train"], "training", str(tiny_data)),
        "fashion-mnist-validation": (digests["validation"], "validation", str(tiny_data)),
        "fashion-mnist-test": (digests["test"], "test", str(tiny_data)),
    }
    evaluation = mlflow.get_run(run_tagged("evaluated_model_uri"))
    assert inputs_of(evaluation.info.run_id) == {"fashion-mnist-test": trained["fashion-mnist-test"]}
    assert [m.model_id for m in evaluation.inputs.model_inputs] == [result.model.model_id]
    schema = json.loads(mlflow.get_run(result.run_id).inputs.dataset_inputs[0].dataset.schema)
    assert schema["mlflow_colspec"][0]["tensor-spec"]["shape"] == [-1, 28, 28]


def test_scores_are_linked_to_the_model_and_the_test_split(evaluated, tiny_data):
    result, ev = evaluated
    test_digest = split_digests(load_task_data("fashion_mnist", str(tiny_data)))["test"]
    evaluation_run = run_tagged("evaluated_model_uri")
    scores = mlflow.get_logged_model(result.model.model_id).metrics
    by_run = {(m.run_id, m.key): m for m in scores}
    for run_id in (evaluation_run, result.run_id):  # the evaluation's run and the model's training run
        accuracy = by_run[(run_id, "test_accuracy")]
        assert accuracy.value == pytest.approx(ev.metrics["test_accuracy"])
        assert (accuracy.dataset_name, accuracy.dataset_digest) == ("fashion-mnist-test", test_digest)
    # the training run carries the figures runs compare on, not every per-class score
    training = mlflow.get_run(result.run_id).data.metrics
    assert training["test_accuracy"] == pytest.approx(ev.metrics["test_accuracy"])
    assert {"test_loss", "test_macro_f1"} <= set(training) and "test_f1_trouser" not in training


def test_scores_on_other_data_stay_in_the_evaluations_run(trained, tiny_data, tmp_path):
    """A dataset the model did not train on: scored, linked to that split, but neither to the model nor given to
    the training run."""
    result, _ = trained
    before = mlflow.get_run(result.run_id).data.metrics.get("test_accuracy")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_data.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    evaluate(result.model.uri, data_dir=str(copy))
    assert mlflow.get_run(result.run_id).data.metrics.get("test_accuracy") == before
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.evaluated_dataset = '{copy}'")  # fmt: skip
    (run,) = runs
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["fashion-mnist-test"]


def test_a_litert_evaluation_leaves_the_runs_test_accuracy_the_keras_models(trained_and_exported, tiny_data):
    _, exported, _ = trained_and_exported
    litert = exported.litert
    before = mlflow.get_run(litert.run_id).data.metrics.get("test_accuracy")
    evaluate(litert.uri, data_dir=str(tiny_data))
    assert mlflow.get_run(litert.run_id).data.metrics.get("test_accuracy") == before


def tiny_net():
    """A build function with a name, as a Python user writes one."""


def test_runs_are_named_by_model_and_data():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (8, 4, 4), dtype=np.uint8), rng.integers(0, 2, 8)
    task = Task("My Digits", ("a", "b"), (x, y), (x, y), (x, y), build_model=tiny_net)
    cfg = tiny_config("unused", run_name="auto", model="cnn_bn", batch_size=0)
    assert run_name(cfg, task).startswith("tiny-net-my-digits-")
    assert run_name(cfg, dataclasses.replace(task, build_model=lambda: None)).startswith("my-digits-")
    named = dataclasses.replace(task, data_settings={"dataset": "photos"})  # a task the config names
    assert run_name(cfg, named).startswith("cnn_bn-my-digits-")
    assert run_name(tiny_config("unused", run_name="mine"), task) == "mine"


def test_an_evaluation_stands_when_the_models_training_run_is_deleted(trained, tiny_data, caplog):
    result, _ = trained
    client = mlflow.MlflowClient()
    client.delete_run(result.run_id)
    try:
        ev = evaluate(result.model.uri, data_dir=str(tiny_data))
    finally:
        client.restore_run(result.run_id)
    assert ev.metrics["test_accuracy"] > 0.5
    assert f"test accuracy not logged in the model's training run {result.run_id}" in caplog.text
