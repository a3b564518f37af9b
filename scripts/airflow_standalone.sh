#!/usr/bin/env bash
# Airflow standalone on 127.0.0.1 with the project's DAGs. The admin password is
# generated on first start (never a default) and printed below.
set -euo pipefail
source "$(dirname "$0")/airflow_env.sh"
airflow db migrate >/dev/null
echo "Airflow UI: http://${AIRFLOW__API__HOST}:${AIRFLOW__API__PORT}  (user: admin)"
( for _ in $(seq 1 120); do
    if [ -s "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ]; then
      echo "Password for admin: $(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")"
      echo "(stored in $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE)"
      break
    fi
    sleep 1
  done ) &
exec airflow standalone
