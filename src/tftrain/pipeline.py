"""The main job: train, then evaluate, export and promote that model and its LiteRT twin, all in one MLflow run;
ends with where to look."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
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
from tftrain.training.trainer import train

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
    trained: Trained,
    ev: Evaluation,
    models: list[LoggedModel],
    decisions: list[Decision],
    litert_ev: Evaluation | None = None,
) -> str:
    link = runs.run_link(trained.run_id)
    ui = link["ui_command"].replace("mlflow ui", f"{mlflow_command()} ui", 1)
    registered = [
        f"models:/{m.registered_name}/{m.version} ({kind})"
        for m, kind in zip(models, ("Keras", "LiteRT"), strict=True)
        if m.version
    ]
    return "\n".join(
        [
            "",
            f"run:            {link['run_name']} ({trained.run_id}), {trained.epochs} epochs",
            f"test accuracy:  {ev.metrics['test_accuracy']:.4f}",
            *(
                [f"{'':<16}{litert_ev.metrics['test_accuracy']:.4f} (the LiteRT model, evaluation/litert/)"]
                if litert_ev
                else []
            ),
            *aligned("registered:", registered),
            *aligned("champion:", [d.reason for d in decisions]),
            *aligned("serve:", _serve_commands(decisions)),
            f"local files:    {trained.out_dir}",
            f"MLflow UI:      {ui}",
            f"                then open {link['run_page']}",
        ]
    )


@dataclass(frozen=True)
class Trained:
    """What the main job goes on with after training, here or on Ray."""

    run_id: str
    model: LoggedModel
    epochs: int
    out_dir: Path


def pipeline(cfg: TrainConfig) -> Evaluation | None:
    """Train (in this process, or with launcher=ray on the Ray cluster's workers, this process the driver), then
    evaluate, export and promote here, in one run."""
    if not is_chief_process(cfg):
        train(cfg)  # a non-chief worker trains its part; the chief evaluates, exports and logs
        return None
    on_ray = cfg.runtime.launcher == "ray"
    rt = None if on_ray else build_runtime(cfg)  # before any TensorFlow op (a tfds or user-function task runs some)
    task = resolve_task(cfg)  # on the driver too: evaluate and export score its test split
    previous = command_state(cfg, task.identity).interrupted_run()
    with runs.step_run(run_name(cfg, task), resume_run_id=previous) as run:
        if on_ray:
            from tftrain.cluster.launcher import train_on_ray

            model = train_on_ray(cfg, run_id=run.run_id)
            epochs = len(runs.logged_steps(run.run_id))
            trained = Trained(run.run_id, model, epochs, Path(cfg.tracking.output_dir).resolve() / run.run_id)
        else:
            result = train(cfg, task, rt, run=run)
            trained = Trained(result.run_id, result.model, result.epochs_run, result.out_dir)
        ev = evaluate(trained.model.readable_uri, data=task)
        exported = export(trained.model.uri, output_dir=cfg.tracking.output_dir, data=task)
        # the LiteRT model's own diagnostics, beside the Keras model's: metrics litert_*, evaluation/litert/
        litert_ev = evaluate(exported.litert.readable_uri, data=task, prefix="litert_", quiet=True)
        models = [trained.model, exported.litert]
        allowed = cfg.tracking.allow_shape_change
        decisions = [promote(m.version_uri, allow_shape_change=allowed) for m in models if m.version]
    log.info(report(trained, ev, models, decisions, litert_ev))
    return ev
