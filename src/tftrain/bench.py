"""`tftrain bench`: the write-up's recipes against tftrain's engines, on the same data, in one invocation.

Every configuration trains in a process of its own (a clean TensorFlow, and a peak memory that is its own), on the
same Fashion-MNIST split: the training set's first 80% to train, its last 20% to validate, as the write-up's
`validation_split=0.2` does. The test set is scored after every epoch for the "time to accuracy" columns, with the
clock stopped; nothing learned or selected ever sees it (early stopping and checkpoints watch the validation split).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tftrain.errors import UserError

RECIPE_EPOCHS = 5  # the write-up's listings train 5 epochs


@dataclass(frozen=True)
class Setup:
    """One row of the benchmark: the write-up's recipe for `model`, or tftrain's `train` with `settings`."""

    name: str
    model: str
    target: float  # the test accuracy whose time is reported
    recipe: bool = False
    settings: dict = field(default_factory=dict)  # TrainConfig fields over the defaults (tftrain rows)
    long: bool = False  # only in the full suite

    @property
    def describe(self) -> str:
        if self.recipe:
            batch = 32 if self.model == "mlp" else 64
            return f"write-up {self.model}: fit on numpy, batch {batch}, {RECIPE_EPOCHS} epochs"
        shown = ", ".join(f"{k}={v}" for k, v in self.settings.items() if k not in ("model",))
        return f"tftrain {self.model}: {shown}"


# The tuned settings: what measured fastest to each target on a 2-core CPU (README, "Performance").
FAST_MLP = {"batch_size": 1024, "learning_rate": 0.004, "steps_per_execution": 50, "epochs": 60,
            "precision": "mixed_bfloat16",
            "early_stopping_patience": 6, "plateau_patience": 3, "histogram_freq": 0}  # fmt: skip
FAST_CNN = {"batch_size": 512, "learning_rate": 0.004, "steps_per_execution": 20, "epochs": 30,
            "precision": "mixed_bfloat16", "early_stopping_patience": 4, "histogram_freq": 0}  # fmt: skip
STRONG = {"model": "cnn_bn", "batch_size": 256, "learning_rate": 0.003, "steps_per_execution": 10, "epochs": 38,
          "precision": "mixed_bfloat16", "lr_schedule": "warmup_cosine", "validation_split": 0.1,
          "early_stopping": False, "histogram_freq": 0}  # fmt: skip

SETUPS = (
    Setup("recipe-mlp", "mlp", 0.89, recipe=True),
    Setup("tftrain-mlp", "mlp", 0.89, settings=FAST_MLP),
    Setup("tftrain-mlp-defaults", "mlp", 0.89, settings={}),
    Setup("recipe-cnn", "cnn", 0.91, recipe=True),
    Setup("tftrain-cnn", "cnn", 0.91, settings={"model": "cnn", **FAST_CNN}),
    Setup("tftrain-cnn_bn", "cnn_bn", 0.94, settings=STRONG, long=True),
)
BY_NAME = {s.name: s for s in SETUPS}
TARGETS = {  # issue 7, checked in the same run
    "mlp_speedup": 15.0,
    "cnn_speedup": 4.0,
    "tracking_share": 0.03,
    "mlp_seconds_to_0.89": 20.0,
    "cnn_bn_seconds_to_0.94": 900.0,
}


def select(only: str, full: bool) -> list[Setup]:
    if not only:
        return [s for s in SETUPS if full or not s.long]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise UserError(
            f"invalid value for --only: received {only!r}; allowed: comma-separated names from {', '.join(BY_NAME)}"
        )
    return [BY_NAME[n] for n in names]


# ---------------------------------------------------------------------------------------------------------------
# In the worker process


def train_flops_per_example(model) -> float:
    """Floating-point operations to train on one example: 3x the forward pass's multiply-adds of its Dense and
    Conv2D layers, times 2 (the usual estimate: forward, plus gradients for inputs and for weights)."""
    import keras

    macs = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dense):
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.Conv2D):
            height, width = layer.output.shape[1:3]
            macs += (
                height
                * width
                * int(layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2])
                * layer.filters
            )
    return 2.0 * 3.0 * macs


def _clock_callback(x_test, y_test):
    """Times each epoch and the whole fit, and scores the test set after each epoch with the clock stopped."""
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
                                "test_accuracy": accuracy, "val_accuracy": float((logs or {}).get("val_accuracy", 0))})  # fmt: skip
            self.paused += time.perf_counter() - now

    return Clock()


def _accuracy(model, images, labels) -> float:
    import numpy as np

    return float((np.asarray(model.predict(images, batch_size=2048, verbose=0)).argmax(axis=1) == labels).mean())


def _recipe(setup: Setup, data, epochs: int) -> dict:
    """The write-up's listing: model.fit on numpy arrays scaled to 0..1, its batch size, validation_split=0.2."""
    import keras

    keras.utils.set_random_seed(42)
    x_train, x_test = data.x_train / 255.0, data.x_test / 255.0
    if setup.model == "mlp":  # the write-up's first listing
        model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(10, activation="softmax")])  # fmt: skip
        loss, batch = "sparse_categorical_crossentropy", 32
    else:  # its multi-GPU listing's CNN
        x_train, x_test = x_train[..., None], x_test[..., None]
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                                  keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                                  keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])  # fmt: skip
        loss, batch = keras.losses.SparseCategoricalCrossentropy(from_logits=True), 64
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    clock = _clock_callback(x_test, data.y_test)
    model.fit(x_train, data.y_train, epochs=epochs or RECIPE_EPOCHS, batch_size=batch, validation_split=0.2,
              callbacks=[clock], verbose=0)  # fmt: skip
    return {"clock": clock.epochs, "fit_seconds": time.perf_counter() - clock.start - clock.paused,
            "tracking_seconds": None, "model": model, "train_examples": len(x_train) - round(len(x_train) * 0.2),
            "test_accuracy": _accuracy(model, x_test, data.y_test)}  # fmt: skip


