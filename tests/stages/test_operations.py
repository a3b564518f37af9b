"""The decisions the DAGs take between stages, on the real pipeline's lake and registry."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.stages import operations

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]


def test_inputs_of_a_day(pipeline):
    settings, day = pipeline.settings, pipeline.run_date
    assert operations.raw_events_landed(settings, day)
    assert operations.features_ready(settings, day)
    later = day + timedelta(days=30)
    assert not operations.raw_events_landed(settings, later)
    assert not operations.features_ready(settings, later)
    assert operations.raw_events_folder(settings, later).endswith(f"raw/events/dt={later}")
    assert [f.rsplit("/", 2)[-2:] for f in operations.features_folders(settings, later)] == [
        ["user_profiles", f"dt={later}"],
        ["item_features", f"dt={later}"],
    ]


def test_training_cadence(pipeline):
    settings, day = pipeline.settings, pipeline.run_date
    every = settings.orchestration.train_every_days
    version, as_of = operations.champion_trained_as_of(settings)
    assert version == pipeline.training["model_version"] and as_of == day

    def decide(run_date, requested=False):
        return operations.training_decision(settings, run_date, requested=requested)

    assert not decide(day + timedelta(days=every - 1)).train
    assert "next due" in decide(day + timedelta(days=every - 1)).reason
    assert decide(day + timedelta(days=every)).train
    assert not decide(day - timedelta(days=1)).train, "a backfilled older day does not retrain"
    assert decide(day, requested=True).train


def test_no_champion_means_training(settings):
    assert operations.champion_trained_as_of(settings) is None
    decision = operations.training_decision(settings, date(2024, 1, 5), requested=False)
    assert decision.train and "no model holds" in decision.reason


def test_a_new_champion_refreshes_the_latest_night(pipeline):
    settings, day = pipeline.settings, pipeline.run_date
    assert operations.refresh_date(settings, day - timedelta(days=2)) == day
    assert operations.refresh_date(settings, day) == day


def test_asset_events_describe_what_was_written(pipeline):
    settings, day = pipeline.settings, pipeline.run_date
    lake = Lake(settings.lake)
    features = operations.features_event(settings, day)
    assert features["run_date"] == day.isoformat()
    assert features["user_profiles"]["rows"] == lake.read_partition(USER_PROFILES, day).num_rows
    assert features["item_features"]["path"] == lake.partition_path(ITEM_FEATURES, day)

    model = operations.model_event(settings, day)
    assert model["model_version"] == pipeline.training["model_version"]
    assert model["promoted"] is True and model["trained_as_of"] == day.isoformat()
    assert model["run_date"] == day.isoformat(), "the latest published night is this one"

    recs = operations.recommendations_event(settings, day)
    assert recs["rows"] == lake.read_partition(RECOMMENDATIONS, day).num_rows
    assert recs["model_version"] == pipeline.training["model_version"]


def test_manifest_records_the_models_training_cutoff(pipeline):
    lake = Lake(pipeline.settings.lake)
    manifest = lake.read_manifest(lake.partition_path(RECOMMENDATIONS, pipeline.run_date))
    assert manifest["model_trained_as_of"] == pipeline.run_date.isoformat()
    assert manifest["model_train_cutoff"].startswith((pipeline.run_date + timedelta(days=1)).isoformat())
