"""Stage 1a: arrival days of raw events → interactions + quarantine + a report per day.

One Spark job handles any number of arrival days, so a backfill of months
costs one job, not one per day. Each day is still committed on its own, and
only after its staged output passed the data checks
(``recsys_core.features.checks``) and holds exactly the rows its report counts.
Landed files are JSON Lines (optionally gzipped) or Parquet; a file that
cannot be read fails the run, naming it.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date, timedelta
from functools import partial

from recsys_core.config import Settings
from recsys_core.contracts import INTERACTIONS, QUARANTINE, RAW_EVENTS
from recsys_core.errors import MissingInput
from recsys_core.features.checks import DataCheckFailed, spark_check, staged_frame
from recsys_core.features.forget import quarantine_forgotten
from recsys_core.features.ingest import (
    LINES_SCHEMA,
    PARQUET_SUFFIX,
    IngestReport,
    UnreadableInput,
    check_rows,
    lines_from_files,
    mark_duplicates,
    text_lines,
)
from recsys_core.io.forget_log import forgotten_for_ingest
from recsys_core.io.lake import Lake
from recsys_core.io.tables import commit_ingest, completed_ingests, spark_ingested
from recsys_core.sparkconf import UNCOMPRESSED_CACHE, WHOLE_FILES, spark_conf

log = logging.getLogger(__name__)

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz", PARQUET_SUFFIX)
REPORT = "_report.json"


def landed_dates(lake: Lake) -> list[date]:
    return [date.fromisoformat(v) for v in lake.partitions(RAW_EVENTS, complete_only=False)]


def dates_to_ingest(lake: Lake, run_date: date, catch_up: bool) -> list[date]:
    """The run date, plus (with ``catch_up``) every earlier landed day not yet ingested."""
    if not catch_up:
        return [run_date]
    done = set(completed_ingests(lake))
    missing = [d for d in landed_dates(lake) if d < run_date and d not in done]
    return [*missing, run_date]


def input_files(lake: Lake, run_date: date) -> list[str]:
    """The readable input files of one arrival day; fails naming any that is not."""
    folder = lake.partition_path(RAW_EVENTS, run_date)
    if not lake.exists(folder):
        raise MissingInput(
            f"no landing folder {folder} for {run_date}: nothing arrived that day, or the export has not run",
            hint="check the upstream export for that day (for the demo: `recsys import-movielens`)",
        )
    files = lake.visible_files(folder)
    unsupported = [f for f in files if not f.endswith(INPUT_SUFFIXES)]
    if unsupported:
        raise UnreadableInput(
            f"unsupported input files in {folder}: {unsupported[:5]}; "
            f"expected JSON Lines or Parquet ({', '.join(INPUT_SUFFIXES)})"
        )
    for path in files:
        try:
            with lake.fs.open_input_stream(path) as stream:
                stream.read(1)
        except OSError as err:
            raise UnreadableInput(f"{path}: cannot be read ({err}); fix its permissions and rerun") from err
    return files


def run_ingest(settings: Settings, dates: list[date], spark=None) -> list[IngestReport]:
    """Ingest the given arrival days; returns one report per day, in date order."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from recsys_core.io.spark import spark_session
    from recsys_core.io.spark_progress import spark_progress

    started = time.monotonic()
    dates = sorted(set(dates))
    lake = Lake(settings.lake)
    files = {d: input_files(lake, d) for d in dates}
    all_files = [f for d in dates for f in files[d]]
    spark = spark or spark_session(settings, f"ingest-{dates[-1]}")
    # Every input file one partition: line numbers come from the row index (features.ingest.text_lines).
    progress = spark_progress(spark, f"ingest of {len(all_files)} files")
    with spark_conf(spark, WHOLE_FILES | UNCOMPRESSED_CACHE) as before, progress:
        lines = _lines(spark, lake, all_files, settings.ingest.max_line_bytes)
        lines = lines.withColumn("ingest_dt", F.to_date(F.regexp_extract("source_file", r"/dt=(\d{4}-\d{2}-\d{2})/", 1)))

        lookback = timedelta(days=settings.ingest.lateness_days + settings.ingest.dedup_lookback_days)
        earlier = [d for d in completed_ingests(lake) if dates[0] - lookback <= d < dates[-1] and d not in dates]
        known = spark_ingested(spark, lake, earlier).select("event_id", "ingest_dt") if earlier else None
        # The one cached copy: every row parsed and checked once; duplicates, reports and writes read it.
        checked = check_rows(lines, settings.ingest).persist(StorageLevel.MEMORY_AND_DISK)
        forgotten, salt = forgotten_for_ingest(settings, lake)
        staged_interactions = lake.new_staging_path(INTERACTIONS, f"ingest-{dates[0]}-{dates[-1]}")
        staged_quarantine = lake.new_staging_path(QUARANTINE, f"ingest-{dates[0]}-{dates[-1]}")
        try:
            try:
                per_file = _rows_per_file(checked)
            except Exception as err:
                # A file that cannot be read fails in a Spark task; say which, without the Java stack.
                unreadable = _unreadable_input(err)
                if unreadable:
                    raise UnreadableInput(unreadable) from err
                raise
            rows_in: dict[date, int] = {}
            for path, n in per_file.items():
                day = date.fromisoformat(_DAY.search(path).group(1))  # type: ignore[union-attr]
                rows_in[day] = rows_in.get(day, 0) + n
            classified = mark_duplicates(checked, known)
            # Forget hook: later events of a forgotten user are quarantined as "forgotten" (recsys_core.stages.forget).
            classified = quarantine_forgotten(classified, forgotten, salt)
            reports = _reports(classified, dates, files, rows_in)
            for report in reports:
                report.check_balanced()
                report.check_reject_rate(settings.ingest.max_reject_rate)
            # Each task writes the files of its own input file's day: no shuffle of the wide rows.
            (
                classified.where(F.col("reason").isNull())
                .withColumn("dt", F.to_date("event_ts"))
                .select(*[c for c in INTERACTIONS.columns if c != "dt"], "dt")
                .sortWithinPartitions("ingest_dt", "dt", "event_ts", "source_file", "line_no")
                .write.mode("overwrite")
                .partitionBy("ingest_dt", "dt")
                .parquet(lake.spark_uri(staged_interactions))
            )
            (
                classified.where(F.col("reason").isNotNull())
                .select(*[c for c in QUARANTINE.columns if c != "dt"], F.col("ingest_dt").alias("dt"))
                .sortWithinPartitions("dt", "source_file", "line_no")
                .write.mode("overwrite")
                .partitionBy("dt")
                .parquet(lake.spark_uri(staged_quarantine))
            )
            # The data checks run on what was written, before anything is published. Its many small
            # files (a day's events by event date) are packed into partitions as usual, not a task each.
            with spark_conf(spark, {key: before[key] for key in WHOLE_FILES}):
                _check_staged(spark, lake, reports, staged_interactions, staged_quarantine, settings)
        except BaseException:
            lake.fs.delete_dir(staged_interactions)
            lake.fs.delete_dir(staged_quarantine)
            raise
        finally:
            checked.unpersist()

    for report in reports:
        day = report.run_date
        manifest = {"report": report.to_dict(), "input_files": files[day]}
        quarantine_day = f"{staged_quarantine}/dt={day}"
        lake.fs.create_dir(quarantine_day, recursive=True)
        lake.drop_spark_markers(quarantine_day)
        lake.write_json(f"{quarantine_day}/{REPORT}", report.to_dict())
        lake.publish(QUARANTINE, day, quarantine_day, manifest)
        interactions_day = f"{staged_interactions}/ingest_dt={day}"
        lake.fs.create_dir(interactions_day, recursive=True)
        lake.drop_spark_markers(interactions_day)
        commit_ingest(lake, day, interactions_day, manifest)
        log.log(
            logging.INFO if report.rows_quarantined or len(reports) == 1 else logging.DEBUG,
            "ingest %s: %d files, %d rows in, %d accepted, %d quarantined (%.2f%%) %s",
            day,
            report.files,
            report.rows_in,
            report.rows_accepted,
            report.rows_quarantined,
            100 * report.reject_rate,
            report.reasons,
        )
    lake.fs.delete_dir(staged_interactions)
    lake.fs.delete_dir(staged_quarantine)
    total_in = sum(r.rows_in for r in reports)
    log.info(
        "ingested %d day(s) %s..%s: %d rows in, %d accepted, %d quarantined in %.1fs",
        len(reports),
        dates[0],
        dates[-1],
        total_in,
        sum(r.rows_accepted for r in reports),
        sum(r.rows_quarantined for r in reports),
        time.monotonic() - started,
    )
    return reports


