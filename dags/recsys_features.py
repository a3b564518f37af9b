"""### recsys_features: raw logs → validated interactions + quarantine → user profiles and item features

**Runs** once per UTC day that has ended (`orchestration.daily_cron`), for that day, and whenever
triggered with a `run_date`. A scheduled run first waits for the day's raw events to land (reschedule
mode, `orchestration.data_wait_timeout_minutes`); on the embedded default a scheduled day without data
is skipped instead, since nothing lands there on its own.

**Writes** (the lake, `<data_root>/lake/` on the embedded default):
- `interactions/dt=<event date>/ingest_dt=<arrival date>/`, `quarantine/` and each day's `_report.json`
  (every input row accepted or quarantined with a reason);
- `user_profiles/dt=<run date>/` and `item_features/dt=<run date>/`, point in time, with manifests.

Both Spark stages go through spark-submit with the `spark_default` connection (`local[*]` on the
embedded default, a cluster master in production). On success the `recsys://lake/features` asset event
(run date, rows, partition paths) starts `recsys_nightly` and, when training is due, `recsys_train`.
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from recsys_common import (
    FEATURES_ASSET,
    JOBS,
    RUN_DATE,
    daily,
    emit,
    recsys_dag,
    resolve_run_date,
    spark_job_conf,
    timeout,
    wait_for,
)

with recsys_dag(
    "recsys_features",
    description="Ingest raw events and build point-in-time features",
    schedule=daily(),
    doc_md=__doc__,
    tags=["spark"],
) as dag:
    run_date = resolve_run_date()
    landed = wait_for("raw events", "Waits for `raw/events/dt=<run date>/` to hold a file (reschedule mode).")
    ingest = SparkSubmitOperator(
        application=str(JOBS / "ingest_events.py"),
        application_args=["--date", RUN_DATE, "--catch-up"],
        conn_id="spark_default",
        conf=spark_job_conf(),
        name="recsys-ingest",
        doc_md="Spark: parses and validates every landed day not yet ingested, then the run date; writes "
        "`interactions/` and `quarantine/` with a per-day `_report.json` (rows in, accepted, quarantined by reason).",
        **timeout("ingest_events"),
    )
    features = SparkSubmitOperator(
        application=str(JOBS / "build_features.py"),
        application_args=["--date", RUN_DATE],
        conn_id="spark_default",
        conf=spark_job_conf(),
        name="recsys-features",
        doc_md="Spark: builds `user_profiles/dt=<run date>/` and `item_features/dt=<run date>/` from events "
        "before the end of the run date only, checks them, and publishes them with manifests.",
        **timeout("build_features"),
    )
    run_date >> landed >> ingest >> features >> emit(FEATURES_ASSET, "features_event")(run_date)
