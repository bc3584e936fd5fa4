-- A second database on the same server for the MLflow tracking server's backend store.
CREATE DATABASE mlflow OWNER eeopt;
