"""The `evaluate` step: score any MLflow model URI on the test split; log metrics (linked to the model) and a
confusion-matrix picture."""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tftrain import tracking  # noqa: E402
from tftrain.data import load_dataset  # noqa: E402
from tftrain.predict import answers  # noqa: E402


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    confusion: np.ndarray
    class_names: tuple[str, ...]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def score(probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Evaluation:
    """Cross-entropy, accuracy, per-class precision/recall/F1 and the confusion matrix (rows: true class)."""
    n = len(class_names)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_prob = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    metrics = {
        "test_loss": float(-np.log(true_prob).mean()),
        "test_accuracy": float((predicted == labels).mean()),
    }
    hits = np.diag(confusion).astype(float)
    precision = np.divide(hits, confusion.sum(axis=0), out=np.zeros(n), where=confusion.sum(axis=0) > 0)
    recall = np.divide(hits, confusion.sum(axis=1), out=np.zeros(n), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    for i, name in enumerate(class_names):
        metrics[f"test_precision_{slug(name)}"] = float(precision[i])
        metrics[f"test_recall_{slug(name)}"] = float(recall[i])
        metrics[f"test_f1_{slug(name)}"] = float(f1[i])
    metrics["test_macro_f1"] = float(f1.mean())
    return Evaluation(metrics, confusion, class_names)


def confusion_figure(ev: Evaluation, title: str):
    n = len(ev.class_names)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.imshow(ev.confusion, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(ev.class_names, rotation=45, ha="right")
    ax.set_yticklabels(ev.class_names)
    threshold = ev.confusion.max() / 2
    for i in range(n):
        for j in range(n):
            color = "white" if ev.confusion[i, j] > threshold else "black"
            ax.text(j, i, str(ev.confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig


def predict_probabilities(model_uri: str, images: np.ndarray) -> np.ndarray:
    model = tracking.load_pyfunc(model_uri)
    keras.config.disable_interactive_logging()  # no progress bar per predict call of a stock Keras pyfunc
    try:
        rows = answers(model, images)
    finally:
        keras.config.enable_interactive_logging()
    return np.asarray([row["probabilities"] for row in rows], dtype=np.float32)


def summary(ev: Evaluation) -> str:
    m = ev.metrics
    worst = min(ev.class_names, key=lambda c: m[f"test_f1_{slug(c)}"])
    return (
        f"test accuracy {m['test_accuracy']:.4f}  loss {m['test_loss']:.4f}  macro F1 {m['test_macro_f1']:.4f}  "
        f"(weakest class: {worst}, F1 {m[f'test_f1_{slug(worst)}']:.4f})"
    )


def evaluate(model_uri: str, dataset: str = "", data_dir: str = "") -> Evaluation:
    """Score `model_uri` on the test split of `dataset` (empty: the one the model was trained on)."""
    ref = tracking.resolve_model(model_uri)
    dataset = dataset or tracking.trained_on(ref)
    data = load_dataset(dataset, data_dir)
    with tracking.step_run(f"evaluate-{dataset}"):
        probs = predict_probabilities(model_uri, data.x_test)
        ev = score(probs, data.y_test.astype(np.int64), data.class_names)
        tracking.set_tags({"evaluated_model_uri": model_uri, "evaluated_model_run_id": ref.run_id})
        tracking.log_metrics(ev.metrics, model_id=ref.model_id)
        tracking.log_figure(
            confusion_figure(ev, f"{dataset} test split: {model_uri}"), "evaluation/confusion_matrix.png"
        )
        tracking.log_dict(
            {
                "model_uri": model_uri,
                "metrics": ev.metrics,
                "confusion": ev.confusion.tolist(),
                "classes": list(ev.class_names),
            },
            "evaluation/report.json",
        )
        plt.close("all")
    print(summary(ev))
    return ev
