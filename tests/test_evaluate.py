"""evaluate: the metric arithmetic on hand-made numbers, then a real model URI against a real store."""

import json

import mlflow
import numpy as np
import pytest

from conftest import artifact, run_tagged
from tftrain.errors import UserError
from tftrain.evaluate import evaluate, score


def test_score_by_hand():
    # 4 examples of 3 classes: true 0,0,1,2; predicted 0,1,1,2
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]], dtype=np.float32)
    ev = score(probs, np.array([0, 0, 1, 2]), ("a", "b c", "D/e"))
    m = ev.metrics
    assert ev.confusion.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert m["test_accuracy"] == 0.75
    assert m["test_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.7, 0.6])), rel=1e-6)
    assert (m["test_precision_a"], m["test_recall_a"]) == (1.0, 0.5)
    assert (m["test_precision_b_c"], m["test_recall_b_c"]) == (0.5, 1.0)
    assert m["test_f1_a"] == pytest.approx(2 / 3) and m["test_f1_d_e"] == 1.0
    assert m["test_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_class_never_predicted_scores_zero_not_nan():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    m = score(probs, np.array([0, 1]), ("x", "y")).metrics
    assert m["test_precision_y"] == 0.0 and m["test_f1_y"] == 0.0


@pytest.fixture(scope="module")
def evaluated(trained, tiny_data):
    result, _ = trained
    uri = f"models:/{result.model.registered_name}/{result.model.version}"
    return result, evaluate(uri, data_dir=str(tiny_data)), uri


def test_evaluate_logs_a_run_linked_to_the_model(evaluated):
    result, ev, uri = evaluated
    run_id = run_tagged("evaluated_model_uri")
    run = mlflow.get_run(run_id)
    assert run.data.tags["evaluated_model_run_id"] == result.run_id
    assert run.data.tags["evaluated_model_uri"] == uri
    assert run.data.metrics["test_accuracy"] == pytest.approx(ev.metrics["test_accuracy"])
    assert ev.metrics["test_accuracy"] > 0.5  # learnable tiny data; chance is 0.1
    logged = mlflow.get_logged_model(result.model.model_id)
    assert {m.key for m in logged.metrics} >= {
        "test_accuracy",
        "test_loss",
        "test_macro_f1",
        "test_f1_trouser",
    }
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert artifacts == {"evaluation/confusion_matrix.png", "evaluation/report.json"}
    report = json.loads(artifact(run_id, "evaluation/report.json").read_text())
    assert np.sum(report["confusion"]) == 200 and report["classes"][0] == "T-shirt/top"


def test_confusion_png_is_a_picture(evaluated):
    png = artifact(run_tagged("evaluated_model_uri"), "evaluation/confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("uri_form", ["runs", "model_id"])
def test_other_uri_forms_give_the_same_score(evaluated, tiny_data, uri_form):
    result, ev, _ = evaluated
    uri = f"runs:/{result.run_id}/model" if uri_form == "runs" else result.model.uri
    assert evaluate(uri, data_dir=str(tiny_data)).metrics["test_accuracy"] == ev.metrics["test_accuracy"]


def test_missing_model_is_a_user_error(trained):
    with pytest.raises(
        UserError, match=r"model_uri 'models:/nope/1' cannot be opened: Registered Model with name=nope"
    ):
        evaluate("models:/nope/1")
