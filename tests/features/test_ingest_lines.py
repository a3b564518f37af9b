"""The pure parts of recsys_core.features.ingest: line splitting, decompression, the run report."""

from __future__ import annotations

import gzip
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from recsys_core.features.ingest import (
    LINES_SCHEMA,
    REASONS,
    IngestReport,
    RejectRateExceeded,
    UnreadableInput,
    decompress,
    lines_from_files,
    split_lines,
)
from recsys_core.timeutil import end_of_day

MAX = 65536


def lines(content: bytes, path: str = "raw/events/dt=2024-05-01/a.jsonl", max_line_bytes: int = MAX) -> list[tuple]:
    return list(split_lines(path, content, max_line_bytes))


def texts(content: bytes, **kw) -> list[tuple[int, str]]:
    return [(n, raw) for _, n, raw, _, _ in lines(content, **kw)]


def test_line_numbers_start_at_one_and_carry_the_path():
    out = lines(b'{"a":1}\n{"b":2}\n{"c":3}\n', path="f.jsonl")
    assert out == [
        ("f.jsonl", 1, '{"a":1}', None, None),
        ("f.jsonl", 2, '{"b":2}', None, None),
        ("f.jsonl", 3, '{"c":3}', None, None),
    ]


def test_trailing_newline_does_not_add_a_line():
    assert texts(b"a\nb\n") == texts(b"a\nb") == [(1, "a"), (2, "b")]


def test_blank_lines_keep_their_numbers():
    # Blank lines are still lines (the JVM quarantines them as empty_line); numbering must not shift.
    assert texts(b"a\n\nb\n\n") == [(1, "a"), (2, ""), (3, "b"), (4, "")]


def test_crlf_line_endings_are_stripped():
    assert texts(b"a\r\nb\r\nc") == [(1, "a"), (2, "b"), (3, "c")]


def test_invalid_utf8_is_flagged_not_replaced():
    out = lines(b'ok\n{"user":"\xff\xfe"}\nalso ok\n')
    assert [(n, reason) for _, n, _, reason, _ in out] == [(1, None), (2, "invalid_utf8"), (3, None)]
    _, _, raw, _, detail = out[1]
    assert "\\xff\\xfe" in raw  # bad bytes kept visible, not turned into U+FFFD
    assert "\ufffd" not in raw
    assert "utf-8" in detail.lower()


def test_valid_multibyte_utf8_is_accepted():
    assert lines("é€😀\n".encode())[0][2:] == ("é€😀", None, None)


def test_oversized_line_is_flagged_at_the_boundary():
    out = lines(b"x" * 10 + b"\n" + b"y" * 11 + b"\n" + b"z" * 10 + b"\r\n", max_line_bytes=10)
    assert [(n, reason) for _, n, _, reason, _ in out] == [(1, None), (2, "oversized_line"), (3, None)]
    assert out[1][4] == "11 bytes > 10"


def test_oversized_line_keeps_only_a_prefix_of_the_raw_text():
    out = lines(b"x" * 5000 + b"\n", max_line_bytes=100)
    assert out[0][3] == "oversized_line"
    assert out[0][2] == "x" * 1024


def test_oversized_valid_line_is_not_decoded():
    out = lines("é".encode() * 6 + b"\n", max_line_bytes=10)  # 12 bytes, 6 characters
    assert out[0][3] == "oversized_line"
    assert out[0][4] == "12 bytes > 10"


def test_line_both_invalid_utf8_and_oversized_gets_the_first_reason_of_reasons():
    # A huge line is not decoded at all, so its size is the reason that applies first.
    assert REASONS.index("oversized_line") < REASONS.index("invalid_utf8")
    out = lines(b"\xff" * 20 + b"\n", max_line_bytes=10)
    assert out[0][3] == "oversized_line"


def test_gzip_is_decompressed_by_extension_and_by_magic():
    payload = b"a\nb\n"
    packed = gzip.compress(payload)
    assert texts(packed, path="x.jsonl.gz") == [(1, "a"), (2, "b")]
    assert texts(packed, path="x.jsonl") == [(1, "a"), (2, "b")]  # gzip magic bytes without .gz name
    assert decompress("plain.jsonl", payload) == payload


def test_multi_member_gzip_is_read_whole():
    # Appending to a .gz file (cat a.gz b.gz > c.gz) yields several gzip members.
    packed = gzip.compress(b"a\nb\n") + gzip.compress(b"c\n")
    assert texts(packed, path="x.jsonl.gz") == [(1, "a"), (2, "b"), (3, "c")]


def test_trailing_garbage_after_gzip_is_unreadable():
    with pytest.raises(UnreadableInput, match=r"x\.jsonl\.gz"):
        lines(gzip.compress(b"a\n") + b"garbage", path="x.jsonl.gz")


