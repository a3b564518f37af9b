"""Shared wiring of the recsys DAGs: assets, the run-date rule and job paths. No business logic."""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, Param, task

PROJECT = Path(__file__).resolve().parents[1]
JOBS = PROJECT / "jobs"
PYTHON = sys.executable  # the venv that runs Airflow also runs the jobs

FEATURES_ASSET = Asset("recsys://lake/features", extra={"tables": ["interactions", "user_profiles", "item_features"]})
MODEL_ASSET = Asset("recsys://registry/champion")
RECOMMENDATIONS_ASSET = Asset("recsys://lake/recommendations")

RUN_DATE_PARAM = Param(
    None,
    type=["null", "string"],
    format="date",
    title="Run date",
    description="Process data as of the end of this UTC day. Empty: the triggering asset's date, else the logical date.",
)
RUN_DATE = "{{ ti.xcom_pull(task_ids='resolve_run_date') }}"


def recsys_dag(dag_id: str, *, description: str, schedule, doc_md: str | None, tags: list[str]) -> DAG:
    """The settings every recsys DAG shares: one run at a time, no catch-up, a run_date param."""
    return DAG(
        dag_id=dag_id,
        description=description,
        schedule=schedule,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        params={"run_date": RUN_DATE_PARAM},
        doc_md=doc_md,
        tags=["recsys", *tags],
    )


@task
def resolve_run_date(**context) -> str:
    """The run date: the run_date param, else the newest date of the triggering asset events, else the logical date."""
    if context["params"].get("run_date"):
        return str(context["params"]["run_date"])
    events = context.get("triggering_asset_events") or {}
    # Asset events can arrive batched; the newest date covers the older ones.
    dates = [e.extra.get("run_date") for batch in events.values() for e in batch if e.extra and e.extra.get("run_date")]
    if dates:
        return max(dates)
    dag_run = context["dag_run"]
    when = dag_run.logical_date or dag_run.run_after
    return when.date().isoformat()


def emit(asset: Asset):
    """A task that records an asset event carrying the run date, so consumers process the same date."""

    @task(task_id="publish_asset_event", outlets=[asset])
    def _emit(run_date: str, **context) -> str:
        context["outlet_events"][asset].extra = {"run_date": run_date}
        return run_date

    return _emit


def spark_job_conf() -> dict[str, str]:
    return {"spark.pyspark.python": PYTHON, "spark.pyspark.driver.python": PYTHON}
