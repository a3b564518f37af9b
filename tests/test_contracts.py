"""recsys_core.contracts: the recommendation contract and conform()."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from recsys_core.contracts import (
    ALL_TABLES,
    INTERACTIONS,
    RECOMMENDATIONS,
    TS,
    ContractViolation,
    conform,
)

NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def loose_recommendations() -> pa.Table:
    """Recommendation rows with columns shuffled, wider types and an extra column."""
    return pa.table(
        {
            "source": ["model", "fallback"],
            "score": pa.array([0.9, 0.5], pa.float64()),
            "generated_at": pa.array([NOW, NOW], pa.timestamp("ns", tz="UTC")),
            "model_version": ["3", "3"],
            "item_id": ["i1", "i2"],
            "debug": [1, 2],
            "rank": pa.array([1, 2], pa.int64()),
            "model_name": ["recsys-seq", "recsys-seq"],
            "user_id": ["u1", "u1"],
            "reason_item_id": ["i9", None],
            "reason": ["Because you watched i9", "Trending this week"],
        }
    )


def interactions_row(**overrides) -> dict:
    row = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "rating",
        "event_ts": NOW,
        "value": 4.0,
        "source_file": "f.jsonl.gz",
        "line_no": 1,
        "ingest_dt": date(2024, 5, 1),
        "extra": None,
        "dt": date(2024, 5, 1),
    }
    row.update(overrides)
    return row


def test_recommendations_contract_columns_and_types():
    schema = RECOMMENDATIONS.schema
    assert RECOMMENDATIONS.columns == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "model_name",
        "model_version",
        "generated_at",
        "source",
        "reason_item_id",
        "reason",
    ]
    assert schema.field("user_id").type == pa.string()
    assert schema.field("rank").type == pa.int32()
    assert schema.field("item_id").type == pa.string()
    assert schema.field("score").type == pa.float32()
    assert schema.field("model_name").type == pa.string()
    assert schema.field("model_version").type == pa.string()
    assert schema.field("generated_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("source").type == pa.string()
    assert schema.field("reason_item_id").type == pa.string() and schema.field("reason_item_id").nullable
    assert schema.field("reason").type == pa.string()
    assert pa.timestamp("us", tz="UTC") == TS


def test_all_tables_are_registered_by_name():
    assert ALL_TABLES["recommendations"] is RECOMMENDATIONS
    assert ALL_TABLES["interactions"] is INTERACTIONS
    assert all(name == t.name for name, t in ALL_TABLES.items())


def test_conform_reorders_casts_and_drops_extra_columns():
    out = conform(loose_recommendations(), RECOMMENDATIONS)
    assert out.schema.equals(RECOMMENDATIONS.schema)
    assert "debug" not in out.column_names
    assert out.column("rank").to_pylist() == [1, 2]
    assert out.column("score").to_pylist() == pytest.approx([0.9, 0.5])
    assert out.column("generated_at").to_pylist() == [NOW, NOW]
    assert out.column("user_id").to_pylist() == ["u1", "u1"]


def test_conform_keeps_a_table_that_already_matches():
    good = conform(loose_recommendations(), RECOMMENDATIONS)
    again = conform(good, RECOMMENDATIONS)
    assert again.equals(good)


def test_conform_names_missing_columns_and_place():
    table = loose_recommendations().drop_columns(["score", "model_version"])
    with pytest.raises(ContractViolation) as info:
        conform(table, RECOMMENDATIONS, where="recommend stage")
    message = str(info.value)
    assert "recommendations at recommend stage" in message
    assert "'score'" in message and "'model_version'" in message
    assert "'rank'" not in message.split("got")[0]


def test_conform_rejects_uncastable_strings_naming_the_column():
    table = loose_recommendations().set_column(1, "score", pa.array(["high", "low"]))
    with pytest.raises(ContractViolation, match=r"column 'score' has type string, expected float"):
        conform(table, RECOMMENDATIONS)


def test_conform_rejects_lossy_integer_cast_instead_of_overflowing():
    table = loose_recommendations()
    idx = table.column_names.index("rank")
    table = table.set_column(idx, "rank", pa.array([1, 2**40], pa.int64()))
    with pytest.raises(ContractViolation, match=r"'rank'.*expected int32"):
        conform(table, RECOMMENDATIONS)


def test_conform_rejects_timestamp_cast_that_would_lose_precision():
    table = loose_recommendations()
    idx = table.column_names.index("generated_at")
    ns = pa.array([1_700_000_000_000_000_001, 1_700_000_000_000_000_000], pa.timestamp("ns", tz="UTC"))
    table = table.set_column(idx, "generated_at", ns)
    with pytest.raises(ContractViolation, match="generated_at"):
        conform(table, RECOMMENDATIONS)


def test_contract_violation_is_a_value_error():
    assert issubclass(ContractViolation, ValueError)


def test_partition_column_may_be_absent():
    rows = [interactions_row()]
    without_dt = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "dt"} for r in rows])
    out = conform(without_dt, INTERACTIONS)
    assert out.column_names == [c for c in INTERACTIONS.columns if c != "dt"]
    assert out.schema.field("line_no").type == pa.int64()
    assert out.schema.field("event_ts").type == TS


def test_partition_column_is_kept_and_typed_when_present():
    out = conform(pa.Table.from_pylist([interactions_row(dt="2024-05-01")]), INTERACTIONS)  # dt as a string
    assert out.schema.equals(INTERACTIONS.schema)
    assert out.column("dt").to_pylist() == [date(2024, 5, 1)]
    with pytest.raises(ContractViolation, match="'dt'"):
        conform(pa.Table.from_pylist([interactions_row(dt="yesterday")]), INTERACTIONS)


def test_absent_partition_does_not_excuse_other_missing_columns():
    row = {k: v for k, v in interactions_row().items() if k not in ("dt", "line_no")}
    with pytest.raises(ContractViolation, match=r"missing columns \['line_no'\]"):
        conform(pa.Table.from_pylist([row]), INTERACTIONS)
