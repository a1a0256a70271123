"""`tftrain bench`: tftrain's defaults against the write-up's recipes and a careful user's tf.data pipeline, on
the same data, in one invocation.

Every configuration trains in a process of its own (`worker.py`: a clean TensorFlow, and a peak memory that is its
own), on the same Fashion-MNIST split: the training set's first 80% to train, its last 20% to validate, as the
write-up's `validation_split=0.2` does. `setups.py` says what runs, `report.py` how the figures compare.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tftrain.bench.report import summarize, table, targets, with_comparisons
from tftrain.bench.setups import select
from tftrain.log import progress_log

log = logging.getLogger(__name__)

FOLDER_EPOCHS = 4  # the folder steps' epochs: the first, and three warm ones


def _in_worker(module: str, *args) -> dict | None:
    """`python -m module *args OUT.json` in a fresh Python process; its output goes to stderr, its figures come back
    (None if it failed, which the table then says)."""
    with tempfile.TemporaryDirectory(prefix="tftrain-bench-") as folder:
        out = Path(folder, "figures.json")
        command = [sys.executable, "-m", module, *map(str, args), str(out)]
        # the worker tracks into a throwaway store in its own folder (its working directory, where MLflow puts
        # artifacts), never the user's
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
        code = subprocess.run(command, stdout=sys.stderr, env=env, cwd=folder, check=False).returncode
        return json.loads(out.read_text()) if code == 0 and out.is_file() else None


def folder_figures(data_dir: str, epochs: int, failed: list[str]) -> tuple[list[dict], int]:
    """The image-folder steps (bench/folders.py), each in a fresh process, on PNG files written to a temporary
    folder (with its image cache beside it) that is deleted afterwards; failed steps are added to `failed`."""
    from tftrain.bench import folders  # here: `python -m tftrain.bench.folders` must not find it imported

    rows = []
    with tempfile.TemporaryDirectory(prefix="tftrain-bench-folder-") as root:
        folder, cache = Path(root, "fashion-mnist-png"), Path(root, "cache")
        started = time.perf_counter()
        progress_log.info(f"[folders] writing Fashion-MNIST as PNG files in {folder}")
        images = folders.write_pngs(data_dir, folder)
        progress_log.info(f"  {images:,} files in {time.perf_counter() - started:.0f} s")
        for step in folders.STEPS:
            progress_log.info(f"[folders] {step}")
            figures = _in_worker("tftrain.bench.folders", step, folder, cache, epochs, data_dir or "-")
            if figures is None:
                failed.append(f"folders {step}")
            else:
                rows.append(figures)
    return rows, images


def panel(which: str, epochs: int, data_dir: str, json_out: str) -> bool:
    """The panel (bench/panel.py): every folder written to a temporary folder, each (folder, model) pair trained
    in a fresh process; prints the table; True if every pair ran."""
    from tftrain.bench.panel import FOLDERS, PANEL_EPOCHS, QUICK, make_folder, table

    data_dir = str(Path(data_dir).resolve()) if data_dir else ""
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="tftrain-panel-") as root:
        for folder in FOLDERS if which == "all" else QUICK:
            path = make_folder(folder.name, Path(root), data_dir)
            for model in folder.models:
                progress_log.info(f"[panel] {folder.name} ({folder.describe}): {model}")
                figures = _in_worker("tftrain.bench.panel", path, model, epochs or PANEL_EPOCHS)
                if figures is None:
                    failed.append(f"{folder.name} {model}")
                    continue
                rows.append(figures)
                keras_accuracy, ours = figures["keras"]["test_accuracy"], figures["tftrain"]["test_accuracy"]
                progress_log.info(f"  plain Keras {keras_accuracy:.3f}, tftrain {ours:.3f}")
    log.info(f"Panel: tftrain's defaults against plain Keras fit, {epochs or PANEL_EPOCHS} epochs; {machine()}\n")
    log.info(table(rows))
    if failed:
        log.info(f"failed: {', '.join(failed)}")
    if json_out:
        Path(json_out).write_text(json.dumps({"machine": machine(), "panel": rows}, indent=1))
    return not failed


def machine() -> str:
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, TensorFlow {tf.__version__}, Python {platform.python_version()}"


def log_to_mlflow(rows: list[dict], report: str) -> str:
    """One run per configuration in the experiment `tftrain-bench` of the current tracking store."""
    import mlflow

    mlflow.set_experiment("tftrain-bench")
    numeric = ("epochs", "seconds_per_epoch", "samples_per_second", "speedup", "vs_user", "gflops",
               "seconds_to_val_target", "user_time_ratio", "seconds_to_target",
               "fit_seconds", "test_accuracy", "tracking_share", "model_logging_seconds", "peak_rss_mb")  # fmt: skip
    with mlflow.start_run(run_name="bench") as parent:
        mlflow.log_text(report, "bench.md")  # the folder figures too
        for r in rows:
            with mlflow.start_run(run_name=r["name"], nested=True):
                mlflow.log_params({"configuration": r["describe"][:500], "target_accuracy": r["target"]})
                mlflow.log_metrics({k: float(r[k]) for k in numeric if r.get(k) is not None})
    return parent.info.run_id


def bench(only: str, full: bool, repeat: int, data_dir: str, epochs: int, log_mlflow: bool, json_out: str) -> bool:
    """Run the configurations `repeat` times, print the table and the targets; True if every configuration ran."""
    from tftrain.data.datasets import load_dataset

    setups, with_folders = select(only, full)
    load_dataset("fashion_mnist", data_dir)  # a missing or corrupt dataset: one line now, not one per worker
    data_dir = str(Path(data_dir).resolve()) if data_dir else ""  # workers run in folders of their own
    repeats, failed = [], []
    for i in range(repeat):
        results = []
        for j, setup in enumerate(setups, 1):
            progress_log.info(f"[repeat {i + 1}/{repeat}, {j}/{len(setups)}] {setup.name}: {setup.describe}")
            started = time.perf_counter()
            figures = _in_worker("tftrain.bench.worker", setup.name, data_dir, epochs)
            if figures is None:
                failed.append(setup.name)
                progress_log.info(f"tftrain: {setup.name} failed (its output is above); going on")
                continue
            results.append(figures)
            seconds = time.perf_counter() - started
            progress_log.info(f"  done in {seconds:.0f} s: test accuracy {figures['test_accuracy']:.4f}")
        repeats.append(with_comparisons(results))
    rows, host = summarize(repeats), machine()
    parts = [f"Fashion-MNIST; {host}; medians of {repeat} repeat(s)"] + [table(rows), targets(rows)] * bool(rows)
    if with_folders:
        from tftrain.bench import folders

        steps, images = folder_figures(data_dir, epochs or FOLDER_EPOCHS, failed)
        parts += [folders.table(steps, images), folders.verdicts(steps, images)]
    report = "\n\n".join(parts)
    log.info(report)
    if failed:
        log.info(f"failed: {', '.join(failed)}")
    if json_out:
        Path(json_out).write_text(json.dumps({"machine": host, "repeats": repeats}, indent=1))
    if log_mlflow and rows:
        log.info(f"logged to MLflow: experiment tftrain-bench, run {log_to_mlflow(rows, report)}")
    return not failed
