"""What an evaluation shows beyond its scores: the per-class table (worst F1 first), the classes most confused with
each other, top-k accuracy and the expected calibration error, as numbers and as the text `evaluate` prints. The
pictures (reliability diagram, most confident mistakes) are in ship/figures.py."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

TOP_K = 5  # top-k accuracy's k, reported from TOP_K_FROM classes on (with fewer, top-5 is nearly always 1)
TOP_K_FROM = 10
CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 (On Calibration of Modern Neural Networks)
TABLE_ROWS = 10  # the per-class table prints this many worst classes; all are in the artifact
CONFUSED_PAIRS = 5
NAME_WIDTH = 24  # characters of a class name in printed tables and figure titles; longer names are cut


@dataclass(frozen=True)
class ClassRow:
    name: str
    precision: float
    recall: float
    f1: float
    support: int  # test images of the class


@dataclass(frozen=True)
class Confusion:
    true: str
    predicted: str
    count: int
    support: int  # test images of the true class


def short(name: str, width: int = NAME_WIDTH) -> str:
    """`name` cut to `width` characters in the middle, the cut shown by "…": the start and the end both stay, so
    that names differing only at one end ("... sedan 2012", "... coupe 2012") stay apart."""
    if len(name) <= width:
        return name
    tail = (width - 1) // 2
    return name[: width - 1 - tail] + "…" + name[len(name) - tail :]


def class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each class's precision, recall and F1 from the confusion matrix (rows: true class); 0, not NaN, for a class
    never predicted or never present."""
    n = len(confusion)
    hits = np.diag(confusion).astype(float)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    return precision, recall, f1


def per_class(confusion: np.ndarray, class_names: tuple[str, ...]) -> list[ClassRow]:
    """Precision, recall, F1 and support of each class, worst F1 first (ties: lower recall, then more support, then
    the class order), so that a class the model never gets right leads the table."""
    precision, recall, f1 = class_scores(confusion)
    support = confusion.sum(axis=1)
    order = sorted(range(len(f1)), key=lambda i: (f1[i], recall[i], -support[i], i))
    return [
        ClassRow(class_names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i])) for i in order
    ]


def per_class_table(rows: list[ClassRow], artifact: str, limit: int = TABLE_ROWS) -> str:
    """The worst `limit` rows as aligned text; a last line says how many more the artifact `artifact` holds."""
    width = max([len("class"), *(len(short(r.name)) for r in rows[:limit])])
    lines = [f"{'class':<{width}}  {'precision':>9}  {'recall':>6}  {'F1':>6}  {'support':>7}"]
    for r in rows[:limit]:
        lines.append(f"{short(r.name):<{width}}  {r.precision:>9.3f}  {r.recall:>6.3f}  {r.f1:>6.3f}  {r.support:>7d}")
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more classes in {artifact}")
    return "\n".join(lines)


def per_class_csv(rows: list[ClassRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("class", "precision", "recall", "f1", "support"))
    writer.writerows((r.name, f"{r.precision:.6f}", f"{r.recall:.6f}", f"{r.f1:.6f}", r.support) for r in rows)
    return out.getvalue()


def most_confused(confusion: np.ndarray, class_names: tuple[str, ...], top: int = CONFUSED_PAIRS) -> list[Confusion]:
    """The `top` largest off-diagonal cells (a true class taken for another), largest count first (ties: the larger
    share of the true class, then the class order); cells of no image are left out."""
    support = confusion.sum(axis=1)
    cells = [(i, j) for i, j in zip(*np.nonzero(confusion), strict=True) if i != j]
    cells.sort(key=lambda c: (-confusion[c], -confusion[c] / support[c[0]], c))
    return [Confusion(class_names[i], class_names[j], int(confusion[i, j]), int(support[i])) for i, j in cells[:top]]


def confused_text(pairs: list[Confusion]) -> str:
    if not pairs:
        return "most confused: none (every test image is classified right)"
    lines = ["most confused (true class taken for another):"]
    for p in pairs:
        share = p.count / p.support
        lines.append(f"  {short(p.true)} taken for {short(p.predicted)}: {p.count} of {p.support} ({share:.0%})")
    return "\n".join(lines)


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> float:
    """The share of images whose true class is among the `k` most probable. A class tied with the k-th is counted
    in, as tf.math.in_top_k does: the true class is in when fewer than k classes are strictly more probable."""
    true = probs[np.arange(len(labels)), labels]
    above = (probs > true[:, None]).sum(axis=1)
    return float((above < k).mean())


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS):
    """Per equal-width bin of confidence (the top probability) over (0, 1]: (count, mean confidence, accuracy),
    bin b holding confidences in (b/bins, (b+1)/bins]; empty bins have mean confidence and accuracy 0."""
    confidence = probs.max(axis=1).astype(np.float64)
    right = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=confidence, minlength=bins), np.bincount(index, weights=right, minlength=bins)
    mean_confidence, accuracy = (np.divide(s, count, out=np.zeros(bins), where=count > 0) for s in sums)
    return count, mean_confidence, accuracy


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE: over equal-width confidence bins, the gap |accuracy - mean confidence| weighted by the bin's share of the
    images. 0: the top probability is as often right as it says; 0.1: it is off by 10 points on average."""
    count, mean_confidence, accuracy = calibration_bins(probs, labels, bins)
    return float((count / count.sum() * np.abs(accuracy - mean_confidence)).sum())


def extra_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """test_ece always; test_top5_accuracy when there are TOP_K_FROM classes or more."""
    metrics = {"test_ece": expected_calibration_error(probs, labels)}
    if probs.shape[1] >= TOP_K_FROM:
        metrics[f"test_top{TOP_K}_accuracy"] = top_k_accuracy(probs, labels, TOP_K)
    return metrics
