"""The evaluation's pictures besides the confusion matrix: the reliability diagram (is the model as often right as
its top probability says?) and the gallery of its most confident mistakes (which images, taken for what). Both
keep their size whatever the class count: one bar per confidence bin, one tile per image."""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tftrain.ship.diagnostics import CALIBRATION_BINS, calibration_bins, short  # noqa: E402

GALLERY_TILES = 36  # the most confident mistakes shown, at most: 6 rows of 6
GALLERY_COLUMNS = 6
TILE_INCHES = (2.4, 2.7)  # width, height: the image and a three-line title of 8-point text (names cut to fit)
TILE_NAME_WIDTH = 22  # characters of a class name in a tile's title
TITLE_CHARACTERS = 60  # of 12-point text across the reliability diagram's 6.5 inches


def reliability_figure(probs: np.ndarray, labels: np.ndarray, title: str, ece: float):
    """Accuracy against confidence per equal-width bin of the top probability, against the diagonal a calibrated
    model follows, the gap shaded; below, how many images each bin holds."""
    count, mean_confidence, accuracy = calibration_bins(probs, labels)
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / CALIBRATION_BINS
    filled = count > 0
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.5, 7.5), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(centers[filled], accuracy[filled], width=width, color="tab:blue", edgecolor="black", label="accuracy")
    gap_low = np.minimum(accuracy, mean_confidence)[filled]
    gap = np.abs(accuracy - mean_confidence)[filled]
    top.bar(centers[filled], gap, bottom=gap_low, width=width, color="tab:red", alpha=0.35, edgecolor="tab:red",
            hatch="//", label="gap to the bin's mean confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    wrapped = textwrap.fill(title, TITLE_CHARACTERS)  # a model URI is long: on lines of their own, not cut off
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{wrapped}\nexpected calibration error {ece:.4f}")
    top.legend(loc="upper left", fontsize=9)
    bottom.bar(centers, count / max(count.sum(), 1), width=width, color="tab:gray", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="confidence (top probability)", ylabel="share of images")
    fig.tight_layout()
    return fig


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, limit: int = GALLERY_TILES) -> np.ndarray:
    """Indexes of the wrongly classified images, most confident first (ties: test split order), at most `limit`."""
    predicted = probs.argmax(axis=1)
    wrong = np.nonzero(predicted != labels)[0]
    confidence = probs[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit]


def _show(ax, image: np.ndarray) -> None:
    """An image as the model takes it: uint8 gray (H, W) or (H, W, 1), or RGB (H, W, 3); pixels unsmoothed."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    gray = image.ndim == 2
    ax.imshow(image, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def mistakes_figure(images: np.ndarray, probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
                    title: str):  # fmt: skip
    """The most confident mistakes as a grid of tiles, each titled with its index in the test split, its true
    class and the class it was taken for with that class's probability."""
    shown = confident_mistakes(probs, labels)
    wrong = int((probs.argmax(axis=1) != labels).sum())
    if not len(shown):
        fig, ax = plt.subplots(figsize=(6, 2), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}\nno mistakes on {len(labels)} test images", ha="center", va="center")
        return fig
    columns = min(GALLERY_COLUMNS, len(shown))
    rows = math.ceil(len(shown) / columns)
    width = max(columns, 3) * TILE_INCHES[0]  # room for the title above one or two tiles too
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(width, rows * TILE_INCHES[1] + 1.0),
        dpi=100,
        squeeze=False,
        layout="constrained",  # keeps the two-line suptitle clear of the first row's titles
    )
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown, strict=False):
        predicted = int(probs[i].argmax())
        _show(ax, images[i])
        ax.set_title(
            f"#{i}  true: {short(class_names[labels[i]], TILE_NAME_WIDTH)}\n"
            f"taken for: {short(class_names[predicted], TILE_NAME_WIDTH)}\np = {probs[i, predicted]:.3f}",
            fontsize=8,
            color="darkred",
        )
    if len(shown) < wrong:
        which = f"the {len(shown)} most confident of {wrong} mistakes"
    else:
        which = "the one mistake" if wrong == 1 else f"all {wrong} mistakes, most confident first,"
    # wrapped to the figure's width (about 9 characters of 12-point text an inch): a model URI is long
    fig.suptitle(textwrap.fill(f"{title}: {which} on {len(labels)} test images", int(width * 9)))
    return fig
