#!/usr/bin/env bash
# The main job on the embedded defaults: train, evaluate and export through the MLflow project, tracked in
# ./mlflow.db. Extra arguments go to `mlflow run`, e.g. scripts/run.sh -P model=cnn -P epochs=5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
# --env-manager local runs the entry point with the `python` on PATH: make it this venv's.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/mlflow run . --env-manager local --experiment-name tftrain "$@"
