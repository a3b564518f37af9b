"""Ingestion: raw event lines → typed interactions, or quarantine with a reason.

Every input row ends in exactly one of the two outputs. The JVM does all the
work for JSON Lines: Spark's text reader splits (and un-gzips) the files,
each file is read whole by one task so that a line's number is its row index in
that task (``text_lines``), invalid UTF-8 and oversized lines are flagged with
Spark's own functions, and parsing, checks and de-duplication are Spark
expressions. ``split_lines`` is the same cut in Python, kept as the reference
the tests hold the reader to.

Parquet exports land beside JSON Lines: each row of a ``*.parquet`` file
becomes one input line (``line_no`` = row index + 1, ``raw`` = the row as a
JSON object) and then meets exactly the same rules as a JSON line.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.config import IngestSettings
from recsys_core.errors import DataError

# Reason codes, in the order they are checked: a line gets the first that applies.
REASONS = (
    "oversized_line",
    "invalid_utf8",
    "empty_line",
    "malformed_json",
    "missing_field",
    "bad_type",
    "oversized_field",
    "unknown_event_type",
    "bad_timestamp",
    "ts_out_of_range",
    "ts_in_future",
    "late_event",
    "bad_value",
    "negative_value",
    "duplicate_event_id",
)
ID_FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts")
KNOWN_FIELDS = (*ID_FIELDS, "value")

CLASSIFIED_COLUMNS = (
    "ingest_dt",
    "source_file",
    "line_no",
    "raw",
    "reason",
    "detail",
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "event_ts",
    "value",
    "extra",
)

LINES_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("line_no", pa.int64()),
        ("raw", pa.string()),
        ("pre_reason", pa.string()),
        ("pre_detail", pa.string()),
    ]
)


class UnreadableInput(DataError, RuntimeError):
    """A whole input file cannot be read; the run must fail, naming the file."""


def decompress(path: str, content: bytes) -> bytes:
    if not (path.endswith(".gz") or content[:2] == b"\x1f\x8b"):
        return content
    try:
        return gzip.decompress(content)
    except (EOFError, OSError, zlib.error) as err:
        raise UnreadableInput(
            f"{path}: cannot decompress ({err}); the file is truncated or corrupt. "
            "Re-deliver it, or move it out of the landing folder and rerun."
        ) from err


def split_lines(path: str, content: bytes, max_line_bytes: int) -> Iterator[tuple]:
    """Yield (source_file, line_no, raw, pre_reason, pre_detail) for every line of a file.

    Line numbers start at 1. A trailing newline does not make an extra line.
    Lines that are not valid UTF-8 or are too long are flagged here, because
    the JVM would silently replace the bad bytes.
    """
    data = decompress(path, content)
    if not data:
        return
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > max_line_bytes:
            yield path, number, line[:1024].decode("utf-8", "replace"), "oversized_line", f"{len(line)} bytes > {max_line_bytes}"
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield path, number, line.decode("utf-8", "backslashreplace"), "invalid_utf8", str(err)
            continue
        yield path, number, text, None, None


PARQUET_SUFFIX = ".parquet"
# Rows per Arrow batch handed back to the JVM: bounds the memory of one huge file.
BATCH_ROWS = 65_536


def _json_value(value: Any) -> Any:
    """A value of a Parquet row as JSON can say it: NaN and infinities become strings
    (so the value check rejects them as bad_value, as it does "NaN" in a JSON line)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if hasattr(value, "isoformat"):
        # Timestamps keep their offset when they have one (UTC-adjusted Parquet timestamps);
        # naive ones have none and are rejected like a JSON line's "ts" without an offset.
        return value.isoformat()
    return str(value)


