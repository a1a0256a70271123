"""`tftrain sync`: upload an offline journal (journal.py) into the run it belongs to."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np

from tftrain.tracking.journal import entries
from tftrain.tracking.logged_models import Provenance, log_keras_model
from tftrain.tracking.runs import logged_steps

log = logging.getLogger(__name__)


def replay_journal(folder: Path) -> str:
    """Upload an offline journal into its run (metrics not there yet, artifacts, the model), end the run as it
    ended offline, and remove the journal. Returns the run id."""
    record, items = entries(folder)
    run_id = record["run_id"]
    status = "FAILED"  # unless the journal says how the run ended
    mlflow.start_run(run_id=run_id)
    for item in items:
        if "metrics" in item:  # skip what reached the server after all
            fresh = {k: v for k, v in item["metrics"].items() if item["step"] not in logged_steps(run_id, k)}
            mlflow.log_metrics(fresh, step=item["step"])
        elif "artifacts" in item:
            mlflow.log_artifacts(item["artifacts"], item["artifact_path"])
        elif "artifact_file" in item:
            mlflow.log_artifact(item["artifact_file"], item["artifact_path"])
        elif "tags" in item:
            mlflow.set_tags(item["tags"])
        elif "model" in item:
            model = keras.saving.load_model(folder / item["model"], safe_mode=True)
            example = np.asarray(item["example"]["inputs"])
            made = Provenance(tuple(item["class_names"]), item["training_data"], item["trained_name"])
            logged = log_keras_model(model, item["registered_name"], example, made)
            log.info(f"model {logged.uri}" + (f", registered as version {logged.version}" if logged.version else ""))
        elif "end" in item:
            status = item["end"]
    mlflow.end_run(status)
    shutil.rmtree(folder)
    return run_id
