"""One benchmark configuration, trained in a process of its own: `python -m tftrain.bench.worker NAME DATA_DIR
EPOCHS OUT.json` writes its figures to OUT.json. It runs in a throwaway folder (`tftrain bench` makes one per
worker), which holds its MLflow store, artifacts and checkpoints.

The test set is scored after every epoch for the "time to accuracy" columns, with the clock stopped; nothing
learned or selected ever sees it (early stopping and checkpoints watch the validation split).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from tftrain.bench.setups import BY_NAME, RECIPE_EPOCHS, USER_BATCH, USER_EPOCHS, Setup


def train_flops_per_example(model) -> float:
    """Floating-point operations to train on one example, from the multiply-adds (MACs) of the Dense, Conv2D and
    DepthwiseConv2D layers (a kernel's weights once per output position): 2 per MAC forward, 2 for the weights'
    gradient and 2 for the input's gradient, which the first such layer does not need (its input is the image):
    4 x MACs there, 6 x MACs elsewhere. Batch norms, activations and pooling (a few FLOPs per value) are left out."""
    import math

    import keras

    from tftrain.data.augment import all_layers

    flops, first = 0.0, True
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.Dense):
            macs = math.prod(layer.kernel.shape)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            height, width = layer.output.shape[1:3]  # kernels (kh, kw, in/groups, filters) or (kh, kw, in, mult)
            macs = height * width * math.prod(layer.kernel.shape)
        else:
            continue
        flops += (4.0 if first else 6.0) * macs
        first = False
    return flops


def _clock_callback(x_test, y_test):
    """Times each epoch and the whole fit, keeps each epoch's validation accuracy, and scores the test set after
    each epoch with the clock stopped."""
    import keras
    import numpy as np

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.paused, self.epochs = time.perf_counter(), 0.0, []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            probs = self.model.predict(x_test, batch_size=2048, verbose=0)
            accuracy = float((np.asarray(probs).argmax(axis=1) == y_test).mean())
            self.epochs.append({"seconds": now - self.epoch_start, "elapsed": now - self.start - self.paused,
                                "test_accuracy": accuracy, "val_accuracy": float((logs or {})["val_accuracy"])})  # fmt: skip
            self.paused += time.perf_counter() - now

    return Clock()


def _accuracy(model, images, labels) -> float:
    import numpy as np

    return float((np.asarray(model.predict(images, batch_size=2048, verbose=0)).argmax(axis=1) == labels).mean())


def _writeup_model(name: str):
    """The write-up's model for `name` (its first listing's MLP, its multi-GPU listing's CNN), compiled as it does
    (Adam with Keras' defaults); and whether it takes images with a channel axis."""
    import keras

    if name == "mlp":
        model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(10, activation="softmax")])  # fmt: skip
        loss = "sparse_categorical_crossentropy"
    else:
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                                  keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                                  keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])  # fmt: skip
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model, name != "mlp"


def _by_hand(setup: Setup, data, epochs: int) -> dict:
    """A hand-written Keras run on the write-up's model, pixels scaled to 0..1 in float32, the same split as
    tftrain's (the training set's first 80% to train, its last 20% to validate). The recipe: `model.fit` on numpy
    arrays with the write-up's batch size and `validation_split=0.2`. The careful user: `model.fit` on tf.data,
    `cache()`, `shuffle` over the whole set, `batch(256)`, `prefetch(AUTOTUNE)`."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(42)
    model, channels = _writeup_model(setup.model)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    if channels:
        x_train, x_test = x_train[..., None], x_test[..., None]
    clock = _clock_callback(x_test, data.y_test)
    split = len(x_train) - round(len(x_train) * 0.2)
    if setup.kind == "recipe":
        batch = 32 if setup.model == "mlp" else 64
        model.fit(x_train, data.y_train, epochs=epochs or RECIPE_EPOCHS, batch_size=batch, validation_split=0.2,
                  callbacks=[clock], verbose=0)  # fmt: skip
    else:

        def pipeline(x, y, shuffle):
            ds = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)).cache()
            ds = ds.shuffle(len(x), seed=42) if shuffle else ds
            return ds.batch(USER_BATCH).prefetch(tf.data.AUTOTUNE)

        train_data = pipeline(x_train[:split], data.y_train[:split], shuffle=True)
        val_data = pipeline(x_train[split:], data.y_train[split:], shuffle=False)
        model.fit(train_data, validation_data=val_data, epochs=epochs or USER_EPOCHS, callbacks=[clock], verbose=0)
    return {"clock": clock.epochs, "fit_seconds": time.perf_counter() - clock.start - clock.paused,
            "tracking_seconds": None, "model_logging_seconds": None, "model": model, "train_examples": split,
            "test_accuracy": _accuracy(model, x_test, data.y_test)}  # fmt: skip


def _tftrain(setup: Setup, data, data_dir: str, epochs: int) -> dict:
    """tftrain's `train`, every callback on, tracked into a sqlite MLflow store in the working folder."""
    import mlflow

    from tftrain.config import TrainConfig
    from tftrain.training.trainer import train

    settings = {**setup.settings, "model": setup.model, "data_dir": data_dir}
    if epochs:
        settings["epochs"] = epochs
    clock = _clock_callback(data.x_test.astype("float32"), data.y_test)
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    cfg = TrainConfig.from_flat(
        output_dir="outputs", model_name="bench", run_name=setup.name, resume="never", **settings
    )
    result = train(cfg, extra_callbacks=(clock,))
    validation = round(len(data.x_train) * cfg.data.validation_split)
    # fit_seconds without the clock's own test scoring, which ran inside the fit
    return {"clock": clock.epochs, "fit_seconds": result.fit_seconds - clock.paused,
            "tracking_seconds": result.tracking_seconds, "model_logging_seconds": result.model_logging_seconds,
            "model": result.keras_model, "train_examples": len(data.x_train) - validation,
            "test_accuracy": _accuracy(result.keras_model, data.x_test.astype("float32"), data.y_test)}  # fmt: skip


def measure(setup: Setup, data_dir: str, epochs: int) -> dict:
    """Train one configuration in this process; its figures as a dict."""
    from tftrain.data.datasets import load_dataset

    data = load_dataset("fashion_mnist", data_dir)
    out = _tftrain(setup, data, data_dir, epochs) if setup.kind == "tftrain" else _by_hand(setup, data, epochs)
    clock = out["clock"]
    warm = [e["seconds"] for e in clock[1:]] or [clock[0]["seconds"]]  # the first epoch traces the graphs
    seconds_per_epoch = statistics.median(warm)
    flops = train_flops_per_example(out["model"])
    samples = out["train_examples"] / seconds_per_epoch
    return {
        "name": setup.name,
        "describe": setup.describe,
        "model": setup.model,
        "kind": setup.kind,
        "target": setup.target,
        "epochs": len(clock),
        "seconds_per_epoch": seconds_per_epoch,
        "samples_per_second": samples,
        "gflop_per_example": flops / 1e9,
        "gflops": samples * flops / 1e9,
        "fit_seconds": out["fit_seconds"],
        "tracking_share": None if out["tracking_seconds"] is None else out["tracking_seconds"] / out["fit_seconds"],
        "model_logging_seconds": out["model_logging_seconds"],
        "test_accuracy": out["test_accuracy"],
        "curve": [(e["elapsed"], e["test_accuracy"]) for e in clock],
        "val_curve": [(e["elapsed"], e["val_accuracy"]) for e in clock],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    name, data_dir, epochs, out = sys.argv[1:]
    Path(out).write_text(json.dumps(measure(BY_NAME[name], data_dir, int(epochs))))
