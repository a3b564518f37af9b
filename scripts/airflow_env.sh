# Environment of the embedded Airflow (SQLite, LocalExecutor, 127.0.0.1). Source it; no secrets here.
_project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RECSYS_DATA_ROOT="${RECSYS_DATA_ROOT:-$_project/.recsys}"
export RECSYS_CONFIG="${RECSYS_CONFIG:-$_project/config/recsys.yaml}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$RECSYS_DATA_ROOT/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$_project/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
# SQLite lets one writer at a time; the scheduler, api-server and a CLI (backfill create) write together,
# so a writer waits up to 30 s for the lock instead of failing with "database is locked" after 5 s.
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=30}"
# The project's DAGs come up unpaused: an asset event that reaches a paused consumer is dropped.
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
# Task workers reach the api-server here; the default (localhost:8080) ignores the port chosen above.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"
# The default goes through a variable: a literal "}" inside ${...:-...} would close the expansion early
# and add a stray "}" to a value set before (sourcing this twice broke the JSON).
_spark_local='{"conn_type": "spark", "host": "local[*]"}'
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-$_spark_local}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
# torchrun's gloo peers connect over loopback only (its TCPStore still listens on every interface).
export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-lo}"
export MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$_project${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$AIRFLOW_HOME"
unset _project _spark_local
