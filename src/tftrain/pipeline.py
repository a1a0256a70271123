"""The main job: train, then evaluate, export and promote that model, all in one MLflow run; ends with where to
look."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tftrain import tracking
from tftrain.config import TrainConfig
from tftrain.evaluate import Evaluation, evaluate
from tftrain.export import export
from tftrain.registry import Decision, promote
from tftrain.runtime import is_chief_process
from tftrain.train import TrainResult, default_run_name, train


def _mlflow_command() -> str:
    """The mlflow executable of this environment, as the user would type it from here."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        return "mlflow"
    relative = os.path.relpath(exe)  # .venv/bin/mlflow from the project folder
    return str(exe) if relative.startswith("..") else relative


def report(result: TrainResult, ev: Evaluation, decision: Decision | None) -> str:
    link = tracking.run_link(result.run_id)
    m = result.model
    registered = (
        f"{m.registered_name} version {m.version} (models:/{m.registered_name}/{m.version})"
        if m.version
        else "not registered"
    )
    ui = link["ui_command"].replace("mlflow ui", f"{_mlflow_command()} ui", 1)
    return "\n".join(
        [
            "",
            f"run:            {link['run_name']} ({result.run_id}), {result.epochs_run} epochs",
            f"test accuracy:  {ev.metrics['test_accuracy']:.4f}",
            f"registered:     {registered}",
            f"champion:       {decision.reason if decision else 'not registered, not promoted'}",
            f"local files:    {result.out_dir}",
            f"MLflow UI:      {ui}",
            f"                then open {link['run_page']}",
        ]
    )


def pipeline(cfg: TrainConfig) -> tuple[TrainResult, Evaluation | None]:
    if not is_chief_process(cfg):
        return train(cfg), None  # a non-chief worker trains its part; the chief evaluates, exports and logs
    with tracking.step_run(default_run_name(cfg)):
        result = train(cfg)
        ev = evaluate(result.model.uri, cfg.dataset, cfg.data_dir)
        export(result.model.uri, cfg.dataset, cfg.data_dir, cfg.output_dir)
        m = result.model
        decision = promote(f"models:/{m.registered_name}/{m.version}") if m.version else None
    print(report(result, ev, decision))
    return result, ev
