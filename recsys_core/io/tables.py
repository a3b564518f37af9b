"""Readers and writers of the lake's tables that know each table's layout.

``interactions`` is partitioned twice: ``dt=<event date>/ingest_dt=<arrival date>``.
An ingest run owns exactly the leaves of its arrival date, so a rerun replaces
only those, and late events still sit under their event date. The run's
manifest ``interactions/_ingests/ingest_dt=D.json`` marks them complete.
"""

from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from recsys_core.contracts import INTERACTIONS, Table
from recsys_core.errors import MissingInput
from recsys_core.io.lake import Lake, partition_name
from recsys_core.timeutil import end_of_day

INGESTS = "_ingests"


def ingest_manifest_path(lake: Lake, ingest_dt: date) -> str:
    return lake.path(INTERACTIONS.name, INGESTS, f"{partition_name('ingest_dt', ingest_dt)}.json")


def completed_ingests(lake: Lake) -> list[date]:
    folder = lake.path(INTERACTIONS.name, INGESTS)
    if not lake.exists(folder):
        return []
    return sorted(
        date.fromisoformat(i.base_name.split("=", 1)[1].removesuffix(".json"))
        for i in lake.fs.get_file_info(pafs.FileSelector(folder))
        if i.base_name.startswith("ingest_dt=") and i.base_name.endswith(".json")
    )


def ingests_as_of(lake: Lake, as_of: date, lateness_days: int) -> list[date]:
    """Arrival dates that can hold events up to ``as_of`` (late ones included)."""
    bound = as_of + timedelta(days=lateness_days)
    return [d for d in completed_ingests(lake) if d <= bound]


def required_ingests(lake: Lake, as_of: date, lateness_days: int) -> list[date]:
    """``ingests_as_of``, failing with what to do when there is none."""
    ingests = ingests_as_of(lake, as_of, lateness_days)
    if not ingests:
        raise MissingInput(
            f"no complete ingest up to {as_of} under {lake.table_path(INTERACTIONS)}",
            hint="run `recsys ingest --date D` first",
        )
    return ingests


def commit_ingest(lake: Lake, ingest_dt: date, staged: str, manifest: dict) -> None:
    """Replace the interaction leaves of one arrival date with the staged ones."""
    fs = lake.fs
    marker = ingest_manifest_path(lake, ingest_dt)
    if lake.exists(marker):
        fs.delete_file(marker)
    root = lake.table_path(INTERACTIONS)
    leaf = partition_name("ingest_dt", ingest_dt)
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.base_name.startswith("dt=") and lake.exists(f"{info.path}/{leaf}"):
            fs.delete_dir(f"{info.path}/{leaf}")
    moved = []
    for info in fs.get_file_info(pafs.FileSelector(staged)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("dt="):
            fs.create_dir(f"{root}/{info.base_name}", recursive=True)
            lake.move_dir(info.path, f"{root}/{info.base_name}/{leaf}")
            moved.append(info.base_name)
    fs.delete_dir(staged)
    fs.create_dir(marker.rsplit("/", 1)[0], recursive=True)
    lake.write_json(marker, {**manifest, "event_partitions": sorted(moved)})


def read_interactions(lake: Lake, as_of: date, lateness_days: int, columns: list[str] | None = None) -> pa.Table:
    """Interactions with event time up to the end of ``as_of``, from complete ingests only."""
    ingests = required_ingests(lake, as_of, lateness_days)
    schema = INTERACTIONS.schema
    dataset = ds.dataset(
        lake.table_path(INTERACTIONS),
        filesystem=lake.fs,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("dt", pa.date32()), ("ingest_dt", pa.date32())]), flavor="hive"),
        schema=schema,
    )
    flt = (
        ds.field("ingest_dt").isin(pa.array(ingests, pa.date32()))
        & (ds.field("dt") <= pa.scalar(as_of, pa.date32()))
        & (ds.field("event_ts") < pa.scalar(end_of_day(as_of), schema.field("event_ts").type))
    )
    return dataset.to_table(columns=columns, filter=flt)


def spark_ingested(spark, lake: Lake, ingests: list[date]):
    """All interactions that arrived on the given (complete, at least one) arrival dates, as Spark rows."""
    from pyspark.sql import functions as F

    from recsys_core.contracts import spark_schema

    root = lake.spark_uri(lake.table_path(INTERACTIONS))
    return (
        spark.read.option("basePath", root)
        .schema(spark_schema(INTERACTIONS))
        .parquet(root)
        .where(F.col("ingest_dt").isin(ingests))
    )


def spark_interactions(spark, lake: Lake, as_of: date, ingests: list[date]):
    """The same selection as ``read_interactions`` (``ingests`` from ``required_ingests``), as a Spark DataFrame."""
    from pyspark.sql import functions as F

    return (
        spark_ingested(spark, lake, ingests)
        .where(F.col("dt") <= F.lit(as_of))
        .where(F.col("event_ts") < F.lit(end_of_day(as_of)))
    )


def snapshot_path(lake: Lake, contract: Table, as_of: date) -> str:
    """The newest directory snapshot (users or items) dated on or before ``as_of``."""
    value = lake.latest_partition(contract, on_or_before=as_of, complete_only=False)
    if value is None:
        raise MissingInput(
            f"no {contract.name} snapshot on or before {as_of} under {lake.table_path(contract)}",
            hint="import one (e.g. `recsys import-movielens`)",
        )
    return lake.partition_path(contract, value)
