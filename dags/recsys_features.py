"""recsys_features: raw logs → validated interactions + quarantine → user profiles and item features.

Both Spark stages go through spark-submit with the ``spark_default`` connection
(``local[*]`` on the embedded default, a cluster master in production). The
ingest catches up every landed day not yet ingested, then rebuilds the run
date. On success the ``recsys://lake/features`` asset event carries the run
date to ``recsys_train``.
"""

from __future__ import annotations

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG
from recsys_common import FEATURES_ASSET, JOBS, RUN_DATE, RUN_DATE_PARAM, emit, resolve_run_date, spark_job_conf

with DAG(
    dag_id="recsys_features",
    description="Ingest raw events and build point-in-time features",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={"run_date": RUN_DATE_PARAM},
    doc_md=__doc__,
    tags=["recsys", "spark"],
) as dag:
    run_date = resolve_run_date()
    ingest = SparkSubmitOperator(
        task_id="ingest_events",
        application=str(JOBS / "ingest_events.py"),
        application_args=["--date", RUN_DATE, "--catch-up"],
        conn_id="spark_default",
        conf=spark_job_conf(),
        name="recsys-ingest",
    )
    features = SparkSubmitOperator(
        task_id="build_features",
        application=str(JOBS / "build_features.py"),
        application_args=["--date", RUN_DATE],
        conn_id="spark_default",
        conf=spark_job_conf(),
        name="recsys-features",
    )
    run_date >> ingest >> features >> emit(FEATURES_ASSET)(run_date)
