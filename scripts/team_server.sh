#!/usr/bin/env bash
# A team MLflow tracking server: runs and the model registry in PostgreSQL, artifacts proxied by the server (clients
# need no access to the artifact store), basic authentication, and host checks when listening beyond this machine.
#
#   export BACKEND_STORE_URI=postgresql+psycopg2://mlflow:SECRET@db-host:5432/mlflow   # required
#   export MLFLOW_AUTH_ADMIN_PASSWORD=...     # the `admin` user's password, used when the server first starts
#   HOST=0.0.0.0 ALLOWED_HOSTS=mlflow.example.org,mlflow.example.org:5000 bash scripts/team_server.sh
#
# Settings (environment): ARTIFACTS_DESTINATION (default ./mlartifacts; or s3://bucket/path, gs://...),
# AUTH_DATABASE_URI (users and permissions; default sqlite:///mlflow-auth.db here), HOST (default 127.0.0.1),
# PORT (5000), WORKERS (2), ALLOWED_HOSTS (required when HOST is not 127.0.0.1/localhost: the names clients use),
# AUTH (true; false turns authentication off, for a server only this machine can reach),
# MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF key of the auth app; default: a new random one each start).
# Clients: MLFLOW_TRACKING_URI=http://HOST:PORT, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh >&2

fail() { echo "team_server.sh: $*" >&2; exit 2; }
[ -n "${BACKEND_STORE_URI:-}" ] || fail "set BACKEND_STORE_URI, e.g. postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
args=(server --backend-store-uri "$BACKEND_STORE_URI" --serve-artifacts
      --artifacts-destination "${ARTIFACTS_DESTINATION:-$PWD/mlartifacts}"
      --host "$HOST" --port "$PORT" --workers "${WORKERS:-2}")
case "$HOST" in
  127.0.0.1|localhost|::1) ;;
  *) [ -n "${ALLOWED_HOSTS:-}" ] || fail "HOST=$HOST listens beyond this machine: set ALLOWED_HOSTS to the host names clients use"
     args+=(--allowed-hosts "$ALLOWED_HOSTS") ;;
esac
case "${AUTH:-true}" in
  true)
    [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] || [ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ] \
      || fail "set MLFLOW_AUTH_ADMIN_PASSWORD (the admin user's password) or AUTH=false"
    if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
      MLFLOW_AUTH_CONFIG_PATH="$(mktemp -t mlflow-auth.XXXXXX.ini)"
      export MLFLOW_AUTH_CONFIG_PATH
      printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\nadmin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
        "${AUTH_DATABASE_URI:-sqlite:///$PWD/mlflow-auth.db}" > "$MLFLOW_AUTH_CONFIG_PATH"
    fi
    # CSRF protection of the auth app's forms; a new key per start unless one is given (give the same one to every
    # server behind a load balancer).
    if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
      MLFLOW_FLASK_SERVER_SECRET_KEY="$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(32))')"
      export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    args+=(--app-name basic-auth) ;;
  false) ;;
  *) fail "AUTH must be true or false; received '${AUTH}'" ;;
esac
echo "team server on http://$HOST:$PORT (backend ${BACKEND_STORE_URI%%://*}, artifacts proxied)" >&2
exec .venv/bin/mlflow "${args[@]}"
