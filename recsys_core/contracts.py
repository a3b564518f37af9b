"""Data contracts: the schema of every table the platform reads or writes.

Every stage validates its output against these schemas before it publishes,
and every reader can rely on them. Spark schemas are derived from the
pyarrow ones so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from recsys_core.errors import DataError
from recsys_core.windows import ACTIVITY_WINDOWS_DAYS, POPULARITY_WINDOWS_DAYS, activity_column, popularity_column

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Table:
    """A table of the lake: its name, its schema and its partition column."""

    name: str
    schema: pa.Schema
    partition: str | None = "dt"
    description: str = ""

    @property
    def columns(self) -> list[str]:
        return self.schema.names


# Raw landing zone ---------------------------------------------------------
# Raw events are JSON Lines; these are the fields a well-formed line carries.
# Extra fields are allowed (kept in `extra` downstream), missing ones are a
# quarantine reason.
RAW_EVENTS = Table(
    "raw/events",
    pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("ts", pa.string()),  # ISO-8601 with offset, e.g. 1998-03-31T12:00:00Z
            ("value", pa.float64()),
        ]
    ),
    description="One JSON object per line, gzipped, one folder per UTC day of arrival.",
)

RAW_USERS = Table(
    "raw/users",
    pa.schema(
        [
            ("user_id", pa.string()),
            ("age", pa.int32()),
            ("gender", pa.string()),
            ("occupation", pa.string()),
            ("zip_code", pa.string()),
        ]
    ),
    partition="snapshot_dt",
    description="Snapshot of the user directory.",
)

RAW_ITEMS = Table(
    "raw/items",
    pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("description", pa.string()),
            ("release_date", pa.string()),
            ("genres", pa.list_(pa.string())),
        ]
    ),
    partition="snapshot_dt",
    description="Snapshot of the item catalogue.",
)

# Curated ------------------------------------------------------------------
INTERACTIONS = Table(
    "interactions",
    pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("event_ts", TS),
            ("value", pa.float64()),
            ("source_file", pa.string()),
            ("line_no", pa.int64()),
            ("ingest_dt", pa.date32()),
            ("extra", pa.string()),  # unknown fields of the raw line, as JSON
            ("dt", pa.date32()),  # event date (UTC)
        ]
    ),
    description="Typed, validated, de-duplicated events, partitioned by event date.",
)

QUARANTINE = Table(
    "quarantine",
    pa.schema(
        [
            ("source_file", pa.string()),
            ("line_no", pa.int64()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("raw", pa.string()),
            ("dt", pa.date32()),  # ingest (folder) date
        ]
    ),
    description="Every rejected input row with a machine-readable reason and its raw text.",
)

# Features -------------------------------------------------------------------
USER_PROFILES = Table(
    "user_profiles",
    pa.schema(
        [
            ("user_id", pa.string()),
            ("n_events", pa.int64()),
            *[(activity_column(days), pa.int64()) for days in ACTIVITY_WINDOWS_DAYS],
            ("events_by_type", pa.map_(pa.string(), pa.int64())),
            ("active_days", pa.int64()),
            ("first_event_ts", TS),
            ("last_event_ts", TS),
            ("days_since_last_event", pa.float64()),
            ("mean_value", pa.float64()),
            ("genre_affinity", pa.map_(pa.string(), pa.float64())),
            ("recent_items", pa.list_(pa.string())),
            ("age", pa.int32()),
            ("gender", pa.string()),
            ("occupation", pa.string()),
            ("dt", pa.date32()),  # as-of date
        ]
    ),
    description="One row per known user as of the run date.",
)

ITEM_FEATURES = Table(
    "item_features",
    pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("genres", pa.list_(pa.string())),
            ("release_year", pa.int32()),
            *[(popularity_column(days), pa.int64()) for days in POPULARITY_WINDOWS_DAYS],
            ("pop_all", pa.int64()),
            ("trend", pa.float64()),
            ("first_seen_ts", TS),
            ("days_since_first_seen", pa.float64()),
            ("text_embedding", pa.list_(pa.float32())),
            ("dt", pa.date32()),  # as-of date
        ]
    ),
    description="One row per catalogue item as of the run date.",
)

# Serving -------------------------------------------------------------------
RECOMMENDATIONS = Table(
    "recommendations",
    pa.schema(
        [
            ("user_id", pa.string()),
            ("rank", pa.int32()),
            ("item_id", pa.string()),
            ("score", pa.float32()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("generated_at", TS),
            ("source", pa.string()),  # "model" or "fallback"
            # The item of the user's history (up to the run date) whose removal lowers this item's
            # score the most; null for fallback rows and where no history item supports the score.
            ("reason_item_id", pa.string()),
            ("reason", pa.string()),  # "Because you watched <title>", "Trending this week", ...
        ]
    ),
    description="Top-K items per user for one night; the dt partition is the folder.",
)

ALL_TABLES = {
    t.name: t
    for t in (
        RAW_EVENTS,
        RAW_USERS,
        RAW_ITEMS,
        INTERACTIONS,
        QUARANTINE,
        USER_PROFILES,
        ITEM_FEATURES,
        RECOMMENDATIONS,
    )
}


class ContractViolation(DataError, ValueError):
    """A table does not match its contract; the message names table and columns."""

    hint = "rebuild the table with the stage that writes it (it predates the contract, or that stage is broken)"


def conform(table: pa.Table, contract: Table, *, where: str = "") -> pa.Table:
    """Return ``table`` with exactly the contract's columns, in order and types.

    Raises ContractViolation naming missing columns or columns that cannot be
    cast safely, instead of silently producing nulls.
    """
    target = contract.schema
    if contract.partition and contract.partition not in table.column_names:
        target = pa.schema([f for f in target if f.name != contract.partition])
    missing = [f.name for f in target if f.name not in table.column_names]
    if missing:
        raise ContractViolation(
            f"{contract.name}{' at ' + where if where else ''}: missing columns {missing}; got {table.column_names}"
        )
    columns = []
    for field in target:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ContractViolation(
                    f"{contract.name}{' at ' + where if where else ''}: column {field.name!r} "
                    f"has type {column.type}, expected {field.type}: {err}"
                ) from err
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=target)


def spark_schema(contract: Table):
    """The contract as a Spark StructType (imported lazily: pyspark is heavy)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(contract.schema)


def spark_conform(df, contract: Table):
    """Select a Spark DataFrame's columns in contract order and types (partition column excluded).

    Fails naming the missing columns rather than writing a table that breaks its readers.
    """
    from pyspark.sql import functions as F

    schema = spark_schema(contract)
    missing = [f.name for f in schema.fields if f.name != contract.partition and f.name not in df.columns]
    if missing:
        raise ContractViolation(f"{contract.name}: missing columns {missing}; got {df.columns}")
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields if f.name != contract.partition])