_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?\s")
_CAUSE = re.compile(r"Caused by: ([\w.$]+(?:Exception|Error)[^\n]*)")


def _unreadable_input(err: BaseException) -> str | None:
    """What to say about an input file that a Spark task could not read, if that is what failed.

    Either a Python worker raised UnreadableInput (Parquet exports), or Spark's
    text reader failed on a file (a truncated or corrupt gzip file).
    """
    text = str(err)
    marker = f"{UnreadableInput.__name__}: "
    if marker in text:
        return text[text.rindex(marker) + len(marker) :].split("\n", 1)[0].strip()
    failed = _FAILED_READ.search(text)
    if not failed:
        return None
    path = re.sub(r"^file:(//)?", "", failed.group(1))
    causes = _CAUSE.findall(text)
    cause = causes[-1] if causes else "read error"
    what = "cannot decompress" if path.endswith(".gz") else "cannot be read"
    return (
        f"{path}: {what} ({cause}); the file is truncated or corrupt. "
        "Re-deliver it, or move it out of the landing folder and rerun."
    )


_DAY = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def _lines(spark, lake: Lake, all_files: list[str], max_line_bytes: int):
    """Line rows of every input file: JSON Lines through Spark's text reader, Parquet exports through Python."""
    from pyspark.sql.pandas.types import from_arrow_schema

    lines_schema = from_arrow_schema(LINES_SCHEMA)
    text = [lake.spark_uri(f) for f in all_files if not f.endswith(PARQUET_SUFFIX) and lake.fs.get_file_info(f).size]
    parquet = [lake.spark_uri(f) for f in all_files if f.endswith(PARQUET_SUFFIX)]
    parts = []
    if text:
        parts.append(text_lines(spark, text, max_line_bytes))
    if parquet:
        parts.append(
            spark.read.format("binaryFile")
            .load(parquet)
            .select("path", "content")
            .mapInArrow(partial(lines_from_files, max_line_bytes=max_line_bytes), lines_schema)
        )
    if not parts:
        return spark.createDataFrame([], lines_schema)
    return parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])


