"""Shared wiring of the recsys DAGs: assets, schedules, the run-date rule, input sensors, retries and
failure summaries. No business logic: every decision is one call into ``recsys_core.stages.operations``.

Schedules, retries, timeouts and how long to wait for data come from the ``orchestration`` section of
the project's configuration (``config/recsys.yaml`` or ``RECSYS_CONFIG``), read when the DAGs are parsed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import date, timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, BaseSensorOperator, CronDataIntervalTimetable, Param, conf, task
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

from recsys_core.config import get_settings
from recsys_core.io.spark_cds import driver_conf

PROJECT = Path(__file__).resolve().parents[1]
JOBS = PROJECT / "jobs"
PYTHON = sys.executable  # the venv that runs Airflow also runs the jobs
OPS = get_settings().orchestration

log = logging.getLogger(__name__)

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


def daily() -> CronDataIntervalTimetable:
    """One run per UTC day that has ended: the logical date is the day, so a backfill's dates are the run dates."""
    return CronDataIntervalTimetable(OPS.daily_cron, timezone="UTC")


def recsys_dag(
    dag_id: str, *, description: str, schedule, doc_md: str | None, tags: list[str], params: dict | None = None
) -> DAG:
    """The settings every recsys DAG shares.

    - ``max_active_runs=1``: runs of one DAG share the lake's pointers and the training workspace,
      and two at once would only compete for the same cores; backfills queue behind each other.
    - ``catchup=False``: the ingest catches up every landed day by itself, so missed days need no
      replay; history is rebuilt on purpose with ``airflow backfill create``.
    - Unpaused at creation: the chain features → train → nightly runs from one trigger.
    - ``params``: the DAG's own Params instead of the run date (``recsys_forget``).
    """
    return DAG(
        dag_id=dag_id,
        description=description,
        schedule=schedule,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        params=params if params is not None else {"run_date": RUN_DATE_PARAM},
        default_args={
            "owner": OPS.owner,
            "retries": OPS.retries,
            "retry_delay": timedelta(seconds=OPS.retry_delay_seconds),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(seconds=OPS.max_retry_delay_seconds),
            "execution_timeout": timedelta(minutes=OPS.default_timeout_minutes),
            "on_failure_callback": log_failure_summary,
        },
        doc_md=doc_md,
        tags=["recsys", *tags],
    )


def timeout(task_id: str) -> dict:
    """``task_id`` and its configured ``execution_timeout``, for an operator's keyword arguments."""
    return {"task_id": task_id, "execution_timeout": timedelta(minutes=OPS.timeout_minutes(task_id))}


def run_type(context) -> str:
    kind = context["dag_run"].run_type
    return getattr(kind, "value", kind)


@task
def resolve_run_date(**context) -> str:
    """The day this run processes: the `run_date` param, else the newest date of the triggering asset
    events, else the run's logical date (the day a scheduled or backfill run covers)."""
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


# Waiting for input ---------------------------------------------------------------------
INPUTS = {
    # name: (is it there?, what is expected) in recsys_core.stages.operations
    "raw events": ("raw_events_landed", "raw_events_folder"),
    "features": ("features_ready", "features_folders"),
}


class DayInputSensor(BaseSensorOperator):
    """Waits in reschedule mode (no worker slot held) for one day's input, up to the configured timeout;
    then fails with one line naming what it expected. A scheduled run skips instead when
    ``orchestration.missing_scheduled_input`` is ``skip`` (the embedded default)."""

    template_fields = ("run_date",)

    def __init__(self, *, input_name: str, run_date: str, **kwargs):
        super().__init__(
            mode="reschedule",
            poke_interval=OPS.data_poke_seconds,
            timeout=OPS.data_wait_timeout_minutes * 60,
            **kwargs,
        )
        self.input_name = input_name
        self.run_date = run_date

    def _check(self) -> tuple[bool, object]:
        from recsys_core.stages import operations

        ready, expected = (getattr(operations, name) for name in INPUTS[self.input_name])
        settings, day = get_settings(), date.fromisoformat(self.run_date)
        return ready(settings, day), expected(settings, day)

    def poke(self, context) -> bool:
        ready, expected = self._check()
        if ready:
            self.log.info("%s of %s are there: %s", self.input_name, self.run_date, expected)
            return True
        if run_type(context) == "scheduled" and OPS.missing_scheduled_input == "skip":
            raise AirflowSkipException(
                f"no {self.input_name} for {self.run_date} at {expected}; this scheduled run skips "
                "(orchestration.missing_scheduled_input: skip)"
            )
        self.log.info("waiting for %s of %s at %s", self.input_name, self.run_date, expected)
        return False

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowSensorTimeout as err:
            _, expected = self._check()
            raise AirflowSensorTimeout(
                f"no {self.input_name} for {self.run_date} arrived at {expected} within "
                f"{OPS.data_wait_timeout_minutes:g} min; land them, then clear this task"
            ) from err


