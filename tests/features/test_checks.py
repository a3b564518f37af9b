"""The data checks at the lake's boundaries (pandera on pyarrow; no Spark)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, QUARANTINE, USER_PROFILES
from recsys_core.features.checks import MODELS, DataCheckFailed, check_table

UTC = UTC
DAY = date(2024, 5, 1)
CONTRACTS = (INTERACTIONS, QUARANTINE, USER_PROFILES, ITEM_FEATURES)


def interaction(**kw) -> dict:
    row = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "view",
        "event_ts": datetime(2024, 5, 1, 12, tzinfo=UTC),
        "value": 1.0,
        "source_file": "f.jsonl",
        "line_no": 1,
        "ingest_dt": DAY,
        "extra": None,
        "dt": DAY,
    }
    row.update(kw)
    return row


def profile(**kw) -> dict:
    row = {
        "user_id": "u1",
        "n_events": 3,
        "n_events_1d": 1,
        "n_events_7d": 2,
        "n_events_30d": 3,
        "events_by_type": [("click", 1), ("view", 2)],
        "active_days": 2,
        "first_event_ts": datetime(2024, 4, 20, tzinfo=UTC),
        "last_event_ts": datetime(2024, 5, 1, tzinfo=UTC),
        "days_since_last_event": 1.0,
        "mean_value": 2.0,
        "genre_affinity": [("Drama", 1.0)],
        "recent_items": ["i1"],
        "age": 30,
        "gender": "F",
        "occupation": "writer",
        "dt": DAY,
    }
    row.update(kw)
    return row


def no_events(user: str) -> dict:
    return profile(
        user_id=user,
        n_events=0,
        n_events_1d=0,
        n_events_7d=0,
        n_events_30d=0,
        events_by_type=[],
        active_days=0,
        first_event_ts=None,
        last_event_ts=None,
        days_since_last_event=None,
        mean_value=None,
        genre_affinity=[],
        recent_items=[],
        age=None,
        gender=None,
        occupation=None,
    )


def item(**kw) -> dict:
    row = {
        "item_id": "i1",
        "title": "Heat (1995)",
        "genres": ["Crime"],
        "release_year": 1995,
        "pop_1d": 1,
        "pop_7d": 2,
        "pop_30d": 3,
        "pop_all": 4,
        "trend": 1.5,
        "first_seen_ts": datetime(2024, 1, 1, tzinfo=UTC),
        "days_since_first_seen": 120.0,
        "text_embedding": [0.6, 0.8],
        "dt": DAY,
    }
    row.update(kw)
    return row


def quarantined(**kw) -> dict:
    row = {
        "source_file": "f.jsonl",
        "line_no": 2,
        "reason": "malformed_json",
        "detail": "not a JSON object",
        "raw": "{",
        "dt": DAY,
    }
    row.update(kw)
    return row


def table(contract, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=contract.schema)


def failure(contract, rows: list[dict], **kw) -> str:
    with pytest.raises(DataCheckFailed) as info:
        check_table(table(contract, rows), contract, where="test", **kw)
    message = str(info.value)
    assert message.startswith(f"data check failed for table {contract.name} (test, {len(rows)} rows)")
    assert "nothing was published" in message
    return message


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_each_model_mirrors_its_contract(contract):
    schema = MODELS[contract.name].to_schema()
    assert list(schema.columns) == contract.columns
    assert check_table(contract.schema.empty_table(), contract, where="empty") == 0


def test_valid_tables_pass():
    assert (
        check_table(
            table(INTERACTIONS, [interaction(), interaction(event_id="e2", line_no=2, value=None)]), INTERACTIONS, where="t"
        )
        == 2
    )
    # The same event id may come again on another arrival day (it is then a separate ingest's row).
    other_day = interaction(ingest_dt=DAY + timedelta(days=1), source_file="g.jsonl")
    assert check_table(table(INTERACTIONS, [interaction(), other_day]), INTERACTIONS, where="t") == 2
    assert check_table(table(USER_PROFILES, [profile(), no_events("u2")]), USER_PROFILES, where="t") == 2
    assert (
        check_table(
            table(
                ITEM_FEATURES,
                [
                    item(),
                    item(
                        item_id="i2",
                        text_embedding=None,
                        first_seen_ts=None,
                        days_since_first_seen=None,
                        pop_1d=0,
                        pop_7d=0,
                        pop_30d=0,
                        pop_all=0,
                    ),
                ],
            ),
            ITEM_FEATURES,
            where="t",
        )
        == 2
    )
    assert check_table(table(QUARANTINE, [quarantined()]), QUARANTINE, where="t") == 1


def test_interactions_ids_must_be_present():
    message = failure(INTERACTIONS, [interaction(), interaction(event_id="e2", line_no=2, user_id=None)])
    assert "column 'user_id': not_nullable" in message
    assert '"event_id": "e2"' in message and '"user_id": null' in message


def test_interactions_value_is_non_negative_or_null():
    message = failure(INTERACTIONS, [interaction(value=-1.0), interaction(event_id="e2", line_no=2, value=float("nan"))])
    assert "column 'value': greater_than_or_equal_to(0): 2 failure case(s)" in message
    assert '"event_id": "e1"' in message and '"value": -1.0' in message


def test_interactions_event_id_is_unique_within_an_ingest():
    message = failure(INTERACTIONS, [interaction(), interaction(line_no=2, user_id="u2")])
    assert "multiple_fields_uniqueness" in message
    assert '"line_no": 1' in message and '"line_no": 2' in message


def test_interactions_dt_is_the_event_date_and_lines_are_used_once():
    late = interaction(event_id="e2", event_ts=datetime(2024, 5, 2, 0, 0, tzinfo=UTC))
    message = failure(INTERACTIONS, [interaction(), late])
    assert "dt_is_event_date: 1 failure case(s)" in message
    assert "one_row_per_input_line: 2 failure case(s)" in message
    assert '"event_ts": "2024-05-02 00:00:00+00:00"' in message


def test_interactions_event_types_come_from_the_settings():
    rows = [interaction(), interaction(event_id="e2", line_no=2, event_type="like")]
    check_table(table(INTERACTIONS, rows), INTERACTIONS, where="no types given")
    message = failure(INTERACTIONS, rows, event_types=["view", "click"])
    assert "column 'event_type': isin(['click', 'view'])" in message and '"event_id": "e2"' in message


def test_interactions_schema_is_checked():
    rows = table(INTERACTIONS, [interaction()])
    wrong = rows.set_column(rows.column_names.index("line_no"), "line_no", pa.array([1], pa.int32()))
    with pytest.raises(DataCheckFailed, match=r"column 'line_no': dtype\('Int64'\).*\n\s+got: Int32"):
        check_table(wrong, INTERACTIONS, where="t")
    with pytest.raises(DataCheckFailed, match=r"extra|column_in_schema"):
        check_table(rows.append_column("surprise", pa.array([1])), INTERACTIONS, where="t")
    with pytest.raises(DataCheckFailed, match=r"user_id"):
        check_table(rows.drop_columns(["user_id"]), INTERACTIONS, where="t")


def test_user_profiles_user_id_is_unique():
    message = failure(USER_PROFILES, [profile(), profile(), no_events("u2")])
    assert "column 'user_id': field_uniqueness" in message and '"user_id": "u1"' in message


def test_user_profile_counts_are_non_negative_and_windows_monotone():
    message = failure(USER_PROFILES, [profile(n_events_1d=3, n_events_7d=2), no_events("u2") | {"n_events_30d": -1}])
    assert "column 'n_events_30d': greater_than_or_equal_to(0)" in message
    assert "windows_monotone: 2 failure case(s)" in message
    assert '{"user_id": "u1", "n_events_1d": 3, "n_events_7d": 2, "n_events_30d": 3, "n_events": 3}' in message


def test_user_profile_consistency_checks():
    message = failure(
        USER_PROFILES,
        [
            profile(events_by_type=[("view", 1)], active_days=4),
            no_events("u2") | {"last_event_ts": datetime(2024, 5, 1, tzinfo=UTC)},
        ],
    )
    assert "events_by_type_sum_to_n_events: 1 failure case(s)" in message
    assert '"events_by_type": {"view": 1}' in message
    assert "active_days_within_events" in message
    assert "event_times_iff_events" in message and '"user_id": "u2"' in message


def test_item_features_checks():
    message = failure(
        ITEM_FEATURES,
        [
            item(),
            item(),
            item(item_id="i2", pop_all=-1, trend=0.0),
            item(item_id="i3", text_embedding=[1.0, 0.0, 0.0]),
            item(item_id="i4", text_embedding=[float("nan"), 1.0]),
        ],
    )
    assert "column 'item_id': field_uniqueness" in message
    assert "column 'pop_all': greater_than_or_equal_to(0)" in message
    assert "column 'trend': greater_than(0)" in message
    assert "popularity_monotone: 1 failure case(s)" in message
    assert "embeddings_share_one_dimension: 2 failure case(s)" in message
    assert '"item_id": "i3"' in message and '"item_id": "i4"' in message


def test_quarantine_checks():
    message = failure(QUARANTINE, [quarantined(), quarantined(reason="because")])
    assert "multiple_fields_uniqueness" in message
    assert "column 'reason': isin(" in message and '"reason": "because"' in message


def test_checks_cannot_be_switched_off_by_pandera_config():
    from pandera.config import config_context

    with config_context(validation_enabled=False), pytest.raises(DataCheckFailed):
        check_table(table(USER_PROFILES, [profile(), profile()]), USER_PROFILES, where="t")


def test_message_lists_at_most_three_examples_per_check():
    rows = [interaction(event_id=f"e{i}", line_no=i + 1, value=-1.0) for i in range(10)]
    message = failure(INTERACTIONS, rows)
    assert "10 failure case(s)" in message
    assert message.count("e.g.") == 3


def test_every_dataframe_check_has_a_spark_twin():
    """The stages run the checks as Spark aggregates (spark_check): no rule of a model may be left out there."""
    from recsys_core.features.checks import SPARK_ROW_CHECKS, SPARK_UNIQUE_CHECKS

    names = {check.name for model in MODELS.values() for check in model.to_schema().checks}
    assert names == set(SPARK_ROW_CHECKS) | set(SPARK_UNIQUE_CHECKS)
