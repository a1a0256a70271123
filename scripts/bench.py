"""Speed and accuracy of tftrain against the write-up's own recipes, in one process, on the same real
Fashion-MNIST. Prints Markdown tables.

    .venv/bin/python scripts/bench.py --repeat 2     # MLP: the write-up's recipe vs tftrain's defaults
    .venv/bin/python scripts/bench.py --grid         # engine x precision x model, 3 epochs each

The recipes are the write-up's listings, verbatim but for the data source and a validation_split of 0.2 on both
(so every configuration trains on the same 48,000 images and validates on 12,000): the MLP with `model.fit` on
numpy arrays scaled to 0..1, batch 32, 5 epochs; the CNN (its multi-GPU listing) with batch 64, 5 epochs.
tftrain runs `train` (tf.data, all callbacks, MLflow tracking into a throwaway sqlite store). Warm s/epoch is the
median epoch after the first (which traces the graphs); speed-up is the recipe's warm s/epoch over the row's,
within the same repeat; train wall s is everything `train` does, data loading and model registration included.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import keras
import mlflow
import numpy as np
import tensorflow as tf

from tftrain.config import TrainConfig
from tftrain.data import load_dataset
from tftrain.train import train

TRAIN_EXAMPLES = 48_000  # 80% of the 60,000 training images


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _recipe_model(name: str) -> tuple[keras.Model, object]:
    if name == "mlp":  # the write-up's first listing
        layers = [keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.2),
                  keras.layers.Dense(10, activation="softmax")]  # fmt: skip
        return keras.Sequential([keras.Input((28, 28)), *layers]), "sparse_categorical_crossentropy"
    layers = [keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]  # fmt: skip
    return keras.Sequential([keras.Input((28, 28, 1)), *layers]), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True
    )


def recipe(data, name: str, epochs: int) -> dict:
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(42)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    if name == "cnn":
        x_train, x_test = x_train[..., None].astype("float32"), x_test[..., None].astype("float32")
    model, loss = _recipe_model(name)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    batch = 32 if name == "mlp" else 64
    timer = EpochTimes()
    start = time.perf_counter()
    model.fit(
        x_train, data.y_train, epochs=epochs, batch_size=batch, validation_split=0.2, callbacks=[timer], verbose=0
    )
    total = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, data.y_test, verbose=0)
    return row(f"write-up recipe: {name}, fit on numpy, batch {batch}", timer.times, total, accuracy)


def ours(data, label: str, **settings) -> dict:
    """tftrain's `train` with these settings over its defaults, tracked in a throwaway MLflow store."""
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        cfg = TrainConfig(output_dir=folder, model_name="bench", run_name="bench", **settings)
        start = time.perf_counter()
        result = train(cfg)
        total = time.perf_counter() - start
        seconds = [m.value for m in mlflow.MlflowClient().get_metric_history(result.run_id, "epoch_seconds")]
        probs = result.keras_model.predict(data.x_test.astype(np.float32), verbose=0)
        accuracy = float((probs.argmax(1) == data.y_test).mean())
        mlflow.set_tracking_uri(None)
    return row(label, seconds, total, accuracy)


def row(label: str, epoch_times: list[float], total: float, accuracy: float) -> dict:
    warm = statistics.median(epoch_times[1:]) if len(epoch_times) > 1 else epoch_times[0]
    return {"label": label, "epochs": len(epoch_times), "warm": warm, "total": total, "acc": accuracy}


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | epochs | warm s/epoch | samples/s | speed-up | train wall s | test accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['epochs']} | {r['warm']:.2f} | {TRAIN_EXAMPLES / r['warm']:,.0f} "
            f"| {r['speedup']:.1f}x | {r['total']:.1f} | {r['acc']:.4f} |"
        )
    return "\n".join(lines)


def with_speedup(base: dict, rows: list[dict]) -> list[dict]:
    for r in rows:
        r["speedup"] = base["warm"] / r["warm"]
    return rows


def headline(data, repeat: int) -> list[dict]:
    rows = []
    for _ in range(repeat):
        base = recipe(data, "mlp", 5)
        rows += with_speedup(
            base,
            [
                base,
                ours(data, "tftrain defaults but 5 epochs: tf.data, batch 128, callbacks, MLflow", epochs=5),
                ours(data, "tftrain defaults: tf.data, batch 128, callbacks, MLflow"),
            ],
        )
    return rows


def grid(data, epochs: int, precisions: list[str]) -> list[dict]:
    rows = []
    for model in ("mlp", "cnn"):
        base = recipe(data, model, epochs)
        runs = [
            ours(
                data,
                f"tftrain {model}, {engine}, {precision}",
                model=model,
                engine=engine,
                precision=precision,
                epochs=epochs,
                early_stopping=False,
            )  # fmt: skip
            for engine in ("fit", "custom")
            for precision in precisions
        ]
        rows += with_speedup(base, [base, *runs])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="headline: run each configuration this many times")
    parser.add_argument("--grid", action="store_true", help="engine x precision x model instead of the headline")
    parser.add_argument("--epochs", type=int, default=3, help="grid: epochs per configuration")
    parser.add_argument(
        "--precisions", default="float32,mixed_bfloat16,mixed_float16", help="grid: comma-separated precisions"
    )
    args = parser.parse_args()
    data = load_dataset("fashion_mnist")
    rows = grid(data, args.epochs, args.precisions.split(",")) if args.grid else headline(data, args.repeat)
    print(f"\nFashion-MNIST; {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}")
    print(table(rows))


if __name__ == "__main__":
    main()
