"""recsys_features: raw logs → validated interactions + quarantine → user profiles and item features.

Both Spark stages go through spark-submit with the ``spark_default`` connection
(``local[*]`` on the embedded default, a cluster master in production). The
ingest catches up every landed day not yet ingested, then rebuilds the run
date. On success the ``recsys://lake/features`` asset event carries the run
date to ``recsys_train``.
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from recsys_common import FEATURES_ASSET, JOBS, RUN_DATE, emit, recsys_dag, resolve_run_date, spark_job_conf

with recsys_dag(
    "recsys_features",
    description="Ingest raw events and build point-in-time features",
    schedule="@daily",
    doc_md=__doc__,
    tags=["spark"],
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
