"""`tftrain bench`'s image-folder figures: Fashion-MNIST written out as 70,000 PNG files in class folders
(FOLDER/train/<class>/ and FOLDER/test/<class>/), trained on as a user's folder would be.

Each step runs in a process of its own (`python -m tftrain.bench.folders STEP FOLDER CACHE EPOCHS OUT.json`), so
its peak memory is its own, in this order: Keras' `image_dataset_from_directory(...).cache().prefetch()` under
the careful user's `fit`; tftrain's `train` on the folder with an empty image cache (it decodes); the same again
(the cache holds every image: nothing to decode); and tftrain's `train` on the IDX files, the same images
without a folder. All tftrain steps run the defaults (the MLP), and each step's first pass over the images is
timed apart from its training epochs.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

STEPS = ("keras-loader", "tftrain-first", "tftrain-second", "tftrain-idx")


def write_pngs(data_dir: str, folder: Path) -> int:
    """Fashion-MNIST's 60,000 training and 10,000 test images as PNG files, one folder per class; their count."""
    from PIL import Image

    from tftrain.data.datasets import load_dataset

    data = load_dataset("fashion_mnist", data_dir)
    classes = [name.replace("/", "-") for name in data.class_names]  # "T-shirt/top" is no folder name
    count = 0
    for split, images, labels in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for name in classes:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(folder / split / classes[label] / f"{i:05d}.png")
            count += 1
    return count


def _epoch_clock():
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    return Clock()


def _keras_loader(folder: Path, epochs: int) -> dict:
    """What a Keras user writes for a folder: the loader with its 80/20 split, cached, prefetched, the write-up's
    MLP (scaled to 0..1 in the model), float32. The first pass over the training images decodes them."""
    import keras
    import tensorflow as tf

    from tftrain.bench.setups import USER_BATCH

    keras.utils.set_random_seed(42)
    started = time.perf_counter()
    train, val = keras.utils.image_dataset_from_directory(
        folder / "train", color_mode="grayscale", image_size=(28, 28), batch_size=USER_BATCH, seed=42,
        validation_split=0.2, subset="both", verbose=False,
    )  # fmt: skip
    listed = time.perf_counter() - started
    train, val = train.cache().prefetch(tf.data.AUTOTUNE), val.cache().prefetch(tf.data.AUTOTUNE)
    started = time.perf_counter()
    examples = sum(int(batch.shape[0]) for batch, _ in train) + sum(int(batch.shape[0]) for batch, _ in val)
    decoded = time.perf_counter() - started
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(10, activation="softmax")])  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    clock = _epoch_clock()
    model.fit(train, validation_data=val, epochs=epochs, callbacks=[clock], verbose=0)
    return {"load_seconds": listed + decoded, "decoded": examples, "epochs": clock.seconds}


def _tftrain(folder: Path | None, epochs: int, data_dir: str) -> dict:
    """tftrain's `train` with its defaults on the folder (or, with None, the IDX files), into a throwaway store;
    loading the task (listing, decoding or reading the cache, splitting) is timed apart from training."""
    import mlflow

    from tftrain.config import TrainConfig
    from tftrain.data.folders import load_folder
    from tftrain.training.runtime import build_runtime
    from tftrain.training.task import resolve_task
    from tftrain.training.trainer import train

    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    dataset = {"dataset": str(folder)} if folder else {"data_dir": data_dir}
    cfg = TrainConfig.from_flat(epochs=epochs, output_dir="outputs", model_name="bench", resume="never", **dataset)
    rt = build_runtime(cfg)
    load_seconds, decoded = 0.0, 0
    if folder:  # what train's task loading does first for a folder, timed and asked whether it decoded
        started = time.perf_counter()
        loaded = load_folder(
            str(folder), None, None, cfg.data.test_split, cfg.data.validation_split, cfg.data.bad_images
        )
        load_seconds = time.perf_counter() - started
        decoded = 0 if loaded.from_cache else sum(len(y) for _, y in (loaded.train, loaded.validation, loaded.test))
    task = resolve_task(cfg)  # for a folder, from the cache just written (not timed)
    clock = _epoch_clock()
    train(cfg, task, rt, extra_callbacks=(clock,))
    return {"load_seconds": load_seconds, "decoded": decoded, "epochs": clock.seconds}


def measure(step: str, folder: Path, cache: Path, epochs: int, data_dir: str) -> dict:
    import os

    os.environ["TFTRAIN_CACHE_DIR"] = str(cache)
    if step == "keras-loader":
        out = _keras_loader(folder, epochs)
    else:
        out = _tftrain(None if step == "tftrain-idx" else folder, epochs, data_dir)
    warm = out["epochs"][1:] or out["epochs"]
    return {"step": step, **out, "first_epoch_seconds": out["epochs"][0], "warm_seconds": statistics.median(warm),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def table(rows: list[dict], images: int) -> str:
    lines = [
        f"Image folder: Fashion-MNIST as {images:,} PNG files in class folders (train/ and test/); the tftrain rows "
        "run the defaults (the MLP)",
        "",
        "| step | images decoded | load s (listing, decoding, split) | first epoch s | load + first epoch s "
        "| us per image loaded | warm s/epoch | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        decoded = "-" if r["step"] == "tftrain-idx" else f"{r['decoded']:,}"
        lines.append(
            f"| {r['step']} | {decoded} | {r['load_seconds']:.1f} | {r['first_epoch_seconds']:.2f} "
            f"| {r['load_seconds'] + r['first_epoch_seconds']:.1f} | {_per_image(r, images) * 1e6:.0f} "
            f"| {r['warm_seconds']:.3f} | {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


def _per_image(row: dict, images: int) -> float:
    """Load seconds per image: Keras' loader reads the training folder only, tftrain all of it."""
    return row["load_seconds"] / (row["decoded"] or images)


def verdicts(rows: list[dict], images: int) -> str:
    row = {r["step"]: r for r in rows}
    lines = []
    if {"keras-loader", "tftrain-first"} <= row.keys():
        ratio = _per_image(row["keras-loader"], images) / _per_image(row["tftrain-first"], images)
        lines.append(f"- decoding the folder, Keras' loader's seconds per image over tftrain's: {ratio:.2f}x (goal >= 2x): "
                     f"{'met' if ratio >= 2 else 'missed'}")  # fmt: skip
    if {"tftrain-first", "tftrain-idx"} <= row.keys():
        excess = row["tftrain-first"]["warm_seconds"] / row["tftrain-idx"]["warm_seconds"] - 1
        lines.append(f"- later epochs on the folder against the IDX files: {100 * excess:+.0f}% (goal <= +10%): "
                     f"{'met' if excess <= 0.10 else 'missed'}")  # fmt: skip
    if "tftrain-second" in row:
        second = row["tftrain-second"]
        met = second["decoded"] == 0
        lines.append(f"- a second run on the same folder decoded {second['decoded']:,} images, loaded in "
                     f"{second['load_seconds']:.1f} s (goal: nothing decoded): {'met' if met else 'missed'}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    step, folder, cache, epochs, data_dir, out = sys.argv[1:]
    figures = measure(step, Path(folder), Path(cache), int(epochs), "" if data_dir == "-" else data_dir)
    Path(out).write_text(json.dumps(figures, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
