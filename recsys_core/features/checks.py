"""Data checks at the boundaries of the lake, with pandera, before anything is published.

Every stage that writes ``interactions``, ``quarantine``, ``user_profiles`` or
``item_features`` first writes the table to staging, then calls
:func:`spark_check` on what it wrote, and publishes only if the checks pass.
A failure raises :class:`DataCheckFailed` naming the table, each failed check
and example rows, so the stage (and the Airflow task) fails and downstream
tasks never read a bad partition.

The rules are pandera models over pyarrow tables (``check_table``, the
reference, all rows). The stages run the same rules as Spark aggregates over the
staged Parquet (``spark_check``): column rules are read off the pandera models,
dataframe-level checks have Spark twins, and only counts and a few example rows
reach the driver, so a day of any size is checked where it lies. pandera's
PySpark API is not usable here: it imports ``pyspark.pandas``, which does not
load with the pinned pandas 3.x.

Each model mirrors a contract of ``recsys_core.contracts`` column for column
(``tests/features/test_checks.py`` holds them together); map columns are
checked as their Arrow storage type, a list of key/value structs, because
pandera has no map dtype.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, QUARANTINE, TS, USER_PROFILES, Table
from recsys_core.errors import PublishError
from recsys_core.features.forget import QUARANTINE_REASONS
from recsys_core.windows import ACTIVITY_WINDOWS_DAYS, POPULARITY_WINDOWS_DAYS, activity_column, popularity_column

with warnings.catch_warnings():
    # pandera probes pyspark.pandas on import, which warns about pandas >= 3 (and is not used here).
    warnings.simplefilter("ignore")
    import pandera.pyarrow as pdx
    from pandera.config import ValidationDepth, config_context
    from pandera.errors import SchemaError, SchemaErrors

STR_INT_MAP = pa.list_(pa.struct([("key", pa.string()), ("value", pa.int64())]))
STR_FLOAT_MAP = pa.list_(pa.struct([("key", pa.string()), ("value", pa.float64())]))
EXAMPLES = 3  # example rows per failed check in the error message
MAX_FAILURES = 10  # failed checks listed in the error message


class DataCheckFailed(PublishError, RuntimeError):
    """A table about to be published breaks a data check; nothing was published."""

    hint = "nothing was published; the failed checks and example rows above point to the bad input or stage"


# Windowed counts never decrease as the window grows, and never exceed the all-time count.
ACTIVITY_CHAIN = [*map(activity_column, sorted(ACTIVITY_WINDOWS_DAYS)), "n_events"]
POPULARITY_CHAIN = [*map(popularity_column, sorted(POPULARITY_WINDOWS_DAYS)), "pop_all"]


def _duplicated(table: pa.Table, keys: list[str]) -> pa.Array:
    """True for every row whose ``keys`` occur more than once in ``table``."""
    if table.num_rows == 0:
        return pa.array([], pa.bool_())
    indexed = table.select(keys).append_column("__row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    counts = indexed.group_by(keys, use_threads=False).aggregate([("__row", "count")])
    joined = indexed.join(counts, keys=keys, join_type="left outer").sort_by("__row")
    return pc.fill_null(pc.greater(joined["__row_count"], 1), False)


def _chain_le(table: pa.Table, columns: list[str]) -> pa.Array:
    """Row-wise ``columns[0] <= columns[1] <= ...``."""
    ok = pa.array(np.ones(table.num_rows, dtype=bool))
    for low, high in itertools.pairwise(columns):
        ok = pc.and_kleene(ok, pc.less_equal(table[low], table[high]))
    return pc.fill_null(ok, False)


def _list_sum(column) -> pa.Array:
    """Row-wise sum of the ``value`` of a list of key/value structs (0 for an empty or null list)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    sums = np.zeros(len(column), dtype=np.int64)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    values = pc.fill_null(pc.struct_field(pc.list_flatten(column), "value"), 0).to_numpy(zero_copy_only=False)
    np.add.at(sums, parents, values)
    return pa.array(sums)


