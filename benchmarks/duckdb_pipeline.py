"""The ingest and feature stages re-implemented on DuckDB, as the yardstick of the Spark ones.

Same inputs, same work, same outputs as ``recsys_core.stages.ingest.run_ingest``
followed by ``recsys_core.stages.features.run_features`` (text embeddings off):

* ingest: every line of every gzipped JSON Lines file of every landed day is
  read with its file and line number (Python only decompresses and cuts lines,
  vectorised, as the Spark job's ``lines_from_files`` does per line), then
  DuckDB parses the JSON with an explicit column list (``json_extract_string``
  of the six known fields, ``json_merge_patch`` for the unknown ones), checks
  every line with the same reason codes in the same order (oversized line,
  invalid UTF-8, blank, malformed JSON, missing / structured / oversized ids,
  unknown event type, timestamp parse, range, future, lateness, value finite
  and >= 0), de-duplicates on event_id (first valid occurrence by file, line),
  writes interactions (partitioned dt / ingest_dt, sorted by time, file, line)
  and quarantine (partitioned by arrival day, with the raw line and a detail),
  and computes the per-day reports (counts per reason and event date, one
  example per reason).
* features: reads the written interactions back (complete arrival days up to
  as_of + lateness, event time before the end of as_of), the user and item
  snapshots, and writes one Parquet file of user profiles (counts overall and
  per 1/7/30-day window, per event type, active days, first/last event, mean
  value, genre affinity shares via the items snapshot, the last 50 items) and
  one of item features (popularity overall and per window, trend, first seen,
  release year), sorted by id.

Not reproduced: the per-partition ``_manifest.json``/staging/publish dance of
the lake (cheap file moves) and the text embeddings.

DuckDB's JSON parser accepts trailing commas, NaN/Infinity literals and
duplicate keys, which Spark's strict parser rejects; such lines are flagged
malformed here too (by pattern, so a string value containing ``,}`` would be a
false positive; the synthetic logs have none).

DuckDB's ``read_json`` is not used for the parse because it cannot give line
numbers (needed for the de-duplication order, the last-N tie break and the
quarantine), drops unparseable lines without a trace, and would accept a valid
but oversized line; ``json_extract_string`` with explicit paths is the same
JSON parser applied to the line text.
"""

from __future__ import annotations

import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

LINES_SCHEMA = pa.schema([("source_file", pa.string()), ("line_no", pa.int64()), ("raw_bytes", pa.large_binary())])
ID_FIELDS = ("event_id", "user_id", "item_id", "event_type", "ts")
KNOWN_FIELDS = (*ID_FIELDS, "value")


def landed_files(lake_root: Path) -> list[tuple[date, str]]:
    """(arrival day, path) of every raw event file, in path order."""
    root = lake_root / "raw" / "events"
    out = []
    for folder in sorted(root.glob("dt=*")):
        day = date.fromisoformat(folder.name.split("=", 1)[1])
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith((".", "_")):
                out.append((day, str(path)))
    return out


def split_file(path: str) -> pa.RecordBatch | None:
    """One file's lines (without newline, one trailing CR removed), numbered from 1, as raw bytes.

    The same cut as ``recsys_core.features.ingest.split_lines``, done with numpy
    on the whole buffer instead of a Python loop per line.
    """
    data = Path(path).read_bytes()
    if path.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if not data:
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(buf)]])
    if starts[-1] == len(buf):  # a trailing newline does not make an extra line
        starts, ends = starts[:-1], ends[:-1]
    nonempty = ends > starts
    cr = np.zeros(len(ends), dtype=bool)
    cr[nonempty] = buf[ends[nonempty] - 1] == 13
    ends = ends - cr
    # Drop the newline (and stripped CR) bytes so the lines are contiguous, and shift the offsets.
    removed = np.sort(np.concatenate([nl, ends[cr]]))
    kept = np.delete(buf, removed)
    shift = np.searchsorted(removed, starts, side="left")
    offsets = np.concatenate([starts - shift, [len(kept)]]).astype(np.int64)
    n = len(starts)
    raw = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(kept)])
    uri = "file:" + path
    return pa.RecordBatch.from_arrays(
        [pa.array([uri] * n, pa.string()), pa.array(np.arange(1, n + 1, dtype=np.int64)), raw], schema=LINES_SCHEMA
    )


def lines_reader(paths: list[str], threads: int = 2) -> pa.RecordBatchReader:
    def batches():
        with ThreadPoolExecutor(threads) as pool:  # zlib releases the GIL while inflating
            for batch in pool.map(split_file, paths):
                if batch is not None:
                    yield batch

    return pa.RecordBatchReader.from_batches(LINES_SCHEMA, batches())


