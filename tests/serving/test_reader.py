"""recsys_core.io.recommendations: only complete (manifested) partitions are ever visible."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from recsys_core.contracts import RECOMMENDATIONS
from recsys_core.io.lake import MANIFEST, Lake
from recsys_core.io.recommendations import LATEST, RecommendationReader
from recsys_core.serving.output import build_table

NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def night(score: float = 1.0):
    return build_table(
        ["u1", "u2"],
        ["a", "b", "c"],
        np.array([[0, 1], [2, 0]]),
        np.array([[score, 0.5], [0.7, 0.1]], np.float32),
        np.array(["model", "model"]),
        "m",
        "1",
        NOW,
        reason_item_ids=np.array([["x", None], [None, "x"]], dtype=object),
        titles={"x": "Toy Story (1995)"},
    )


def publish(lake: Lake, dt: str, score: float = 1.0) -> str:
    staged = lake.new_staging_path(RECOMMENDATIONS, f"dt={dt}")
    lake.write_parquet(night(score), staged)
    return lake.publish(RECOMMENDATIONS, dt, staged, {"users": 2, "k": 2})


def test_incomplete_partitions_are_invisible(settings):
    lake = Lake(settings.lake)
    publish(lake, "2024-05-01")
    publish(lake, "2024-05-02")
    # A folder without manifest (e.g. copied by hand, or an object store mid-copy) and a staging leftover.
    lake.write_parquet(night(), lake.partition_path(RECOMMENDATIONS, "2024-05-03"))
    lake.write_parquet(night(), lake.new_staging_path(RECOMMENDATIONS, "dt=2024-05-04"))
    reader = RecommendationReader(settings)
    assert reader.dates() == ["2024-05-01", "2024-05-02"]
    assert reader.latest_date() == "2024-05-02"
    with pytest.raises(FileNotFoundError, match="no complete partition"):
        reader.table("2024-05-03")
    table = reader.table("2024-05-01")
    assert table.num_rows == 4 and table["user_id"].to_pylist() == ["u1", "u1", "u2", "u2"]
    assert reader.manifest("2024-05-01")["rows"] == 4


def test_latest_pointer_to_a_missing_night_falls_back(settings):
    lake = Lake(settings.lake)
    publish(lake, "2024-05-01")
    lake.write_json(lake.path(RECOMMENDATIONS.name, LATEST), {"dt": "2024-05-09"})
    assert RecommendationReader(settings).latest_date() == "2024-05-01"
    lake.write_json(lake.path(RECOMMENDATIONS.name, LATEST), {"dt": "2024-05-01"})
    dt, rows = RecommendationReader(settings).for_user("u2")
    assert dt == "2024-05-01" and [r["item_id"] for r in rows] == ["c", "a"]


def test_no_nights_at_all(settings):
    with pytest.raises(FileNotFoundError, match="no published recommendations"):
        RecommendationReader(settings).latest_date()


def test_manifest_checksum_matches_the_files(settings):
    lake = Lake(settings.lake)
    path = publish(lake, "2024-05-01")
    manifest = json.loads((lake.fs.open_input_stream(f"{path}/{MANIFEST}")).read().decode())
    assert manifest["checksum_sha256"] == lake.checksum(path)


def test_a_night_reads_the_same_in_duckdb(settings):
    import duckdb

    lake = Lake(settings.lake)
    path = publish(lake, "2024-05-01")
    rows = duckdb.sql(
        "SELECT user_id, rank, item_id, score, source, reason_item_id, reason "
        f"FROM read_parquet('{path}/*.parquet') WHERE user_id = 'u2' ORDER BY rank"
    ).fetchall()
    assert rows == [
        ("u2", 1, "c", pytest.approx(0.7), "model", None, "Popular with viewers like you"),
        ("u2", 2, "a", pytest.approx(0.1), "model", "x", "Because you watched Toy Story (1995)"),
    ]
    schema = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{path}/*.parquet')").fetchall()}
    assert schema["rank"] == "INTEGER" and schema["score"] == "FLOAT" and schema["generated_at"].startswith("TIMESTAMP")
