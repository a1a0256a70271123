"""evaluate: the metric arithmetic on hand-made numbers, then a real model URI against a real store."""

import io
import json

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import artifact, run_tagged
from tftrain.data.datasets import CLASS_NAMES
from tftrain.errors import UserError
from tftrain.ship.evaluate import Evaluation, confusion_figure, evaluate, metric_names, score, summary


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


def test_fashion_mnist_metric_names_are_unchanged():
    assert metric_names(CLASS_NAMES["fashion_mnist"]) == [
        "t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
    ]  # fmt: skip
    probs = np.eye(10)[np.arange(20) % 10]
    metrics = score(probs, np.arange(20) % 10, CLASS_NAMES["fashion_mnist"]).metrics
    assert {"test_precision_t_shirt_top", "test_recall_ankle_boot", "test_f1_trouser"} <= set(metrics)


def test_class_names_that_slug_alike_or_to_nothing_get_their_index():
    names = ("a b", "a-b", "c", "", "***", "class", "a_b__1", "Ünïcode")
    assert metric_names(names) == ["a_b__0", "a_b__1", "c", "class__3", "class__4", "class", "a_b_1", "n_code"]
    probs = np.eye(len(names))[[0, 1, 1, 3, 4, 5, 6, 7]]
    ev = score(probs, np.arange(len(names)), names)
    per_class = {k for k in ev.metrics if k.startswith("test_recall_")}
    assert len(per_class) == len(names)  # one key per class: none overwrote another
    assert ev.metrics["test_recall_a_b__0"] == 1.0 and ev.metrics["test_recall_c"] == 0.0
    assert "weakest class: c, F1 0.0000" in summary(ev)


def figure_pixels(ev: Evaluation) -> tuple[int, int]:
    """The figure as MLflow's log_figure saves it (savefig's defaults), as (width, height) pixels."""
    figure = confusion_figure(ev, "test split")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def random_evaluation(n: int, seed: int = 0) -> Evaluation:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n), rng.integers(1, 40, size=n))  # classes of 1 to 39 examples
    probs = rng.random((len(labels), n))
    probs[np.arange(len(labels)), labels] += rng.random(len(labels))  # mostly right
    return score(probs / probs.sum(1, keepdims=True), labels, tuple(f"class {i} of {n}" for i in range(n)))


def test_a_100_class_confusion_figure_renders_larger():
    ten, hundred = figure_pixels(random_evaluation(10)), figure_pixels(random_evaluation(100))
    assert ten == (800, 700)  # as before the class count mattered
    assert hundred[0] > 2 * ten[0] and hundred[1] > 2 * ten[1]
    assert figure_pixels(random_evaluation(1000)) == (3100, 3000)  # capped


def test_the_figure_colours_by_share_and_writes_counts_only_for_few_classes():
    ev = random_evaluation(10)
    figure = confusion_figure(ev, "t")
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(image.sum(axis=1), 1.0)  # each true class's row sums to its whole
    assert len(figure.axes[0].texts) == 100
    plt.close(figure)
    figure = confusion_figure(random_evaluation(100), "t")
    assert len(figure.axes[0].texts) == 0
    assert figure.axes[0].get_yticklabels()[0].get_fontsize() < 8
    plt.close(figure)


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


def test_a_run_without_a_model_at_that_path_says_so(trained):
    result, _ = trained
    with pytest.raises(UserError, match=r"cannot be opened: the run has no model at 'modelx' \(tftrain logs it at"):
        evaluate(f"runs:/{result.run_id}/modelx")
