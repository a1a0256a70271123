"""The sweep figures of docs/sweeps.md: the same 20-trial sweep on Fashion-MNIST with and without pruning, each a
`tftrain sweep` process in a fresh MLflow sqlite store, then one table (trials per state, epochs trained, wall
time, best validation accuracy, the best model's test accuracy) and, with --screenshot, the pruned sweep's trials
in the MLflow UI's parallel coordinates view (headless Chromium).

    .venv/bin/python scripts/sweep_figures.py --out /tmp/sweep-figures --screenshot docs/sweep-parallel-coordinates.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

SPACE = "learning_rate=loguniform(1e-4,1e-2);batch_size=choice(64,128,256);model=choice(mlp,cnn)"


def run_sweep(out: Path, pruner: str, trials: int, epochs: int, data_dir: str) -> float:
    command = [sys.executable, "-m", "tftrain", "sweep", "--trials", str(trials), "--epochs", str(epochs),
               "--space", SPACE, "--pruner", pruner, "--study", f"figures-{pruner}", "--model-name",
               f"figures-{pruner}", "--output-dir", str(out / "outputs"), "--epoch-summary", "false"]  # fmt: skip
    if data_dir:
        command += ["--data-dir", data_dir]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(out / f"sweep-{pruner}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out)
    if done.returncode:
        sys.exit(f"sweep_figures.py: the {pruner} sweep failed; see {out / f'sweep-{pruner}.log'}")
    return time.perf_counter() - started


def figures(out: Path, walls: dict[str, float]) -> list[str]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    rows = ["| pruner | trials: complete / pruned / failed | epochs trained | wall s | best val_accuracy | "
            "its test accuracy | best trial |", "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for pruner, wall in walls.items():
        (parent,) = mlflow.search_runs(search_all_experiments=True, filter_string=f"attributes.run_name = "
                                       f"'figures-{pruner}'", output_format="list")  # fmt: skip
        m, best = parent.data.metrics, json.loads(parent.data.tags["best_params"])
        shown = ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
        rows.append(
            f"| {pruner} | {m['trials_complete']:.0f} / {m['trials_pruned']:.0f} / {m['trials_failed']:.0f} | "
            f"{m['epochs_trained']:.0f} | {wall:.0f} | {m['best_val_accuracy']:.4f} | "
            f"{m.get('best_test_accuracy', float('nan')):.4f} | {shown} |"
        )
    return rows


def screenshot(out: Path, path: Path) -> None:
    """The pruned sweep's child runs on MLflow's compare page, its parallel coordinates panel set to the searched
    parameters (each child's trial_<name> params) and the objective's latest value as the last, coloured axis
    (trial_<objective> is missing on pruned trials, which MLflow would draw above the best)."""
    import mlflow

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers import choose_axes, chromium, tracking_ui

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    (parent,) = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.run_name = "
                                   "'figures-median'", output_format="list")  # fmt: skip
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # fmt: skip
    params = [f"trial_{part.split('=')[0]}" for part in SPACE.split(";")]
    objective = parent.data.params["objective"]
    runs = json.dumps([r.info.run_id for r in children])
    query = urllib.parse.urlencode({"runs": runs, "experiments": json.dumps([parent.info.experiment_id])})
    with (
        tracking_ui(f"sqlite:///{out / 'mlflow.db'}", out / "server.log") as url,
        chromium(out / "chromium-profile", window="1900,1100") as driver,
    ):
        driver.get(f"{url}/#/compare-runs?{query}")
        panel = choose_axes(driver, params, [objective])
        path.parent.mkdir(parents=True, exist_ok=True)
        panel.screenshot(str(path))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the store, logs and outputs")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-dir", default="", help="folder with Fashion-MNIST's IDX files; empty: look it up")
    parser.add_argument("--screenshot", type=Path, help="write the MLflow UI's parallel coordinates view here")
    parser.add_argument("--reuse", action="store_true", help="--out holds an earlier run's store: no sweeps and no "
                        "table, only the --screenshot of its pruned sweep")  # fmt: skip
    args = parser.parse_args()
    if args.reuse:
        if not args.screenshot:
            parser.error("--reuse needs --screenshot")
        screenshot(args.out, args.screenshot.resolve())
        return
    args.out.mkdir(parents=True, exist_ok=False)
    walls = {
        pruner: run_sweep(args.out, pruner, args.trials, args.epochs, args.data_dir) for pruner in ("median", "none")
    }
    print(f"space: {SPACE}; {args.trials} trials of up to {args.epochs} epochs; {os.cpu_count()} cores\n")
    print("\n".join(figures(args.out, walls)))
    if args.screenshot:
        screenshot(args.out, args.screenshot.resolve())


if __name__ == "__main__":
    main()