def _lists_finite(column) -> pa.Array:
    """Row-wise: every value of a list of floats is finite (true for a null or empty list)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    ok = np.ones(len(column), dtype=bool)
    values = pc.list_flatten(column)
    bad = ~pc.fill_null(pc.is_finite(values), False).to_numpy(zero_copy_only=False)
    if bad.any():
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        ok[parents[bad]] = False
    return pa.array(ok)


# Models -------------------------------------------------------------------------------------------


class InteractionsCheck(pdx.DataFrameModel):
    """interactions: typed, de-duplicated events of one or more arrival days."""

    event_id: pa.string() = pdx.Field(nullable=False)
    user_id: pa.string() = pdx.Field(nullable=False)
    item_id: pa.string() = pdx.Field(nullable=False)
    event_type: pa.string() = pdx.Field(nullable=False)
    event_ts: TS = pdx.Field(nullable=False)
    value: pa.float64() = pdx.Field(nullable=True, ge=0)
    source_file: pa.string() = pdx.Field(nullable=False)
    line_no: pa.int64() = pdx.Field(nullable=False, ge=1)
    ingest_dt: pa.date32() = pdx.Field(nullable=False)
    extra: pa.string() = pdx.Field(nullable=True)
    dt: pa.date32() = pdx.Field(nullable=False)

    class Config:
        name = "interactions"
        strict = True
        # An event id is accepted at most once per arrival day.
        unique = ["ingest_dt", "event_id"]  # noqa: RUF012 - pandera reads Config as class attributes

    @pdx.dataframe_check
    def dt_is_event_date(cls, data) -> pa.Array:
        """The partition ``dt`` is the UTC date of ``event_ts``."""
        t = data.table
        return pc.fill_null(pc.equal(t["dt"], pc.cast(t["event_ts"], pa.date32())), False)

    @pdx.dataframe_check
    def one_row_per_input_line(cls, data) -> pa.Array:
        """No input line (file, line number) is accepted twice."""
        return pc.invert(_duplicated(data.table, ["source_file", "line_no"]))


class QuarantineCheck(pdx.DataFrameModel):
    """quarantine: every rejected input row, once, with a known reason."""

    source_file: pa.string() = pdx.Field(nullable=False)
    line_no: pa.int64() = pdx.Field(nullable=False, ge=1)
    reason: pa.string() = pdx.Field(nullable=False, isin=list(QUARANTINE_REASONS))
    detail: pa.string() = pdx.Field(nullable=True)
    raw: pa.string() = pdx.Field(nullable=False)
    dt: pa.date32() = pdx.Field(nullable=False)

    class Config:
        name = "quarantine"
        strict = True
        unique = ["source_file", "line_no"]  # noqa: RUF012 - pandera reads Config as class attributes


class UserProfilesCheck(pdx.DataFrameModel):
    """user_profiles: one row per known user as of a date."""

    user_id: pa.string() = pdx.Field(nullable=False, unique=True)
    n_events: pa.int64() = pdx.Field(nullable=False, ge=0)
    n_events_1d: pa.int64() = pdx.Field(nullable=False, ge=0)
    n_events_7d: pa.int64() = pdx.Field(nullable=False, ge=0)
    n_events_30d: pa.int64() = pdx.Field(nullable=False, ge=0)
    events_by_type: STR_INT_MAP = pdx.Field(nullable=False)
    active_days: pa.int64() = pdx.Field(nullable=False, ge=0)
    first_event_ts: TS = pdx.Field(nullable=True)
    last_event_ts: TS = pdx.Field(nullable=True)
    days_since_last_event: pa.float64() = pdx.Field(nullable=True, ge=0)
    mean_value: pa.float64() = pdx.Field(nullable=True, ge=0)
    genre_affinity: STR_FLOAT_MAP = pdx.Field(nullable=False)
    recent_items: pa.list_(pa.string()) = pdx.Field(nullable=False)
    age: pa.int32() = pdx.Field(nullable=True)
    gender: pa.string() = pdx.Field(nullable=True)
    occupation: pa.string() = pdx.Field(nullable=True)
    dt: pa.date32() = pdx.Field(nullable=False)

    class Config:
        name = "user_profiles"
        strict = True

    @pdx.dataframe_check
    def windows_monotone(cls, data) -> pa.Array:
        """n_events_<n>d <= n_events_<m>d <= ... <= n_events for windows n < m."""
        return _chain_le(data.table, ACTIVITY_CHAIN)

    @pdx.dataframe_check
    def active_days_within_events(cls, data) -> pa.Array:
        """A user is active on at most as many days as they have events."""
        return _chain_le(data.table, ["active_days", "n_events"])

    @pdx.dataframe_check
    def events_by_type_sum_to_n_events(cls, data) -> pa.Array:
        t = data.table
        return pc.equal(_list_sum(t["events_by_type"]), t["n_events"])

    @pdx.dataframe_check
    def event_times_iff_events(cls, data) -> pa.Array:
        """first/last event times are set exactly for users with events, in order."""
        t = data.table
        has_events = pc.greater(t["n_events"], 0)
        both = pc.and_(pc.is_valid(t["first_event_ts"]), pc.is_valid(t["last_event_ts"]))
        ordered = pc.fill_null(pc.less_equal(t["first_event_ts"], t["last_event_ts"]), False)
        none = pc.and_(pc.is_null(t["first_event_ts"]), pc.is_null(t["last_event_ts"]))
        return pc.if_else(has_events, pc.and_(both, ordered), none)


class ItemFeaturesCheck(pdx.DataFrameModel):
    """item_features: one row per catalogue item as of a date."""

    item_id: pa.string() = pdx.Field(nullable=False, unique=True)
    title: pa.string() = pdx.Field(nullable=True)
    genres: pa.list_(pa.string()) = pdx.Field(nullable=False)
    release_year: pa.int32() = pdx.Field(nullable=True)
    pop_1d: pa.int64() = pdx.Field(nullable=False, ge=0)
    pop_7d: pa.int64() = pdx.Field(nullable=False, ge=0)
    pop_30d: pa.int64() = pdx.Field(nullable=False, ge=0)
    pop_all: pa.int64() = pdx.Field(nullable=False, ge=0)
    trend: pa.float64() = pdx.Field(nullable=False, gt=0)
    first_seen_ts: TS = pdx.Field(nullable=True)
    days_since_first_seen: pa.float64() = pdx.Field(nullable=True, ge=0)
    text_embedding: pa.list_(pa.float32()) = pdx.Field(nullable=True)
    dt: pa.date32() = pdx.Field(nullable=False)

    class Config:
        name = "item_features"
        strict = True

    @pdx.dataframe_check
    def popularity_monotone(cls, data) -> pa.Array:
        """pop_<n>d <= pop_<m>d <= ... <= pop_all for windows n < m."""
        return _chain_le(data.table, POPULARITY_CHAIN)

    @pdx.dataframe_check
    def trend_is_finite(cls, data) -> pa.Array:
        return pc.fill_null(pc.is_finite(data.table["trend"]), False)

    @pdx.dataframe_check
    def embeddings_share_one_dimension(cls, data) -> pa.Array:
        """Every embedding present has the same length, above zero, and finite values."""
        column = data.table["text_embedding"]
        lengths = pc.list_value_length(column)
        valid = pc.drop_null(lengths)
        if len(valid) == 0:
            return pa.array([True] * len(column), pa.bool_())
        mode = pc.mode(valid)[0]["mode"].as_py()
        finite = _lists_finite(column)
        same = pc.fill_null(pc.and_(pc.equal(lengths, mode), pc.greater(lengths, 0)), True)
        return pc.and_(same, finite)


MODELS: dict[str, type[pdx.DataFrameModel]] = {
    INTERACTIONS.name: InteractionsCheck,
    QUARANTINE.name: QuarantineCheck,
    USER_PROFILES.name: UserProfilesCheck,
    ITEM_FEATURES.name: ItemFeaturesCheck,
}
# Columns that identify a row in an error message, per table.
KEYS: dict[str, list[str]] = {
    INTERACTIONS.name: ["event_id", "user_id", "item_id", "source_file", "line_no", "ingest_dt"],
    QUARANTINE.name: ["source_file", "line_no", "reason"],
    USER_PROFILES.name: ["user_id"],
    ITEM_FEATURES.name: ["item_id", "title"],
}
# The columns a dataframe-level check reads, shown beside the keys in an error message.
CHECK_COLUMNS: dict[str, list[str]] = {
    "dt_is_event_date": ["event_ts", "dt"],
    "one_row_per_input_line": ["source_file", "line_no"],
    "windows_monotone": ACTIVITY_CHAIN,
    "active_days_within_events": ["active_days", "n_events"],
    "events_by_type_sum_to_n_events": ["events_by_type", "n_events"],
    "event_times_iff_events": ["n_events", "first_event_ts", "last_event_ts"],
    "popularity_monotone": POPULARITY_CHAIN,
    "trend_is_finite": ["trend"],
    "embeddings_share_one_dimension": ["text_embedding"],
}


def _checked_type(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_map(type_):
        return pa.list_(pa.struct([("key", type_.key_type), ("value", type_.item_type)]))
    return type_


def _as_checked(table: pa.Table) -> pa.Table:
    columns = []
    for field, column in zip(table.schema, table.columns):
        columns.append(column.cast(_checked_type(field.type)) if pa.types.is_map(field.type) else column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def check_table(
    table: pa.Table,
    contract: Table,
    *,
    where: str,
    event_types: Iterable[str] | None = None,
) -> int:
    """Validate ``table`` (a whole staged partition) against ``contract``'s checks; returns its rows.

    ``where`` says which data it is (e.g. the staged partition), for the error
    message. ``event_types`` (interactions only) is the configured set of
    accepted event types. Raises DataCheckFailed on any failure.
    """
    model = MODELS[contract.name]
    schema = model.to_schema()
    if event_types is not None and contract.name == INTERACTIONS.name:
        schema = schema.update_column("event_type", checks=[pdx.Check.isin(sorted(event_types))])
    checked = _as_checked(table)
    try:
        # Explicit, so that PANDERA_VALIDATION_ENABLED / _DEPTH in the environment cannot turn the checks off.
        with config_context(validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA):
            schema.validate(checked, lazy=True)
    except SchemaErrors as err:
        raise DataCheckFailed(_message(contract, where, table, err.failure_cases)) from None
    except SchemaError as err:  # pragma: no cover - lazy validation raises SchemaErrors
        raise DataCheckFailed(f"{contract.name} ({where}): {err}") from None
    return table.num_rows


def _message(contract: Table, where: str, table: pa.Table, failures: pa.Table) -> str:
    rows = failures.to_pylist()
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((str(row["column"]), str(row["check"])), []).append(row)
    lines = [
        (
            f"data check failed for table {contract.name} ({where}, {table.num_rows} rows): "
            f"{len(groups)} check(s) failed; nothing was published."
        )
    ]
    for (column, check), cases in list(groups.items())[:MAX_FAILURES]:
        target = "" if column == contract.name else f"column {column!r}: "
        lines.append(f"  - {target}{check}: {len(cases)} failure case(s)")
        examples = _examples(contract, table, column, check, cases)
        if examples:
            lines.extend(f"      e.g. {json.dumps(r, default=str, ensure_ascii=False)}" for r in examples)
        else:
            lines.append(f"      got: {', '.join(str(c['failure_case']) for c in cases[:EXAMPLES])}")
    if len(groups) > MAX_FAILURES:
        lines.append(f"  ... and {len(groups) - MAX_FAILURES} more")
    return "\n".join(lines)


def _examples(contract: Table, table: pa.Table, column: str, check: str, cases: list[dict]) -> list[dict]:
    """Up to EXAMPLES rows of ``table`` behind the failure cases of one check."""
    keys = [k for k in KEYS.get(contract.name, []) if k in table.column_names]
    if check.startswith("dtype(") or check in ("column_in_schema", "column_in_dataframe"):
        return []
    # Row indices are reliable for dataframe-level checks only (a column check's are not row numbers).
    indices = [c["index"] for c in cases if c.get("index") is not None and c.get("schema_context") == "DataFrameSchema"]
    if indices:
        shown = keys + [c for c in CHECK_COLUMNS.get(check, []) if c in table.column_names and c not in keys]
        return [_display(r) for r in table.take(pa.array(indices[:EXAMPLES], pa.int64())).select(shown).to_pylist()]
    values = [c["failure_case"] for c in cases]
    if column in table.column_names:
        mask = _matching_values(table[column], values)
        columns = [column]
    else:  # a case over several columns, as a JSON object (e.g. a multi-column uniqueness)
        mask, columns = None, []
        for value in values[: EXAMPLES * 10]:
            try:
                parsed = json.loads(value) if isinstance(value, str) else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict) or not all(k in table.column_names for k in parsed):
                continue
            columns = list(parsed)
            match = None
            for key, v in parsed.items():
                m = _matching_values(table[key], [v])
                match = m if match is None else pc.and_(match, m)
            mask = match if mask is None else pc.or_(mask, match)
    if mask is None:
        return []
    shown = keys + [c for c in columns if c not in keys]
    return [_display(r) for r in table.filter(mask).slice(0, EXAMPLES).select(shown).to_pylist()]


def _matching_values(column, values: list):
    """Rows whose value is one of ``values`` (failure cases, as pandera reports them: text or null)."""
    if pa.types.is_nested(column.type):
        return None
    mask = pc.is_null(column) if any(v is None for v in values) else None
    present = [str(v) for v in values if v is not None]
    if present:
        try:
            wanted = pa.array(present).cast(column.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column, wanted = pc.cast(column, pa.string()), pa.array(present)
        match = pc.is_in(column, value_set=wanted)
        mask = match if mask is None else pc.or_(mask, match)
    return mask


def _display(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            value = dict(value)  # a map column
        if isinstance(value, list) and len(value) > 5:
            value = [*value[:5], f"... {len(value)} items"]
        text = value if isinstance(value, (int, float, bool, dict, list)) or value is None else str(value)
        if isinstance(text, (dict, list)) and len(json.dumps(text, default=str)) > 120:
            text = json.dumps(text, default=str)
        if isinstance(text, str) and len(text) > 120:
            text = text[:117] + "..."
        out[key] = text
    return out


# The same checks as Spark aggregates -------------------------------------------------------------
#
# Staged tables can be far larger than the driver: ``spark_check`` runs every rule
# of a model above over a Spark DataFrame, as one pass of counters plus one
# narrow aggregate per uniqueness rule, and collects only the counts and a few
# example rows. Column rules are derived from the pandera models themselves;
# dataframe-level checks have the Spark twins below (a test holds both sets equal).

# Dataframe-level checks that are uniqueness rules over several columns.
SPARK_UNIQUE_CHECKS: dict[str, list[str]] = {"one_row_per_input_line": ["source_file", "line_no"]}


def _spark_chain_le(columns: list[str]):
    from pyspark.sql import functions as F

    ok = F.lit(True)
    for low, high in itertools.pairwise(columns):
        ok = ok & (F.col(low) <= F.col(high))
    return ok


def _spark_finite(column):
    from pyspark.sql import functions as F

    return column.isNotNull() & ~F.isnan(column) & ~column.isin(float("inf"), float("-inf"))


def _spark_embeddings(df):
    """Row rule of embeddings_share_one_dimension; the common length is one small aggregate."""
    from pyspark.sql import functions as F

    lengths = (
        df.where(F.col("text_embedding").isNotNull())
        .groupBy(F.size("text_embedding").alias("n"))
        .count()
        .orderBy(F.col("count").desc(), F.col("n"))
        .limit(1)
        .collect()
    )
    if not lengths:
        return F.lit(True)
    mode = lengths[0]["n"]
    emb = F.col("text_embedding")
    finite = F.forall(emb, lambda x: x.isNotNull() & ~F.isnan(x) & ~x.isin(float("inf"), float("-inf")))
    return emb.isNull() | ((F.size(emb) == mode) & (F.size(emb) > 0) & finite)


def _spark_event_times(df):
    from pyspark.sql import functions as F

    first, last = F.col("first_event_ts"), F.col("last_event_ts")
    with_events = first.isNotNull() & last.isNotNull() & (first <= last)
    return F.when(F.col("n_events") > 0, with_events).otherwise(first.isNull() & last.isNull())


def _spark_type_sum(df):
    from pyspark.sql import functions as F

    total = F.aggregate(
        F.map_values("events_by_type"), F.lit(0).cast("long"), lambda acc, x: acc + F.coalesce(x, F.lit(0).cast("long"))
    )
    return F.coalesce(total, F.lit(0).cast("long")) == F.col("n_events")


def _spark_dt(df):
    from pyspark.sql import functions as F

    return F.to_date("event_ts") == F.col("dt")


def _spark_trend(df):
    from pyspark.sql import functions as F

    return _spark_finite(F.col("trend"))


# check name -> (DataFrame -> Column that is true for the rows that pass)
SPARK_ROW_CHECKS = {
    "dt_is_event_date": _spark_dt,
    "windows_monotone": lambda df: _spark_chain_le(ACTIVITY_CHAIN),
    "active_days_within_events": lambda df: _spark_chain_le(["active_days", "n_events"]),
    "events_by_type_sum_to_n_events": _spark_type_sum,
    "event_times_iff_events": _spark_event_times,
    "popularity_monotone": lambda df: _spark_chain_le(POPULARITY_CHAIN),
    "trend_is_finite": _spark_trend,
    "embeddings_share_one_dimension": _spark_embeddings,
}


def _column_rule(name: str, field, check, nullable: bool):
    """A pandera column check as a Spark Column (true = passes; nulls pass where the column may be null)."""
    from pyspark.sql import functions as F

    col = F.col(name)
    stats = check.statistics
    if check.name == "greater_than_or_equal_to":
        ok = col >= stats["min_value"]
    elif check.name == "greater_than":
        ok = col > stats["min_value"]
    elif check.name == "isin":
        ok = col.isin(*stats["allowed_values"])
    else:  # pragma: no cover - a new kind of column check needs its Spark twin here
        raise NotImplementedError(f"no Spark twin for column check {check.name!r} of {name}")
    if pa.types.is_floating(field.type):
        ok = ok & ~F.isnan(col)  # Spark orders NaN above every number; pandera rejects it
    return col.isNull() | ok if nullable else ok


def spark_check(df, contract: Table, *, where: str, event_types: Iterable[str] | None = None) -> int:
    """``check_table``'s rules over a Spark DataFrame (a whole staged partition); returns its rows.

    Raises DataCheckFailed naming each failed check with its count and up to
    EXAMPLES rows; only aggregates and those rows reach the driver.
    """
    from pyspark.sql import functions as F

    from recsys_core.contracts import spark_schema

    expected = spark_schema(contract)
    got = {f.name: f.dataType for f in df.schema.fields}
    problems = [f"column {f.name!r} is missing" for f in expected.fields if f.name not in got]
    problems += [f"column {n!r} is not in the contract" for n in got if n not in expected.fieldNames()]
    # simpleString: a type without its nullability flags, which Parquet does not keep.
    problems += [
        f"column {f.name!r} has type {got[f.name].simpleString()}, expected {f.dataType.simpleString()}"
        for f in expected.fields
        if f.name in got and got[f.name].simpleString() != f.dataType.simpleString()
    ]
    if problems:
        raise DataCheckFailed(
            f"data check failed for table {contract.name} ({where}): wrong schema; nothing was published.\n  - "
            + "\n  - ".join(problems)
        )
    model = MODELS[contract.name]
    schema = model.to_schema()
    keys = [k for k in KEYS.get(contract.name, []) if k in got]
    rules: list[tuple[str, str, Any, list[str]]] = []  # (column label, check, passing rows, columns shown)
    for name, column in schema.columns.items():
        field = contract.schema.field(name)
        if not column.nullable:
            rules.append((name, "not_nullable", F.col(name).isNotNull(), [name]))
        checks = list(column.checks)
        if name == "event_type" and event_types is not None and contract.name == INTERACTIONS.name:
            checks = [pdx.Check.isin(sorted(event_types))]
        for check in checks:
            rules.append((name, check.error or check.name, _column_rule(name, field, check, column.nullable), [name]))
    uniques: list[tuple[str, str, list[str]]] = []
    if schema.unique:
        uniques.append((contract.name, "multiple_fields_uniqueness", list(schema.unique)))
    uniques += [(name, "field_uniqueness", [name]) for name, column in schema.columns.items() if column.unique]
    for check in schema.checks:
        if check.name in SPARK_UNIQUE_CHECKS:
            uniques.append((contract.name, check.name, SPARK_UNIQUE_CHECKS[check.name]))
        else:
            rules.append((contract.name, check.name, SPARK_ROW_CHECKS[check.name](df), CHECK_COLUMNS.get(check.name, [])))

    failing = [~F.coalesce(ok, F.lit(False)) for _, _, ok, _ in rules]
    counts = df.agg(
        F.count(F.lit(1)).alias("rows"), *[F.count(F.when(bad, 1)).alias(f"r{i}") for i, bad in enumerate(failing)]
    ).collect()[0]
    failures: list[tuple[str, str, int, list[dict]]] = []
    for i, (label, check_name, _, shown) in enumerate(rules):
        if counts[f"r{i}"]:
            cols = keys + [c for c in shown if c not in keys]
            examples = [r.asDict(recursive=True) for r in df.where(failing[i]).select(*cols).limit(EXAMPLES).collect()]
            failures.append((label, check_name, counts[f"r{i}"], examples))
    for label, check_name, columns in uniques:
        repeated = df.groupBy(*columns).count().where(F.col("count") > 1)
        examples = [r.asDict(recursive=True) for r in repeated.limit(EXAMPLES).collect()]
        if examples:
            failures.append((label, check_name, repeated.agg(F.sum("count")).collect()[0][0], examples))
    if failures:
        lines = [
            (
                f"data check failed for table {contract.name} ({where}, {counts['rows']} rows): "
                f"{len(failures)} check(s) failed; nothing was published."
            )
        ]
        for label, check_name, n, examples in failures[:MAX_FAILURES]:
            target = "" if label == contract.name else f"column {label!r}: "
            lines.append(f"  - {target}{check_name}: {n} failure case(s)")
            lines.extend(f"      e.g. {json.dumps(_display(r), default=str, ensure_ascii=False)}" for r in examples)
        if len(failures) > MAX_FAILURES:
            lines.append(f"  ... and {len(failures) - MAX_FAILURES} more")
        raise DataCheckFailed("\n".join(lines))
    return int(counts["rows"])


def staged_frame(spark, uri: str | None, contract: Table, constants: dict | None = None):
    """A staged table (Parquet under ``uri``; None: nothing was written) as a Spark DataFrame for ``spark_check``.

    ``constants`` are columns the files do not hold (e.g. the ``dt`` of a
    features partition), added as literals of the contract's type.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    from recsys_core.contracts import spark_schema

    schema = spark_schema(contract)
    constants = constants or {}
    if uri is None:
        df = spark.createDataFrame([], StructType([f for f in schema.fields if f.name not in constants]))
    else:
        df = spark.read.parquet(uri)
    for name, value in constants.items():
        df = df.withColumn(name, F.lit(value).cast(schema[name].dataType))
    return df
