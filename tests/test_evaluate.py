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
from tftrain.ship import diagnostics
from tftrain.ship.diagnostics import (
    confused_text,
    expected_calibration_error,
    extra_metrics,
    most_confused,
    per_class,
    per_class_csv,
    per_class_table,
    short,
    top_k_accuracy,
)
from tftrain.ship.evaluate import Evaluation, confusion_figure, evaluate, metric_names, score, summary
from tftrain.ship.figures import confident_mistakes, mistakes_figure, reliability_figure
from tftrain.ship.registry import promote


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
    assert {"test_ece", "test_top5_accuracy"} <= {m.key for m in logged.metrics}  # 10 classes: top-5 too
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert artifacts == {f"evaluation/{name}" for name in EVALUATION_FILES}
    report = json.loads(artifact(run_id, "evaluation/report.json").read_text())
    assert np.sum(report["confusion"]) == 200 and report["classes"][0] == "T-shirt/top"


EVALUATION_FILES = ("confusion_matrix.png", "report.json", "per_class.csv", "reliability.png", "mistakes.png")


@pytest.mark.parametrize("name", ["confusion_matrix.png", "reliability.png"])
def test_the_figures_are_pictures(evaluated, name):
    png = artifact(run_tagged("evaluated_model_uri"), f"evaluation/{name}").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_mistakes_gallery_has_a_tile_per_mistake_up_to_36(evaluated):
    _, ev, _ = evaluated
    wrong = int(ev.confusion.sum() - np.trace(ev.confusion))
    size = Image.open(artifact(run_tagged("evaluated_model_uri"), "evaluation/mistakes.png")).size
    columns, rows = min(6, wrong), -(-min(wrong, 36) // 6)
    assert size == ((600, 200) if not wrong else (240 * columns, 270 * rows + 80))


def test_the_per_class_csv_holds_every_class_worst_first(evaluated):
    _, ev, _ = evaluated
    rows = artifact(run_tagged("evaluated_model_uri"), "evaluation/per_class.csv").read_text().splitlines()
    assert rows[0] == "class,precision,recall,f1,support" and len(rows) == 11
    f1 = [float(row.rsplit(",", 2)[1]) for row in rows[1:]]
    assert f1 == sorted(f1) and sum(int(row.rsplit(",", 1)[1]) for row in rows[1:]) == 200
    assert f1[0] == pytest.approx(min(v for k, v in ev.metrics.items() if k.startswith("test_f1_")), abs=1e-6)


def test_evaluate_prints_the_table_and_the_confused_pairs(trained, tiny_data, capsys):
    result, _ = trained
    capsys.readouterr()
    ev = evaluate(result.model.uri, data_dir=str(tiny_data))
    out = capsys.readouterr().out
    worst = per_class(ev.confusion, ev.class_names)[0]
    assert f"top-5 {ev.metrics['test_top5_accuracy']:.4f}" in out and f"ECE {ev.metrics['test_ece']:.4f}" in out
    assert "per class, worst F1 first:\nclass        precision  recall      F1  support\n" in out
    assert f"\n{worst.name:<11}  {worst.precision:>9.3f}  {worst.recall:>6.3f}  {worst.f1:>6.3f}  " in out
    assert ("most confused (true class taken for another):" in out) == (ev.metrics["test_accuracy"] < 1)


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


def test_the_table_is_worst_f1_first_and_cut_with_a_pointer_to_the_rest():
    # 15 classes, class k right on k of 15 images (class 0 never: F1 0), the rest taken for the next class
    n = 15
    confusion = np.zeros((n, n), dtype=np.int64)
    for k in range(n):
        confusion[k, k] = k
        confusion[k, (k + 1) % n] = n - k
    names = tuple(f"class {k}" for k in range(n))
    rows = per_class(confusion, names)
    assert [r.name for r in rows] == [f"class {k}" for k in range(n)]  # F1 grows with k
    assert (rows[0].f1, rows[0].support, rows[-1].recall) == (0.0, 15, 14 / 15)
    text = per_class_table(rows, "evaluation/per_class.csv").splitlines()
    assert text[0] == "class    precision  recall      F1  support"
    assert text[1] == "class 0      0.000   0.000   0.000       15"
    assert len(text) == 12 and text[-1] == "... and 5 more classes in evaluation/per_class.csv"
    assert len(per_class_table(rows[:10], "x").splitlines()) == 11  # no pointer when all fit
    assert per_class_csv(rows).splitlines()[1] == "class 0,0.000000,0.000000,0.000000,15"


def test_ties_in_f1_put_the_lower_recall_first():
    confusion = np.array([[1, 3], [0, 0]])  # class b: never present, never right; a: F1 0.4
    rows = per_class(np.array([[2, 2, 0], [0, 1, 3], [0, 0, 4]]), ("a", "b", "c"))
    assert [r.name for r in rows] == ["b", "a", "c"]
    assert [r.name for r in per_class(confusion, ("a", "b"))] == ["b", "a"]


def test_the_most_confused_pairs_by_count():
    confusion = np.array([[8, 2, 0], [5, 5, 0], [0, 1, 9]])
    pairs = most_confused(confusion, ("t_shirt_top", "shirt", "bag"), top=2)
    assert confused_text(pairs) == (
        "most confused (true class taken for another):\n"
        "  shirt taken for t_shirt_top: 5 of 10 (50%)\n"
        "  t_shirt_top taken for shirt: 2 of 10 (20%)"
    )
    assert len(most_confused(confusion, ("a", "b", "c"))) == 3  # only the cells that hold images
    assert confused_text(most_confused(np.eye(3, dtype=int), ("a", "b", "c"))).startswith("most confused: none")


def test_top_k_accuracy_by_hand():
    probs = np.array(
        [
            np.linspace(1.0, 0.0, 12),  # true class 0: the most probable
            np.linspace(1.0, 0.0, 12),  # true class 4: the 5th
            np.linspace(1.0, 0.0, 12),  # true class 5: the 6th, out
            [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0, 0, 0, 0, 0],  # true class 6: tied with the 5th, counted in
        ]
    )
    assert top_k_accuracy(probs, np.array([0, 4, 5, 6]), k=5) == 0.75
    assert top_k_accuracy(probs, np.array([0, 4, 5, 6]), k=1) == 0.25
    assert "test_top5_accuracy" not in extra_metrics(probs[:, :9], np.zeros(4, dtype=int))  # 9 classes: not asked


def test_ece_by_hand():
    # confidence 0.95 (bin 14 of 15): one right, one wrong, gap 0.45; 0.65 (bin 9): both right, gap 0.35
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.65, 0.35]])
    assert expected_calibration_error(probs, np.array([0, 1, 1, 0])) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    # 10 images at 0.7, 7 right: calibrated; at 1.0 (the last bin's right edge) all right: calibrated too
    calibrated = np.array([[0.7, 0.3]] * 10 + [[1.0, 0.0]] * 5)
    assert expected_calibration_error(calibrated, np.array([0] * 7 + [1] * 3 + [0] * 5)) == pytest.approx(0.0)


