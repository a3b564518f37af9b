"""Publishing safety of the nightly job: validation gates the swap, reruns are idempotent to the byte,
leftovers of killed runs are cleaned, ``latest`` never moves backwards."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.fs as pafs
import pytest

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import MANIFEST, STAGING, TRASH, Lake
from recsys_core.io.recommendations import LATEST, RecommendationReader
from recsys_core.serving.output import build_table, content_digest

NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def small_night():
    return build_table(
        ["u1"], ["a", "b"], np.array([[1, 0]]), np.array([[0.5, 0.1]], np.float32), np.array(["model"]), "m", "1", NOW
    )


def publish(lake: Lake, dt: str) -> str:
    staged = lake.new_staging_path(RECOMMENDATIONS, f"dt={dt}")
    lake.write_parquet(small_night(), staged)
    return lake.publish(RECOMMENDATIONS, dt, staged, {"users": 1, "k": 2})


def children(lake: Lake, folder: str) -> list[str]:
    base = lake.path(RECOMMENDATIONS.name, folder)
    return sorted(i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(base))) if lake.exists(base) else []


# Fast: leftovers and the latest pointer --------------------------------------------------
def test_tidy_removes_this_dates_leftovers_only(settings):
    from datetime import date

    from recsys_core.stages.recommend import tidy_leftovers

    lake = Lake(settings.lake)
    publish(lake, "2024-05-01")
    lake.new_staging_path(RECOMMENDATIONS, "dt=2024-05-01")
    lake.new_staging_path(RECOMMENDATIONS, "dt=2024-05-02")  # another date: maybe a running backfill
    lake.fs.create_dir(lake.path(RECOMMENDATIONS.name, TRASH, "dt=2024-05-01.abc"), recursive=True)
    tidy_leftovers(lake, date(2024, 5, 1))
    assert [c.split(".")[0] for c in children(lake, STAGING)] == ["dt=2024-05-02"]
    assert children(lake, TRASH) == []
    assert RecommendationReader(settings).dates() == ["2024-05-01"]


def test_tidy_restores_a_partition_left_in_trash(settings):
    from datetime import date

    from recsys_core.stages.recommend import tidy_leftovers

    lake = Lake(settings.lake)
    path = publish(lake, "2024-05-01")
    checksum = lake.checksum(path)
    # Killed between publish's two renames: the old version is aside, the new one still staged.
    trash = lake.path(RECOMMENDATIONS.name, TRASH, "dt=2024-05-01.0123456789ab")
    lake.fs.create_dir(trash.rsplit("/", 1)[0], recursive=True)
    lake.fs.move(path, trash)
    assert RecommendationReader(settings).dates() == []  # missing, but nothing partial is visible
    tidy_leftovers(lake, date(2024, 5, 1))
    assert RecommendationReader(settings).dates() == ["2024-05-01"] and lake.checksum(path) == checksum


def test_old_champion_copies_go_and_the_current_one_stays(settings):
    import os

    from recsys_core.stages.recommend import MODEL_COPY_GRACE, MODELS, prune_model_copies

    lake = Lake(settings.lake)
    now = datetime.now(UTC)
    written = {"current": now - 3 * MODEL_COPY_GRACE, "old": now - 2 * MODEL_COPY_GRACE, "recent": now, ".half.1f2e": now}
    written[".killed.9a8b"] = now - 2 * MODEL_COPY_GRACE
    for name, when in written.items():
        folder = lake.path(MODELS, name)
        lake.fs.create_dir(folder, recursive=True)
        with lake.fs.open_output_stream(f"{folder}/model.pt") as out:
            out.write(b"weights")
        os.utime(f"{folder}/model.pt", (when.timestamp(), when.timestamp()))
    assert sorted(prune_model_copies(lake, "current", now)) == [".killed.9a8b", "old"]
    assert sorted(c.base_name for c in lake.fs.get_file_info(pafs.FileSelector(lake.path(MODELS)))) == [
        ".half.1f2e",
        "current",
        "recent",
    ]


def test_latest_never_moves_backwards(settings):
    from datetime import date

    from recsys_core.stages.recommend import _update_latest

    lake = Lake(settings.lake)
    publish(lake, "2024-05-01")
    publish(lake, "2024-05-03")
    assert _update_latest(lake, date(2024, 5, 3), "p3")
    assert not _update_latest(lake, date(2024, 5, 1), "p1")  # a backfill
    assert RecommendationReader(settings).latest_date() == "2024-05-03"
    lake.fs.delete_dir(lake.partition_path(RECOMMENDATIONS, "2024-05-03"))
    assert _update_latest(lake, date(2024, 5, 1), "p1")  # the pointer named a night that is gone
    assert RecommendationReader(settings).latest_date() == "2024-05-01"


def test_unavailable_items_and_status_column():
    import pyarrow as pa

    from recsys_core.config import ServeSettings
    from recsys_core.stages.recommend import available_catalogue

    items = pa.table({"item_id": ["c", "a", "b", "d"], "status": ["available", None, "withdrawn", "available"]})
    catalogue, excluded = available_catalogue(items, ServeSettings(unavailable_items=["d"]))
    assert catalogue["item_id"].to_pylist() == ["a", "c"] and excluded == ["b", "d"]
    catalogue, excluded = available_catalogue(items.drop_columns(["status"]), ServeSettings())
    assert catalogue["item_id"].to_pylist() == ["a", "b", "c", "d"] and excluded == []
    flags = pa.table({"item_id": ["a", "b"], "status": [True, False]})
    assert available_catalogue(flags, ServeSettings())[0]["item_id"].to_pylist() == ["a"]


# On the pipeline's lake ------------------------------------------------------------------------
def copy_pipeline(pipeline, dest, **serve):
    shutil.copytree(pipeline.settings.data_root, dest)
    base = pipeline.settings
    return base.model_copy(update={"data_root": dest, "serve": base.serve.model_copy(update=serve)})


@pytest.mark.spark
@pytest.mark.torchrun
@pytest.mark.mlflow
@pytest.mark.slow
def test_rerun_keeps_the_partition_byte_for_byte(pipeline, tmp_path):
    from recsys_core.stages.recommend import run_recommend

    settings = copy_pipeline(pipeline, tmp_path / "data")
    lake = Lake(settings.lake)
    path = lake.partition_path(RECOMMENDATIONS, pipeline.run_date)
    before = (lake.read_manifest(path), lake.checksum(path), lake.read_partition(RECOMMENDATIONS, pipeline.run_date))
    assert before[0]["content_digest"] == content_digest(before[2])
    summary = run_recommend(settings, pipeline.run_date)
    assert summary["status"] == "unchanged" and summary["content_digest"] == before[0]["content_digest"]
    after = (lake.read_manifest(path), lake.checksum(path), lake.read_partition(RECOMMENDATIONS, pipeline.run_date))
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2].equals(before[2])  # generated_at included
    assert children(lake, STAGING) == [] and children(lake, TRASH) == []

    # Different rows (K=5): a new version is published, with its own digest and generated_at.
    changed = settings.model_copy(update={"serve": settings.serve.model_copy(update={"top_k": 5})})
    assert run_recommend(changed, pipeline.run_date)["status"] == "published"
    manifest = lake.read_manifest(path)
    assert manifest["rows"] == 5 * before[0]["users"] and manifest["content_digest"] != before[0]["content_digest"]
    assert manifest["checksum_sha256"] == lake.checksum(path)
    for key in ("users", "model_name", "model_version", "mlflow_run_id", "input_partitions", "created_at", "report"):
        assert key in manifest
    assert children(lake, STAGING) == [] and children(lake, TRASH) == []


@pytest.mark.spark
@pytest.mark.torchrun
@pytest.mark.mlflow
@pytest.mark.slow
def test_a_failed_validation_publishes_nothing(pipeline, tmp_path, monkeypatch):
    import recsys_core.stages.recommend as stage
    from recsys_core.serving.validate import InvalidRecommendations

    settings = copy_pipeline(pipeline, tmp_path / "data", top_k=3)  # would be new rows
    lake = Lake(settings.lake)
    path = lake.partition_path(RECOMMENDATIONS, pipeline.run_date)
    checksum = lake.checksum(path)

    def reject(table, **_):
        raise InvalidRecommendations("rejected by the test")

    monkeypatch.setattr(stage, "validate_recommendations", reject)
    with pytest.raises(InvalidRecommendations):
        stage.run_recommend(settings, pipeline.run_date)
    assert lake.checksum(path) == checksum and children(lake, STAGING) == []
    monkeypatch.undo()
    # A real failure: K larger than what some user has left.
    too_big = settings.model_copy(update={"serve": settings.serve.model_copy(update={"top_k": 10_000})})
    with pytest.raises(ValueError, match=r"larger than the catalogue|fewer than K"):
        stage.run_recommend(too_big, pipeline.run_date)
    assert lake.checksum(path) == checksum and RecommendationReader(settings).dates() == [pipeline.run_date.isoformat()]


@pytest.mark.spark
@pytest.mark.torchrun
@pytest.mark.mlflow
@pytest.mark.slow
def test_a_backfill_publishes_an_older_night_without_moving_latest(pipeline, tmp_path):
    from recsys_core.stages.recommend import run_recommend

    settings = copy_pipeline(pipeline, tmp_path / "data")
    lake = Lake(settings.lake)
    earlier = pipeline.run_date - timedelta(days=1)
    for contract in (USER_PROFILES, ITEM_FEATURES):  # the features of the day before (same content, enough here)
        shutil.copytree(lake.partition_path(contract, pipeline.run_date), lake.partition_path(contract, earlier))
    summary = run_recommend(settings, earlier)
    assert summary["status"] == "published" and not summary["latest_moved"]
    reader = RecommendationReader(settings)
    assert reader.dates() == [earlier.isoformat(), pipeline.run_date.isoformat()]
    assert reader.latest_date() == pipeline.run_date.isoformat()
    assert lake.exists(lake.path(RECOMMENDATIONS.name, LATEST))
    assert lake.exists(f"{lake.partition_path(RECOMMENDATIONS, earlier)}/{MANIFEST}")
