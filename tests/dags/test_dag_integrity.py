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
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    import sys

    # Airflow puts the DAGs folder on sys.path when it parses DAGs; so does this test.
    monkey = pytest.MonkeyPatch()
    monkey.syspath_prepend(str(DAGS))
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(DAGS))
    monkey.undo()
    sys.modules.pop("recsys_common", None)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_the_three_dags_exist(dagbag):
    assert {"recsys_features", "recsys_train", "recsys_nightly"} <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", ["recsys_features", "recsys_train", "recsys_nightly"])
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
    assert dag.get_task("ingest_events").downstream_task_ids == {"build_features"}


def test_dags_are_chained_by_assets(dagbag):
    features = dagbag.dags.get("recsys_features")
    train = dagbag.dags.get("recsys_train")
    nightly = dagbag.dags.get("recsys_nightly")
    produced = {a.uri for t in features.tasks for a in t.outlets}
    assert "recsys://lake/features" in produced
    assert [a.uri for a in train.timetable.asset_condition.objects] == ["recsys://lake/features"]
    model_produced = {a.uri for t in train.tasks for a in t.outlets}
    assert "recsys://registry/champion" in model_produced
    assert [a.uri for a in nightly.timetable.asset_condition.objects] == ["recsys://registry/champion"]


def test_training_runs_torchrun(dagbag):
    torchrun = dagbag.dags.get("recsys_train").get_task("torchrun_ddp")
    assert "train_step.py torchrun" in torchrun.bash_command
