"""Checks a night's recommendation table must pass before it is published (pure)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_core.contracts import RECOMMENDATIONS
from recsys_core.errors import PublishError

SOURCES = ("model", "fallback")


class InvalidRecommendations(PublishError, ValueError):
    """The staged table breaks a publishing rule; the message names the rule and an example."""


def validate_recommendations(
    table: pa.Table,
    *,
    k: int,
    users: list[str],
    catalogue: set[str],
    seen: dict[str, set[str]],
) -> None:
    """Raise InvalidRecommendations unless every rule of the published table holds."""
    if table.schema.names[: len(RECOMMENDATIONS.columns)] != RECOMMENDATIONS.columns:
        raise InvalidRecommendations(f"columns {table.schema.names} do not start with the contract's {RECOMMENDATIONS.columns}")
    if table.num_rows != len(users) * k:
        raise InvalidRecommendations(f"{table.num_rows} rows, expected {len(users)} users x K={k} = {len(users) * k}")
    user_col = table["user_id"].to_numpy(zero_copy_only=False)
    order = np.lexsort((table["rank"].to_numpy(), user_col))
    user_sorted = user_col[order]
    ranks = table["rank"].to_numpy()[order]
    scores = table["score"].to_numpy()[order]
    items = table["item_id"].to_numpy(zero_copy_only=False)[order]

    counts = pc.value_counts(table["user_id"]).to_pylist()
    wrong = [c for c in counts if c["counts"] != k]
    if wrong:
        raise InvalidRecommendations(f"user {wrong[0]['values']!r} has {wrong[0]['counts']} rows, expected K={k}")
    missing = set(users) - set(user_col.tolist())
    if missing:
        raise InvalidRecommendations(f"{len(missing)} known users have no rows, e.g. {sorted(missing)[:3]}")
    expected_ranks = np.tile(np.arange(1, k + 1), len(users))
    if not np.array_equal(ranks, expected_ranks):
        bad = int(np.flatnonzero(ranks != expected_ranks)[0])
        raise InvalidRecommendations(f"user {user_sorted[bad]!r}: ranks are not 1..{k}")
    per_user_scores = scores.reshape(len(users), k)
    if not np.all(np.isfinite(per_user_scores)):
        raise InvalidRecommendations("non-finite scores in the table")
    increasing = np.flatnonzero((np.diff(per_user_scores, axis=1) > 0).any(axis=1))
    if len(increasing):
        raise InvalidRecommendations(f"user {user_sorted[increasing[0] * k]!r}: scores increase with rank")
    per_user_items = items.reshape(len(users), k)
    for row in range(len(users)):
        if len(set(per_user_items[row])) != k:
            raise InvalidRecommendations(f"user {user_sorted[row * k]!r}: an item appears twice")
    bad_sources = set(pc.unique(table["source"]).to_pylist()) - set(SOURCES)
    if bad_sources:
        raise InvalidRecommendations(f"source must be one of {list(SOURCES)}, found {sorted(bad_sources, key=str)}")
    _check_reasons(table, seen)
    unknown = set(items.tolist()) - catalogue
    if unknown:
        raise InvalidRecommendations(f"{len(unknown)} item ids are not in the catalogue, e.g. {sorted(unknown)[:3]}")
    for row in range(len(users)):
        user = user_sorted[row * k]
        leaked = seen.get(user, set()).intersection(per_user_items[row])
        if leaked:
            raise InvalidRecommendations(f"user {user!r} is recommended items they already interacted with: {sorted(leaked)[:3]}")


def _check_reasons(table: pa.Table, seen: dict[str, set[str]]) -> None:
    """Every row has a reason; a reason item is in that user's history up to the run date (``seen``),
    and fallback rows (nothing personal) have none."""
    if table["reason"].null_count:
        row = int(np.flatnonzero(pc.is_null(table["reason"]).to_numpy(zero_copy_only=False))[0])
        raise InvalidRecommendations(f"user {table['user_id'][row].as_py()!r}, rank {table['rank'][row].as_py()}: no reason")
    has_reason = pc.is_valid(table["reason_item_id"])
    personal_fallback = pc.and_(has_reason, pc.equal(table["source"], "fallback"))
    if pc.any(personal_fallback).as_py():
        row = int(np.flatnonzero(personal_fallback.to_numpy(zero_copy_only=False))[0])
        raise InvalidRecommendations(
            f"user {table['user_id'][row].as_py()!r}: a fallback row names reason item {table['reason_item_id'][row].as_py()!r}"
        )
    # A user's list often cites one item many times: check each (user, item) pair once.
    explained = table.filter(has_reason).group_by(["user_id", "reason_item_id"]).aggregate([])
    for user, item in zip(explained["user_id"].to_pylist(), explained["reason_item_id"].to_pylist()):
        if item not in seen.get(user, ()):
            raise InvalidRecommendations(f"user {user!r}: reason item {item!r} is not in their history up to the run date")


def validate_spark_recommendations(staged, *, k: int, users, catalogue, seen) -> dict:
    """``validate_recommendations``'s rules over a Spark DataFrame, as distributed aggregates.

    ``staged`` is the written table, ``users`` a DataFrame of the expected
    ``user_id``s, ``catalogue`` one of the recommendable ``item_id``s (broadcast:
    it is small) and ``seen`` one of the (user_id, item_id) pairs users
    interacted with. Only counts and one example per rule reach the driver.
    Returns the count of recommendations per item (item_id -> rows), for the report.
    """
    from pyspark.sql import functions as F

    if staged.columns[: len(RECOMMENDATIONS.columns)] != RECOMMENDATIONS.columns:
        raise InvalidRecommendations(f"columns {staged.columns} do not start with the contract's {RECOMMENDATIONS.columns}")
    scores = F.transform(F.array_sort(F.collect_list(F.struct("rank", "score"))), lambda x: x["score"])
    per_user = staged.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.count_distinct("rank").alias("ranks"),
        F.min("rank").alias("lo"),
        F.max("rank").alias("hi"),
        F.count_distinct("item_id").alias("items"),
        scores.alias("scores"),
    )
    increasing = F.exists(
        F.sequence(F.lit(2), F.greatest(F.size("scores"), F.lit(2))),
        lambda i: F.try_element_at("scores", i) > F.try_element_at("scores", i - 1),
    )

    def first(condition):
        return F.min(F.when(condition, F.col("user_id")))

    stats = per_user.agg(
        F.count(F.lit(1)).alias("users"),
        first(F.col("n") != k).alias("wrong_rows"),
        first((F.col("ranks") != k) | (F.col("lo") != 1) | (F.col("hi") != k)).alias("wrong_ranks"),
        first(F.col("items") != F.col("n")).alias("repeated_item"),
        first(increasing).alias("increasing"),
    ).collect()[0]
    user_ids = staged.select("user_id").distinct()
    rows = staged.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.isnan("score") | F.col("score").isin(float("inf"), float("-inf")) | F.col("score").isNull(), 1)).alias(
            "non_finite"
        ),
        F.collect_set(
            F.when(~F.col("source").isin(*SOURCES) | F.col("source").isNull(), F.coalesce("source", F.lit("null")))
        ).alias("bad_sources"),
    ).collect()[0]
    expected_users = users.count()
    if rows["rows"] != expected_users * k:
        raise InvalidRecommendations(f"{rows['rows']} rows, expected {expected_users} users x K={k} = {expected_users * k}")
    if stats["wrong_rows"] is not None:
        raise InvalidRecommendations(f"user {stats['wrong_rows']!r} does not have K={k} rows")
    missing = users.join(user_ids, "user_id", "left_anti").limit(3).collect()
    if missing:
        raise InvalidRecommendations(f"known users have no rows, e.g. {sorted(r['user_id'] for r in missing)}")
    if stats["wrong_ranks"] is not None:
        raise InvalidRecommendations(f"user {stats['wrong_ranks']!r}: ranks are not 1..{k}")
    if rows["non_finite"]:
        raise InvalidRecommendations("non-finite scores in the table")
    if stats["increasing"] is not None:
        raise InvalidRecommendations(f"user {stats['increasing']!r}: scores increase with rank")
    if stats["repeated_item"] is not None:
        raise InvalidRecommendations(f"user {stats['repeated_item']!r}: an item appears twice")
    if rows["bad_sources"]:
        raise InvalidRecommendations(f"source must be one of {list(SOURCES)}, found {sorted(rows['bad_sources'])}")
    _check_spark_reasons(staged, seen)
    counts = staged.groupBy("item_id").count()
    unknown = counts.join(F.broadcast(catalogue.select("item_id")), "item_id", "left_anti").limit(3).collect()
    if unknown:
        raise InvalidRecommendations(f"item ids are not in the catalogue, e.g. {sorted(r['item_id'] for r in unknown)}")
    leaked = (
        staged.select("user_id", "item_id")
        .join(seen.select("user_id", "item_id").distinct(), ["user_id", "item_id"])
        .limit(3)
        .collect()
    )
    if leaked:
        row = leaked[0]
        raise InvalidRecommendations(
            f"user {row['user_id']!r} is recommended items they already interacted with: {[row['item_id']]}"
        )
    return {r["item_id"]: r["count"] for r in counts.collect()}


def _check_spark_reasons(staged, seen) -> None:
    """``_check_reasons`` over a Spark DataFrame: one example per rule reaches the driver."""
    from pyspark.sql import functions as F

    no_reason = staged.where(F.col("reason").isNull()).select("user_id", "rank").limit(1).collect()
    if no_reason:
        raise InvalidRecommendations(f"user {no_reason[0]['user_id']!r}, rank {no_reason[0]['rank']}: no reason")
    explained = staged.where(F.col("reason_item_id").isNotNull())
    personal_fallback = explained.where(F.col("source") == "fallback").select("user_id", "reason_item_id").limit(1).collect()
    if personal_fallback:
        row = personal_fallback[0]
        raise InvalidRecommendations(f"user {row['user_id']!r}: a fallback row names reason item {row['reason_item_id']!r}")
    pairs = explained.select("user_id", F.col("reason_item_id").alias("item_id")).distinct()
    unseen = pairs.join(seen.select("user_id", "item_id").distinct(), ["user_id", "item_id"], "left_anti").limit(1).collect()
    if unseen:
        row = unseen[0]
        raise InvalidRecommendations(
            f"user {row['user_id']!r}: reason item {row['item_id']!r} is not in their history up to the run date"
        )
