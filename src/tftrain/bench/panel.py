"""`tftrain bench --panel`: tftrain's defaults against plain Keras `fit` on a panel of real image folders, for
each model kind.

The folders are made from real data offline (bench/photos.py for crops of photographs; Fashion-MNIST from its IDX
files; scikit-learn's 8x8 handwritten digits), written as image files and read as a user's folder is. On each
(folder, model) pair, in a fresh process: tftrain's `train` on its defaults (image size, augmentation, batch size,
learning rate and schedule, batch-norm handling, early stopping) with the panel's epochs as its maximum; then plain
Keras on the very same splits and model (built by the same builder, Keras' own batch-norm momentum): Adam 1e-3
constant, batch 32, `fit` for the same epochs on a shuffled, stratified validation split (tftrain's). Both are
scored on the same held-out test split.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PANEL_EPOCHS = 15
KERAS_WAY_BUILDER = '''"""A model written the way Keras' tutorials write them: augmentation and rescaling inside, batch norm."""
import keras


def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.05)(x)
    x = keras.layers.Rescaling(1.0 / 255)(x)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.25)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
'''


@dataclass(frozen=True)
class Folder:
    name: str
    describe: str
    models: tuple[str, ...]


ALL_MODELS = ("mlp", "cnn", "cnn_bn", "mobilenet_v2", "builder")
FOLDERS = (
    Folder("photos-11", "1,430 crops of 11 photographs, 40-180 px, RGB and gray, JPEG and PNG", ALL_MODELS),
    Folder("photos-5x40", "200 crops of 5 photographs, 40-180 px", ALL_MODELS),
    Folder("fashion-2k", "2,000 Fashion-MNIST PNGs, 28x28 gray, 10 classes", ALL_MODELS),
    Folder("digits", "1,797 scikit-learn handwritten digits, 8x8 gray PNGs, 10 classes", ("mlp", "cnn", "cnn_bn")),
    Folder("fashion-10k", "10,000 Fashion-MNIST PNGs, 28x28 gray, 10 classes", ("mlp", "cnn", "cnn_bn")),
)
QUICK = (Folder("photos-5x40", "200 crops of 5 photographs, 40-180 px", ("cnn_bn", "builder")),)


def _write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    from PIL import Image

    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / names[label] / f"{i:05d}.png")


def make_folder(name: str, root: Path, data_dir: str = "") -> Path:
    """The panel's folder `name`, written under `root`."""
    from tftrain.bench.photos import write_photo_folder

    folder = root / name
    if name == "photos-11":
        return write_photo_folder(folder, 130)
    if name == "photos-5x40":
        return write_photo_folder(folder, 40, classes=5, seed=1)
    if name.startswith("fashion-"):
        from tftrain.data.datasets import load_dataset

        data = load_dataset("fashion_mnist", data_dir)
        count = {"fashion-2k": 2000, "fashion-10k": 10000}[name]
        names = [n.replace("/", "-") for n in data.class_names]
        _write_pngs(folder, data.x_train[:count], data.y_train[:count], names)
        return folder
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()  # shipped with scikit-learn: 16 gray levels, stretched to 0..255
        _write_pngs(folder, (digits.images * 255 / 16).astype(np.uint8), digits.target, [str(d) for d in range(10)])
        return folder
    raise ValueError(f"no panel folder {name!r}")


def _model_spec(model: str, root: Path) -> str:
    if model != "builder":
        return model
    path = root / "keras_way.py"
    path.write_text(KERAS_WAY_BUILDER)
    return f"{path}:build"


def _plain_keras(task, epochs: int) -> dict:
    """The careful baseline: the same model and splits, Adam 1e-3 constant, batch 32, `fit` for `epochs`."""
    import keras

    keras.utils.set_random_seed(42)
    model = task.build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    (x, y), (x_val, y_val), (x_test, y_test) = task.train, task.validation, task.test
    started = time.perf_counter()
    model.fit(x.astype("float32"), y, batch_size=32, epochs=epochs, validation_data=(x_val.astype("float32"), y_val),
              shuffle=True, verbose=0)  # fmt: skip
    seconds = time.perf_counter() - started
    probs = model.predict(x_test.astype("float32"), verbose=0)
    return {"test_accuracy": float((probs.argmax(1) == y_test).mean()), "seconds": seconds, "epochs": epochs}


def _tftrain(cfg, task) -> dict:
    from tftrain.training.trainer import train

    started = time.perf_counter()
    result = train(cfg, task)
    seconds = time.perf_counter() - started
    x_test, y_test = task.test
    probs = result.keras_model.predict(x_test.astype("float32"), verbose=0)
    return {"test_accuracy": float((probs.argmax(1) == y_test).mean()), "seconds": seconds,
            "epochs": result.epochs_run}  # fmt: skip


def measure(folder: Path, model: str, epochs: int) -> dict:
    """Both runs on one (folder, model) pair, in this process (tracked into ./mlflow.db)."""
    import mlflow

    from tftrain.config import TrainConfig
    from tftrain.training.runtime import build_runtime
    from tftrain.training.task import resolve_task

    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    spec = _model_spec(model, Path.cwd())
    cfg = TrainConfig.from_flat(dataset=str(folder), model=spec, epochs=epochs, output_dir="outputs", model_name="panel",
                      resume="never", tensorboard=False, epoch_summary=False)  # fmt: skip
    build_runtime(cfg)
    task = resolve_task(cfg)
    ours = _tftrain(cfg, task)
    plain = _plain_keras(task, epochs)
    return {"folder": folder.name, "model": model, "images": sum(len(s[1]) for s in (task.train, task.validation,
            task.test)), "shape": "x".join(map(str, task.input_shape)), "test_images": len(task.test[1]),
            "classes": task.num_classes, "tftrain": ours, "keras": plain}  # fmt: skip


def table(rows: list[dict]) -> str:
    """The panel as a Markdown table, with each pair's verdict: tftrain's defaults at least plain Keras' test
    accuracy, within the test split's sampling noise (one standard error of the difference)."""
    lines = [
        "| folder | images | size | model | plain Keras test acc. (s) | tftrain defaults test acc. (s, epochs) | verdict |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for r in rows:
        ours, plain = r["tftrain"]["test_accuracy"], r["keras"]["test_accuracy"]
        noise = math.sqrt(2 * max(plain * (1 - plain), 0.01) / r["test_images"])
        verdict = "better" if ours > plain + noise else "same (within noise)" if ours >= plain - noise else "WORSE"
        lines.append(
            f"| {r['folder']} | {r['images']:,} | {r['shape']} | {r['model']} | {plain:.3f} ({r['keras']['seconds']:.0f}) "
            f"| {ours:.3f} ({r['tftrain']['seconds']:.0f}, {r['tftrain']['epochs']}) | {verdict} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    folder, model, epochs, out = sys.argv[1:]
    Path(out).write_text(json.dumps(measure(Path(folder), model, int(epochs))))
