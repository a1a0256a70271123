#!/usr/bin/env bash
# Dockerfile.gpu's entry point: the MLflow project (arguments go to `mlflow run`), with the tracking store,
# artifacts (./mlruns) and outputs (./outputs) all in the /store volume, whatever user the container runs as.
set -euo pipefail
mkdir -p /store/outputs /store/mlruns
cd /home/tftrain/project
exec mlflow run . --env-manager local "$@"
