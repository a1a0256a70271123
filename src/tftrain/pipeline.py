"""The main job: train, then evaluate, export and promote that model and its LiteRT twin, all in one MLflow run;
ends with where to look."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tftrain.config import TrainConfig
from tftrain.ship.evaluate import Evaluation, evaluate
from tftrain.ship.export import export
from tftrain.ship.registry import Decision, promote
from tftrain.tracking import runs
from tftrain.tracking.logged_models import LoggedModel
from tftrain.training.run_state import command_state
from tftrain.training.runtime import build_runtime, is_chief_process
from tftrain.training.task import resolve_task, run_name
from tftrain.training.trainer import TrainResult, train

log = logging.getLogger(__name__)


def mlflow_command() -> str:
    """The mlflow executable of this environment, as the user would type it from here."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        return "mlflow"
    relative = os.path.relpath(exe)  # .venv/bin/mlflow from the project folder
    return str(exe) if relative.startswith("..") else relative


def aligned(label: str, items: list[str]) -> list[str]:
    """`label` beside the first item, the rest aligned under it."""
    return [f"{label if i == 0 else '':<16}{item}" for i, item in enumerate(items or ["none"])]


def _serve_commands(decisions: list[Decision]) -> list[str]:
    """One serve command per alias that someone holds (this run's model or the one it did not displace), each on
    its own port (5001, 5002, ...)."""
    held = [d for d in decisions if d.promoted or d.previous_version]
    return [
        f"bash scripts/serve.sh --model-uri models:/{d.name}@{d.alias} --port {5001 + i}" for i, d in enumerate(held)
    ]


def report(
    result: TrainResult,
    ev: Evaluation,
    models: list[LoggedModel],
    decisions: list[Decision],
    litert_ev: Evaluation | None = None,
) -> str:
    link = runs.run_link(result.run_id)
    ui = link["ui_command"].replace("mlflow ui", f"{mlflow_command()} ui", 1)
    registered = [
        f"models:/{m.registered_name}/{m.version} ({kind})"
        for m, kind in zip(models, ("Keras", "LiteRT"), strict=True)
        if m.version
    ]
    return "\n".join(
        [
            "",
            f"run:            {link['run_name']} ({result.run_id}), {result.epochs_run} epochs",
            f"test accuracy:  {ev.metrics['test_accuracy']:.4f}",
            *(
                [f"{'':<16}{litert_ev.metrics['test_accuracy']:.4f} (the LiteRT model, evaluation/litert/)"]
                if litert_ev
                else []
            ),
            *aligned("registered:", registered),
            *aligned("champion:", [d.reason for d in decisions]),
            *aligned("serve:", _serve_commands(decisions)),
            f"local files:    {result.out_dir}",
            f"MLflow UI:      {ui}",
            f"                then open {link['run_page']}",
        ]
    )


def pipeline(cfg: TrainConfig) -> tuple[TrainResult, Evaluation | None]:
    if not is_chief_process(cfg):
        return train(cfg), None  # a non-chief worker trains its part; the chief evaluates, exports and logs
    rt = build_runtime(cfg)  # before any TensorFlow op (a tfds or user-function task runs some)
    task = resolve_task(cfg)
    previous = command_state(cfg, task.identity).interrupted_run()
    with runs.step_run(run_name(cfg, task), resume_run_id=previous) as run:
        result = train(cfg, task, rt, run=run)
        ev = evaluate(result.model.readable_uri, data=task)
        exported = export(result.model.uri, output_dir=cfg.tracking.output_dir, data=task)
        # the LiteRT model's own diagnostics, beside the Keras model's: metrics litert_*, evaluation/litert/
        litert_ev = evaluate(exported.litert.readable_uri, data=task, prefix="litert_", quiet=True)
        models = [result.model, exported.litert]
        allowed = cfg.tracking.allow_shape_change
        decisions = [promote(m.version_uri, allow_shape_change=allowed) for m in models if m.version]
    log.info(report(result, ev, models, decisions, litert_ev))
    return result, ev