def _text_like(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def parquet_rows(path: str, content: bytes, max_line_bytes: int) -> Iterator[tuple]:
    """Yield (source_file, line_no, raw, pre_reason, pre_detail) for every row of a Parquet file.

    ``line_no`` is the row index + 1 and ``raw`` the row as a JSON object, so the
    JVM checks it like any JSON line. Text columns are decoded strictly: a value
    that is not valid UTF-8 flags its row ``invalid_utf8``, as for JSON Lines.
    Columns that are not known fields are left out of a row where they are
    null (a JSON export would not write them); known fields are always written,
    so a null id is still a missing field. A zero-byte file holds no rows; a
    file that is not readable Parquet fails the run, naming it.
    """
    if not content:
        return
    try:
        reader = pq.ParquetFile(pa.py_buffer(content))
        batches = reader.iter_batches(batch_size=BATCH_ROWS)
        line_no = 0
        for batch in batches:
            names = batch.schema.names
            text = [_text_like(f.type) for f in batch.schema]
            columns = [batch.column(i).cast(pa.binary()) if text[i] else batch.column(i) for i in range(batch.num_columns)]
            values = [c.to_pylist() for c in columns]
            for row in zip(*values):
                line_no += 1
                yield _parquet_line(path, line_no, names, text, row, max_line_bytes)
    except (pa.ArrowException, OSError, EOFError) as err:
        raise UnreadableInput(
            f"{path}: not a readable Parquet file ({err}); the file is truncated or corrupt. "
            "Re-deliver it, or move it out of the landing folder and rerun."
        ) from err


def _parquet_line(path: str, line_no: int, names, text, row, max_line_bytes: int) -> tuple:
    obj: dict[str, Any] = {}
    bad_utf8 = None
    for name, is_text, value in zip(names, text, row):
        if value is None and name not in KNOWN_FIELDS:
            continue
        if is_text and value is not None:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                bad_utf8 = bad_utf8 or f"column {name}: {err}"
                value = value.decode("utf-8", "backslashreplace")
        obj[name] = _json_value(value)
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)
    size = len(raw.encode("utf-8"))
    if size > max_line_bytes:
        return path, line_no, raw[:1024], "oversized_line", f"{size} bytes > {max_line_bytes}"
    if bad_utf8:
        return path, line_no, raw, "invalid_utf8", bad_utf8
    return path, line_no, raw, None, None


def file_rows(path: str, content: bytes, max_line_bytes: int) -> Iterator[tuple]:
    """The input rows of one landed file, whatever its format."""
    if path.endswith(PARQUET_SUFFIX):
        return parquet_rows(path, content, max_line_bytes)
    return split_lines(path, content, max_line_bytes)


# Under ``sparkconf.WHOLE_FILES`` every file is one partition, so that monotonically_increasing_id's
# low 33 bits (the row index in the partition) are the line index.
ROW_INDEX_BITS = 33


def text_lines(spark, uris: list[str], max_line_bytes: int):
    """JSON Lines files (plain or gzipped) → line rows (source_file, line_no, raw, pre_reason, pre_detail).

    The session must hold ``sparkconf.WHOLE_FILES`` while the result is computed
    (``run_ingest`` checks afterwards that every file was numbered 1..n). Lines end
    at "\n" only, a trailing "\r" is dropped, as in ``split_lines``. A line that
    is not valid UTF-8 keeps its text with U+FFFD for the bad bytes in ``raw``.
    """
    from pyspark.sql import functions as F

    value = F.col("value")
    line = F.when(value.endswith("\r"), F.expr("substr(value, 1, length(value) - 1)")).otherwise(value)
    size = F.octet_length("_line")
    oversized = size > max_line_bytes
    invalid = ~F.expr("is_valid_utf8(_line)")
    shown = F.expr("make_valid_utf8(_line)")
    return (
        spark.read.option("lineSep", "\n")
        .text(uris)
        .select(
            F.col("_metadata.file_path").alias("source_file"),
            (F.monotonically_increasing_id().bitwiseAND((1 << ROW_INDEX_BITS) - 1) + 1).alias("line_no"),
            line.alias("_line"),
        )
        .select(
            "source_file",
            "line_no",
            F.when(oversized, F.substring(shown, 1, 1024)).when(invalid, shown).otherwise(F.col("_line")).alias("raw"),
            F.when(oversized, F.lit("oversized_line")).when(invalid, F.lit("invalid_utf8")).alias("pre_reason"),
            F.when(oversized, F.concat(size.cast("string"), F.lit(f" bytes > {max_line_bytes}")))
            .when(invalid, F.lit("not valid UTF-8 (bad bytes shown as U+FFFD)"))
            .alias("pre_detail"),
        )
    )


