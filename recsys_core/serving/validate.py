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
