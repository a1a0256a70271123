"""A study's results, said and kept: the parent run's summary (best value and values, counts per state, the
trials as a table, Optuna's plots) and the report the sweep command prints."""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from tftrain.search import trials
from tftrain.tracking import runs


@dataclass(frozen=True)
class SweepResult:
    study: str
    parent_run_id: str
    best: optuna.trial.FrozenTrial | None  # None: no trial completed
    summarized: bool  # False: trials still run elsewhere, or time ran out before the study was done
    counts: dict[str, int]
    decisions: list = field(default_factory=list)


def summarize(study, parent, best, sw, counts, decisions) -> None:
    """The parent run's summary: best value, values and run, counts per state, epochs trained, the trials as a
    table, and the plots Optuna draws."""
    every = study.get_trials(deepcopy=False)
    step = len(trials.done(study))
    metrics = {f"trials_{k}": v for k, v in counts.items() if k != "running"}
    metrics["epochs_trained"] = sum(t.user_attrs.get("epochs", 0) for t in every if trials.counted(t))
    tags = {}
    if best:
        metrics[f"best_{sw.objective}"] = best.value
        tags = {"best_trial": str(best.number), "best_run_id": trials.own_record(best)["run_id"],
                "best_params": json.dumps(best.params)}  # fmt: skip
        tags.update({f"best.{k}": str(v) for k, v in best.params.items()})
    if decisions:
        metrics["best_test_accuracy"] = decisions[0].test_accuracy
    runs.log_to(parent, metrics, tags, step)
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp, "trials.csv")
        study.trials_dataframe().to_csv(table, index=False)
        files = [table, *plots(study, Path(tmp))]
        runs.log_files_to(parent, files, "sweep")


def shown(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def report(result: SweepResult, objective: str) -> str:
    """Where the study ended and where to look: the counts, the best trial, its test score, the gate's word."""
    from tftrain.pipeline import aligned, mlflow_command

    c = result.counts
    link = runs.run_link(result.parent_run_id)
    ui = link["ui_command"].replace("mlflow ui", f"{mlflow_command()} ui", 1)
    counts = f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
    if c["interrupted"]:
        counts += f", {c['interrupted']} interrupted and run again"
    best = result.best
    lines = ["", f"study:          {result.study}: {counts}"]
    if best:
        lines.append(f"best:           trial {best.number}: {objective} {best.value:.4f} with {shown(best.params)}")
    if result.decisions:
        lines.append(f"test accuracy:  {result.decisions[0].test_accuracy:.4f}")
        lines += aligned("champion:", [d.reason for d in result.decisions])
    elif best and (
        earlier := mlflow.MlflowClient().get_run(result.parent_run_id).data.metrics.get("best_test_accuracy")
    ):
        lines.append(f"test accuracy:  {earlier:.4f} (gated when the study first finished)")
    return "\n".join([*lines, f"MLflow UI:      {ui}", f"                then open {link['run_page']}"])


def plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, parallel coordinates and parameter importances as PNG files (those the trials
    allow: importances need two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    wanted = {"optimization_history.png": plots.plot_optimization_history}
    if complete:
        wanted["parallel_coordinates.png"] = plots.plot_parallel_coordinate
    if len(complete) >= 2:
        wanted["param_importances.png"] = plots.plot_param_importances
    paths = []
    for file, plot in wanted.items():
        with contextlib.suppress(ValueError, RuntimeError, ZeroDivisionError), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # matplotlib: a parameter with one value has no range
            axes = plot(study)
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            figure.savefig(folder / file, dpi=100)
            plt.close(figure)
            paths.append(folder / file)
    return paths
