#!/bin/sh
# optuna-dashboard for the team stack's Optuna storage; docker-compose.yml and the native tests
# (tests/services.py) run this file. The storage URL is read from the environment, so its password never appears
# on a command line (`ps` shows every process's arguments). Optuna's tables are created first when missing (the
# dashboard itself refuses an empty database).
#   OPTUNA_STORAGE                  postgresql+psycopg://USER:PASSWORD@HOST:PORT/optuna
#   DASHBOARD_HOST, DASHBOARD_PORT  where to listen (default 127.0.0.1:8080)
set -eu
: "${OPTUNA_STORAGE:?set OPTUNA_STORAGE (the Optuna storage URL)}"
export OPTUNA_STORAGE
exec python -c 'import os, optuna, optuna_dashboard
optuna.storages.RDBStorage(os.environ["OPTUNA_STORAGE"])
optuna_dashboard.run_server(os.environ["OPTUNA_STORAGE"], host=os.environ.get("DASHBOARD_HOST", "127.0.0.1"),
                            port=int(os.environ.get("DASHBOARD_PORT", "8080")))'
