"""The `evaluate` step: score any MLflow model URI on the test split; log metrics (linked to the model), the
confusion matrix, the per-class table, a reliability diagram and the most confident mistakes; print the summary,
the worst classes and the classes most confused with each other."""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tftrain.data.datasets import TaskData, load_task_data  # noqa: E402
from tftrain.data.fingerprint import location, split_digests  # noqa: E402
from tftrain.errors import UserError  # noqa: E402
from tftrain.ship import diagnostics  # noqa: E402
from tftrain.ship.figures import mistakes_figure, reliability_figure  # noqa: E402
from tftrain.ship.predict import answers  # noqa: E402
from tftrain.tracking import lineage, logged_models, runs  # noqa: E402
from tftrain.values import resolved_dataset  # noqa: E402

log = logging.getLogger(__name__)

CELL_NUMBERS_UP_TO = 20  # classes; with more, the counts no longer fit their cells
FIGURE_MAX_INCHES = 30.0  # the confusion figure's height (3000 pixels at 100 dpi), whatever the class count


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    confusion: np.ndarray
    class_names: tuple[str, ...]


def slug(name: str) -> str:
    """A class name as metric keys spell it: lower case, runs of anything but letters and digits as one "_"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def metric_names(class_names: tuple[str, ...] | list[str]) -> list[str]:
    """Each class's part of its metric keys (test_f1_<name>): its slug, unless two classes share a slug ("a b",
    "a-b") or it has none ("", "***"); then "<slug or 'class'>__<class index>". A slug never holds "__", so these
    can collide neither with a plain slug nor with each other."""
    slugs = [slug(name) for name in class_names]
    counts = Counter(slugs)
    return [s if s and counts[s] == 1 else f"{s or 'class'}__{i}" for i, s in enumerate(slugs)]


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
    precision, recall, f1 = diagnostics.class_scores(confusion)
    for i, name in enumerate(metric_names(class_names)):
        metrics[f"test_precision_{name}"] = float(precision[i])
        metrics[f"test_recall_{name}"] = float(recall[i])
        metrics[f"test_f1_{name}"] = float(f1[i])
    metrics["test_macro_f1"] = float(f1.mean())
    return Evaluation(metrics, confusion, class_names)


def confusion_figure(ev: Evaluation, title: str):
    """The confusion matrix coloured by each true class's share (row-normalised, so a small class shows as
    clearly as a big one), with the counts written in the cells when there are few classes. The figure grows
    with the class count up to FIGURE_MAX_INCHES; tick labels shrink to fit their rows."""
    n = len(ev.class_names)
    side = min(max(7.0, 0.2 * n + 4), FIGURE_MAX_INCHES)  # inches; 10 classes keep the 8x7 figure of old
    rows = ev.confusion.sum(axis=1, keepdims=True)
    shares = np.divide(ev.confusion, rows, out=np.zeros(ev.confusion.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the true class")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    # about half a row's height (72 points an inch) once there are too many classes for 8-point labels
    few = n <= CELL_NUMBERS_UP_TO
    fontsize = 8.0 if few else min(6.0, max(2.0, 0.5 * 72 * side / n))
    ax.set_xticklabels(ev.class_names, rotation=45 if few else 90, ha="right" if few else "center", fontsize=fontsize)
    ax.set_yticklabels(ev.class_names, fontsize=fontsize)
    if few:
        for i in range(n):
            for j in range(n):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(ev.confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    return fig


def predict_probabilities(model_uri: str, images: np.ndarray) -> np.ndarray:
    model = logged_models.load_pyfunc(model_uri)
    keras.config.disable_interactive_logging()  # no progress bar per predict call of a stock Keras pyfunc
    try:
        rows = answers(model, images)
    finally:
        keras.config.enable_interactive_logging()
    return np.asarray([row["probabilities"] for row in rows], dtype=np.float32)


def summary(ev: Evaluation) -> str:
    m = ev.metrics
    f1 = [m[f"test_f1_{name}"] for name in metric_names(ev.class_names)]
    worst = int(np.argmin(f1))
    top_k = f"top-{diagnostics.TOP_K} {m[key]:.4f}  " if (key := f"test_top{diagnostics.TOP_K}_accuracy") in m else ""
    ece = f"ECE {m['test_ece']:.4f}  " if "test_ece" in m else ""
    return (
        f"test accuracy {m['test_accuracy']:.4f}  {top_k}loss {m['test_loss']:.4f}  "
        f"macro F1 {m['test_macro_f1']:.4f}  {ece}(weakest class: {ev.class_names[worst]}, F1 {f1[worst]:.4f})"
    )


def model_data(ref: logged_models.LoggedModel, dataset: str = "", data_dir: str = "") -> TaskData:
    """The data to score the model `ref` on: `dataset` (empty: the one it trained on, with the same split
    settings, as its metadata says), resized and converted to the images the model takes."""
    trained = ref.training_data or {}
    if not dataset and not trained.get("dataset"):
        raise UserError(
            f"model_uri {ref.uri!r} does not say which data it trained on (a model trained on arrays from Python, "
            "or logged by an older tftrain); pass dataset=NAME_OR_FOLDER (and data_dir) to score it"
        )
    shape = logged_models.image_shape(ref)
    same = not dataset and not data_dir
    load = functools.partial(
        load_task_data, dataset or trained["dataset"], data_dir or (trained.get("data_dir", "") if not dataset else ""),
        test_split=float(trained.get("test_split", 0.1)), validation_split=float(trained.get("validation_split", 0.2)),
        bad_images=trained.get("bad_images", "fail"), in_memory_mb=trained.get("in_memory_mb"),
    )  # fmt: skip
    if same and "image_size" in trained:  # as training asked for it: a folder's decoded images are in the cache
        sides = tuple(trained["auto_sides"]) if trained.get("auto_sides") else None
        data = load(image_size=trained["image_size"], channels=trained["channels"], auto_sides=sides)
        if data.input_shape == tuple(shape):  # else the folder changed since: resized to the model's images
            return data
    return load(image_size=tuple(shape[:2]), channels=shape[2] if len(shape) == 3 else 1)


def own_test_split(ref: logged_models.LoggedModel, dataset: str, data_dir: str = "") -> bool:
    """Whether `dataset` and `data_dir` (empty: the model's own) are the ones the model trained on, so that the
    test split is the model's held-out data: only a score there is linked to the model, for the registry gate."""
    trained = ref.training_data or {}
    if not trained.get("dataset"):  # arrays from Python: the caller's `data` is the model's own, unless named
        return not dataset and not data_dir
    same_data = not dataset or resolved_dataset(dataset) == trained["dataset"]
    trained_dir = trained.get("data_dir", "")
    same_dir = not data_dir or (bool(trained_dir) and Path(data_dir).resolve() == Path(trained_dir))
    return same_data and same_dir


def check_classes(ref: logged_models.LoggedModel, answered: tuple[str, ...] | int, data: TaskData) -> None:
    """The model answers the dataset's classes (`answered`: its class names, or for a model logged without them,
    how many it answers), else scores would compare class indexes of two different tasks."""
    if answered == data.class_names or answered == len(data.class_names):
        return

    def said(names):
        return f"{len(names)} classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"

    model = said(answered) if isinstance(answered, tuple) else f"{answered} classes"
    raise UserError(
        f"model_uri {ref.uri!r} answers {model}; dataset {data.name} has {said(data.class_names)}; allowed: a "
        "dataset of the model's classes, in the same order"
    )


def log_diagnostics(ev: Evaluation, probs: np.ndarray, data: TaskData, title: str, folder: str) -> str:
    """The per-class table (CSV), the reliability diagram and the mistakes gallery under `folder`; returns the
    printed part: the worst classes and the most confused pairs."""
    x_test, y_test = data.test
    labels = y_test.astype(np.int64)
    rows = diagnostics.per_class(ev.confusion, ev.class_names)
    runs.log_text(diagnostics.per_class_csv(rows), f"{folder}/per_class.csv")
    runs.log_figure(reliability_figure(probs, labels, title, ev.metrics["test_ece"]), f"{folder}/reliability.png")
    runs.log_figure(mistakes_figure(x_test, probs, labels, ev.class_names, title), f"{folder}/mistakes.png")
    pairs = diagnostics.most_confused(ev.confusion, ev.class_names)
    table = diagnostics.per_class_table(rows, f"{folder}/per_class.csv")
    return f"per class, worst F1 first:\n{table}\n{diagnostics.confused_text(pairs)}"


def evaluate(
    model_uri: str,
    dataset: str = "",
    data_dir: str = "",
    data: TaskData | None = None,
    prefix: str = "",
    quiet: bool = False,
) -> Evaluation:
    """Score `model_uri` on the test split of `dataset` (empty: the one the model was trained on); `data`: the
    task's data already in hand (the main job's). A score on another dataset is logged in the evaluation's run
    but not linked to the model: the registry gate compares models on their own test splits. `prefix`: put before
    the metric and tag keys, and names the artifacts' folder (evaluation/<prefix>/), for a second model evaluated
    in the same run (the main job's LiteRT model: litert_); `quiet`: print nothing (the main job's report says the
    LiteRT model's accuracy)."""
    ref = logged_models.resolve_model(model_uri)
    data = data or model_data(ref, dataset, data_dir)
    check_classes(ref, ref.class_names or len(data.class_names), data)
    own = own_test_split(ref, dataset, data_dir)
    folder = "evaluation" + (f"/{prefix.strip('_')}" if prefix else "")
    with runs.step_run(f"evaluate-{data.name}"):
        x_test, y_test = data.test
        probs = predict_probabilities(model_uri, x_test)
        check_classes(ref, probs.shape[1], data)
        scored = score(probs, y_test.astype(np.int64), data.class_names)
        metrics = {**scored.metrics, **diagnostics.extra_metrics(probs, y_test.astype(np.int64))}
        ev = Evaluation(metrics, scored.confusion, scored.class_names)
        runs.set_tags({f"{prefix}evaluated_model_uri": model_uri, f"{prefix}evaluated_model_run_id": ref.run_id,
                       f"{prefix}evaluated_dataset": data.source})  # fmt: skip
        splits = lineage.split_datasets(data, split_digests(data), location(data))
        lineage.log_evaluation(ref, ev.metrics, own, splits, prefix)
        if not own:
            log.info(f"note: {data.name} is not the dataset {model_uri} trained on: its scores stay in this run, not "
                  "linked to the model, so the registry gate does not compare them")  # fmt: skip
        title = f"{data.name} test split: {model_uri}"
        runs.log_figure(confusion_figure(ev, title), f"{folder}/confusion_matrix.png")
        details = log_diagnostics(ev, probs, data, title, folder)
        runs.log_dict(
            {
                "model_uri": model_uri,
                "metrics": ev.metrics,
                "confusion": ev.confusion.tolist(),
                "classes": list(ev.class_names),
            },
            f"{folder}/report.json",
        )
        plt.close("all")
    if not quiet:
        log.info(f"{summary(ev)}\n{details}")
    return ev
