#!/bin/sh
# The MLflow tracking server of the team stack: PostgreSQL backend, artifacts stored by the server (proxied, so
# clients on any node only need HTTP). docker-compose.yml and the native tests (tests/services.py) run this file.
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg://USER:PASSWORD@HOST:PORT/mlflow (read by mlflow from the
#                                 environment: the password never appears on a command line)
#   MLFLOW_ARTIFACTS_DESTINATION  a folder (a shared volume) or an object-store URI
#   MLFLOW_HOST, MLFLOW_PORT      where to listen (default 127.0.0.1:5000)
#   MLFLOW_ALLOWED_HOSTS          Host headers to accept (default: localhost and 127.0.0.1, any port)
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql+psycopg://...)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (a folder or URI)}"
export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
# One worker and no job runner: the default (4 workers + a job runner) is ~16 processes and 3 GB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers 1 \
    --serve-artifacts --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*}"
