"""recsys_core.serving.validate: a valid night passes; each rule fails on a minimally broken table."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from recsys_core.contracts import RECOMMENDATIONS, conform
from recsys_core.serving.validate import InvalidRecommendations, validate_recommendations

K = 3
USERS = ["u1", "u2", "u3"]
CATALOGUE = {f"i{j}" for j in range(1, 9)}
SEEN = {"u1": {"i8"}, "u2": {"i7"}}
NOW = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
REASON = {"u1": "i8", "u2": "i7"}  # each from that user's history; u3 has none
GOOD_ITEMS = {"u1": ["i1", "i2", "i3"], "u2": ["i3", "i1", "i8"], "u3": ["i7", "i8", "i1"]}


def rows() -> list[dict]:
    out = []
    for user in USERS:
        for rank, item in enumerate(GOOD_ITEMS[user], start=1):
            out.append(
                {
                    "user_id": user,
                    "rank": rank,
                    "item_id": item,
                    "score": 1.0 - 0.25 * rank,
                    "model_name": "recsys-seq",
                    "model_version": "4",
                    "generated_at": NOW,
                    "source": "model",
                    "reason_item_id": REASON.get(user),
                    "reason": "Because you watched it" if user in REASON else "Popular with viewers like you",
                }
            )
    return out


def table(rs: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rs, schema=RECOMMENDATIONS.schema)


def row(rs: list[dict], user: str, rank: int) -> dict:
    return next(r for r in rs if r["user_id"] == user and r["rank"] == rank)


def check(tbl: pa.Table, **overrides) -> None:
    kwargs = {"k": K, "users": USERS, "catalogue": CATALOGUE, "seen": SEEN, **overrides}
    validate_recommendations(tbl, **kwargs)


def test_valid_table_passes():
    check(table(rows()))


def test_valid_table_passes_in_any_row_order():
    rs = rows()
    random.Random(0).shuffle(rs)
    check(table(rs))


def test_valid_table_built_through_conform_passes():
    loose = pa.Table.from_pylist(rows())  # int64 rank, double score, columns inferred
    check(conform(loose, RECOMMENDATIONS))


def test_tied_scores_are_allowed():
    rs = rows()
    for r in rs:
        r["score"] = 0.5
    check(table(rs))


def test_wrong_row_count():
    with pytest.raises(InvalidRecommendations, match=r"9 rows, expected 4 users x K=3 = 12"):
        check(table(rows()), users=[*USERS, "u4"])


def test_user_with_k_minus_one_rows():
    rs = rows()
    moved = row(rs, "u1", 3)
    moved.update(user_id="u2", rank=4, item_id="i5", score=0.0)  # row count stays 9
    with pytest.raises(InvalidRecommendations, match=r"user 'u1' has 2 rows, expected K=3"):
        check(table(rs))


def test_missing_known_user():
    rs = rows()
    for r in rs:
        if r["user_id"] == "u3":
            r["user_id"] = "stranger"
    with pytest.raises(InvalidRecommendations, match=r"1 known users have no rows, e\.g\. \['u3'\]"):
        check(table(rs))


@pytest.mark.parametrize("ranks", [[1, 2, 4], [0, 1, 2], [1, 1, 2]])
def test_ranks_not_one_to_k(ranks):
    rs = rows()
    for rank_before, new_rank in zip((1, 2, 3), ranks):
        row(rs, "u2", rank_before)["_new"] = new_rank
    for r in rs:
        if "_new" in r:
            r["rank"] = r.pop("_new")
    with pytest.raises(InvalidRecommendations, match=r"user 'u2': ranks are not 1\.\.3"):
        check(table(rs))


def test_scores_increasing_with_rank():
    rs = rows()
    row(rs, "u3", 3)["score"] = 0.9  # rank 3 beats rank 2
    with pytest.raises(InvalidRecommendations, match=r"user 'u3': scores increase with rank"):
        check(table(rs))


def test_duplicate_item_for_a_user():
    rs = rows()
    row(rs, "u2", 3)["item_id"] = "i3"  # same as rank 1
    with pytest.raises(InvalidRecommendations, match=r"user 'u2': an item appears twice"):
        check(table(rs))


def test_item_not_in_catalogue():
    rs = rows()
    row(rs, "u3", 2)["item_id"] = "ghost"
    with pytest.raises(InvalidRecommendations, match=r"1 item ids are not in the catalogue, e\.g\. \['ghost'\]"):
        check(table(rs))


def test_seen_item_recommended():
    rs = rows()
    row(rs, "u1", 2)["item_id"] = "i8"  # u1 interacted with i8
    with pytest.raises(InvalidRecommendations, match=r"user 'u1' is recommended items they already interacted with: \['i8'\]"):
        check(table(rs))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_non_finite_score(bad):
    rs = rows()
    row(rs, "u2", 3)["score"] = bad
    with pytest.raises(InvalidRecommendations, match="non-finite scores"):
        check(table(rs))


def test_wrong_column_order():
    tbl = table(rows())
    names = tbl.column_names
    swapped = [names[0], names[2], names[1], *names[3:]]  # item_id before rank
    with pytest.raises(InvalidRecommendations, match="do not start with the contract's"):
        check(tbl.select(swapped))


def test_missing_source_column():
    tbl = table(rows()).drop_columns(["source"])
    with pytest.raises(InvalidRecommendations, match="do not start with the contract's"):
        check(tbl)


def test_extra_trailing_columns_are_allowed():
    tbl = table(rows())
    check(tbl.append_column("debug", pa.array(range(tbl.num_rows))))


@pytest.mark.parametrize("bad", ["popular", None])
def test_unknown_source(bad):
    rs = rows()
    row(rs, "u1", 2)["source"] = bad
    with pytest.raises(InvalidRecommendations, match=r"source must be one of \['model', 'fallback'\]"):
        check(table(rs))


def test_every_row_needs_a_reason():
    rs = rows()
    row(rs, "u2", 2)["reason"] = None
    with pytest.raises(InvalidRecommendations, match="'u2', rank 2: no reason"):
        check(table(rs))


def test_a_reason_item_must_be_in_the_users_history():
    rs = rows()
    row(rs, "u1", 3)["reason_item_id"] = "i7"  # u2's item, never u1's
    with pytest.raises(InvalidRecommendations, match="'u1': reason item 'i7' is not in their history"):
        check(table(rs))


def test_a_fallback_row_names_no_reason_item():
    rs = rows()
    for r in rs:
        if r["user_id"] == "u1":
            r["source"] = "fallback"
    with pytest.raises(InvalidRecommendations, match="'u1': a fallback row names reason item 'i8'"):
        check(table(rs))
