"""Parquet files in the landing folder: each row is one input line, as JSON (pure Python, no Spark)."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_core.features.ingest import (
    LINES_SCHEMA,
    UnreadableInput,
    file_rows,
    lines_from_files,
    parquet_rows,
)

MAX = 65536


def parquet_bytes(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def rows(table: pa.Table, max_line_bytes: int = MAX, path: str = "raw/events/dt=2024-05-01/x.parquet") -> list[tuple]:
    return list(parquet_rows(path, parquet_bytes(table), max_line_bytes))


def test_each_row_becomes_a_json_line_numbered_from_one():
    table = pa.table({"event_id": ["a", "b"], "user_id": ["u1", "u2"], "value": [1.5, None]})
    out = rows(table)
    assert [(n, reason) for _, n, _, reason, _ in out] == [(1, None), (2, None)]
    assert [json.loads(raw) for _, _, raw, _, _ in out] == [
        {"event_id": "a", "user_id": "u1", "value": 1.5},
        {"event_id": "b", "user_id": "u2", "value": None},
    ]
    assert out[0][0] == "raw/events/dt=2024-05-01/x.parquet"


def test_types_become_what_the_json_rules_expect():
    ts = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    table = pa.table(
        {
            "event_id": pa.array([17], pa.int64()),
            "ts": pa.array([ts], pa.timestamp("ms", tz="UTC")),
            "naive_ts": pa.array([datetime(2024, 5, 1, 12)], pa.timestamp("us")),
            "day": pa.array([date(2024, 5, 1)], pa.date32()),
            "price": pa.array([Decimal("9.99")], pa.decimal128(5, 2)),
            "flags": pa.array([["x", "y"]], pa.list_(pa.string())),
            "blob": pa.array([b"\x00\x01"], pa.binary()),
            "nan": [float("nan")],
            "inf": [float("-inf")],
        }
    )
    ((_, _, raw, reason, _),) = rows(table)
    assert reason is None
    assert json.loads(raw) == {
        "event_id": 17,  # a number, coerced to the string "17" by the JVM like a JSON number
        "ts": "2024-05-01T12:30:00+00:00",
        "naive_ts": "2024-05-01T12:00:00",  # no offset: rejected as bad_timestamp, like a JSON line
        "day": "2024-05-01",
        "price": 9.99,
        "flags": ["x", "y"],
        "blob": "AAE=",
        "nan": "NaN",  # a string, so the value check says bad_value
        "inf": "-Infinity",
    }


def test_null_unknown_columns_are_left_out_but_null_known_fields_stay():
    table = pa.table({"event_id": ["a", "b"], "user_id": [None, "u"], "platform": [None, "ios"]})
    lines = [json.loads(raw) for _, _, raw, _, _ in rows(table)]
    assert lines == [{"event_id": "a", "user_id": None}, {"event_id": "b", "user_id": "u", "platform": "ios"}]


def test_invalid_utf8_in_a_text_column_flags_the_row():
    bad = pa.Array.from_buffers(
        pa.string(), 2, [None, pa.py_buffer(b"\x00\x00\x00\x00\x02\x00\x00\x00\x04\x00\x00\x00"), pa.py_buffer(b"okx\xff")]
    )
    out = rows(pa.table({"event_id": ["a", "b"], "user_id": bad}))
    assert [(n, reason) for _, n, _, reason, _ in out] == [(1, None), (2, "invalid_utf8")]
    assert json.loads(out[1][2])["user_id"] == "x\\xff"
    assert "column user_id" in out[1][4]


def test_oversized_row_is_flagged_with_a_prefix_of_its_json():
    out = rows(pa.table({"event_id": ["a", "b"], "payload": ["x" * 10, "x" * 5000]}), max_line_bytes=100)
    assert [reason for _, _, _, reason, _ in out] == [None, "oversized_line"]
    assert len(out[1][2]) == 1024 and out[1][4].endswith("bytes > 100")


def test_row_numbers_run_across_row_groups_and_batches():
    table = pa.table({"event_id": [str(i) for i in range(2500)]})
    data = parquet_bytes(table, row_group_size=1000)
    out = list(parquet_rows("x.parquet", data, MAX))
    assert [n for _, n, _, _, _ in out] == list(range(1, 2501))
    batches = list(
        lines_from_files([pa.RecordBatch.from_pydict({"path": ["x.parquet"], "content": [data]})], MAX, batch_rows=1000)
    )
    assert [b.num_rows for b in batches] == [1000, 1000, 500]
    assert all(b.schema.equals(LINES_SCHEMA) for b in batches)


@pytest.mark.parametrize("content", [b"", parquet_bytes(pa.table({"event_id": pa.array([], pa.string())}))])
def test_empty_file_or_no_rows_yields_nothing(content):
    assert list(parquet_rows("empty.parquet", content, MAX)) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) - 10],  # footer cut off
        lambda b: b[:4] + b"\x00" * (len(b) - 12) + b[-8:],  # pages zeroed
        lambda b: b"not parquet at all",
    ],
)
def test_corrupt_parquet_raises_naming_the_file(damage):
    data = parquet_bytes(pa.table({"event_id": [str(i) for i in range(200)], "value": [1.0] * 200}))
    with pytest.raises(UnreadableInput, match=r"dt=2024-05-01/bad\.parquet: not a readable Parquet file"):
        list(parquet_rows("raw/events/dt=2024-05-01/bad.parquet", damage(data), MAX))


def test_file_rows_picks_the_reader_by_name():
    data = parquet_bytes(pa.table({"event_id": ["a"]}))
    assert json.loads(next(iter(file_rows("a.parquet", data, MAX)))[2]) == {"event_id": "a"}
    assert list(file_rows("a.jsonl", b'{"a":1}\n', MAX)) == [("a.jsonl", 1, '{"a":1}', None, None)]