def wait_for(input_name: str, doc_md: str) -> DayInputSensor:
    return DayInputSensor(
        input_name=input_name, run_date=RUN_DATE, doc_md=doc_md, **timeout(f"wait_for_{input_name.replace(' ', '_')}")
    )


# Asset events ------------------------------------------------------------------------------
def emit(asset: Asset, event: str, *, only_if: str | None = None):
    """A task that records an asset event whose extra is ``recsys_core.stages.operations.<event>``: run
    date, rows, partition paths, model version. With ``only_if``, the event is sent only when that
    field of the extra is true (otherwise the task skips, and nothing downstream is triggered)."""

    doc = f"Records a `{asset.uri}` asset event whose extra is `operations.{event}`" + (
        f", only when `{only_if}` is true." if only_if else "."
    )

    @task(task_id="publish_asset_event", outlets=[asset], doc_md=doc)
    def _emit(run_date: str, **context) -> dict:
        from recsys_core.stages import operations

        extra = getattr(operations, event)(get_settings(), date.fromisoformat(run_date))
        if only_if and not extra.get(only_if):
            raise AirflowSkipException(f"no {asset.uri} event: {json.dumps(extra)}")
        context["outlet_events"][asset].extra = extra
        log.info("%s event: %s", asset.uri, json.dumps(extra))
        return extra

    return _emit


def spark_job_conf() -> dict[str, str]:
    # The driver JVM's options must be on spark-submit's command line: the job's session starts too late for them.
    return {"spark.pyspark.python": PYTHON, "spark.pyspark.driver.python": PYTHON, **driver_conf(get_settings())}


# Failures ------------------------------------------------------------------------------------
ERROR_LINE = re.compile(r"^\s*(recsys_core\.[\w.]+|[\w.]*(Error|Exception|Timeout))\b:|^recsys: ")


def task_log_path(ti) -> Path:
    """Where the task's log file is on the embedded default (the configured filename template)."""
    import jinja2

    template = conf.get("logging", "log_filename_template")
    relative = jinja2.Template(template).render(ti=ti, try_number=ti.try_number)
    return Path(conf.get("logging", "base_log_folder")) / relative


def first_error_line(log_file: Path, exception: BaseException | None) -> str:
    """The first line of the task's log that names an error (a job's own cause), else the exception."""
    if log_file.exists():
        for raw in log_file.read_text(errors="replace").splitlines():
            try:
                text = str(json.loads(raw).get("event", ""))
            except (ValueError, AttributeError):
                text = raw
            for line in text.splitlines():
                if ERROR_LINE.search(line):
                    return line.strip()
    return str(exception).splitlines()[0] if exception else "unknown error"


def log_failure_summary(context) -> None:
    """One paragraph a person can act on: which DAG, task and day failed, why, and where the log is."""
    ti = context["ti"]
    try:
        run_date = ti.xcom_pull(task_ids="resolve_run_date") or "unresolved"
    except Exception:  # noqa: BLE001 - the summary must never hide the original failure
        run_date = "unresolved"
    log_file = task_log_path(ti)
    log.error(
        "recsys task failed: DAG %s, task %s, run %s (run date %s), try %s. First error: %s. Full log: %s",
        ti.dag_id,
        ti.task_id,
        ti.run_id,
        run_date,
        ti.try_number,
        first_error_line(log_file, context.get("exception")),
        log_file,
    )
