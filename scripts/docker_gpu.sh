#!/usr/bin/env bash
# Build Dockerfile.gpu and run the MLflow project in it on every GPU of this host (NVIDIA Container Toolkit needed).
#   bash scripts/docker_gpu.sh                                   # the main job, precision=mixed_float16
#   bash scripts/docker_gpu.sh -e train -P model=cnn -P epochs=30 -P precision=mixed_float16
# Arguments go to `mlflow run` inside the container. Runs, models and outputs land in ./store (mounted at /store;
# `mlflow ui --backend-store-uri sqlite:///store/mlflow.db` shows them), or on a tracking server when
# MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) are set. Debian's Fashion-MNIST
# is mounted when this host has it; otherwise pass -P data_dir=/store/<folder> with the IDX files under ./store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE="${IMAGE:-tftrain-gpu}"
if ! command -v docker >/dev/null; then
  echo "docker_gpu.sh: docker is not installed on this host" >&2
  exit 2
fi
docker build -f Dockerfile.gpu -t "$IMAGE" .
mkdir -p store
run=(docker run --rm --gpus all --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$PWD/store:/store")
data=/usr/share/datasets/fashion-mnist
[ -d "$data" ] && run+=(-v "$data:$data:ro")
for var in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD MLFLOW_EXPERIMENT_NAME; do
  [ -n "${!var:-}" ] && run+=(-e "$var")
done
# A tracking server on this host is reachable from the container through the host's network.
case "${MLFLOW_TRACKING_URI:-}" in *127.0.0.1*|*localhost*) run+=(--network host) ;; esac
exec "${run[@]}" "$IMAGE" "$@"
