"""recsys_core.serving.rerank: MMR by category, checked against a case worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core.serving.rerank import category_matrix, jaccard, mmr_rerank

# Pool of one user, best first: items 0..3 with model scores 1.0, 0.9, 0.5, 0.0
# (relevance after min-max scaling: 1, 0.9, 0.5, 0).
# Categories: item 0 {A}, item 1 {A}, item 2 {B}, item 3 {A, B}.
CATS = category_matrix([["A"], ["A"], ["B"], ["A", "B"]])
POOL_ITEMS = np.array([[0, 1, 2, 3]])
POOL_SCORES = np.array([[1.0, 0.9, 0.5, 0.0]], dtype=np.float32)


def test_category_matrix_and_jaccard():
    np.testing.assert_array_equal(CATS, [[1, 0], [1, 0], [0, 1], [1, 1]])
    sim = jaccard(CATS, CATS)
    assert sim[0, 1] == 1.0 and sim[0, 2] == 0.0 and sim[0, 3] == pytest.approx(0.5)
    assert category_matrix([None, []]).shape == (2, 0)
    assert jaccard(np.zeros((2, 3)), np.zeros((2, 3))).sum() == 0  # no categories: no similarity


def test_hand_computed_case():
    # lambda = 0.5:
    # step 1: objectives 0.5*rel = [0.5, 0.45, 0.25, 0]          -> item 0 (0.5)
    #         max-sim to {0}: [-, 1, 0, 0.5]
    # step 2: [-, 0.45-0.5, 0.25-0, 0-0.25] = [-, -0.05, 0.25, -0.25] -> item 2 (0.25)
    #         max-sim to {0, 2}: [-, 1, -, 0.5]
    # step 3: [-, -0.05, -, -0.25]                               -> item 1 (-0.05)
    items, scores = mmr_rerank(POOL_ITEMS, POOL_SCORES, CATS, 3, 0.5)
    assert items.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores, [[0.5, 0.25, -0.05]], atol=1e-7)
    assert scores.dtype == np.float32


def test_lambda_one_keeps_the_model_order():
    items, scores = mmr_rerank(POOL_ITEMS, POOL_SCORES, CATS, 4, 1.0)
    assert items.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_allclose(scores, [[1.0, 0.9, 0.5, 0.0]], atol=1e-7)


def test_lambda_zero_maximises_diversity():
    # Pure diversity: all objectives start at 0, the tie goes to the model's best (item 0);
    # then item 2 (similarity 0 to {0}); then max-sims are item 1: 1, item 3: 0.5 -> item 3.
    items, _ = mmr_rerank(POOL_ITEMS, POOL_SCORES, CATS, 3, 0.0)
    assert items.tolist() == [[0, 2, 3]]


def test_empty_slots_are_skipped_and_scores_never_increase():
    rng = np.random.default_rng(3)
    n, pool, k, n_items = 50, 30, 10, 200
    cats = rng.random((n_items, 6)) < 0.3
    pool_items = np.stack([rng.permutation(n_items)[:pool] for _ in range(n)])
    pool_scores = -np.sort(-rng.random((n, pool)).astype(np.float32), axis=1)
    pool_items[:, 25:] = -1
    pool_scores[:, 25:] = -np.inf
    for lam in (0.0, 0.3, 0.7, 1.0):
        items, scores = mmr_rerank(pool_items, pool_scores, cats, k, lam)
        assert (items >= 0).all()
        assert all(len(set(r)) == k for r in items.tolist())
        assert all(set(r) <= set(p) for r, p in zip(items.tolist(), pool_items.tolist()))
        assert (np.diff(scores, axis=1) <= 0).all()


def test_more_diverse_than_the_model_order():
    rng = np.random.default_rng(8)
    n, pool, k = 40, 30, 10
    cats = np.eye(5, dtype=bool)[rng.integers(0, 5, size=300)]  # one genre per item
    pool_items = np.stack([rng.permutation(300)[:pool] for _ in range(n)])
    pool_scores = -np.sort(-rng.random((n, pool)).astype(np.float32), axis=1)
    reranked, _ = mmr_rerank(pool_items, pool_scores, cats, k, 0.3)

    def genres(rows):
        return np.mean([len({int(np.argmax(cats[i])) for i in row}) for row in rows])

    assert genres(reranked) > genres(pool_items[:, :k])


def test_too_few_candidates_and_bad_lambda_raise():
    with pytest.raises(ValueError, match="fewer than K=3"):
        mmr_rerank(np.array([[0, 1, -1, -1]]), np.array([[1.0, 0.5, -np.inf, -np.inf]]), CATS, 3, 0.5)
    with pytest.raises(ValueError, match="mmr_lambda"):
        mmr_rerank(POOL_ITEMS, POOL_SCORES, CATS, 2, 1.5)


def test_recommend_top_k_with_mmr_reranks_the_pool():
    from recsys_core.serving.score import recommend_top_k, score_top_k

    gen = torch.Generator().manual_seed(2)
    users, items = torch.randn(20, 4, generator=gen), torch.randn(60, 4, generator=gen)
    cats = np.random.default_rng(2).random((60, 4)) < 0.4
    top, scores = recommend_top_k(users, items, 5, mmr_lambda=0.5, categories=cats, pool_factor=3)
    pool, pool_scores = score_top_k(users, items, 15)
    expected = mmr_rerank(pool, pool_scores, cats, 5, 0.5)
    np.testing.assert_array_equal(top, expected[0])
    np.testing.assert_array_equal(scores, expected[1])
    with pytest.raises(ValueError, match="categories"):
        recommend_top_k(users, items, 5, mmr_lambda=0.5)
