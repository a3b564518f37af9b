#!/bin/bash
# One PostgreSQL instance, two databases with their own owners:
#   airflow - Airflow's metadata DB and the Celery result backend
#   mlflow  - MLflow's tracking and model registry store
# Run once by the postgres image on an empty data volume
# (/docker-entrypoint-initdb.d). Passwords come from the environment
# (docker/.env); none is written here. Changing them later needs
# ALTER ROLE ... PASSWORD (or a fresh pg-data volume).
# No `set -u`: the image's entrypoint sources (rather than runs) a .sh that
# lost its executable bit, and the option would then leak into it.
set -eo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"

# psql variables (:'name') quote the values as SQL literals.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" \
  -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow WITH LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow WITH LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
SQL
