"""Every DAG imports cleanly and is wired as documented (real Airflow DagBag, no scheduler)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_IDS = ("recsys_features", "recsys_train", "recsys_nightly")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    monkey = pytest.MonkeyPatch()
    monkey.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    monkey.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkey.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
    # Airflow puts the DAGs folder on sys.path when it parses DAGs; so does this test.
    monkey.syspath_prepend(str(DAGS))
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(DAGS))
    monkey.undo()
    sys.modules.pop("recsys_common", None)


def serialized(dag):
    """The DAG as the scheduler sees it (timetables gain their scheduling properties there)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_the_three_dags_exist(dagbag):
    assert set(DAG_IDS) <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_no_cycles_and_a_single_start(dagbag, dag_id):
    from airflow.utils.dag_cycle_tester import check_cycle

    dag = dagbag.dags[dag_id]
    check_cycle(dag)  # raises on a cycle
    assert [t.task_id for t in dag.roots] == ["resolve_run_date"]


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_operations_grade_settings(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and "Writes" in dag.doc_md, "the DAG doc says what it does and where its output goes"
    assert "recsys" in dag.tags and len(dag.tags) >= 2
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.is_paused_upon_creation is False, "the chain must run from one trigger, with no unpausing by hand"
    for task in dag.tasks:
        assert task.doc_md, f"{dag_id}.{task.task_id} has no doc_md"
        assert task.owner == "recsys"
        assert task.retries >= 1 and task.retry_exponential_backoff, f"{dag_id}.{task.task_id} retries"
        assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"
        assert task.on_failure_callback, f"{dag_id}.{task.task_id} has no failure summary"


def test_timeouts_come_from_config(dagbag):
    from recsys_core.config import get_settings

    configured = get_settings().orchestration.task_timeout_minutes
    task_ids = {t.task_id for dag_id in DAG_IDS for t in dagbag.dags[dag_id].tasks}
    assert set(configured) <= task_ids, f"config names tasks that do not exist: {set(configured) - task_ids}"
    for task_id, minutes in configured.items():
        for dag_id in DAG_IDS:
            if task_id in dagbag.dags[dag_id].task_ids:
                assert dagbag.dags[dag_id].get_task(task_id).execution_timeout.total_seconds() == minutes * 60


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_run_date_param_in_date_form(dagbag, dag_id):
    param = dagbag.dags.get(dag_id).params.get_param("run_date")
    assert param.schema.get("format") == "date"
    assert "null" in param.schema.get("type")


def test_spark_stages_use_spark_submit_with_the_default_connection(dagbag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    dag = dagbag.dags.get("recsys_features")
    spark_tasks = [t for t in dag.tasks if isinstance(t, SparkSubmitOperator)]
    assert {t.task_id for t in spark_tasks} == {"ingest_events", "build_features"}
    assert all(t._conn_id == "spark_default" for t in spark_tasks)
    assert dag.get_task("wait_for_raw_events").downstream_task_ids == {"ingest_events"}
    assert dag.get_task("ingest_events").downstream_task_ids == {"build_features"}


def test_inputs_are_awaited_in_reschedule_mode(dagbag):
    for dag_id, sensor in (("recsys_features", "wait_for_raw_events"), ("recsys_nightly", "wait_for_features")):
        task = dagbag.dags[dag_id].get_task(sensor)
        assert task.mode == "reschedule"
        assert task.timeout > 0


def test_schedules_match_daily_operations(dagbag):
    features = serialized(dagbag.dags["recsys_features"])
    train = serialized(dagbag.dags["recsys_train"])
    nightly = serialized(dagbag.dags["recsys_nightly"])
    # Daily features; nightly after each day's features or a new champion, and daily on its own.
    assert features.timetable.periodic and features.timetable.can_be_scheduled
    assert nightly.timetable.periodic, "recsys_nightly must accept `airflow backfill create`"
    nightly_assets = {a.uri for a in nightly.timetable.asset_condition.objects}
    assert nightly_assets == {"recsys://lake/features", "recsys://registry/champion"}
    # Training follows the features event (the cadence is decided inside the run) or a manual trigger.
    assert [a.uri for a in train.timetable.asset_condition.objects] == ["recsys://lake/features"]


def test_assets_are_produced_where_consumed(dagbag):
    produced = {dag_id: {a.uri for t in dagbag.dags[dag_id].tasks for a in t.outlets} for dag_id in DAG_IDS}
    assert produced["recsys_features"] == {"recsys://lake/features"}
    assert produced["recsys_train"] == {"recsys://registry/champion"}
    assert produced["recsys_nightly"] == {"recsys://lake/recommendations"}


def test_training_is_decided_then_runs_torchrun(dagbag):
    dag = dagbag.dags.get("recsys_train")
    assert dag.get_task("decide_training").downstream_task_ids == {"prepare_dataset"}
    assert "train_step.py torchrun" in dag.get_task("torchrun_ddp").bash_command


def test_nightly_checks_for_a_champion_before_scoring(dagbag):
    dag = dagbag.dags.get("recsys_nightly")
    assert dag.get_task("wait_for_features").downstream_task_ids == {"check_champion"}
    assert dag.get_task("check_champion").downstream_task_ids == {"score_and_publish"}


def test_failure_summary_finds_the_first_error_line(dagbag, tmp_path):
    import json

    from recsys_common import first_error_line

    log_file = tmp_path / "attempt=1.log"
    events = [
        "Running command: python jobs/train_step.py evaluate --date 2024-03-06",
        "Traceback (most recent call last):",
        "recsys_core.errors.MissingInput: no trained model at /x/best.pt\nhint: run the torchrun step first",
        "airflow.sdk.exceptions.AirflowException: Bash command failed. The command returned a non-zero exit code 1.",
    ]
    log_file.write_text("\n".join(json.dumps({"event": e}) for e in events))
    assert first_error_line(log_file, None) == "recsys_core.errors.MissingInput: no trained model at /x/best.pt"
    assert first_error_line(tmp_path / "missing.log", RuntimeError("boom\nmore")) == "boom"


def test_forget_dag_is_manual_with_user_and_request_params(dagbag, tmp_path):
    import json
    import subprocess

    dag = dagbag.dags["recsys_forget"]
    assert dag.timetable.can_be_scheduled is False, "forgetting runs only when triggered by hand"
    assert dag.max_active_runs == 1 and dag.catchup is False and "Writes" in dag.doc_md
    assert dag.params.get_param("user_ids").schema["type"] == "array"
    assert dag.params.get_param("request_id").schema["type"] == "string"
    [task] = dag.tasks
    assert task.doc_md and task.retries >= 1 and task.execution_timeout is not None and task.on_failure_callback
    # The Params reach the job as JSON in the environment: a hostile id stays a string, runs nothing.
    rendered = dag.params.get_param("user_ids").resolve(["42", '"; touch pwned; "'])
    env = {"FORGET_USERS": json.dumps(rendered)}
    out = subprocess.run(["bash", "-c", 'printf %s "$FORGET_USERS"'], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert json.loads(out.stdout) == rendered and not (tmp_path / "pwned").exists()
    assert "$FORGET_USERS" in task.bash_command and "{{" not in task.bash_command
