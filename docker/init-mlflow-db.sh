#!/bin/sh
# Run once by the postgres image on a new volume: a second database, for the MLflow tracking server's backend.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE mlflow OWNER \"$POSTGRES_USER\";"