def _batch(rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows))
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, LINES_SCHEMA)], schema=LINES_SCHEMA)


def lines_from_files(batches, max_line_bytes: int, batch_rows: int = BATCH_ROWS):
    """mapInArrow body: binaryFile rows (path, content) → line rows, at most ``batch_rows`` a batch."""
    for batch in batches:
        paths = batch.column("path").to_pylist()
        contents = batch.column("content").to_pylist()
        for path, content in zip(paths, contents):
            rows: list[tuple] = []
            for row in file_rows(path, content, max_line_bytes):
                rows.append(row)
                if len(rows) >= batch_rows:
                    yield _batch(rows)
                    rows = []
            if rows:
                yield _batch(rows)


@dataclass
class IngestReport:
    run_date: date
    files: int
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, dict] = field(default_factory=dict)
    event_dates: dict[str, int] = field(default_factory=dict)

    @property
    def reject_rate(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def check_balanced(self) -> None:
        if self.rows_accepted + self.rows_quarantined != self.rows_in:
            raise AssertionError(
                f"ingest {self.run_date}: accepted {self.rows_accepted} + quarantined "
                f"{self.rows_quarantined} != input {self.rows_in}; rows were lost"
            )

    def check_reject_rate(self, max_rate: float) -> None:
        if self.reject_rate <= max_rate:
            return
        top = sorted(self.reasons.items(), key=lambda kv: -kv[1])[:3]
        lines = [
            f"  {reason}: {count} rows, e.g. {self.examples.get(reason, {}).get('source_file')}:"
            f"{self.examples.get(reason, {}).get('line_no')} {self.examples.get(reason, {}).get('raw', '')[:120]!r}"
            for reason, count in top
        ]
        raise RejectRateExceeded(
            f"ingest {self.run_date}: {self.rows_quarantined} of {self.rows_in} rows "
            f"({self.reject_rate:.1%}) quarantined, above the limit of {max_rate:.1%}. Top reasons:\n" + "\n".join(lines)
        )

    def to_dict(self) -> dict:
        return {
            "run_date": self.run_date.isoformat(),
            "files": self.files,
            "rows_in": self.rows_in,
            "rows_accepted": self.rows_accepted,
            "rows_quarantined": self.rows_quarantined,
            "reject_rate": round(self.reject_rate, 6),
            "reasons": dict(sorted(self.reasons.items())),
            "examples": self.examples,
            "accepted_by_event_date": dict(sorted(self.event_dates.items())),
        }


class RejectRateExceeded(DataError, RuntimeError):
    """Too many input rows were quarantined; nothing of the day was published."""

    hint = "fix the upstream export, or raise RECSYS_INGEST__MAX_REJECT_RATE if this share of bad rows is expected"


def classify(lines, settings: IngestSettings, known_event_ids=None):
    """Spark transformation: line rows → the same rows with parsed fields and a reason (null = accepted).

    ``lines`` carries an ``ingest_dt`` column, the arrival day of its file; the
    accepted event times are relative to it: not before ``min_event_time``, not
    older than ``lateness_days`` before it, not later than its end plus the
    clock skew. ``known_event_ids`` (event_id, ingest_dt) are ids accepted on
    earlier days; a line repeating one is a duplicate.
    """
    return mark_duplicates(check_rows(lines, settings), known_event_ids)


def check_rows(lines, settings: IngestSettings):
    """The per-row part of ``classify``: every reason except duplicate_event_id, in CLASSIFIED's columns."""
    from pyspark.sql import functions as F

    floor = datetime.combine(settings.min_event_time, time(), tzinfo=UTC)
    earliest = F.to_timestamp(F.date_sub("ingest_dt", settings.lateness_days))
    latest = F.to_timestamp(F.date_add("ingest_dt", 1)) + F.expr(f"INTERVAL {settings.clock_skew_minutes} MINUTES")

    blank = F.col("raw").rlike(r"^\s*$")
    # Wrapping the line in [ ] makes the parser reject trailing text and a second object on the
    # same line (both would otherwise be silently dropped); the variant parser also rejects
    # duplicate keys, single quotes and NaN literals.
    wrapped = F.concat(F.lit("["), F.col("raw"), F.lit("]"))
    strict = F.try_parse_json(wrapped).isNotNull()
    # The variant parser only validates (strictly); the values come from from_json, which reads the same
    # text: casting a variant's values to strings builds expressions per value, about 3x the parse.
    objects = F.from_json(wrapped, "array<map<string,string>>")
    df = lines.withColumn(
        "m",
        F.when(F.col("pre_reason").isNull() & ~blank & strict, objects),
    ).withColumn("m", F.when(F.size("m") == 1, F.col("m")[0]))
    for name in KNOWN_FIELDS:
        raw_field = F.col("m").getItem(name)
        df = df.withColumn(f"f_{name}", F.trim(raw_field) if name in ID_FIELDS else raw_field)

    def missing(name):
        col = F.col(f"f_{name}")
        return col.isNull() | (col == "")

    def structured(name):
        return F.col(f"f_{name}").rlike(r"^\s*[\[{]") | F.col(f"f_{name}").isin("true", "false")

    numeric_ts = F.col("f_ts").rlike(r"^-?\d+(\.\d+)?$")
    # A text timestamp must say its offset: without one, "10:00" is ambiguous.
    iso_with_offset = F.col("f_ts").rlike(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$")
    epoch = F.expr("try_cast(f_ts AS DOUBLE)")
    event_ts = F.when(
        numeric_ts,
        # Epoch numbers above 1e11 are milliseconds.
        F.timestamp_micros(F.when(epoch > 1e11, epoch * 1000).otherwise(epoch * 1_000_000).cast("long")),
    ).when(iso_with_offset, F.expr("try_to_timestamp(f_ts)"))
    df = df.withColumn("event_ts", event_ts)
    value = F.expr("try_cast(f_value AS DOUBLE)")
    df = df.withColumn("value", F.when(F.col("f_value").isNull(), F.lit(None).cast("double")).otherwise(value))

    def first_missing():
        return F.coalesce(*[F.when(missing(n), F.lit(n)) for n in ID_FIELDS])

    def first_structured():
        return F.coalesce(*[F.when(structured(n), F.lit(n)) for n in ID_FIELDS])

    def first_oversized():
        return F.coalesce(*[F.when(F.length(f"f_{n}") > settings.max_field_chars, F.lit(n)) for n in ID_FIELDS])

    is_nan = F.isnan(F.col("value")) | F.col("value").isin(float("inf"), float("-inf"))
    checks = [
        ("empty_line", blank, F.lit("blank line")),
        ("malformed_json", F.col("m").isNull(), F.lit("not a JSON object")),
        ("missing_field", first_missing().isNotNull(), F.concat(F.lit("missing or empty: "), first_missing())),
        ("bad_type", first_structured().isNotNull(), F.concat(F.lit("not a scalar: "), first_structured())),
        (
            "oversized_field",
            first_oversized().isNotNull(),
            F.concat(F.lit(f"longer than {settings.max_field_chars} chars: "), first_oversized()),
        ),
        (
            "unknown_event_type",
            ~F.col("f_event_type").isin(*settings.event_types),
            F.concat(F.lit("event_type="), F.col("f_event_type")),
        ),
        (
            "bad_timestamp",
            F.col("event_ts").isNull(),
            F.concat(F.lit("not ISO-8601 with offset nor epoch seconds: ts="), F.col("f_ts")),
        ),
        (
            "ts_out_of_range",
            F.col("event_ts") < F.lit(floor),
            F.concat(F.lit(f"before {settings.min_event_time}: "), F.col("f_ts")),
        ),
        ("ts_in_future", F.col("event_ts") >= latest, F.concat(F.lit("after the arrival day plus clock skew: "), F.col("f_ts"))),
        (
            "late_event",
            F.col("event_ts") < earliest,
            F.concat(F.lit(f"more than {settings.lateness_days} days before arrival: "), F.col("f_ts")),
        ),
        (
            "bad_value",
            F.col("f_value").isNotNull() & (F.col("value").isNull() | is_nan),
            F.concat(F.lit("value="), F.col("f_value")),
        ),
        ("negative_value", F.col("value") < 0, F.concat(F.lit("value="), F.col("f_value"))),
    ]
    reason = F.when(F.col("pre_reason").isNotNull(), F.col("pre_reason"))
    for code, condition, _ in checks:
        reason = reason.when(condition, F.lit(code))
    # The detail is chosen by the reason, not by the conditions again: the accepted rows,
    # nearly all of them, then pay for the condition chain once.
    detail = F.when(F.col("reason").isNull(), F.lit(None).cast("string")).when(
        F.col("pre_reason").isNotNull(), F.col("pre_detail")
    )
    for code, _, text in checks:
        detail = detail.when(F.col("reason") == code, text)
    df = df.withColumn("reason", reason).withColumn("detail", detail)

    # map_filter's lambda runs interpreted, row by row: only rows that have an extra key pay for it.
    known = F.array(*[F.lit(name) for name in KNOWN_FIELDS])
    known_present = sum(F.map_contains_key("m", name).cast("int") for name in KNOWN_FIELDS)
    has_extra = F.size("m") > known_present
    # Sorted by key, as the variant parser orders an object's keys: the same line always gives the same text.
    extra_map = F.map_filter("m", lambda k, v: ~F.array_contains(known, k))
    extra = F.to_json(F.map_from_entries(F.array_sort(F.map_entries(extra_map))))
    renamed = ("event_id", "user_id", "item_id", "event_type")  # the ids as read (f_<name>), kept under their name
    return df.withColumn("extra", F.when(has_extra, extra)).select(
        *[F.col(f"f_{c}").alias(c) if c in renamed else c for c in CLASSIFIED_COLUMNS]
    )


# Above this many repeated ids, the first occurrences are joined back by a shuffle, not broadcast.
BROADCAST_DUPLICATES = 200_000


def mark_duplicates(rows, known_event_ids=None):
    """Rows of ``check_rows`` → the same rows, repeats of an accepted event id quarantined as duplicate_event_id.

    The first valid occurrence (by file, then line) of an id wins; a valid row
    whose id ``known_event_ids`` (event_id, ingest_dt) holds was ingested on an
    earlier day. Only narrow columns are shuffled: the ids that occur more than
    once, and their first occurrences, are found by aggregates and joined back
    (broadcast while few), so the wide rows never move.
    """
    from pyspark.sql import functions as F

    valid = F.col("reason").isNull()
    ids = rows.where(valid).select("event_id", "source_file", "line_no")
    repeated_ids = ids.groupBy("event_id").count().where(F.col("count") > 1).select("event_id")
    # Cached: counted once to choose the join, then joined (a few rows normally).
    first = (
        ids.join(F.broadcast(repeated_ids), "event_id")
        .groupBy("event_id")
        .agg(F.min(F.struct("source_file", "line_no")).alias("_first"))
        .cache()
    )
    out = rows.join(_small(first), "event_id", "left")
    here = F.struct("source_file", "line_no")
    repeated = valid & F.col("_first").isNotNull() & (here != F.col("_first"))
    out = out.withColumn(
        "detail",
        F.when(repeated, F.concat(F.lit("first seen at "), F.concat_ws(":", "_first.source_file", "_first.line_no"))).otherwise(
            F.col("detail")
        ),
    ).withColumn("reason", F.when(repeated, F.lit("duplicate_event_id")).otherwise(F.col("reason")))
    if known_event_ids is not None:
        known = known_event_ids.select("event_id", F.col("ingest_dt").alias("_known_dt"))
        seen = ids.select("event_id").distinct().join(known, "event_id").cache()
        out = out.join(_small(seen), "event_id", "left")
        seen_before = F.col("reason").isNull() & F.col("_known_dt").isNotNull()
        out = out.withColumn(
            "detail",
            F.when(seen_before, F.concat(F.lit("already ingested on "), F.col("_known_dt").cast("string"))).otherwise(
                F.col("detail")
            ),
        ).withColumn("reason", F.when(seen_before, F.lit("duplicate_event_id")).otherwise(F.col("reason")))
    return out.select(*CLASSIFIED_COLUMNS)


def _small(df):
    """``df`` marked for a broadcast join when it is small (its row count is one aggregate)."""
    from pyspark.sql import functions as F

    return F.broadcast(df) if df.count() <= BROADCAST_DUPLICATES else df
