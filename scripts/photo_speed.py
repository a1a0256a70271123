"""Photo-sized training speed: tftrain's defaults against a careful Keras user on a folder of real photographs at
128x128, per model, in one run. The figures of docs/benchmarks.md's "Photo-sized training".

    .venv/bin/python scripts/photo_speed.py --out /tmp/photo-speed
    .venv/bin/python scripts/photo_speed.py --out /tmp/photo-speed --models cnn_bn --epochs 4   # a quick look

The folder: crops of the photographs installed packages ship (bench/photos.py: 11 classes, mixed sizes, colour and
gray, JPEG and PNG), resized to 128x128 by both sides. The careful user (a process of its own): Keras'
`image_dataset_from_directory(..., image_size=(128, 128), batch_size=32)` with a seeded 20% validation subset,
`.cache().prefetch(AUTOTUNE)`, the same model as tftrain builds (its builder, float32), Adam 1e-3, `fit`. tftrain:
`tftrain train --dataset FOLDER --model M --image-size 128x128` on its defaults (precision, batch, learning rate and
schedule, augmentation, early stopping), `--epochs` as the most, in a fresh MLflow store. Printed per model: training
images per second over the warm epochs (each side's own), the careful user's final validation accuracy, and the
seconds each side took to reach it (tftrain's epochs counted until its validation accuracy first reaches the user's
final one; the two validation splits are different images of the same folder). And the bound: the model's training
FLOPs per image (bench/worker.train_flops_per_example: 6 per multiply-add of its convolutions and dense layers)
against this machine's measured matmul rate in the precision tftrain ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SIZE = (128, 128)


def careful_user(folder: str, model: str, epochs: int) -> dict:
    """The careful user's run, in this process: Keras' loader, cached and prefetched, the same model, float32."""
    import keras
    import tensorflow as tf

    from tftrain.bench.worker import train_flops_per_example
    from tftrain.models.build import model_builder

    keras.utils.set_random_seed(0)
    train, val = keras.utils.image_dataset_from_directory(
        folder, validation_split=0.2, subset="both", seed=0, image_size=SIZE, batch_size=32
    )
    classes = len(train.class_names)
    train, val = (d.cache().prefetch(tf.data.AUTOTUNE) for d in (train, val))
    network = model_builder(model, classes, (*SIZE, 3))()
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Clock(keras.callbacks.Callback):  # each epoch's wall time, validation included (as tftrain's epoch_seconds)
        seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    clock = Clock()
    history = network.fit(train, validation_data=val, epochs=epochs, callbacks=[clock], verbose=0)
    images = sum(int(y.shape[0]) for _, y in train)
    return {"epoch_seconds": clock.seconds, "val_accuracy": history.history["val_accuracy"], "train_images": images,
            "train_flops": train_flops_per_example(network)}  # fmt: skip


def matmul_rate(dtype: str, n: int = 2048, seconds: float = 3.0) -> float:
    """This machine's matmul rate in FLOP/s (n x n by n x n, repeated for `seconds`), the best of the runs."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    step = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[0, :1], tf.float32)))
    step()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        step().numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def tftrain_run(folder: Path, model: str, epochs: int, out: Path) -> dict:
    """`tftrain train` on its defaults in a fresh store; its epoch times and validation accuracies from MLflow."""
    work = out / f"tftrain-{model}"
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    command = [sys.executable, "-m", "tftrain", "train", "--dataset", str(folder), "--model", model, "--image-size",
               f"{SIZE[0]}x{SIZE[1]}", "--epochs", str(epochs), "--output-dir", str(work / "outputs")]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TFTRAIN_CACHE_DIR": str(out / "cache")}
    with open(work / "train.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    text = (work / "train.log").read_text()
    if done.returncode:
        sys.exit(f"photo_speed.py: tftrain on {model} failed; see {work / 'train.log'}:\n{text[-2000:]}")
    import mlflow

    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    client = mlflow.MlflowClient()

    def history(key):
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    setting = re.search(r"\((fit|custom), \S+ x\d+, (\S+)\).*global batch (\d+)", text)
    if not setting:
        sys.exit(f"photo_speed.py: tftrain's start line is not in {work / 'train.log'}")
    return {"epoch_seconds": history("epoch_seconds"), "val_accuracy": history("val_accuracy"),
            "train_images": int(run.data.tags["train_examples"]), "precision": setting.group(2),
            "batch": int(setting.group(3))}  # fmt: skip


def _warm_rate(side: dict) -> float:
    """Training images per second over the epochs after the first (the first compiles)."""
    warm = side["epoch_seconds"][1:] or side["epoch_seconds"]
    return side["train_images"] * len(warm) / sum(warm)


def _time_to(side: dict, target: float) -> float | None:
    """Seconds of epochs until the validation accuracy first reaches `target` (None: never)."""
    from itertools import accumulate

    from tftrain.bench.report import seconds_to

    return seconds_to(list(zip(accumulate(side["epoch_seconds"]), side["val_accuracy"], strict=True)), target - 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder for the photo folder, stores and logs")
    parser.add_argument("--models", default="cnn_bn,mobilenet_v2,efficientnet_b0")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=200, help="crops of each of the 11 photographs")
    parser.add_argument("--user", nargs=3, metavar=("FOLDER", "MODEL", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.user:  # the careful user's process
        print(json.dumps(careful_user(args.user[0], args.user[1], int(args.user[2]))))
        return
    from tftrain.bench.photos import write_photo_folder

    folder = args.out / f"photos-{args.per_class}"
    if not folder.is_dir():
        write_photo_folder(folder, args.per_class)
    rates = {dtype: matmul_rate(dtype) for dtype in ("float32", "bfloat16")}
    print(f"matmul: float32 {rates['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s "
          f"({len(os.sched_getaffinity(0))} cores)", flush=True)  # fmt: skip
    rows = []
    for model in args.models.split(","):
        started = time.perf_counter()
        user = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--user", str(folder), model,
                               str(args.epochs)], capture_output=True, text=True)  # fmt: skip
        if user.returncode:
            sys.exit(f"photo_speed.py: the careful user's {model} failed:\n{user.stderr[-2000:]}")
        user = json.loads(user.stdout.strip().splitlines()[-1])
        ours = tftrain_run(folder, model, args.epochs, args.out)
        target = user["val_accuracy"][-1]
        rows.append({"model": model, "user": user, "tftrain": ours, "target": target,
                     "user_time": _time_to(user, target), "tftrain_time": _time_to(ours, target)})  # fmt: skip
        print(_line(rows[-1], rates) + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{len(os.sched_getaffinity(0))} cores; {args.epochs} epochs at most; folder {folder} "
          f"({args.per_class * 11:,} photo crops at {SIZE[0]}x{SIZE[1]})")  # fmt: skip
    print(_HEADER)
    for row in rows:
        print(_line(row, rates))


_HEADER = (f"{'model':<16}{'user img/s':>11}{'tftrain img/s':>14}{'speed':>7}{'user final val':>15}"
           f"{'tftrain final':>14}{'user s':>8}{'tftrain s':>10}{'to it':>7}{'GFLOP/img':>10}{'bound img/s':>12}"
           "  tftrain ran")  # fmt: skip


def _line(row: dict, rates: dict) -> str:
    user, ours = row["user"], row["tftrain"]
    user_rate, our_rate = _warm_rate(user), _warm_rate(ours)
    flops = user["train_flops"]
    bound = rates["bfloat16" if "bfloat16" in ours["precision"] else "float32"] / flops
    reached = row["tftrain_time"]
    to_it = f"{row['user_time'] / reached:.2f}x" if reached else "never"
    reached_text = f"{reached:.0f}" if reached else "-"
    return (f"{row['model']:<16}{user_rate:>11.1f}{our_rate:>14.1f}{our_rate / user_rate:>6.2f}x{row['target']:>15.3f}"
            f"{ours['val_accuracy'][-1]:>14.3f}{row['user_time']:>8.0f}{reached_text:>10}{to_it:>7}"
            f"{flops / 1e9:>10.3f}{bound:>12.0f}  "
            f"{ours['precision']}, batch {ours['batch']}")  # fmt: skip


if __name__ == "__main__":
    main()