def test_ece_matches_the_standard_definition_on_random_probabilities():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(7, 0.3), size=2000)
    labels = rng.integers(0, 7, size=2000)
    confidence, right = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, 16)
    expected = sum(
        in_bin.mean() * abs(right[in_bin].mean() - confidence[in_bin].mean())
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        if (in_bin := (confidence > lo) & (confidence <= hi)).any()
    )
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_long_class_names_are_cut_in_the_middle():
    assert short("shirt") == "shirt"
    cut = short("a rather long class name number 12")
    assert len(cut) == diagnostics.NAME_WIDTH and cut.startswith("a rather") and cut.endswith("number 12")
    assert short("a rather long class name number 13") != cut


def gallery_case(n: int, rgb: bool = False):
    rng = np.random.default_rng(n)
    labels = np.repeat(np.arange(n), max(5, 500 // n))
    logits = rng.normal(size=(len(labels), n))
    logits[np.arange(len(labels)), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3) if rgb else (len(labels), 28, 28), dtype=np.uint8)
    names = tuple(f"a class name far too long for a tile, number {i}" for i in range(n))
    return images, probs, labels, names


@pytest.mark.parametrize("n, rgb", [(10, False), (100, True)])
def test_the_mistakes_gallery_shows_the_most_confident_mistakes_first(n, rgb):
    images, probs, labels, names = gallery_case(n, rgb)
    shown = confident_mistakes(probs, labels)
    confidence = probs[shown].max(1)
    assert len(shown) == 36 and (probs[shown].argmax(1) != labels[shown]).all()
    assert (np.diff(confidence) <= 0).all()
    wrong = probs.argmax(1) != labels
    assert confidence[-1] >= probs[wrong].max(1)[np.argsort(-probs[wrong].max(1))][35]
    figure = mistakes_figure(images, probs, labels, names, "test split")
    tiles = [ax for ax in figure.axes if ax.images]
    assert len(tiles) == 36 and tiles[0].images[0].get_array().shape == images.shape[1:]
    first = tiles[0].get_title()
    i, predicted = shown[0], probs[shown[0]].argmax()
    assert first == f"#{i}  true: {short(names[labels[i]], 22)}\ntaken for: {short(names[predicted], 22)}\n" \
                    f"p = {probs[i, predicted]:.3f}"  # fmt: skip
    assert max(len(line) for ax in tiles for line in ax.get_title().splitlines()) <= 34  # fits a 2.4-inch tile
    assert png_size(figure) == (1440, 1720)  # the same at 10 and at 100 classes
    assert f"the 36 most confident of {wrong.sum()} mistakes on {len(labels)} test images" in " ".join(
        figure.get_suptitle().split()
    )
    plt.close(figure)


def test_a_gallery_of_a_few_mistakes_or_none():
    images, probs, labels, names = gallery_case(10)
    right = probs.argmax(1) == labels
    few = np.nonzero(~right)[0][:3]
    keep = np.concatenate([np.nonzero(right)[0], few])
    figure = mistakes_figure(images[keep], probs[keep], labels[keep], names, "test split")
    assert len([ax for ax in figure.axes if ax.images]) == 3
    assert " ".join(figure.get_suptitle().split()).endswith(
        f"all 3 mistakes, most confident first, on {len(keep)} test images"
    )
    plt.close(figure)
    one = np.concatenate([np.nonzero(right)[0], few[:1]])
    uri = "models:/m-6c72eaedb15f4129b6bd2ad1d1e73c82"  # a long title over one tile: wrapped, not cut off
    figure = mistakes_figure(images[one], probs[one], labels[one], names, f"test split: {uri}")
    assert png_size(figure)[0] == 720 and max(len(line) for line in figure.get_suptitle().splitlines()) <= 64
    assert " ".join(figure.get_suptitle().split()).endswith(f"{uri}: the one mistake on {len(one)} test images")
    plt.close(figure)
    figure = mistakes_figure(images[right], probs[right], labels[right], names, "test split")
    assert "no mistakes on" in figure.axes[0].texts[0].get_text()
    plt.close(figure)


def test_the_reliability_diagram_draws_each_bins_accuracy():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.65, 0.35]])
    figure = reliability_figure(probs, np.array([0, 1, 1, 0]), "test split", 0.4)
    top = figure.axes[0]
    accuracy_bars = top.containers[0]
    assert [round(bar.get_height(), 6) for bar in accuracy_bars] == [1.0, 0.5]  # bins 9 and 14
    assert "expected calibration error 0.4000" in top.get_title()
    assert png_size(figure) == (650, 750)
    plt.close(figure)