def test_truncated_gzip_raises_naming_the_file():
    packed = gzip.compress(b'{"event_id":"1"}\n' * 200)
    with pytest.raises(UnreadableInput, match=r"dt=2024-05-01/broken\.jsonl\.gz: cannot decompress"):
        lines(packed[: len(packed) // 2], path="raw/events/dt=2024-05-01/broken.jsonl.gz")


def test_corrupt_gzip_raises_naming_the_file():
    packed = bytearray(gzip.compress(b"a\n" * 100))
    packed[12:20] = b"\x00" * 8
    with pytest.raises(UnreadableInput, match=r"bad\.gz"):
        lines(bytes(packed), path="bad.gz")


@pytest.mark.parametrize(
    "path,content",
    [("empty.jsonl", b""), ("empty.jsonl.gz", gzip.compress(b""))],
)
def test_empty_content_yields_nothing(path, content):
    assert lines(content, path=path) == []


def test_lines_from_files_produces_line_batches():
    batch = pa.RecordBatch.from_pydict(
        {
            "path": ["a.jsonl.gz", "empty.jsonl", "b.jsonl"],
            "content": [gzip.compress(b"1\n2\n"), b"", b"3\xff\n"],
        }
    )
    out = list(lines_from_files([batch], MAX))
    assert len(out) == 2  # the empty file yields no batch
    assert all(b.schema.equals(LINES_SCHEMA) for b in out)
    rows = pa.Table.from_batches(out).to_pylist()
    assert [(r["source_file"], r["line_no"], r["pre_reason"]) for r in rows] == [
        ("a.jsonl.gz", 1, None),
        ("a.jsonl.gz", 2, None),
        ("b.jsonl", 1, "invalid_utf8"),
    ]


def report(**kw) -> IngestReport:
    base = {"run_date": date(2024, 5, 1), "files": 2, "rows_in": 100, "rows_accepted": 90, "rows_quarantined": 10}
    base.update(kw)
    return IngestReport(**base)


def test_check_balanced():
    report().check_balanced()
    with pytest.raises(AssertionError, match=r"accepted 90 \+ quarantined 9 != input 100; rows were lost"):
        report(rows_quarantined=9).check_balanced()
    with pytest.raises(AssertionError):
        report(rows_accepted=91).check_balanced()


def test_reject_rate_within_limit_passes():
    report().check_reject_rate(0.10)  # exactly at the limit
    report(rows_in=0, rows_accepted=0, rows_quarantined=0).check_reject_rate(0.0)
    assert report(rows_in=0, rows_accepted=0, rows_quarantined=0).reject_rate == 0.0


def test_reject_rate_exceeded_names_top_reasons_and_examples():
    r = report(
        reasons={"bad_value": 1, "malformed_json": 5, "missing_field": 3, "late_event": 1},
        examples={
            "malformed_json": {"source_file": "raw/events/dt=2024-05-01/a.jsonl.gz", "line_no": 17, "raw": "{oops"},
            "missing_field": {"source_file": "b.jsonl.gz", "line_no": 3, "raw": "{}"},
        },
    )
    assert r.reject_rate == pytest.approx(0.1)
    with pytest.raises(RejectRateExceeded) as info:
        r.check_reject_rate(0.05)
    message = str(info.value)
    assert "10 of 100 rows (10.0%) quarantined, above the limit of 5.0%" in message
    assert "malformed_json: 5 rows, e.g. raw/events/dt=2024-05-01/a.jsonl.gz:17 '{oops'" in message
    assert "missing_field: 3 rows, e.g. b.jsonl.gz:3" in message
    # Most frequent first, and only the top three reasons.
    assert message.index("malformed_json") < message.index("missing_field")
    assert sum(name in message for name in ("bad_value", "late_event")) == 1
    assert "RECSYS_INGEST__MAX_REJECT_RATE" in info.value.hint


def test_report_to_dict():
    d = report(reasons={"b": 1, "a": 2}, event_dates={"2024-05-01": 80, "2024-04-30": 10}).to_dict()
    assert d["run_date"] == "2024-05-01"
    assert d["reject_rate"] == 0.1
    assert list(d["reasons"]) == ["a", "b"]
    assert list(d["accepted_by_event_date"]) == ["2024-04-30", "2024-05-01"]


@pytest.mark.parametrize(
    "day,expected",
    [
        (date(2024, 5, 1), datetime(2024, 5, 2, tzinfo=UTC)),
        (date(2024, 2, 28), datetime(2024, 2, 29, tzinfo=UTC)),
        (date(2023, 12, 31), datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_end_of_day_is_exclusive_utc_midnight(day, expected):
    got = end_of_day(day)
    assert got == expected
    assert got.utcoffset().total_seconds() == 0
    assert datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=UTC) < got
