"""Every DAG imports cleanly and is wired as documented (real Airflow DagBag, no scheduler)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), include_examples=False)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_the_three_dags_exist(dagbag):
    assert {"recsys_features", "recsys_train", "recsys_nightly"} <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", ["recsys_features", "recsys_train", "recsys_nightly"])
def test_run_date_param_in_date_form(dagbag, dag_id):
    param = dagbag.get_dag(dag_id).params.get_param("run_date")
    assert param.schema.get("format") == "date"
    assert "null" in param.schema.get("type")


def test_spark_stages_use_spark_submit_with_the_default_connection(dagbag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    dag = dagbag.get_dag("recsys_features")
    spark_tasks = [t for t in dag.tasks if isinstance(t, SparkSubmitOperator)]
    assert {t.task_id for t in spark_tasks} == {"ingest_events", "build_features"}
    assert all(t._conn_id == "spark_default" for t in spark_tasks)
    assert dag.get_task("ingest_events").downstream_task_ids == {"build_features"}


def test_dags_are_chained_by_assets(dagbag):
    features = dagbag.get_dag("recsys_features")
    train = dagbag.get_dag("recsys_train")
    nightly = dagbag.get_dag("recsys_nightly")
    produced = {a.uri for t in features.tasks for a in t.outlets}
    assert "recsys://lake/features" in produced
    assert "recsys://lake/features" in {a.uri for a in train.timetable.asset_condition.iter_assets().values()} | {
        getattr(a, "uri", None) for a in getattr(train.timetable.asset_condition, "objects", [])
    }
    model_produced = {a.uri for t in train.tasks for a in t.outlets}
    assert "recsys://registry/champion" in model_produced
    assert nightly.timetable.asset_condition is not None


def test_training_runs_torchrun(dagbag):
    torchrun = dagbag.get_dag("recsys_train").get_task("torchrun_ddp")
    assert "train_step.py torchrun" in torchrun.bash_command