def png_size(figure) -> tuple[int, int]:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue())).size


def test_the_litert_model_is_evaluated_beside_the_keras_one_without_clobbering_it(
    trained_and_exported, tiny_data, capsys
):
    """As the main job does: both in one run, the LiteRT model's metrics prefixed litert_ and linked to it, its
    artifacts under evaluation/litert/; the registry gate still reads export's score."""
    result, exported, _ = trained_and_exported
    litert = exported.litert
    with mlflow.start_run() as run:
        keras_ev = evaluate(result.model.uri, data_dir=str(tiny_data))
        capsys.readouterr()
        litert_ev = evaluate(litert.uri, data_dir=str(tiny_data), prefix="litert_", quiet=True)
        assert capsys.readouterr().out == ""  # the main job's report says its accuracy
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert metrics["test_accuracy"] == keras_ev.metrics["test_accuracy"]
    assert metrics["litert_test_accuracy"] == pytest.approx(exported.results[0].test_accuracy)
    assert {"litert_test_ece", "litert_test_top5_accuracy", "litert_test_f1_trouser"} <= set(metrics)
    assert litert_ev.metrics["test_ece"] == pytest.approx(keras_ev.metrics["test_ece"], abs=1e-3)
    linked = {m.key for m in mlflow.get_logged_model(litert.model_id).metrics}
    assert {"litert_test_accuracy", "litert_test_ece", "tflite_float32_test_accuracy"} <= linked
    assert "test_accuracy" not in linked
    listed = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation/litert")}
    assert listed == {f"evaluation/litert/{name}" for name in EVALUATION_FILES}
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["evaluated_model_uri"] == result.model.uri and tags["litert_evaluated_model_uri"] == litert.uri
    decision = promote(f"models:/{litert.registered_name}/{litert.version}")
    assert decision.test_accuracy == exported.results[0].test_accuracy


def test_evaluate_scores_a_litert_model_uri_alone(trained_and_exported, tiny_data, capsys):
    """`tftrain evaluate --model-uri <a LiteRT model>`: the same diagnostics, the plain metric names."""
    _, exported, _ = trained_and_exported
    uri = f"models:/{exported.litert.registered_name}/{exported.litert.version}"
    ev = evaluate(uri, data_dir=str(tiny_data))
    assert "per class, worst F1 first:" in capsys.readouterr().out
    run_id = mlflow.last_active_run().info.run_id
    assert mlflow.get_run(run_id).data.metrics["test_top5_accuracy"] == ev.metrics["test_top5_accuracy"]
    png = artifact(run_id, "evaluation/mistakes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
