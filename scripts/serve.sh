#!/usr/bin/env bash
# Serve a logged model with `tftrain serve` (MLflow's scoring server in worker processes), from this project's venv and
# tracking store (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db). Arguments go to `tftrain serve`:
#   bash scripts/serve.sh                                                   # models:/tftrain-fashion-mnist@champion on 127.0.0.1:5001
#   bash scripts/serve.sh --model-uri models:/tftrain-fashion-mnist-litert@champion --port 5002
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
exec .venv/bin/tftrain serve "$@"