def _tftrain(setup: Setup, data, data_dir: str, epochs: int) -> dict:
    """tftrain's `train`, every callback on, tracked into a throwaway sqlite MLflow store."""
    import mlflow

    from tftrain.config import TrainConfig
    from tftrain.train import train

    settings = {**setup.settings, "model": setup.model, "data_dir": data_dir}
    if epochs:
        settings["epochs"] = epochs
    clock = _clock_callback(data.x_test.astype("float32"), data.y_test)
    with tempfile.TemporaryDirectory(prefix="tftrain-bench-") as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        cfg = TrainConfig(output_dir=folder, model_name="bench", run_name=setup.name, resume="never", **settings)
        result = train(cfg, extra_callbacks=(clock,))
    validation = round(len(data.x_train) * cfg.validation_split)
    # fit_seconds without the clock's own test scoring, which ran inside the fit
    return {"clock": clock.epochs, "fit_seconds": result.fit_seconds - clock.paused,
            "tracking_seconds": result.tracking_seconds,
            "model": result.keras_model, "train_examples": len(data.x_train) - validation,
            "test_accuracy": _accuracy(result.keras_model, data.x_test.astype("float32"), data.y_test)}  # fmt: skip


def measure(setup: Setup, data_dir: str, epochs: int) -> dict:
    """Train one configuration in this process; its figures as a dict."""
    from tftrain.data import load_dataset

    data = load_dataset("fashion_mnist", data_dir)
    out = _recipe(setup, data, epochs) if setup.recipe else _tftrain(setup, data, data_dir, epochs)
    clock = out["clock"]
    warm = [e["seconds"] for e in clock[1:]] or [clock[0]["seconds"]]  # the first epoch traces the graphs
    seconds_per_epoch = statistics.median(warm)
    flops = train_flops_per_example(out["model"])
    samples = out["train_examples"] / seconds_per_epoch
    return {
        "name": setup.name,
        "describe": setup.describe,
        "model": setup.model,
        "recipe": setup.recipe,
        "target": setup.target,
        "epochs": len(clock),
        "seconds_per_epoch": seconds_per_epoch,
        "samples_per_second": samples,
        "gflop_per_example": flops / 1e9,
        "gflops": samples * flops / 1e9,
        "fit_seconds": out["fit_seconds"],
        "tracking_share": None if out["tracking_seconds"] is None else out["tracking_seconds"] / out["fit_seconds"],
        "test_accuracy": out["test_accuracy"],
        "curve": [(e["elapsed"], e["test_accuracy"]) for e in clock],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _worker_main(argv: list[str]) -> None:
    """`python -m tftrain.bench NAME DATA_DIR EPOCHS OUT.json`: one configuration, its figures into OUT.json."""
    name, data_dir, epochs, out = argv
    figures = measure(BY_NAME[name], data_dir, int(epochs))
    Path(out).write_text(json.dumps(figures))


# ---------------------------------------------------------------------------------------------------------------
# In the `tftrain bench` process


def _in_worker(setup: Setup, data_dir: str, epochs: int) -> dict | None:
    """One configuration in a fresh Python process; its output goes to stderr, its figures come back (None if it
    failed, which the table then says)."""
    with tempfile.TemporaryDirectory(prefix="tftrain-bench-") as folder:
        out = Path(folder, "figures.json")
        command = [sys.executable, "-m", "tftrain.bench", setup.name, data_dir, str(epochs), str(out)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        code = subprocess.run(command, stdout=sys.stderr, env=env, check=False).returncode
        return json.loads(out.read_text()) if code == 0 and out.is_file() else None


def seconds_to(curve: list, accuracy: float) -> float | None:
    """Training seconds until the test accuracy first reached `accuracy` (None: never)."""
    return next((elapsed for elapsed, reached in curve if reached >= accuracy), None)


def _recipe_of(model: str) -> str:
    return "recipe-mlp" if model == "mlp" else "recipe-cnn"


def _with_comparisons(results: list[dict]) -> list[dict]:
    """Add to each row of one repeat: its speed-up over the recipe of its model family, and how long it took to
    reach the target and the recipe's own final accuracy."""
    by_name = {r["name"]: r for r in results}
    for r in results:
        recipe = by_name.get(_recipe_of(r["model"]))
        r["speedup"] = recipe and r["samples_per_second"] / recipe["samples_per_second"]
        r["recipe_accuracy"] = recipe and recipe["test_accuracy"]
        r["recipe_fit_seconds"] = recipe and recipe["fit_seconds"]
        r["seconds_to_target"] = seconds_to(r["curve"], r["target"])
        r["seconds_to_recipe_accuracy"] = recipe and seconds_to(r["curve"], recipe["test_accuracy"])
    return results


def _median(values: list):
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(repeats: list[list[dict]]) -> list[dict]:
    """One row per configuration: each figure's median over the repeats (speed-ups are taken within a repeat)."""
    rows = []
    for name in dict.fromkeys(r["name"] for repeat in repeats for r in repeat):
        runs = [r for repeat in repeats for r in repeat if r["name"] == name]
        row = {k: (_median([r[k] for r in runs]) if isinstance(runs[0][k], (int, float)) and not isinstance(runs[0][k], bool)
                   else runs[0][k]) for k in runs[0] if k != "curve"}  # fmt: skip
        for k in (
            "speedup",
            "seconds_to_target",
            "seconds_to_recipe_accuracy",
            "recipe_accuracy",
            "recipe_fit_seconds",
        ):
            row[k] = _median([r[k] for r in runs])
        row["repeats"] = len(runs)
        rows.append(row)
    return rows


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | epochs | warm s/epoch | samples/s | vs recipe | GFLOP/s (MFLOP/example) "
        "| s to target | s to recipe's accuracy | train s | test accuracy | tracking | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['epochs']:.0f} | {r['seconds_per_epoch']:.3f} | {r['samples_per_second']:,.0f} "
            f"| {_fmt(r['speedup'], '.1f')}x | {r['gflops']:.1f} ({r['gflop_per_example'] * 1000:.2f}) "
            f"| {_fmt(r['seconds_to_target'], '.1f', 'not reached')} (to {r['target']}) "
            f"| {_fmt(r['seconds_to_recipe_accuracy'], '.1f', 'not reached')} | {r['fit_seconds']:.1f} "
            f"| {r['test_accuracy']:.4f} | {_fmt(r['tracking_share'] and 100 * r['tracking_share'], '.2f')}% "
            f"| {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines + [""] + [f"- {r['name']}: {r['describe']}" for r in rows])


def _verdict(label: str, value, goal: float, higher_is_better: bool, unit: str = "") -> str:
    sign = ">=" if higher_is_better else "<="
    if value is None:
        return f"- {label}: not measured in this run (goal {sign} {goal:g}{unit})"
    met = value >= goal if higher_is_better else value <= goal
    by = "" if met else f" by {100 * abs(goal - value) / goal:.0f}%"
    return f"- {label}: {value:.3g}{unit} (goal {sign} {goal:g}{unit}): {'met' if met else 'missed'}{by}"


def _time_verdict(label: str, row: dict | None, goal: float) -> str:
    if row is None or row["seconds_to_target"] is not None:
        return _verdict(label, row and row["seconds_to_target"], goal, False, " s")
    return (
        f"- {label}: not reached (goal <= {goal:g} s): the test accuracy ended at {row['test_accuracy']:.4f} "
        f"after {row['fit_seconds']:.0f} s of training"
    )


def targets(rows: list[dict]) -> str:
    row = {r["name"]: r for r in rows}
    shares = [r["tracking_share"] for r in rows if r["tracking_share"] is not None]
    speedup = lambda name: row[name]["speedup"] if name in row else None  # noqa: E731
    lines = [
        _verdict("MLP samples/s over the write-up's recipe", speedup("tftrain-mlp"), TARGETS["mlp_speedup"], True, "x"),
        _verdict("seed CNN samples/s over the write-up's recipe", speedup("tftrain-cnn"), TARGETS["cnn_speedup"], True, "x"),
        _verdict("MLflow tracking, share of training time (worst row)", max(shares) * 100 if shares else None,
                 TARGETS["tracking_share"] * 100, False, "%"),
        _time_verdict("MLP training seconds to 0.89 test accuracy", row.get("tftrain-mlp"), TARGETS["mlp_seconds_to_0.89"]),
        _time_verdict("cnn_bn training seconds to 0.94 test accuracy", row.get("tftrain-cnn_bn"),
                      TARGETS["cnn_bn_seconds_to_0.94"]),
    ]  # fmt: skip
    if "tftrain-mlp" in row and "recipe-mlp" in row:
        r = row["tftrain-mlp"]
        when = r["seconds_to_recipe_accuracy"]
        reached = f"reached it after {when:.1f} s" if when is not None else "never reached it"
        lines.append(
            f"- MLP against the recipe's own result ({r['recipe_accuracy']:.4f} after {r['recipe_fit_seconds']:.1f} s "
            f"of training): tftrain {reached} and ended at {r['test_accuracy']:.4f}"
        )
    return "\n".join(lines)


def machine() -> str:
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, TensorFlow {tf.__version__}, Python {platform.python_version()}"


def log_to_mlflow(rows: list[dict], report: str) -> str:
    """One run per configuration in the experiment `tftrain-bench` of the current tracking store."""
    import mlflow

    mlflow.set_experiment("tftrain-bench")
    numeric = ("epochs", "seconds_per_epoch", "samples_per_second", "speedup", "gflops", "seconds_to_target",
               "seconds_to_recipe_accuracy", "fit_seconds", "test_accuracy", "tracking_share", "peak_rss_mb")  # fmt: skip
    with mlflow.start_run(run_name="bench") as parent:
        mlflow.log_text(report, "bench.md")
        for r in rows:
            with mlflow.start_run(run_name=r["name"], nested=True):
                mlflow.log_params({"configuration": r["describe"][:500], "target_accuracy": r["target"]})
                mlflow.log_metrics({k: float(r[k]) for k in numeric if r.get(k) is not None})
    return parent.info.run_id


def bench(only: str, full: bool, repeat: int, data_dir: str, epochs: int, log: bool, json_out: str) -> bool:
    """Run the configurations `repeat` times, print the table and the targets; True if every configuration ran."""
    from tftrain.data import load_dataset

    setups = select(only, full)
    load_dataset("fashion_mnist", data_dir)  # a missing or corrupt dataset: one line now, not one per worker
    repeats, failed = [], []
    for i in range(repeat):
        results = []
        for j, setup in enumerate(setups, 1):
            print(
                f"[repeat {i + 1}/{repeat}, {j}/{len(setups)}] {setup.name}: {setup.describe}",
                file=sys.stderr,
                flush=True,
            )
            started = time.perf_counter()
            figures = _in_worker(setup, data_dir, epochs)
            if figures is None:
                failed.append(setup.name)
                print(f"tftrain: {setup.name} failed (its output is above); going on", file=sys.stderr, flush=True)
                continue
            results.append(figures)
            print(f"  done in {time.perf_counter() - started:.0f} s: test accuracy {figures['test_accuracy']:.4f}",
                  file=sys.stderr, flush=True)  # fmt: skip
        repeats.append(_with_comparisons(results))
    rows = summarize(repeats)
    report = "\n\n".join([f"Fashion-MNIST; {machine()}; medians of {repeat} repeat(s)", table(rows), targets(rows)])
    print(report)
    if failed:
        print(f"failed: {', '.join(failed)}")
    if json_out:
        Path(json_out).write_text(json.dumps({"machine": machine(), "repeats": repeats}, indent=1))
    if log and rows:
        print(f"logged to MLflow: experiment tftrain-bench, run {log_to_mlflow(rows, report)}")
    return not failed


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
