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
import time
from datetime import date, timedelta
from functools import partial

import pyarrow as pa
import pyarrow.dataset as ds

from recsys_core.config import Settings
from recsys_core.contracts import INTERACTIONS, QUARANTINE, RAW_EVENTS
from recsys_core.errors import MissingInput
from recsys_core.features.checks import DataCheckFailed, check_table
from recsys_core.features.forget import quarantine_forgotten
from recsys_core.features.ingest import (
    LINES_SCHEMA,
    PARQUET_SUFFIX,
    IngestReport,
    UnreadableInput,
    classify,
    lines_from_files,
)
from recsys_core.io.forget_log import forgotten_for_ingest
from recsys_core.io.lake import Lake
from recsys_core.io.tables import commit_ingest, completed_ingests, spark_ingested

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
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from recsys_core.io.spark import spark_session

    started = time.monotonic()
    dates = sorted(set(dates))
    lake = Lake(settings.lake)
    files = {d: input_files(lake, d) for d in dates}
    all_files = [f for d in dates for f in files[d]]
    spark = spark or spark_session(settings, f"ingest-{dates[-1]}")
    lines_schema = from_arrow_schema(LINES_SCHEMA)
    if all_files:
        lines = (
            spark.read.format("binaryFile")
            .load([lake.spark_uri(f) for f in all_files])
            .select("path", "content")
            .mapInArrow(partial(lines_from_files, max_line_bytes=settings.ingest.max_line_bytes), lines_schema)
        )
    else:
        lines = spark.createDataFrame([], lines_schema)
    lines = lines.withColumn("ingest_dt", F.to_date(F.regexp_extract("source_file", r"/dt=(\d{4}-\d{2}-\d{2})/", 1))).persist()

    lookback = timedelta(days=settings.ingest.lateness_days + settings.ingest.dedup_lookback_days)
    earlier = [d for d in completed_ingests(lake) if dates[0] - lookback <= d < dates[-1] and d not in dates]
    known = spark_ingested(spark, lake, earlier).select("event_id", "ingest_dt") if earlier else None
    classified = classify(lines, settings.ingest, known)
    # Forget hook: later events of a forgotten user are quarantined as "forgotten" (recsys_core.stages.forget).
    forgotten, salt = forgotten_for_ingest(settings, lake)
    classified = quarantine_forgotten(classified, forgotten, salt).persist()
    staged_interactions = lake.new_staging_path(INTERACTIONS, f"ingest-{dates[0]}-{dates[-1]}")
    staged_quarantine = lake.new_staging_path(QUARANTINE, f"ingest-{dates[0]}-{dates[-1]}")
    try:
        try:
            rows_in = {r["ingest_dt"]: r["n"] for r in lines.groupBy("ingest_dt").agg(F.count("*").alias("n")).collect()}
        except Exception as err:
            # A file that cannot be read fails in a Spark worker; say which, without the Java stack.
            unreadable = _unreadable_input(err)
            if unreadable:
                raise UnreadableInput(unreadable) from err
            raise
        reports = _reports(classified, dates, files, rows_in)
        for report in reports:
            report.check_balanced()
            report.check_reject_rate(settings.ingest.max_reject_rate)
        (
            classified.where(F.col("reason").isNull())
            .withColumn("dt", F.to_date("event_ts"))
            .select(*[c for c in INTERACTIONS.columns if c != "dt"], "dt")
            .repartition("ingest_dt", "dt")
            .sortWithinPartitions("event_ts", "source_file", "line_no")
            .write.mode("overwrite")
            .partitionBy("ingest_dt", "dt")
            .parquet(lake.spark_uri(staged_interactions))
        )
        (
            classified.where(F.col("reason").isNotNull())
            .select(*[c for c in QUARANTINE.columns if c != "dt"], F.col("ingest_dt").alias("dt"))
            .repartition("dt")
            .sortWithinPartitions("source_file", "line_no")
            .write.mode("overwrite")
            .partitionBy("dt")
            .parquet(lake.spark_uri(staged_quarantine))
        )
        # The data checks run on what was written, before anything is published.
        for report in reports:
            _check_staged(lake, report, staged_interactions, staged_quarantine, settings)
    except BaseException:
        lake.fs.delete_dir(staged_interactions)
        lake.fs.delete_dir(staged_quarantine)
        raise
    finally:
        classified.unpersist()
        lines.unpersist()

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


def _unreadable_input(err: BaseException) -> str | None:
    """The UnreadableInput message inside a Spark error raised by a Python worker, if any."""
    text = str(err)
    marker = f"{UnreadableInput.__name__}: "
    if marker not in text:
        return None
    return text[text.rindex(marker) + len(marker) :].split("\n", 1)[0].strip()


def _staged_table(lake: Lake, folder: str, contract, constants: dict, partition: str | None) -> pa.Table:
    """A staged partition as one Arrow table in contract column order (empty if nothing was written)."""
    if not lake.exists(folder) or not lake.data_files(folder):
        return contract.schema.empty_table()
    partitioning = ds.partitioning(pa.schema([(partition, pa.date32())]), flavor="hive") if partition else None
    table = ds.dataset(folder, filesystem=lake.fs, format="parquet", partitioning=partitioning).to_table()
    for name, value in constants.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, contract.schema.field(name).type))
    known = [c for c in contract.columns if c in table.column_names]
    return table.select(known + [c for c in table.column_names if c not in known])


def _check_staged(lake: Lake, report: IngestReport, staged_interactions: str, staged_quarantine: str, settings: Settings) -> None:
    """Checks of one arrival day's staged output: its data checks, and its row counts against the report."""
    day = report.run_date
    accepted = _staged_table(lake, f"{staged_interactions}/ingest_dt={day}", INTERACTIONS, {"ingest_dt": day}, "dt")
    quarantined = _staged_table(lake, f"{staged_quarantine}/dt={day}", QUARANTINE, {"dt": day}, None)
    if (accepted.num_rows, quarantined.num_rows) != (report.rows_accepted, report.rows_quarantined):
        raise DataCheckFailed(
            f"ingest {day}: wrote {accepted.num_rows} interactions and {quarantined.num_rows} quarantined rows, "
            f"but the report counts {report.rows_accepted} accepted and {report.rows_quarantined} quarantined; "
            "nothing was published."
        )
    where = f"ingest_dt={day}, staged"
    check_table(accepted, INTERACTIONS, where=where, event_types=settings.ingest.event_types)
    check_table(quarantined, QUARANTINE, where=where)


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