def _lit(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def classify_sql(ingest) -> str:
    """SQL over table ``lines`` → one row per line with parsed fields, reason and detail."""
    floor = datetime.combine(ingest.min_event_time, time(), tzinfo=UTC).isoformat()
    types = ", ".join(_lit(t) for t in ingest.event_types)
    max_line, max_field = ingest.max_line_bytes, ingest.max_field_chars
    paths = ", ".join(_lit(f"$.{f}") for f in KNOWN_FIELDS)
    drop_known = "{" + ",".join(f'"{f}":null' for f in KNOWN_FIELDS) + "}"

    def first(cond_of) -> str:
        return "CASE " + " ".join(f"WHEN {cond_of(f'f_{n}')} THEN '{n}'" for n in ID_FIELDS) + " END"

    missing = first(lambda c: f"({c} IS NULL OR {c} = '')")
    structured = first(lambda c: rf"(regexp_matches({c}, '^\s*[\[{{]') OR {c} IN ('true', 'false'))")
    oversized = first(lambda c: f"length({c}) > {max_field}")
    iso = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
    return f"""
    WITH decoded AS (
        SELECT source_file, line_no,
               CAST(regexp_extract(source_file, '/dt=(\\d{{4}}-\\d{{2}}-\\d{{2}})/', 1) AS DATE) AS ingest_dt,
               octet_length(raw_bytes) > {max_line} AS too_long,
               CASE WHEN octet_length(raw_bytes) <= {max_line} THEN try(decode(raw_bytes)) END AS text,
               CASE WHEN octet_length(raw_bytes) > {max_line}
                    THEN coalesce(try(decode(raw_bytes[1:1024])), CAST(raw_bytes[1:1024] AS VARCHAR))
                    ELSE coalesce(try(decode(raw_bytes)), CAST(raw_bytes AS VARCHAR)) END AS raw,
               octet_length(raw_bytes) AS n_bytes
        FROM lines
    ), parsed AS (
        SELECT *,
               CASE WHEN text IS NOT NULL AND NOT regexp_full_match(text, '\\s*')
                    THEN try(json(text)) END AS j
        FROM decoded
    ), fields AS (
        -- DuckDB's JSON parser is lenient where Spark's (try_parse_json) is strict: it accepts trailing
        -- commas, NaN / Infinity literals and duplicate keys. Those lines are malformed for Spark, so here too.
        SELECT *,
               CASE WHEN json_type(j) = 'OBJECT'
                     AND NOT regexp_matches(text, ',\\s*[}}\\]]')
                     AND NOT regexp_matches(text, '[:,\\[]\\s*[-+]?(?i:nan|inf|infinity)\\s*[,}}\\]]')
                     AND len(json_keys(j)) = len(list_distinct(json_keys(j)))
                    THEN json_extract_string(j, [{paths}]) END AS f
        FROM parsed
    ), typed AS (
        SELECT source_file, line_no, ingest_dt, raw, too_long, text, j, n_bytes,
               f IS NULL AS no_object,
               trim(f[1]) AS f_event_id, trim(f[2]) AS f_user_id, trim(f[3]) AS f_item_id,
               trim(f[4]) AS f_event_type, trim(f[5]) AS f_ts, f[6] AS f_value
        FROM fields
    ), timed AS (
        SELECT *,
               CASE
                 WHEN regexp_matches(f_ts, '^-?\\d+(\\.\\d+)?$') THEN
                   CASE WHEN try_cast(f_ts AS DOUBLE) > 1e11 THEN to_timestamp(try_cast(f_ts AS DOUBLE) / 1000)
                        ELSE to_timestamp(try_cast(f_ts AS DOUBLE)) END
                 WHEN regexp_matches(f_ts, '{iso}') THEN try_cast(f_ts AS TIMESTAMPTZ)
               END AS event_ts,
               CASE WHEN f_value IS NULL THEN NULL ELSE try_cast(f_value AS DOUBLE) END AS value
        FROM typed
    ), checked AS (
        SELECT *,
          CASE
            WHEN too_long THEN 'oversized_line'
            WHEN text IS NULL THEN 'invalid_utf8'
            WHEN regexp_full_match(text, '\\s*') THEN 'empty_line'
            WHEN no_object THEN 'malformed_json'
            WHEN {missing} IS NOT NULL THEN 'missing_field'
            WHEN {structured} IS NOT NULL THEN 'bad_type'
            WHEN {oversized} IS NOT NULL THEN 'oversized_field'
            WHEN f_event_type NOT IN ({types}) THEN 'unknown_event_type'
            WHEN event_ts IS NULL THEN 'bad_timestamp'
            WHEN event_ts < TIMESTAMPTZ '{floor}' THEN 'ts_out_of_range'
            WHEN event_ts >= CAST(ingest_dt + 1 AS TIMESTAMPTZ) + INTERVAL {ingest.clock_skew_minutes} MINUTE THEN 'ts_in_future'
            WHEN event_ts < CAST(ingest_dt - {ingest.lateness_days} AS TIMESTAMPTZ) THEN 'late_event'
            WHEN f_value IS NOT NULL AND (value IS NULL OR isnan(value) OR isinf(value)) THEN 'bad_value'
            WHEN value < 0 THEN 'negative_value'
          END AS reason0
        FROM timed
    ), detailed AS (
        SELECT *,
          CASE reason0
            WHEN 'oversized_line' THEN n_bytes || ' bytes > {max_line}'
            WHEN 'invalid_utf8' THEN 'invalid utf-8 byte sequence'
            WHEN 'empty_line' THEN 'blank line'
            WHEN 'malformed_json' THEN 'not a JSON object'
            WHEN 'missing_field' THEN 'missing or empty: ' || {missing}
            WHEN 'bad_type' THEN 'not a scalar: ' || {structured}
            WHEN 'oversized_field' THEN 'longer than {max_field} chars: ' || {oversized}
            WHEN 'unknown_event_type' THEN 'event_type=' || f_event_type
            WHEN 'bad_timestamp' THEN 'not ISO-8601 with offset nor epoch seconds: ts=' || f_ts
            WHEN 'ts_out_of_range' THEN 'before {ingest.min_event_time}: ' || f_ts
            WHEN 'ts_in_future' THEN 'after the arrival day plus clock skew: ' || f_ts
            WHEN 'late_event' THEN 'more than {ingest.lateness_days} days before arrival: ' || f_ts
            WHEN 'bad_value' THEN 'value=' || f_value
            WHEN 'negative_value' THEN 'value=' || f_value
          END AS detail0
        FROM checked
    ), ranked AS (
        SELECT *,
          row_number() OVER w AS dup_rank,
          first_value(source_file || ':' || line_no) OVER w AS first_seen
        FROM detailed
        WINDOW w AS (PARTITION BY f_event_id ORDER BY (reason0 IS NOT NULL), source_file, line_no)
    )
    SELECT ingest_dt, source_file, line_no, raw,
           CASE WHEN reason0 IS NULL AND dup_rank > 1 THEN 'duplicate_event_id' ELSE reason0 END AS reason,
           CASE WHEN reason0 IS NULL AND dup_rank > 1 THEN 'first seen at ' || first_seen ELSE detail0 END AS detail,
           f_event_id AS event_id, f_user_id AS user_id, f_item_id AS item_id, f_event_type AS event_type,
           event_ts, value,
           CASE WHEN reason0 IS NULL AND dup_rank = 1 THEN
             -- unknown fields as a JSON object of strings, keys sorted (as Spark's to_json of the map)
             nullif(CAST(to_json(map_from_entries(list_sort(map_entries(
               CAST(json_merge_patch(j, '{drop_known}') AS MAP(VARCHAR, VARCHAR)))))) AS VARCHAR), '{{}}') END AS extra
    FROM ranked
    """


def run_ingest_duckdb(con, lake_root: Path, out: Path, ingest) -> dict:
    """Raw files → classified table → interactions + quarantine Parquet and per-day reports."""
    files = landed_files(lake_root)
    reader = lines_reader([p for _, p in files])  # noqa: F841 - scanned by name below
    con.execute("CREATE OR REPLACE TABLE lines AS SELECT * FROM reader")
    con.execute(f"CREATE OR REPLACE TABLE classified AS {classify_sql(ingest)}")
    con.execute("DROP TABLE lines")
    rows_in = dict(con.sql("SELECT ingest_dt, count(*) FROM classified GROUP BY ALL").fetchall())
    grouped = con.sql(
        "SELECT ingest_dt, reason, CAST(event_ts AS DATE) AS event_dt, count(*) FROM classified GROUP BY ALL"
    ).fetchall()
    examples = con.sql(
        "SELECT ingest_dt, reason, min((source_file, line_no, left(raw, 300), detail)) FROM classified "
        "WHERE reason IS NOT NULL GROUP BY ALL"
    ).fetchall()
    reports: dict[date, dict] = {}
    for day, _path in files:
        reports.setdefault(
            day,
            {
                "files": 0,
                "rows_in": rows_in.get(day, 0),
                "accepted": 0,
                "quarantined": 0,
                "reasons": {},
                "event_dates": {},
                "examples": {},
            },
        )
        reports[day]["files"] += 1
    for day, reason, event_dt, n in grouped:
        r = reports[day]
        if reason:
            r["quarantined"] += n
            r["reasons"][reason] = r["reasons"].get(reason, 0) + n
        else:
            r["accepted"] += n
            r["event_dates"][event_dt.isoformat()] = r["event_dates"].get(event_dt.isoformat(), 0) + n
    for day, reason, ex in examples:
        reports[day]["examples"][reason] = ex
    for day, r in reports.items():
        if r["accepted"] + r["quarantined"] != r["rows_in"]:
            raise AssertionError(f"duckdb ingest {day}: rows lost")

    interactions, quarantine = out / "interactions", out / "quarantine"
    con.execute(
        f"""COPY (SELECT event_id, user_id, item_id, event_type, event_ts, value, source_file, line_no, ingest_dt, extra,
                         CAST(event_ts AS DATE) AS dt
                  FROM classified WHERE reason IS NULL ORDER BY ingest_dt, dt, event_ts, source_file, line_no)
            TO '{interactions}' (FORMAT parquet, PARTITION_BY (dt, ingest_dt), OVERWRITE_OR_IGNORE)"""
    )
    con.execute(
        f"""COPY (SELECT source_file, line_no, reason, detail, raw, ingest_dt AS dt
                  FROM classified WHERE reason IS NOT NULL ORDER BY dt, source_file, line_no)
            TO '{quarantine}' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE_OR_IGNORE)"""
    )
    con.execute("DROP TABLE classified")
    total = {k: sum(r[k] for r in reports.values()) for k in ("files", "rows_in", "accepted", "quarantined")}
    reasons: dict[str, int] = {}
    for r in reports.values():
        for k, v in r["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    return {"days": len(reports), **total, "reasons": dict(sorted(reasons.items()))}


def _snapshot(lake_root: Path, name: str, as_of: date) -> str:
    folders = sorted(
        p for p in (lake_root / "raw" / name).glob("snapshot_dt=*") if date.fromisoformat(p.name.split("=", 1)[1]) <= as_of
    )
    if not folders:
        raise FileNotFoundError(f"no {name} snapshot on or before {as_of}")
    return str(folders[-1] / "*.parquet")


def run_features_duckdb(con, lake_root: Path, out: Path, as_of: date, features, lateness_days: int) -> dict:
    """Written interactions (as of) + snapshots → user_profiles.parquet and item_features.parquet."""
    end = datetime.combine(as_of + timedelta(days=1), time(), tzinfo=UTC).isoformat()
    bound = as_of + timedelta(days=lateness_days)
    users = _snapshot(lake_root, "users", as_of)
    items = _snapshot(lake_root, "items", as_of)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE ia AS
            SELECT user_id, item_id, event_type, event_ts, value, source_file, line_no
            FROM read_parquet('{out}/interactions/*/*/*.parquet', hive_partitioning = true)
            WHERE ingest_dt <= DATE '{bound}' AND dt <= DATE '{as_of}' AND event_ts < TIMESTAMPTZ '{end}'"""
    )
    n_interactions = con.sql("SELECT count(*) FROM ia").fetchall()[0][0]
    end_ts = f"TIMESTAMPTZ '{end}'"
    window_counts = ",\n".join(
        f"CAST(sum(CASE WHEN event_ts >= {end_ts} - INTERVAL {d} DAY THEN 1 ELSE 0 END) AS BIGINT) AS n_events_{d}d"
        for d in features.activity_windows_days
    )
    zero = ", ".join(f"coalesce(a.n_events_{d}d, 0) AS n_events_{d}d" for d in features.activity_windows_days)
    profiles = out / "user_profiles.parquet"
    con.execute(
        f"""COPY (
        WITH activity AS (
            SELECT user_id, count(*) AS n_events, {window_counts},
                   count(DISTINCT CAST(event_ts AS DATE)) AS active_days,
                   min(event_ts) AS first_event_ts, max(event_ts) AS last_event_ts, avg(value) AS mean_value
            FROM ia GROUP BY user_id
        ), by_type AS (
            SELECT user_id, map_from_entries(list((event_type, n))) AS events_by_type
            FROM (SELECT user_id, event_type, count(*) AS n FROM ia GROUP BY ALL) GROUP BY user_id
        ), genre_counts AS (
            SELECT ia.user_id, g.genre, count(*) AS n
            FROM ia JOIN (SELECT item_id, unnest(genres) AS genre FROM read_parquet('{items}')) g USING (item_id)
            GROUP BY ALL
        ), affinity AS (
            SELECT user_id, map_from_entries(list((genre, share) ORDER BY genre, share)) AS genre_affinity
            FROM (SELECT user_id, genre, n / sum(n) OVER (PARTITION BY user_id) AS share FROM genre_counts)
            GROUP BY user_id
        ), recent AS (
            SELECT user_id, list(item_id ORDER BY pos DESC) AS recent_items
            FROM (SELECT user_id, item_id,
                         row_number() OVER (PARTITION BY user_id ORDER BY event_ts DESC, source_file DESC, line_no DESC) AS pos
                  FROM ia QUALIFY pos <= {features.recent_items})
            GROUP BY user_id
        ), snapshot AS (SELECT user_id, age, gender, occupation FROM read_parquet('{users}')),
        known AS (SELECT user_id FROM snapshot UNION SELECT user_id FROM ia)
        SELECT k.user_id, coalesce(a.n_events, 0) AS n_events, {zero},
               coalesce(t.events_by_type, MAP {{}}::MAP(VARCHAR, BIGINT)) AS events_by_type,
               coalesce(a.active_days, 0) AS active_days, a.first_event_ts, a.last_event_ts,
               (epoch_us({end_ts}) - epoch_us(a.last_event_ts)) / 86400000000.0 AS days_since_last_event,
               a.mean_value,
               coalesce(f.genre_affinity, MAP {{}}::MAP(VARCHAR, DOUBLE)) AS genre_affinity,
               coalesce(r.recent_items, []::VARCHAR[]) AS recent_items,
               s.age, s.gender, s.occupation
        FROM known k
        LEFT JOIN activity a USING (user_id) LEFT JOIN by_type t USING (user_id) LEFT JOIN affinity f USING (user_id)
        LEFT JOIN recent r USING (user_id) LEFT JOIN snapshot s USING (user_id)
        ORDER BY k.user_id
        ) TO '{profiles}' (FORMAT parquet)"""
    )
    windows = sorted(set(features.popularity_windows_days))  # the trend windows are among them (config checks)
    pops = ",\n".join(
        f"CAST(sum(CASE WHEN event_ts >= {end_ts} - INTERVAL {d} DAY THEN 1 ELSE 0 END) AS BIGINT) AS pop_{d}d" for d in windows
    )
    short, long_ = features.trend_short_days, features.trend_long_days
    item_out = out / "item_features.parquet"
    con.execute(
        f"""COPY (
        WITH popularity AS (
            SELECT item_id, count(*) AS pop_all, min(event_ts) AS first_seen_ts, {pops} FROM ia GROUP BY item_id
        ), snapshot AS (SELECT item_id, title, genres, release_date FROM read_parquet('{items}')),
        catalogue AS (
            SELECT * FROM snapshot
            UNION ALL BY NAME
            SELECT item_id FROM (SELECT DISTINCT item_id FROM ia) seen ANTI JOIN snapshot USING (item_id)
        )
        SELECT c.item_id, c.title, coalesce(c.genres, []::VARCHAR[]) AS genres,
               try_cast(nullif(regexp_extract(c.release_date, '(\\d{{4}})', 1), '') AS INTEGER) AS release_year,
               {", ".join(f"coalesce(p.pop_{d}d, 0) AS pop_{d}d" for d in windows)},
               coalesce(p.pop_all, 0) AS pop_all,
               ((coalesce(p.pop_{short}d, 0) + 1) / {short}.0) / ((coalesce(p.pop_{long_}d, 0) + 1) / {long_}.0) AS trend,
               p.first_seen_ts,
               (epoch_us({end_ts}) - epoch_us(p.first_seen_ts)) / 86400000000.0 AS days_since_first_seen,
               CAST(NULL AS FLOAT[]) AS text_embedding
        FROM catalogue c LEFT JOIN popularity p USING (item_id)
        ORDER BY c.item_id
        ) TO '{item_out}' (FORMAT parquet)"""
    )
    n_users = con.sql(f"SELECT count(*) FROM read_parquet('{profiles}')").fetchall()[0][0]
    n_items = con.sql(f"SELECT count(*) FROM read_parquet('{item_out}')").fetchall()[0][0]
    con.execute("DROP TABLE ia")
    return {"interactions": n_interactions, "user_profiles": n_users, "item_features": n_items}


def connect(threads: int | None = None, temp_dir: Path | None = None):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {threads or os.cpu_count() or 1}")
    if temp_dir is not None:
        con.execute(f"SET temp_directory = '{temp_dir}'")
    return con
