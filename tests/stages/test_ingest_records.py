"""Every kind of bad input row, written by hand, through the real ingest (Spark local).

One ingest run covers two arrival days: on the first, every case sits alone in
its own file; on the second, all of them are mixed in one file. A second run
ingests a third day alone, so duplicates of ids accepted by an earlier run are
found through the lake. Each input row must end up exactly once, accepted or
quarantined with the expected reason, and the reports must count them.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recsys_core.config import settings_for
from recsys_core.contracts import INTERACTIONS, QUARANTINE
from recsys_core.features.ingest import REASONS, UnreadableInput
from recsys_core.io.lake import Lake
from recsys_core.stages.ingest import REPORT, input_files, run_ingest

pytestmark = pytest.mark.spark

DAY_A = date(2024, 3, 10)  # every case alone in its own file
DAY_B = date(2024, 3, 11)  # all cases mixed in one file
DAY_C = date(2024, 3, 12)  # ingested by a later run: repeats ids accepted on DAY_A
MAX_FIELD = 64
MAX_LINE = 2048
SPARK = {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"}


def make_settings(root: Path, **ingest):
    return settings_for(
        data_root=root,
        spark=SPARK,
        ingest={"max_reject_rate": 1.0, "max_field_chars": MAX_FIELD, "max_line_bytes": MAX_LINE, **ingest},
    )


def iso(day: date, hh: int = 12, mm: int = 0, ss: int = 0) -> str:
    return f"{day.isoformat()}T{hh:02d}:{mm:02d}:{ss:02d}Z"


def event(eid: str, day: date, **fields) -> dict:
    base = {"event_id": eid, "user_id": "u1", "item_id": "i1", "event_type": "view", "ts": iso(day), "value": 1.0}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def line(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() if not isinstance(obj, bytes) else obj


def cases(day: date, tag: str) -> dict[str, list[tuple[bytes, str | None]]]:
    """Case name -> its lines, each with the reason it must get (None: accepted).

    Event ids carry ``tag`` so that the same cases on two days do not repeat each other.
    """
    e = lambda n: f"{tag}-{n}"  # noqa: E731
    good = event(e("good"), day)
    return {
        "good": [(line(good), None)],
        "numeric_user_id": [(line(event(e("num"), day, user_id=42)), None)],
        "extra_fields": [(line(event(e("extra"), day, app_version="4.2.0", device={"os": "ios"})), None)],
        "no_value": [(line(event(e("noval"), day, value=DROP)), None)],
        "null_value": [(line(event(e("nullval"), day, value=None)), None)],
        "epoch_seconds": [
            (
                line(event(e("epoch"), day, ts=int(datetime(day.year, day.month, day.day, 8, tzinfo=UTC).timestamp()))),
                None,
            )
        ],
        "epoch_millis": [
            (
                line(
                    event(
                        e("millis"),
                        day,
                        ts=int(datetime(day.year, day.month, day.day, 9, tzinfo=UTC).timestamp()) * 1000,
                    )
                ),
                None,
            )
        ],
        "ts_offset": [(line(event(e("offset"), day, ts=f"{day.isoformat()}T10:00:00+02:00")), None)],
        "late_within_window": [(line(event(e("late-ok"), day, ts=iso(day - timedelta(days=3), 0, 0, 0))), None)],
        "within_clock_skew": [(line(event(e("skew-ok"), day, ts=iso(day + timedelta(days=1), 0, 59, 59))), None)],
        "crlf": [(line(event(e("crlf"), day)) + b"\r", None)],
        "malformed_json": [
            (b'{"event_id":"' + e("mal1").encode() + b'","user_id":"u1"', "malformed_json"),
            (b"event x user y item z", "malformed_json"),
            (line(event(e("mal3"), day))[:-1] + b",}", "malformed_json"),
            (b"[1,2,3]", "malformed_json"),
            (line(event(e("mal5"), day)) + line(event(e("mal6"), day)), "malformed_json"),
            (line(event(e("mal7"), day)).replace(b"1.0", b"NaN"), "malformed_json"),  # a NaN literal is not JSON
        ],
        "missing_id": [
            (line(event(e("miss1"), day, user_id=DROP)), "missing_field"),
            (line(event(e("miss2"), day, item_id="")), "missing_field"),
            (line(event(None, day)), "missing_field"),
            (line(event(e("miss4"), day, user_id="   ")), "missing_field"),
            (line(event(e("miss5"), day, ts=DROP)), "missing_field"),
            (line(event(e("miss6"), day, event_type=None)), "missing_field"),
        ],
        "structured_id": [(line(event(e("struct"), day, user_id={"id": "u1"})), "bad_type")],
        "unknown_event_type": [(line(event(e("type"), day, event_type="like")), "unknown_event_type")],
        "unparseable_ts": [
            (line(event(e("ts1"), day, ts="yesterday")), "bad_timestamp"),
            (line(event(e("ts2"), day, ts=f"{day.year}-13-45T25:61:00Z")), "bad_timestamp"),
            (line(event(e("ts3"), day, ts=f"{day.isoformat()}T10:00:00")), "bad_timestamp"),  # no offset
        ],
        "ts_before_1995": [
            (line(event(e("old1"), day, ts="1994-12-31T23:59:59Z")), "ts_out_of_range"),
            (line(event(e("old2"), day, ts=0)), "ts_out_of_range"),
        ],
        "ts_after_run_date_plus_skew": [
            (line(event(e("future"), day, ts=iso(day + timedelta(days=1), 1, 0, 0))), "ts_in_future"),
        ],
        "too_late": [(line(event(e("late"), day, ts=iso(day - timedelta(days=4), 23, 59, 59))), "late_event")],
        "negative_value": [(line(event(e("neg"), day, value=-0.5)), "negative_value")],
        "nan_value": [
            (line(event(e("nan"), day, value="NaN")), "bad_value"),
            (line(event(e("inf"), day, value="Infinity")), "bad_value"),
        ],
        "non_numeric_value": [
            (line(event(e("abc"), day, value="abc")), "bad_value"),
            (line(event(e("bool"), day, value=True)), "bad_value"),
        ],
        "oversized_field": [(line(event(e("big"), day, item_id="i" * (MAX_FIELD + 1))), "oversized_field")],
        "oversized_line": [(line(event(e("huge"), day, payload="x" * MAX_LINE)), "oversized_line")],
        "invalid_utf8": [(line(event(e("utf"), day, user_id="u@@")).replace(b"@@", b"\xff\xfe"), "invalid_utf8")],
        "empty_line": [(b"", "empty_line"), (b"   ", "empty_line")],
        "duplicate_in_file": [
            (line(event(e("dup"), day)), None),
            (line(event(e("dup"), day, user_id="u2")), "duplicate_event_id"),
        ],
    }


def write(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def parquet_file(path: Path, day: date) -> tuple[Path, list[str | None]]:
    """A Parquet export: typed columns, an extra column, and rows good and bad."""
    utc = UTC
    ts = lambda h: datetime(day.year, day.month, day.day, h, tzinfo=utc)  # noqa: E731
    bad_utf8 = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(b"\x00\x00\x00\x00\x03\x00\x00\x00"), pa.py_buffer(b"u\xff\xfe")]
    )
    user = pa.concat_arrays([pa.array(["u1", "u2", None, "u3", "u4", "u5", "u6"]), bad_utf8])
    table = pa.table(
        {
            "event_id": ["pq-1", "pq-2", "pq-3", "pq-4", "pq-5", "pq-6", "pq-1", "pq-8"],
            "user_id": user,
            "item_id": ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"],
            "event_type": ["view", "click", "view", "view", "purchase", "view", "view", "view"],
            "ts": pa.array(
                [ts(1), ts(2), ts(3), datetime(1990, 1, 1, tzinfo=utc), ts(5), ts(6), ts(7), ts(8)], pa.timestamp("us", tz="UTC")
            ),
            "value": [1.0, None, 1.0, 1.0, float("nan"), -2.0, 1.0, 1.0],
            "platform": ["ios", None, "web", None, None, None, None, None],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    reasons = [
        None,
        None,
        "missing_field",
        "ts_out_of_range",
        "bad_value",
        "negative_value",
        "duplicate_event_id",
        "invalid_utf8",
    ]
    return path, reasons


def numeric_parquet(path: Path, day: date) -> tuple[Path, list[str | None]]:
    """Ids as numbers and the time as text: the same coercions as in JSON lines."""
    table = pa.table(
        {
            "event_id": pa.array([1001, 1002], pa.int64()),
            "user_id": pa.array([7, 8], pa.int32()),
            "item_id": ["i1", "i2"],
            "event_type": ["rating", "rating"],
            "ts": [iso(day, 13), "not a time"],
            "value": pa.array([4, 5], pa.int16()),
        }
    )
    pq.write_table(table, path)
    return path, [None, "bad_timestamp"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, spark):
    """The lake after run 1 (days A and B) and run 2 (day C), with what each line must become."""
    root = tmp_path_factory.mktemp("records")
    settings = make_settings(root)
    lake = Lake(settings.lake)
    raw = Path(settings.lake) / "raw" / "events"
    expected: dict[str, list[str | None]] = {}  # file -> reason of each line

    def add(path: Path, rows: list[tuple[bytes, str | None]]) -> None:
        write(path, [r for r, _ in rows])
        expected[str(path)] = [reason for _, reason in rows]

    # Day A: each case alone in its own file (gzipped or not), plus Parquet and empty files.
    folder_a = raw / f"dt={DAY_A}"
    for i, (name, rows) in enumerate(cases(DAY_A, "a").items()):
        add(folder_a / f"{name}.jsonl{'.gz' if i % 2 else ''}", rows)
    dup = line(event("a-cross", DAY_A))
    add(folder_a / "duplicate_across_files_1.jsonl", [(dup, None)])
    add(folder_a / "duplicate_across_files_2.jsonl", [(line(event("a-cross", DAY_A, item_id="i9")), "duplicate_event_id")])
    for path, reasons in (parquet_file(folder_a / "export.parquet", DAY_A), numeric_parquet(folder_a / "numeric.parquet", DAY_A)):
        expected[str(path)] = reasons
    (folder_a / "empty.jsonl").write_bytes(b"")
    (folder_a / "empty.jsonl.gz").write_bytes(gzip.compress(b""))
    (folder_a / "empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"event_id": pa.array([], pa.string())}), folder_a / "no_rows.parquet")
    for name in ("empty.jsonl", "empty.jsonl.gz", "empty.parquet", "no_rows.parquet"):
        expected[str(folder_a / name)] = []

    # Day B: all cases mixed in one file, plus a repeat of an id accepted on day A (same run).
    mixed = [row for rows in cases(DAY_B, "b").values() for row in rows]
    mixed.insert(3, (line(event("a-good", DAY_B, user_id="u7")), "duplicate_event_id"))
    add(raw / f"dt={DAY_B}" / "mixed.jsonl.gz", mixed)

    reports = run_ingest(settings, [DAY_A, DAY_B], spark=spark)

    # Day C, a later run: repeats of ids accepted by the first run are found in the lake.
    add(
        raw / f"dt={DAY_C}" / "later.jsonl",
        [
            (line(event("a-good", DAY_C)), "duplicate_event_id"),
            (line(event("c-new", DAY_C)), None),
            (line(event("b-good", DAY_C)), "duplicate_event_id"),
            (line(event("pq-2", DAY_C)), "duplicate_event_id"),
        ],
    )
    reports += run_ingest(settings, [DAY_C], spark=spark)
    return settings, lake, reports, expected


def uri_path(source_file: str) -> str:
    return source_file.removeprefix("file://").removeprefix("file:")


def outcomes(lake: Lake) -> dict[tuple[str, int], list[str | None]]:
    """(file, line) -> what the lake holds for it: None per accepted row, the reason per quarantined one."""
    out: dict[tuple[str, int], list] = {}
    accepted = ds.dataset(lake.table_path(INTERACTIONS), format="parquet", partitioning="hive").to_table(
        columns=["source_file", "line_no"]
    )
    for r in accepted.to_pylist():
        out.setdefault((uri_path(r["source_file"]), r["line_no"]), []).append(None)
    quarantined = ds.dataset(lake.table_path(QUARANTINE), format="parquet", partitioning="hive").to_table(
        columns=["source_file", "line_no", "reason"]
    )
    for r in quarantined.to_pylist():
        out.setdefault((uri_path(r["source_file"]), r["line_no"]), []).append(r["reason"])
    return out


def test_every_row_is_accepted_or_quarantined_once_with_the_right_reason(ingested):
    _, lake, _, expected = ingested
    got = outcomes(lake)
    want = {(f, n): [reason] for f, reasons in expected.items() for n, reason in enumerate(reasons, start=1)}
    wrong = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}
    assert not wrong, f"(file, line): (expected, got) {wrong}"


def test_reports_count_every_row(ingested):
    _, lake, reports, expected = ingested
    assert [r.run_date for r in reports] == [DAY_A, DAY_B, DAY_C]
    for report in reports:
        files = {f: reasons for f, reasons in expected.items() if f"/dt={report.run_date}/" in f}
        reasons = [r for rs in files.values() for r in rs]
        assert report.files == len(files)
        assert report.rows_in == len(reasons)
        assert report.rows_accepted + report.rows_quarantined == report.rows_in
        assert report.rows_accepted == reasons.count(None)
        assert report.reasons == dict(Counter(r for r in reasons if r)), report.run_date
        assert set(report.examples) == set(report.reasons)
        on_disk = json.loads(Path(lake.partition_path(QUARANTINE, report.run_date), REPORT).read_text())
        assert on_disk == json.loads(json.dumps(report.to_dict()))
        assert {"rows_in", "rows_accepted", "rows_quarantined", "reasons"} <= set(on_disk)
        manifest = lake.read_manifest(lake.partition_path(QUARANTINE, report.run_date))
        assert manifest["rows"] == report.rows_quarantined


def test_every_reason_code_is_exercised_alone_and_mixed(ingested):
    _, _, reports, expected = ingested
    alone = {Path(f).name.split(".")[0]: set(rs) - {None} for f, rs in expected.items() if f"/dt={DAY_A}/" in f}
    single_reason_files = {name: rs for name, rs in alone.items() if len(rs) == 1}
    assert set(REASONS) <= {r for rs in single_reason_files.values() for r in rs}
    assert set(REASONS) == set(reports[1].reasons), "the mixed file holds every reason"


def accepted_rows(lake: Lake) -> dict[str, dict]:
    table = ds.dataset(
        lake.table_path(INTERACTIONS),
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("dt", pa.date32()), ("ingest_dt", pa.date32())]), flavor="hive"),
    ).to_table()
    return {r["event_id"]: r for r in table.to_pylist()}


def test_accepted_rows_are_typed_and_keep_unknown_fields(ingested):
    _, lake, _, _ = ingested
    rows = accepted_rows(lake)
    assert rows["a-num"]["user_id"] == "42"  # a JSON number is accepted as a string id
    assert json.loads(rows["a-extra"]["extra"]) == {"app_version": "4.2.0", "device": '{"os":"ios"}'}
    assert rows["a-good"]["extra"] is None
    assert rows["a-noval"]["value"] is None and rows["a-nullval"]["value"] is None
    assert rows["a-epoch"]["event_ts"] == datetime(2024, 3, 10, 8, tzinfo=UTC)
    assert rows["a-millis"]["event_ts"] == datetime(2024, 3, 10, 9, tzinfo=UTC)
    assert rows["a-offset"]["event_ts"] == datetime(2024, 3, 10, 8, tzinfo=UTC)
    # Late but within the window: under its event date, from this arrival day.
    assert (rows["a-late-ok"]["dt"], rows["a-late-ok"]["ingest_dt"]) == (DAY_A - timedelta(days=3), DAY_A)
    # Within the clock skew: accepted under the next day, still from this arrival day.
    assert (rows["a-skew-ok"]["dt"], rows["a-skew-ok"]["ingest_dt"]) == (DAY_A + timedelta(days=1), DAY_A)
    assert rows["a-dup"]["user_id"] == "u1", "the first occurrence of a repeated id wins"
    assert rows["a-cross"]["item_id"] == "i1"
    assert rows["a-good"]["source_file"].endswith(f"dt={DAY_A}/good.jsonl")
    assert rows["a-good"]["line_no"] == 1


def test_parquet_rows_are_input_rows(ingested):
    _, lake, _, _ = ingested
    rows = accepted_rows(lake)
    first = rows["pq-1"]
    assert first["source_file"].endswith("export.parquet") and first["line_no"] == 1
    assert first["event_ts"] == datetime(2024, 3, 10, 1, tzinfo=UTC)
    assert json.loads(first["extra"]) == {"platform": "ios"}
    assert rows["pq-2"]["value"] is None and rows["pq-2"]["extra"] is None
    assert (rows["1001"]["user_id"], rows["1001"]["value"]) == ("7", 4.0)
    quarantined = ds.dataset(lake.table_path(QUARANTINE), format="parquet", partitioning="hive").to_table()
    raw = {(uri_path(r["source_file"]).rsplit("/", 1)[-1], r["line_no"]): r for r in quarantined.to_pylist()}
    assert json.loads(raw[("export.parquet", 5)]["raw"])["value"] == "NaN"
    assert json.loads(raw[("export.parquet", 3)]["raw"])["user_id"] is None
    assert json.loads(raw[("export.parquet", 8)]["raw"])["user_id"] == "u\\xff\\xfe"  # bad bytes kept visible


def test_duplicates_across_days_name_the_first_occurrence(ingested):
    _, lake, _, _ = ingested
    quarantined = ds.dataset(lake.table_path(QUARANTINE), format="parquet", partitioning="hive").to_table()
    dups = {
        (uri_path(r["source_file"]).rsplit("/", 1)[-1], r["line_no"]): r["detail"]
        for r in quarantined.to_pylist()
        if r["reason"] == "duplicate_event_id"
    }
    assert dups[("mixed.jsonl.gz", 4)].startswith("first seen at ") and "good.jsonl:1" in dups[("mixed.jsonl.gz", 4)]
    assert dups[("later.jsonl", 1)] == f"already ingested on {DAY_A}"
    assert dups[("later.jsonl", 3)] == f"already ingested on {DAY_B}"


def test_truncated_gzip_fails_the_run_naming_the_file(tmp_path, spark):
    settings = make_settings(tmp_path)
    folder = Path(settings.lake) / "raw" / "events" / f"dt={DAY_A}"
    write(folder / "fine.jsonl", [line(event("ok", DAY_A))])
    packed = gzip.compress(b"".join(line(event(f"t{i}", DAY_A)) + b"\n" for i in range(300)))
    (folder / "broken.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(UnreadableInput, match=r"dt=2024-03-10/broken\.jsonl\.gz: cannot decompress"):
        run_ingest(settings, [DAY_A], spark=spark)
    lake = Lake(settings.lake)
    assert lake.partitions(QUARANTINE) == [] and not (Path(settings.lake) / "interactions" / "_ingests").exists()
    assert not list((Path(settings.lake) / "interactions" / "_staging").iterdir())


def test_corrupt_parquet_fails_the_run_naming_the_file(tmp_path, spark):
    settings = make_settings(tmp_path)
    folder = Path(settings.lake) / "raw" / "events" / f"dt={DAY_A}"
    path, _ = parquet_file(folder / "export.parquet", DAY_A)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # footer cut off
    with pytest.raises(UnreadableInput, match=r"dt=2024-03-10/export\.parquet: not a readable Parquet file"):
        run_ingest(settings, [DAY_A], spark=spark)
    assert Lake(settings.lake).partitions(QUARANTINE) == []


def test_unreadable_file_fails_naming_it(tmp_path, monkeypatch):
    """Permission denied (we may run as root, so the file system is told to refuse one file)."""
    import fsspec
    import pyarrow.fs as pafs

    settings = make_settings(tmp_path)
    folder = Path(settings.lake) / "raw" / "events" / f"dt={DAY_A}"
    write(folder / "a.jsonl", [line(event("ok", DAY_A))])
    write(folder / "secret.jsonl", [line(event("no", DAY_A))])

    class Refusing(pafs.FSSpecHandler):
        def open_input_stream(self, path):
            if path.endswith("secret.jsonl"):
                raise PermissionError(13, "Permission denied", path)
            return super().open_input_stream(path)

    refusing = pafs.PyFileSystem(Refusing(fsspec.filesystem("file")))
    monkeypatch.setattr(Lake, "fs", property(lambda self: refusing))
    with pytest.raises(UnreadableInput, match=r"dt=2024-03-10/secret\.jsonl: cannot be read .*Permission denied"):
        input_files(Lake(settings.lake), DAY_A)


def test_unsupported_file_fails_naming_it(tmp_path):
    settings = make_settings(tmp_path)
    folder = Path(settings.lake) / "raw" / "events" / f"dt={DAY_A}"
    write(folder / "a.jsonl", [line(event("ok", DAY_A))])
    write(folder / "notes.csv", [b"a,b"])
    with pytest.raises(UnreadableInput, match=r"notes\.csv"):
        input_files(Lake(settings.lake), DAY_A)
