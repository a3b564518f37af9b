"""Shared fixtures: isolated settings, one local Spark session, and a small real pipeline run.

The pipeline fixture runs the real engines once per test session (Spark
local, torchrun with 2 processes, MLflow on SQLite) on a seeded synthetic log,
and the stage tests assert on what it left behind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# py4j logs "closing down" from finalizers after pytest has closed its streams.
logging.getLogger("py4j").setLevel(logging.WARNING)
# Tests start from the model's defaults plus explicit overrides, not from the demo's YAML.
os.environ.setdefault("RECSYS_CONFIG", str(Path(__file__).resolve().parent / "recsys-test.yaml"))

from recsys_core.config import Settings, settings_for  # noqa: E402

TEST_SPARK = {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"}
START = date(2024, 1, 1)
DAYS = 12


def make_settings(root: Path, **overrides) -> Settings:
    base = {
        "data_root": root,
        "spark": TEST_SPARK,
        "ingest": {"max_reject_rate": 1.0},
        "eval": {"backtest_horizon_days": 3},
        "train": {
            "epochs": 6,
            "eval_every": 2,
            "batch_size": 64,
            "nproc_per_node": 2,
            "model": {"d_model": 32, "max_len": 20, "n_layers": 1},
            "calibration": {"min_users": 5},
        },
        "serve": {"top_k": 10},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return settings_for(**base)


@pytest.fixture
def no_recsys_env(monkeypatch, tmp_path) -> Path:
    """No RECSYS_* variable of the caller's shell, and an empty working directory (no config/ in it)."""
    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_core.io.spark import spark_session

    session = spark_session(make_settings(tmp_path_factory.mktemp("spark")), "tests")
    yield session
    session.stop()


@dataclass
class PipelineRun:
    settings: Settings
    run_date: date
    generated: dict
    ingest_reports: list
    features: dict
    training: dict
    recommend: dict


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, spark) -> PipelineRun:
    """Synthetic logs → ingest → features → torchrun (2 processes) → registry → nightly, for real."""
    from recsys_core.io.datasets.synthetic import SyntheticSpec, generate_logs
    from recsys_core.io.lake import Lake
    from recsys_core.stages.features import run_features
    from recsys_core.stages.ingest import landed_dates, run_ingest
    from recsys_core.stages.recommend import run_recommend
    from recsys_core.stages.train import launch_training

    root = tmp_path_factory.mktemp("pipeline")
    settings = make_settings(root, ingest={"max_reject_rate": 0.2})
    spec = SyntheticSpec(events=6000, users=150, items=120, days=DAYS, seed=7, bad_fraction=0.02, start=START)
    generated = generate_logs(spec, Lake(settings.lake))
    run_date = START + timedelta(days=DAYS - 2)
    # All days are ingested; features as of run_date must still ignore the later ones.
    reports = run_ingest(settings, landed_dates(Lake(settings.lake)), spark=spark)
    features = run_features(settings, run_date, spark=spark)
    training = launch_training(settings, run_date, nproc=2)
    recommend = run_recommend(settings, run_date)
    return PipelineRun(settings, run_date, generated, reports, features, training, recommend)
