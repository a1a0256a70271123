"""The scale-out figure of docs/scale-out.md: seconds per warm epoch on this machine for one process without Ray,
and for 1 and 2 Ray Train workers (launcher=ray, a local Ray cluster), the same model, data and batch per replica; and
what the all-reduce costs per step. Each a whole `tftrain train` command in a fresh MLflow sqlite store.

    .venv/bin/python scripts/scale_figures.py --out /tmp/scale-figures
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(out: Path, name: str, extra: list[str], args) -> dict:
    folder = out / name
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "tftrain", "train", "--model", args.model, "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--early-stopping", "false", "--precision", "float32",
               "--output-dir", str(folder / "outputs"), "--run-name", name, *extra]  # fmt: skip
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"scale_figures.py: {name} failed; see {folder / 'train.log'}")
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    (r,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    seconds = [m.value for m in mlflow.MlflowClient().get_metric_history(r.info.run_id, "epoch_seconds")]
    global_batch = int(r.data.params["global_batch_size"])
    steps = int(r.data.tags["train_examples"]) // global_batch
    warm = statistics.median(seconds[1:])
    return {"name": name, "wall": wall, "warm": warm, "steps": steps, "global_batch": global_batch,
            "step_ms": 1000 * warm / steps, "val": r.data.metrics["val_accuracy"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the stores and logs")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128, help="per replica, the same in every row")
    parser.add_argument("--data-dir", default="", help="folder with Fashion-MNIST's IDX files; empty: look it up")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    rows = [
        run(args.out, "one-process", ["--engine", "custom"], args),
        run(args.out, "ray-1-worker", ["--launcher", "ray", "--workers", "1"], args),
        run(args.out, "ray-2-workers", ["--launcher", "ray", "--workers", "2"], args),
    ]
    print(f"{args.model}, Fashion-MNIST, {args.epochs} epochs, batch {args.batch_size} per replica, custom engine, "
          f"float32; {os.cpu_count()} cores\n")  # fmt: skip
    print("| run | global batch | steps/epoch | s/warm epoch | ms/step | whole command s | val_accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['global_batch']} | {r['steps']} | {r['warm']:.2f} | {r['step_ms']:.1f} | "
              f"{r['wall']:.0f} | {r['val']:.4f} |")  # fmt: skip
    one, two = rows[1], rows[2]
    # a step of 2 workers computes the same per-replica batch as 1 worker's, then all-reduces the gradients; on
    # one machine each worker also has half the cores
    print(
        f"\nper step, 2 workers against 1 (same batch per replica): {two['step_ms']:.1f} against "
        f"{one['step_ms']:.1f} ms, +{two['step_ms'] - one['step_ms']:.1f} ms for the all-reduce of the gradients "
        f"and the cores the workers share; per image {two['step_ms'] / two['global_batch'] * 1000:.0f} against "
        f"{one['step_ms'] / one['global_batch'] * 1000:.0f} us"
    )


if __name__ == "__main__":
    main()