def _rows_per_file(checked) -> dict[str, int]:
    """Input rows per file, after checking that each file was numbered 1..n exactly once.

    Line numbers come from Spark's row index in a task that read the file whole
    (``text_lines``); if a file had been split or shared a task, its numbers would
    not run 1..n, and the run stops before anything is written.
    """
    from pyspark.sql import functions as F

    stats = (
        checked.groupBy("source_file")
        .agg(F.count("*").alias("n"), F.min("line_no").alias("lo"), F.max("line_no").alias("hi"))
        .collect()
    )
    bad = [r for r in stats if (r["lo"], r["hi"]) != (1, r["n"])]
    if bad:
        r = bad[0]
        raise DataCheckFailed(
            f"{r['source_file']}: {r['n']} lines numbered {r['lo']}..{r['hi']}; the file was not read whole by one task "
            "(spark.sql.files.* settings override the ingest's), so line numbers would be wrong; nothing was published."
        )
    return {r["source_file"]: r["n"] for r in stats}


def _check_staged(
    spark, lake: Lake, reports: list[IngestReport], staged_interactions: str, staged_quarantine: str, settings: Settings
) -> None:
    """Checks of the staged output, as Spark aggregates: the data checks, and each day's row counts against its report."""
    from pyspark.sql import functions as F

    where = f"ingest {reports[0].run_date}..{reports[-1].run_date}, staged"
    counts: dict[str, dict] = {}
    for contract, folder, day_column in (
        (INTERACTIONS, staged_interactions, "ingest_dt"),
        (QUARANTINE, staged_quarantine, "dt"),
    ):
        written = lake.exists(folder) and bool(lake.data_files(folder))
        df = staged_frame(spark, lake.spark_uri(folder) if written else None, contract)
        spark_check(df, contract, where=where, event_types=settings.ingest.event_types if contract is INTERACTIONS else None)
        counts[contract.name] = {r[day_column]: r["n"] for r in df.groupBy(day_column).agg(F.count("*").alias("n")).collect()}
    for report in reports:
        day = report.run_date
        wrote = (counts[INTERACTIONS.name].get(day, 0), counts[QUARANTINE.name].get(day, 0))
        if wrote != (report.rows_accepted, report.rows_quarantined):
            raise DataCheckFailed(
                f"ingest {day}: wrote {wrote[0]} interactions and {wrote[1]} quarantined rows, "
                f"but the report counts {report.rows_accepted} accepted and {report.rows_quarantined} quarantined; "
                "nothing was published."
            )


def _reports(classified, dates: list[date], files: dict, rows_in: dict) -> list[IngestReport]:
    from pyspark.sql import functions as F

    reports = {
        d: IngestReport(run_date=d, files=len(files[d]), rows_in=rows_in.get(d, 0), rows_accepted=0, rows_quarantined=0)
        for d in dates
    }
    grouped = classified.groupBy("ingest_dt", "reason", F.to_date("event_ts").alias("event_dt")).agg(F.count("*").alias("n"))
    for row in grouped.collect():
        report = reports[row["ingest_dt"]]
        if row["reason"]:
            report.rows_quarantined += row["n"]
            report.reasons[row["reason"]] = report.reasons.get(row["reason"], 0) + row["n"]
        else:
            report.rows_accepted += row["n"]
            key = row["event_dt"].isoformat()
            report.event_dates[key] = report.event_dates.get(key, 0) + row["n"]
    examples = (
        classified.where(F.col("reason").isNotNull())
        .groupBy("ingest_dt", "reason")
        .agg(F.min(F.struct("source_file", "line_no", "raw", "detail")).alias("ex"))
        .collect()
    )
    for row in examples:
        ex = row["ex"]
        reports[row["ingest_dt"]].examples[row["reason"]] = {
            "source_file": ex["source_file"],
            "line_no": ex["line_no"],
            "raw": ex["raw"][:300],
            "detail": ex["detail"],
        }
    return [reports[d] for d in dates]
