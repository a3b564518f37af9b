"""The scale-out switch, end to end: the CLI chain and an Airflow DAG on a Spark standalone cluster, an
MLflow server on PostgreSQL (artifacts on an S3 API) and Airflow's metadata on PostgreSQL, moved there by
``RECSYS_*`` variables only (``conftest.cluster_env``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from recsys_core.config import Settings, load_settings
from recsys_core.io.recommendations import RecommendationReader

from .engines import BIN, PROJECT, SparkCluster, assert_keeps_the_contract, cluster_env, run_logged

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]

START = date(2024, 3, 1)
DAYS = 12
RUN_DATE = START + timedelta(days=DAYS - 2)
SPARK_STAGES = ("ingest", "features", "recommend")


@dataclass
class Chain:
    env: dict[str, str]
    settings: Settings
    logs: Path
    outputs: dict[str, str]


def settings_of(env: dict[str, str], monkeypatch) -> Settings:
    """The settings the chain's processes load: the same variables, read by the same loader."""
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("RECSYS_")]:
            patch.delenv(key)
        for key, value in env.items():
            if key.startswith("RECSYS_"):
                patch.setenv(key, value)
        return load_settings()


@pytest.fixture(scope="module")
def chain(tmp_path_factory, spark_cluster, mlflow_server, s3) -> Chain:
    """generate-logs → ingest → features → train → recommend, each a `recsys` process as a user runs it."""
    root = tmp_path_factory.mktemp("scale-out")
    env = cluster_env(root / "data", spark_cluster, mlflow_server, **s3.env)
    recsys = str(BIN / "recsys")
    day = RUN_DATE.isoformat()
    steps = {
        "generate": [
            recsys,
            "generate-logs",
            "--events",
            "3000",
            "--users",
            "80",
            "--items",
            "60",
            "--days",
            str(DAYS),
            "--seed",
            "3",
            "--start",
            START.isoformat(),
        ],
        "ingest": [recsys, "ingest", "--date", day, "--catch-up"],
        "features": [recsys, "features", "--date", day],
        "train": [recsys, "train", "--date", day],
        "recommend": [recsys, "recommend", "--date", day],
    }
    outputs = {name: run_logged(command, env, root / f"{name}.log", timeout_s=600) for name, command in steps.items()}
    with pytest.MonkeyPatch.context() as monkeypatch:
        settings = settings_of(env, monkeypatch)
    return Chain(env, settings, root, outputs)


def apps_by_stage(cluster: SparkCluster) -> dict[str, list[dict]]:
    apps: dict[str, list[dict]] = {stage: [] for stage in SPARK_STAGES}
    for app in cluster.completed_apps():
        for stage in SPARK_STAGES:
            if app["name"].startswith(f"recsys-{stage}-"):
                apps[stage].append(app)
    return apps


def test_cli_chain_publishes_a_night_and_the_server_holds_the_champion(chain, spark_cluster, mlflow_server, postgres, s3):
    import mlflow

    settings = chain.settings
    assert settings.spark.master == spark_cluster.url and settings.tracking_uri == mlflow_server.url
    assert settings.serve.engine == "spark"

    table = assert_keeps_the_contract(settings, RUN_DATE)
    reader = RecommendationReader(settings)
    assert reader.latest_date() == RUN_DATE.isoformat()
    manifest = reader.manifest(RUN_DATE)
    assert manifest["engine"] == "spark" and manifest["rows"] == table.num_rows

    # The registry lives on the server: the alias, the version the night was scored with, and the
    # PostgreSQL rows behind them; the model's files went over HTTP to the server's S3 bucket.
    client = mlflow.MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    name = settings.train.model_name
    champion = client.get_model_version_by_alias(name, settings.registry.champion_alias)
    assert str(champion.version) == manifest["model_version"] == set(table["model_version"].to_pylist()).pop()
    assert champion.run_id == manifest["mlflow_run_id"]
    aliases = postgres.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases")
    assert (name, "champion", int(champion.version)) in aliases
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert s3.keys("mlflow", "artifacts/"), "no artifact reached the server's bucket"
    assert not (settings.data_root / "mlflow").exists(), "something wrote a local MLflow store"

    # Every Spark stage ran as an application of the standalone master, and finished.
    apps = apps_by_stage(spark_cluster)
    assert all(apps[stage] for stage in SPARK_STAGES), {stage: len(found) for stage, found in apps.items()}
    assert {app["state"] for found in apps.values() for app in found} == {"FINISHED"}
    assert not spark_cluster.status()["activeapps"]


def test_nightly_dag_with_airflow_on_postgres(chain, spark_cluster, postgres, tmp_path):
    """`airflow dags test recsys_nightly` with Airflow's metadata in PostgreSQL re-scores the night on the
    cluster: a Spark application on the master, the same rows (the partition is left as published)."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("airflow_local_for_cluster", PROJECT / "scripts" / "airflow_local.py")
    assert spec is not None and spec.loader is not None
    airflow_local = module_from_spec(spec)
    sys.modules[spec.name] = airflow_local  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(airflow_local)

    before = len(apps_by_stage(spark_cluster)["recommend"])
    published = RecommendationReader(chain.settings).manifest(RUN_DATE)
    env = airflow_local.airflow_env(
        {
            **chain.env,
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url("airflow"),
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": spark_cluster.url}),
        }
    )
    airflow = str(BIN / "airflow")
    run_logged([airflow, "db", "migrate"], env, tmp_path / "migrate.log")
    conf = json.dumps({"run_date": RUN_DATE.isoformat()})
    run_logged([airflow, "dags", "test", "recsys_nightly", "-c", conf], env, tmp_path / "nightly.log", timeout_s=600)

    runs = postgres.query("airflow", "SELECT state FROM dag_run WHERE dag_id = 'recsys_nightly'")
    assert runs == [("success",)], runs
    tasks = dict(postgres.query("airflow", "SELECT task_id, state FROM task_instance WHERE dag_id = 'recsys_nightly'"))
    assert tasks.get("score_and_publish") == "success", tasks
    assert len(apps_by_stage(spark_cluster)["recommend"]) == before + 1
    again = RecommendationReader(chain.settings).manifest(RUN_DATE)
    assert again["content_digest"] == published["content_digest"], "a rerun of the same night changed its rows"
