"""The Spark engine's publishing checks (Spark aggregates) reject what the local ones reject.

That both engines publish the same night, reasons included, is tested end to end on the test
pipeline in tests/stages/test_recommend_engines.py."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch

from recsys_core.contracts import RECOMMENDATIONS
from recsys_core.serving.output import POPULAR_WITH_PEERS, build_table
from recsys_core.serving.score import recommend_top_k, score_top_k
from recsys_core.serving.validate import (
    InvalidRecommendations,
    validate_recommendations,
    validate_spark_recommendations,
)

pytestmark = pytest.mark.spark

N_USERS, N_ITEMS, DIM, K = 150, 60, 6, 7
GENERATED = datetime(2024, 5, 1, 3, tzinfo=UTC)


def case(seed=3):
    """Scores that are exact in float32 and distinct per user, so that both engines must agree bit for bit.

    Every score is an integer plus item/1024: no rounding, whatever the GEMM's blocking, and no ties.
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(-4, 5, (N_USERS, DIM)).astype(np.float32)
    users[:, 0] = 1.0
    items = rng.integers(-4, 5, (N_ITEMS, DIM)).astype(np.float32)
    items[:, 0] = np.arange(N_ITEMS) / 1024
    seen = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < 0.25).astype(np.float32))
    use_model = rng.random(N_USERS) < 0.8
    trending = rng.permutation(N_ITEMS).astype(np.float32)
    user_ids = [f"user-{i:04d}" for i in range(N_USERS)]
    item_ids = [f"item-{j:03d}" for j in range(N_ITEMS)]
    return user_ids, users, item_ids, items, seen, use_model, trending


def local_night(user_ids, users, item_ids, items, seen, use_model, trending) -> pa.Table:
    top = np.empty((N_USERS, K), np.int64)
    scores = np.empty((N_USERS, K), np.float32)
    m, f = np.flatnonzero(use_model), np.flatnonzero(~use_model)
    top[m], scores[m] = recommend_top_k(torch.from_numpy(users[m]), torch.from_numpy(items), K, exclude=seen[m])
    top[f], scores[f] = score_top_k(torch.ones(len(f), 1), torch.from_numpy(trending).unsqueeze(1), K, exclude=seen[f])
    sources = np.where(use_model, "model", "fallback")
    return build_table(user_ids, item_ids, top, scores, sources, "recsys-seq", "3", GENERATED)


def seen_pairs(user_ids, item_ids, seen):
    rows, cols = seen.nonzero()
    return [(user_ids[r], item_ids[c]) for r, c in zip(rows, cols)]


def broken(table: pa.Table, how: str, seen_by: dict[str, str]) -> pa.Table:
    """``table`` breaking one rule; ``seen_by``: an item each user has seen."""
    rows = table.to_pylist()
    first = rows[0]["user_id"]
    if how == "increasing":
        rows[1]["score"] = rows[0]["score"] + 1.0
    elif how == "repeated":
        rows[1]["item_id"] = rows[0]["item_id"]
    elif how == "unknown":
        rows[0]["item_id"] = "not-in-catalogue"
    elif how == "missing_user":
        rows = [r for r in rows if r["user_id"] != first]
    elif how == "ranks":
        rows[0]["rank"] = 0
    elif how == "source":
        rows[0]["source"] = "guess"
    elif how == "no_reason":
        rows[0]["reason"] = None
    elif how in ("fallback_reason", "unseen_reason"):
        source = "fallback" if how == "fallback_reason" else "model"
        row = next(r for r in rows if r["source"] == source)
        # An item the user has seen (it is never recommended to them) for the fallback case; one
        # they were recommended (so not seen) for the other.
        row["reason_item_id"] = row["item_id"] if how == "unseen_reason" else seen_by[row["user_id"]]
        row["reason"] = POPULAR_WITH_PEERS
    return pa.Table.from_pylist(rows, schema=table.schema)


@pytest.mark.parametrize(
    "how, message",
    [
        ("increasing", "scores increase with rank"),
        ("repeated", "an item appears twice"),
        ("unknown", "not in the catalogue"),
        ("missing_user", "rows, expected"),
        ("ranks", "ranks are not 1"),
        ("source", "source must be one of"),
        ("seen", "already interacted with"),
        ("no_reason", "no reason"),
        ("fallback_reason", "a fallback row names reason item"),
        ("unseen_reason", "is not in their history"),
    ],
)
def test_distributed_checks_reject_what_the_local_ones_reject(spark, how, message):
    data = case()
    user_ids, _, item_ids, _, seen, _, _ = data
    table = local_night(*data)
    pairs = seen_pairs(user_ids, item_ids, seen)
    if how == "seen":
        pairs.append((table["user_id"][0].as_py(), table["item_id"][0].as_py()))
    else:
        table = broken(table, how, dict(pairs))
    seen_sets: dict[str, set[str]] = {}
    for u, i in pairs:
        seen_sets.setdefault(u, set()).add(i)
    with pytest.raises(InvalidRecommendations, match=message):
        validate_recommendations(table, k=K, users=user_ids, catalogue=set(item_ids), seen=seen_sets)
    with pytest.raises(InvalidRecommendations, match=message):
        validate_spark_recommendations(
            spark.createDataFrame(table).select(*RECOMMENDATIONS.columns),
            k=K,
            users=spark.createDataFrame([(u,) for u in user_ids], "user_id string"),
            catalogue=spark.createDataFrame([(i,) for i in item_ids], "item_id string"),
            seen=spark.createDataFrame(pairs, "user_id string, item_id string"),
        )
