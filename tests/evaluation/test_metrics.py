"""Hand-computed cases and cross-checks for recsys_core.evaluation.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys_core.evaluation.metrics import (
    PAD,
    NonFiniteScores,
    assert_finite,
    catalog_coverage,
    gini_index,
    head_items,
    intra_list_diversity,
    metrics_from_ranks,
    novelty,
    paired_difference,
    per_user_metrics_from_ranks,
    per_user_ranking_metrics,
    popularity_bias,
    ranking_metrics,
    segment_metrics,
    split_by_target,
    target_ranks,
    top_k,
)

approx = pytest.approx


def reference_top_k(scores: np.ndarray, k: int, seen: np.ndarray | None = None) -> np.ndarray:
    """Brute force: sort each row by (-score, index), drop seen items, pad with -1."""
    out = np.full((scores.shape[0], k), PAD)
    for u, row in enumerate(scores):
        order = [j for j in sorted(range(row.size), key=lambda j: (-row[j], j)) if seen is None or not seen[u, j]]
        out[u, : min(k, len(order))] = order[:k]
    return out


# --------------------------------------------------------------------------- top_k


def test_top_k_orders_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.2, 0.8, 0.6]])
    assert top_k(scores, 2).tolist() == [[1, 2], [2, 3]]
    assert top_k(scores, 2).dtype == np.int64


def test_top_k_ties_go_to_lower_index() -> None:
    # three items tied at 3: indices 1, 2, 4; the first two by index win at k=2
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert top_k(scores, 2).tolist() == [[1, 2]]
    # k=4: the three 3s by index, then the 2 (item 3)
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 3]]


def test_top_k_constant_rows_are_deterministic() -> None:
    # argpartition returns an arbitrary subset of a tied row; the result must not
    scores = np.zeros((3, 200))
    assert top_k(scores, 5).tolist() == [[0, 1, 2, 3, 4]] * 3


def test_top_k_matches_brute_force_on_tie_heavy_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(30, 25)).astype(np.float32)  # many ties
    seen = rng.random((30, 25)) < 0.3
    for k in (1, 5, 12, 25):
        assert np.array_equal(top_k(scores, k), reference_top_k(scores, k))
        assert np.array_equal(top_k(scores, k, sp.csr_matrix(seen)), reference_top_k(scores, k, seen))


def test_top_k_never_returns_excluded_items() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    seen = sp.csr_matrix(np.array([[1, 0, 1, 0]]))  # items 0 and 2 seen
    assert top_k(scores, 2, seen).tolist() == [[1, 3]]
    # only two unseen items: the third slot is padding
    assert top_k(scores, 3, seen).tolist() == [[1, 3, PAD]]
    # dense 0/1 exclusion works the same
    assert top_k(scores, 2, np.array([[1, 0, 1, 0]])).tolist() == [[1, 3]]


def test_top_k_exclusion_ignores_explicit_zeros_and_duplicates() -> None:
    scores = np.array([[0.9, 0.8, 0.7]])
    # stored zero at item 0 (not excluded), item 1 stored twice (excluded once)
    seen = sp.csr_matrix((np.array([0, 1, 1]), np.array([0, 1, 1]), np.array([0, 3])), shape=(1, 3))
    assert top_k(scores, 3, seen).tolist() == [[0, 2, PAD]]


def test_top_k_pads_when_k_exceeds_catalogue() -> None:
    assert top_k(np.array([[0.2, 0.5]]), 4).tolist() == [[1, 0, PAD, PAD]]


def test_top_k_does_not_modify_scores() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((5, 8))
    before = scores.copy()
    top_k(scores, 3)
    top_k(scores, 3, sp.csr_matrix(rng.random((5, 8)) < 0.5))
    assert np.array_equal(scores, before)


def test_top_k_accepts_torch_tensors() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5]], dtype=torch.bfloat16)
    assert top_k(scores, 2).tolist() == [[1, 2]]


def test_top_k_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        top_k(np.zeros((1, 3)), 0)


# --------------------------------------------------------------------------- non-finite


def test_non_finite_scores_are_refused() -> None:
    scores = np.array([[np.nan, 0.1, np.nan], [0.2, 0.3, 0.4], [np.inf, 0.0, 0.0]])
    with pytest.raises(NonFiniteScores) as info:
        assert_finite(scores)
    # 2 NaN in row 0 + 1 inf in row 2 = 3 entries in 2 of 3 rows
    assert "3 non-finite entries (2 NaN, 1 inf) in 2 of 3 rows" in str(info.value)
    assert (info.value.n_nan, info.value.n_inf, info.value.n_rows) == (2, 1, 2)
    assert isinstance(info.value, ValueError)
    with pytest.raises(NonFiniteScores):
        top_k(scores, 1)
    with pytest.raises(NonFiniteScores):
        # without the check the NaN target would be beaten by nothing: rank 0
        target_ranks(scores, np.array([0, 0, 0]))
    assert_finite(np.array([[1, 2]]))  # integers pass
    assert_finite(torch.ones(2, 2))


# --------------------------------------------------------------------------- target_ranks


def test_target_ranks_hand_case() -> None:
    # full order by (-score, index): 1 (.9), 4 (.7), 0 (.5), 2 (.5), 3 (.1)
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.7]])
    # target 2: strictly greater 1 and 4 (2) + equal with lower index 0 (1) = 3
    assert target_ranks(scores, np.array([2])).tolist() == [3]
    assert target_ranks(scores, np.array([0])).tolist() == [2]
    assert target_ranks(scores, np.array([1])).tolist() == [0]
    # item 1 seen: it no longer beats target 2, rank 3 - 1 = 2
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0, 0]]))
    assert target_ranks(scores, np.array([2]), seen).tolist() == [2]
    # a seen item below the target changes nothing: item 3 (.1) seen, target 2 keeps rank 3
    assert target_ranks(scores, np.array([2]), sp.csr_matrix(np.array([[0, 0, 0, 1, 0]]))).tolist() == [3]


def test_target_ranks_rejects_excluded_target() -> None:
    with pytest.raises(ValueError, match="target item in `exclude`"):
        target_ranks(np.array([[0.1, 0.2]]), np.array([1]), sp.csr_matrix(np.array([[0, 1]])))


def test_target_ranks_validates_targets() -> None:
    with pytest.raises(ValueError):
        target_ranks(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError):
        target_ranks(np.zeros((2, 3)), np.array([0.0, 1.0]))


@pytest.mark.parametrize("ties", [False, True])
def test_target_ranks_agree_with_top_k(ties: bool) -> None:
    rng = np.random.default_rng(2)
    n_users, n_items = 40, 60
    scores = rng.random((n_users, n_items))
    if ties:
        scores = np.round(scores, 1)
    targets = rng.integers(0, n_items, n_users)
    seen = rng.random((n_users, n_items)) < 0.2
    seen[np.arange(n_users), targets] = False
    exclude = sp.csr_matrix(seen)
    ranks = target_ranks(scores, targets, exclude)
    full = top_k(scores, n_items, exclude)
    assert np.array_equal(full[np.arange(n_users), ranks], targets)


# --------------------------------------------------------------------------- accuracy


L3, L6 = 1 / math.log2(3), 1 / math.log2(6)  # discounts at positions 1 and 4 (0-based)


def test_ranking_metrics_hand_case() -> None:
    recommended = np.array([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
    relevant = [np.array([1, 2]), np.array([0]), np.array([], dtype=np.int64)]
    m = ranking_metrics(recommended, relevant, ks=(2, 5))
    # user 0: hits at positions 1 and 4 -> [0, 1, 0, 0, 1], 2 relevant
    #   @2: recall 1/2, precision 1/2, hit 1, ndcg = L3 / (1 + L3)
    #   @5: recall 1, precision 2/5, hit 1, ndcg = (L3 + L6) / (1 + L3); mrr 1/2
    # user 1: hit at position 0, 1 relevant: recall 1, ndcg 1, hit 1 at both K,
    #   precision 1/2 and 1/5; mrr 1
    # user 2: nothing relevant -> not evaluated
    assert m["users"] == 2
    assert m["recall@2"] == approx((0.5 + 1) / 2)
    assert m["precision@2"] == approx((0.5 + 0.5) / 2)
    assert m["hitrate@2"] == approx(1.0)
    assert m["ndcg@2"] == approx((L3 / (1 + L3) + 1) / 2)  # (0.386853 + 1) / 2
    assert m["recall@5"] == approx(1.0)
    assert m["precision@5"] == approx((0.4 + 0.2) / 2)
    assert m["ndcg@5"] == approx(((L3 + L6) / (1 + L3) + 1) / 2)  # (0.624050 + 1) / 2
    assert m["mrr"] == approx(0.75)
    assert m["mrr@5"] == approx(0.75)


def test_ranking_metrics_recall_is_not_capped_and_pads_never_hit() -> None:
    # 3 relevant items, both top-2 slots hit: recall@2 = 2/3 (hits / n_relevant), ndcg@2 = 1
    m = ranking_metrics(np.array([[7, 8, PAD]]), [np.array([7, 8, 9, 9])], ks=(2, 3))
    assert m["recall@2"] == approx(2 / 3)  # duplicate 9 counted once
    assert m["ndcg@2"] == approx(1.0)
    # @3: third slot is padding -> still 2 hits; ideal DCG over min(3, 3) = 3 positions
    assert m["recall@3"] == approx(2 / 3)
    assert m["ndcg@3"] == approx((1 + L3) / (1 + L3 + 0.5))


def test_ranking_metrics_miss_and_late_hit() -> None:
    # relevant item 9 at position 4 only: nothing @2, @5 ndcg = L6 / 1
    m = ranking_metrics(np.array([[5, 6, 7, 8, 9]]), [np.array([9])], ks=(2, 5))
    assert (m["hitrate@2"], m["recall@2"], m["ndcg@2"]) == (0.0, 0.0, 0.0)
    assert m["ndcg@5"] == approx(L6)  # 0.386853
    assert m["mrr"] == approx(1 / 5)


def test_ranking_metrics_validation() -> None:
    with pytest.raises(ValueError, match="longer than the recommended lists"):
        ranking_metrics(np.zeros((1, 5), dtype=int), [np.array([0])], ks=(10,))
    with pytest.raises(ValueError):
        ranking_metrics(np.zeros((2, 5), dtype=int), [np.array([0])], ks=(5,))
    empty = ranking_metrics(np.zeros((1, 5), dtype=int), [np.array([], dtype=int)], ks=(5,))
    assert empty["users"] == 0 and math.isnan(empty["ndcg@5"])


def test_metrics_from_ranks_hand_case() -> None:
    ranks = np.array([0, 2, 10, 60])
    m = metrics_from_ranks(ranks, ks=(3, 10))
    # hits @3 and @10: ranks 0 and 2 (10 is not < 10) -> 2 of 4
    assert m["hitrate@3"] == m["recall@3"] == m["hitrate@10"] == approx(0.5)
    # ndcg: 1/log2(2) = 1 and 1/log2(4) = 0.5 -> (1 + 0.5) / 4
    assert m["ndcg@3"] == approx(0.375)
    assert m["ndcg@10"] == approx(0.375)
    assert m["precision@3"] == approx((1 / 3 + 1 / 3) / 4)
    assert m["mrr"] == approx((1 + 1 / 3 + 1 / 11 + 1 / 61) / 4)  # full ranking
    assert m["mrr@10"] == approx((1 + 1 / 3) / 4)  # truncated at max(ks)
    assert m["users"] == 4
    per_user = per_user_metrics_from_ranks(ranks, ks=(3, 10))
    assert per_user["ndcg@3"].tolist() == approx([1.0, 0.5, 0.0, 0.0])
    assert {k: float(np.mean(v)) for k, v in per_user.items()} == approx({k: v for k, v in m.items() if k != "users"})


@pytest.mark.parametrize("ties", [False, True])
def test_rank_metrics_agree_with_list_metrics(ties: bool) -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, ks = 50, 80, (5, 10, 20)
    scores = rng.normal(size=(n_users, n_items))
    if ties:
        scores = np.round(scores)
    targets = rng.integers(0, n_items, n_users)
    seen = rng.random((n_users, n_items)) < 0.25
    seen[np.arange(n_users), targets] = False
    exclude = sp.csr_matrix(seen)

    from_ranks = metrics_from_ranks(target_ranks(scores, targets, exclude), ks)
    from_lists = ranking_metrics(top_k(scores, max(ks), exclude), [np.array([t]) for t in targets], ks)

    assert from_ranks.keys() == from_lists.keys()
    # "mrr" is over the full ranking in one and truncated at 20 in the other
    same = {k: v for k, v in from_ranks.items() if k != "mrr"}
    assert same == approx({k: v for k, v in from_lists.items() if k != "mrr"})
    assert from_ranks["mrr"] >= from_lists["mrr"] == approx(from_ranks["mrr@20"])
    assert 0 < from_lists["hitrate@20"] < 1  # the check exercised both hits and misses


# --------------------------------------------------------------------------- beyond accuracy


def test_catalog_coverage() -> None:
    recommended = np.array([[0, 1], [1, 2], [2, PAD]])
    assert catalog_coverage(recommended, n_items=5, k=2) == approx(3 / 5)  # {0, 1, 2}
    assert catalog_coverage(recommended, n_items=5, k=1) == approx(3 / 5)  # {0, 1, 2}
    assert catalog_coverage(recommended[:2], n_items=5, k=1) == approx(2 / 5)  # {0, 1}
    with pytest.raises(ValueError):
        catalog_coverage(recommended, n_items=2, k=2)  # item 2 outside the catalogue


def test_novelty() -> None:
    # counts [3, 1, 0, 0]: p = (c + 1) / (4 + 4) = [1/2, 1/4, 1/8, 1/8] -> bits [1, 2, 3, 3]
    pop = np.array([3, 1, 0, 0])
    recommended = np.array([[0, 1], [2, 3]])
    assert novelty(recommended, pop, k=2) == approx((1 + 2 + 3 + 3) / 4)
    assert novelty(recommended, pop, k=1) == approx((1 + 3) / 2)  # items 0 and 2


def test_intra_list_diversity() -> None:
    # genres: item 0 {a}, item 1 {a, b}, item 2 {c}, item 3 none
    cats = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    c01 = 1 / math.sqrt(2)  # cos(item 0, item 1) = 1 / (1 * sqrt 2); every other pair 0
    recommended = np.array([[0, 1, 2], [2, 0, 1]])
    # k=3: both lists hold {0, 1, 2}: distances (1 - c01), 1, 1 -> mean over 3 pairs
    expected3 = ((1 - c01) + 1 + 1) / 3  # 0.764298
    assert intra_list_diversity(recommended, cats, k=3) == approx(expected3)
    # k=2: user 0 {0, 1} -> 1 - c01 = 0.292893; user 1 {2, 0} -> 1
    expected2 = ((1 - c01) + 1) / 2
    assert intra_list_diversity(recommended, cats, k=2) == approx(expected2)
    assert intra_list_diversity(recommended, sp.csr_matrix(cats), k=2) == approx(expected2)
    # item 3 has no category: distance 1 to anything; same item twice: distance 0
    assert intra_list_diversity(np.array([[3, 0]]), cats, k=2) == approx(1.0)
    assert intra_list_diversity(np.array([[3, 3]]), cats, k=2) == approx(1.0)
    assert intra_list_diversity(np.array([[1, 1]]), cats, k=2) == approx(0.0)
    # a list with one filled slot has no pairs and is skipped
    assert intra_list_diversity(np.array([[0, 1], [2, PAD]]), cats, k=2) == approx(1 - c01)
    assert math.isnan(intra_list_diversity(np.array([[2, PAD]]), cats, k=2))


POP = np.array([5, 50, 1, 20, 20, 0, 3, 8, 2, 9])


def test_head_items() -> None:
    # 20% of 10 items = 2: item 1 (50), then item 3 over item 4 (both 20, lower index wins)
    assert np.flatnonzero(head_items(POP)).tolist() == [1, 3]
    # 5 items: 50, 20, 20, 9, 8 -> items 1, 3, 4, 9, 7 (flatnonzero lists them by index)
    assert np.flatnonzero(head_items(POP, 0.5)).tolist() == [1, 3, 4, 7, 9]
    assert head_items(POP, 0.0).sum() == 0


def test_gini_index() -> None:
    assert gini_index([1, 1, 1, 1]) == approx(0.0)
    # all mass on one of 4: (n - 1) / n
    assert gini_index([0, 0, 0, 4]) == approx(0.75)
    # sorted [0, 1, 1, 2], weights 2i - n - 1 = [-3, -1, 1, 3]: (0 - 1 + 1 + 6) / (4 * 4)
    assert gini_index([2, 1, 1, 0]) == approx(6 / 16)
    assert math.isnan(gini_index([0, 0]))


def test_popularity_bias() -> None:
    recommended = np.array([[1, 0], [3, 5]])
    b = popularity_bias(recommended, POP, k=2)
    # items 1, 0, 3, 5 with counts 50, 5, 20, 0
    assert b["arp"] == approx((50 + 5 + 20 + 0) / 4)
    # head = {1, 3}: 2 of 4 slots
    assert b["head_share"] == approx(0.5)
    # 4 items recommended once, 6 never: sorted [0]*6 + [1]*4, weights 3, 5, 7, 9 -> 24 / (10 * 4)
    assert b["gini"] == approx(0.6)
    b1 = popularity_bias(recommended, POP, k=1)
    assert b1["arp"] == approx((50 + 20) / 2)
    assert b1["head_share"] == approx(1.0)


# --------------------------------------------------------------------------- segments


def test_segment_metrics() -> None:
    per_user = {"hitrate@10": np.array([1.0, 0.0, 1.0, 1.0]), "ndcg@10": np.array([1.0, 0.0, 0.5, 0.25])}
    history_len = np.array([1, 3, 9, 20])
    seg = segment_metrics(per_user, {"cold": history_len < 5, "warm": history_len >= 5, "none": history_len > 99})
    # cold = users 0, 1: hit (1 + 0) / 2, ndcg (1 + 0) / 2; warm = users 2, 3: hit 1, ndcg (0.5 + 0.25) / 2
    assert seg["cold"] == approx({"hitrate@10": 0.5, "ndcg@10": 0.5, "users": 2})
    assert seg["warm"] == approx({"hitrate@10": 1.0, "ndcg@10": 0.375, "users": 2})
    assert seg["none"]["users"] == 0 and math.isnan(seg["none"]["ndcg@10"])
    with pytest.raises(TypeError):
        segment_metrics(per_user, {"cold": np.array([0, 1])})  # index array, not a mask
    with pytest.raises(ValueError):
        segment_metrics(per_user, {"cold": np.array([True, False])})


def test_segment_metrics_skip_users_without_relevant_items() -> None:
    per_user = per_user_ranking_metrics(
        np.array([[0, 1], [0, 1], [0, 1]]), [np.array([0]), np.array([], dtype=int), np.array([5])], ks=(2,)
    )
    seg = segment_metrics(per_user, {"all": np.ones(3, dtype=bool)})
    # user 1 has nothing relevant: users 0 (hit) and 2 (miss) are averaged
    assert seg["all"]["users"] == 2
    assert seg["all"]["hitrate@2"] == approx(0.5)


def test_split_by_target() -> None:
    per_user = per_user_metrics_from_ranks(np.array([0, 5, 1, 30]), ks=(10,))
    targets = np.array([0, 3, 2, 1])
    head_mask = np.array([True, False, True, False])
    split = split_by_target(per_user, targets, head_mask)
    # items 0 and 2 are head -> head targets: users 0 (rank 0) and 2 (rank 1); tail: users 1 (rank 5) and 3 (rank 30)
    assert split["head_targets"]["users"] == 2
    assert split["head_targets"]["hitrate@10"] == approx(1.0)
    assert split["head_targets"]["ndcg@10"] == approx((1 + 1 / math.log2(3)) / 2)
    assert split["tail_targets"]["hitrate@10"] == approx(0.5)
    assert split["tail_targets"]["mrr"] == approx((1 / 6 + 1 / 31) / 2)


# --------------------------------------------------------------------------- paired_difference


def test_paired_difference_compares_user_by_user() -> None:
    a = np.array([0.5, 0.2, np.nan, 0.9, 0.0])
    b = np.array([0.4, 0.2, 0.7, 0.5, np.nan])
    mean, se, users = paired_difference(a, b)
    differences = np.array([0.1, 0.0, 0.4])  # users 2 and 4 lack a value in one of the two
    assert users == 3 and mean == approx(differences.mean())
    assert se == approx(differences.std(ddof=1) / math.sqrt(3))
    # A constant gap between users of very different difficulty has no error: the pairing takes it out.
    hard_and_easy = np.array([0.0, 0.1, 0.9, 1.0])
    assert paired_difference(hard_and_easy + 0.05, hard_and_easy) == (approx(0.05), approx(0.0, abs=1e-12), 4)


def test_paired_difference_of_too_few_users() -> None:
    mean, se, users = paired_difference(np.array([0.3]), np.array([0.1]))
    assert users == 1 and mean == approx(0.2) and math.isnan(se)
    mean, se, users = paired_difference(np.array([np.nan]), np.array([0.1]))
    assert users == 0 and math.isnan(mean) and math.isnan(se)
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference(np.zeros(2), np.zeros(3))
