"""Speed and accuracy of tftrain's default training against the write-up's own recipe, in one process, on the
same Fashion-MNIST data. Prints a Markdown table.

    .venv/bin/python scripts/bench.py            # MLP: the write-up's recipe vs tftrain's defaults
    .venv/bin/python scripts/bench.py --repeat 2

The recipe is the write-up's first listing, verbatim but for the data source: model.fit on numpy arrays scaled
to 0..1, batch 32, validation_split=0.2, 5 epochs. tftrain's run is `tftrain train` on its defaults (tf.data,
batch 128, all callbacks, MLflow tracking into a throwaway sqlite store). Warm s/epoch leaves out epoch 1,
which includes tracing the graph.
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


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def recipe(data, epochs: int) -> dict:
    """The write-up's model.fit listing."""
    keras.utils.set_random_seed(42)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimes()
    start = time.perf_counter()
    model.fit(
        x_train,
        data.y_train,
        epochs=epochs,
        batch_size=32,
        validation_split=0.2,
        callbacks=[timer],
        verbose=0,
    )
    total = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, data.y_test, verbose=0)
    return row("write-up recipe: fit on numpy, batch 32", timer.times, total, accuracy, 48000)


def ours(data, epochs: int | None = None) -> dict:
    """tftrain's defaults (or with a different epoch budget), tracked in a throwaway MLflow store."""
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        cfg = TrainConfig(output_dir=folder, model_name="bench", run_name="bench", epochs=epochs or TrainConfig.epochs)
        start = time.perf_counter()
        result = train(cfg)
        total = time.perf_counter() - start
        seconds = [m.value for m in mlflow.MlflowClient().get_metric_history(result.run_id, "epoch_seconds")]
        model = mlflow.keras.load_model(result.model.uri)
        accuracy = float((model.predict(data.x_test.astype(np.float32), verbose=0).argmax(1) == data.y_test).mean())
        mlflow.set_tracking_uri(None)
    label = f"tftrain {'defaults' if epochs is None else f'defaults but {epochs} epochs'}: tf.data, batch {cfg.batch_size}, callbacks, MLflow"
    return row(label, seconds, total, accuracy, 48000)


def row(label: str, epoch_times: list[float], total: float, accuracy: float, samples: int) -> dict:
    warm = statistics.median(epoch_times[1:]) if len(epoch_times) > 1 else epoch_times[0]
    return {
        "label": label,
        "epochs": len(epoch_times),
        "warm": warm,
        "rate": samples / warm,
        "total": total,
        "acc": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe-epochs", type=int, default=5, help="epochs for the write-up's recipe (its own: 5)")
    parser.add_argument("--repeat", type=int, default=1, help="run each configuration this many times")
    args = parser.parse_args()
    data = load_dataset("fashion_mnist")
    rows = []
    for _ in range(args.repeat):  # each repeat measures its own baseline: the ratio is taken within one repeat
        base = recipe(data, args.recipe_epochs)
        rows += [base, ours(data, epochs=args.recipe_epochs), ours(data)]
        for r in rows[-3:]:
            r["speedup"] = base["warm"] / r["warm"]
    print(f"\nFashion-MNIST, MLP; {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}")
    print("| configuration | epochs | warm s/epoch | samples/s | speed-up | train wall s | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['label']} | {r['epochs']} | {r['warm']:.2f} | {r['rate']:,.0f} | {r['speedup']:.1f}x "
            f"| {r['total']:.1f} | {r['acc']:.4f} |"
        )


if __name__ == "__main__":
    main()
