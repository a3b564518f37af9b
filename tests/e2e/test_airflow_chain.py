"""The three DAGs, run for real with `airflow dags test` in order, on a small synthetic log."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import date
from pathlib import Path

import pytest
import yaml

from recsys_core.config import settings_for
from recsys_core.contracts import RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.datasets.synthetic import SyntheticSpec, generate_logs
from recsys_core.io.lake import Lake

from .live_airflow import airflow_local

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.torchrun, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[2]
RUN_DATE = date(2024, 3, 6)


def airflow_env(tmp_path: Path, config_file: Path) -> dict[str, str]:
    base = {
        **os.environ,
        "RECSYS_DATA_ROOT": str(tmp_path / "data"),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "RECSYS_CONFIG": str(config_file),
    }
    return airflow_local.airflow_env(base)


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "w") as handle:
        result = subprocess.run(command, env=env, cwd=PROJECT, stdout=handle, stderr=subprocess.STDOUT, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n" + "\n".join(log.read_text().splitlines()[-80:])


def test_features_train_nightly_through_airflow(tmp_path):
    config = {
        "data_root": str(tmp_path / "data"),
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"},
        "features": {"text_embeddings": False},
        "train": {"epochs": 2, "batch_size": 64, "nproc_per_node": 2, "model": {"d_model": 32, "max_len": 20, "n_layers": 1}},
        "serve": {"top_k": 10},
        "orchestration": {"data_wait_timeout_minutes": 1, "data_poke_seconds": 5, "retries": 0},
    }
    config_file = tmp_path / "recsys.yaml"
    config_file.write_text(yaml.safe_dump(config))
    settings = settings_for(**config)
    lake = Lake(settings.lake)
    generate_logs(SyntheticSpec(events=3000, users=80, items=60, days=6, seed=3, start=date(2024, 3, 1)), lake)

    env = airflow_env(tmp_path, config_file)
    run(["airflow", "db", "migrate"], env, tmp_path / "migrate.log")
    conf = json.dumps({"run_date": RUN_DATE.isoformat()})
    for dag_id in ("recsys_features", "recsys_train", "recsys_nightly"):
        run(["airflow", "dags", "test", dag_id, "-c", conf], env, tmp_path / f"{dag_id}.log")

    assert lake.partitions(RECOMMENDATIONS) == [RUN_DATE.isoformat()]
    recs = lake.read_partition(RECOMMENDATIONS, RUN_DATE)
    users = lake.read_partition(USER_PROFILES, RUN_DATE).num_rows
    assert recs.num_rows == users * 10
    log = (tmp_path / "recsys_features.log").read_text()
    assert "spark-submit" in log
