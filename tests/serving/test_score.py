"""recsys_core.serving.score: top-K against brute force, exclusion, batching, the seen matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys_core.serving.score import score_top_k, seen_matrix

N_USERS, N_ITEMS, DIM, K = 9, 15, 4, 5


@pytest.fixture
def vectors():
    gen = torch.Generator().manual_seed(7)
    users = torch.randn(N_USERS, DIM, generator=gen)
    items = torch.randn(N_ITEMS, DIM, generator=gen)
    return users, items


def brute_force(users: torch.Tensor, items: torch.Tensor, k: int, exclude: np.ndarray | None = None):
    scores = users.numpy().astype(np.float64) @ items.numpy().astype(np.float64).T
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def random_exclusion(seed: int, density: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random((N_USERS, N_ITEMS)) < density


def test_matches_brute_force_best_first(vectors):
    users, items = vectors
    top, scores = score_top_k(users, items, K)
    expected_items, expected_scores = brute_force(users, items, K)
    assert top.shape == (N_USERS, K) and top.dtype == np.int64
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_excluded_items_are_never_returned(vectors):
    users, items = vectors
    mask = random_exclusion(1)
    top, scores = score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)))
    for u in range(N_USERS):
        assert not mask[u, top[u]].any()
    expected_items, expected_scores = brute_force(users, items, K, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert np.isfinite(scores).all()


def test_excluding_the_best_item_promotes_the_next(vectors):
    users, items = vectors
    top, _ = score_top_k(users, items, K)
    mask = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    mask[np.arange(N_USERS), top[:, 0]] = 1
    top_ex, _ = score_top_k(users, items, K, exclude=sp.csr_matrix(mask))
    np.testing.assert_array_equal(top_ex[:, : K - 1], top[:, 1:])


def test_user_with_fewer_than_k_items_left_raises(vectors):
    users, items = vectors
    mask = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    mask[7, : N_ITEMS - K + 1] = 1  # user row 7 keeps only K-1 items
    with pytest.raises(ValueError, match=r"user row 7 has fewer than K=5"):
        score_top_k(users, items, K, exclude=sp.csr_matrix(mask), batch_users=3)  # row 7 is in the third batch


def test_exactly_k_items_left_is_fine(vectors):
    users, items = vectors
    mask = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    mask[2, : N_ITEMS - K] = 1
    top, _ = score_top_k(users, items, K, exclude=sp.csr_matrix(mask))
    assert sorted(top[2].tolist()) == list(range(N_ITEMS - K, N_ITEMS))


def test_k_larger_than_catalogue_raises(vectors):
    users, items = vectors
    with pytest.raises(ValueError, match="larger than the catalogue"):
        score_top_k(users, items, N_ITEMS + 1)


@pytest.mark.parametrize("batch_users", [1, 2, 4, N_USERS, 1024])
def test_batches_agree_with_one_batch(vectors, batch_users):
    users, items = vectors
    exclude = sp.csr_matrix(random_exclusion(3).astype(np.float32))
    one_items, one_scores = score_top_k(users, items, K, exclude=exclude, batch_users=10_000)
    items_b, scores_b = score_top_k(users, items, K, exclude=exclude, batch_users=batch_users)
    np.testing.assert_array_equal(items_b, one_items)
    np.testing.assert_allclose(scores_b, one_scores, rtol=1e-6, atol=1e-6)


def test_scoring_does_not_modify_inputs(vectors):
    users, items = vectors
    u0, i0 = users.clone(), items.clone()
    exclude = sp.csr_matrix(random_exclusion(4).astype(np.float32))
    before = exclude.toarray().copy()
    score_top_k(users, items, K, exclude=exclude, batch_users=2)
    assert torch.equal(users, u0) and torch.equal(items, i0)
    np.testing.assert_array_equal(exclude.toarray(), before)


def test_seen_matrix_ignores_unknown_and_dedups():
    m = seen_matrix(
        ["a", "b", "c"],
        ["x", "y", "z"],
        ["a", "a", "b", "ghost", "a", "c", "b"],
        ["x", "x", "z", "x", "w", "y", "z"],
    )
    assert m.shape == (3, 3)
    assert isinstance(m, sp.csr_matrix)
    np.testing.assert_array_equal(
        m.toarray() > 0,
        np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=bool),
    )
    assert m.nnz == 3  # one stored entry per (user, item) pair
    assert m.has_canonical_format


def test_seen_matrix_empty_interactions():
    m = seen_matrix(["a"], ["x", "y"], [], [])
    assert m.shape == (1, 2) and m.nnz == 0


def test_seen_matrix_drives_exclusion_end_to_end(vectors):
    users, items = vectors
    user_ids = [f"u{i}" for i in range(N_USERS)]
    item_ids = [f"i{j}" for j in range(N_ITEMS)]
    top, _ = score_top_k(users, items, K)
    # Every user has seen their current favourite (twice) plus an unknown item.
    log_users = [u for u in user_ids for _ in range(3)]
    log_items = [x for u in range(N_USERS) for x in (item_ids[top[u, 0]], item_ids[top[u, 0]], "unknown")]
    seen = seen_matrix(user_ids, item_ids, log_users, log_items)
    top_ex, _ = score_top_k(users, items, K, exclude=seen)
    assert not np.any(top_ex == top[:, :1])


# Large catalogues: the two-stage (block maxima) selection -------------------------------
def big_case(n_users=37, n_items=5003, dim=8, seed=11, density=0.05):
    gen = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=gen)
    items = torch.randn(n_items, dim, generator=gen)
    mask = np.random.default_rng(seed).random((n_users, n_items)) < density
    return users, items, mask


def test_two_stage_selection_is_used_and_exact():
    from recsys_core.serving.score import _Selector

    users, items, mask = big_case()
    assert _Selector(items.shape[0], 10).two_stage  # 5003 items, K=10: the block path
    top, scores = score_top_k(users, items, 10, exclude=sp.csr_matrix(mask.astype(np.float32)), batch_users=8)
    expected_items, expected_scores = brute_force(users, items, 10, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert (top < items.shape[0]).all()  # never a padding column


def test_two_stage_with_many_ties_returns_the_best_values():
    # Integer scores: huge ties. Any tie order is fine, the values must be the true top-k.
    n_users, n_items, k = 11, 4000, 12
    rng = np.random.default_rng(5)
    levels = rng.integers(0, 30, size=(n_users, n_items)).astype(np.float32)
    users = torch.eye(n_users)
    items = torch.as_tensor(levels.T.copy())  # score(u, i) = levels[u, i]
    mask = rng.random((n_users, n_items)) < 0.2
    top, scores = score_top_k(users, items, k, exclude=sp.csr_matrix(mask.astype(np.float32)))
    masked = np.where(mask, -np.inf, levels)
    expected = -np.sort(-masked, axis=1)[:, :k]
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(np.take_along_axis(levels, top, axis=1), scores)
    assert all(len(set(row)) == k for row in top.tolist())
    assert not np.take_along_axis(mask, top, axis=1).any()


def test_two_stage_user_with_too_few_items_raises():
    users, items, _ = big_case(n_users=4, n_items=3000)
    mask = np.zeros((4, 3000), dtype=np.float32)
    mask[2, 5:] = 1  # five items left, K=10
    with pytest.raises(ValueError, match=r"user row 2 has fewer than K=10"):
        score_top_k(users, items, 10, exclude=sp.csr_matrix(mask))


@pytest.mark.parametrize("n_items", [15, 3001])
def test_candidate_pool_pads_short_users(n_items):
    users, items, _ = big_case(n_users=3, n_items=n_items)
    mask = np.zeros((3, n_items), dtype=np.float32)
    mask[1, 7:] = 1  # seven items left
    top, scores = score_top_k(users, items, 12, exclude=sp.csr_matrix(mask), min_valid=5)
    assert (top[1, 7:] == -1).all() and np.isneginf(scores[1, 7:]).all()
    assert sorted(top[1, :7].tolist()) == list(range(7))
    assert (top[[0, 2]] >= 0).all() and np.isfinite(scores[[0, 2]]).all()
    with pytest.raises(ValueError, match="fewer than K=8"):
        score_top_k(users, items, 12, exclude=sp.csr_matrix(mask), min_valid=8)


def test_no_users_gives_empty_result():
    top, scores = score_top_k(torch.zeros(0, DIM), torch.randn(N_ITEMS, DIM), K)
    assert top.shape == (0, K) and scores.shape == (0, K)


def test_exclusion_from_lists_matches_seen_matrix():
    from recsys_core.sparse import exclusion_from_lists

    m = exclusion_from_lists(np.array([3, 5, 5, 6]), np.array([0, 2, 1]), 4)  # offsets need not start at 0
    np.testing.assert_array_equal(m.toarray() > 0, [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])


def test_recommend_top_k_without_mmr_is_score_top_k(vectors):
    from recsys_core.serving.score import recommend_top_k

    users, items = vectors
    exclude = sp.csr_matrix(random_exclusion(6).astype(np.float32))
    a = score_top_k(users, items, K, exclude=exclude)
    b = recommend_top_k(users, items, K, exclude=exclude)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("n_items", [15, 3001])  # one-stage and two-stage selection
def test_non_finite_scores_are_refused(n_items):
    users, items, _ = big_case(n_users=5, n_items=n_items)
    users[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"user row 3 .*non-finite"):
        score_top_k(users, items, 5)


@pytest.mark.parametrize("n_levels", [0, 1, 2])
def test_fp32_pool_holds_every_item_reaching_its_threshold(n_levels):
    from recsys_core.serving.pool_kernels import GROUP, NO_POOL, fp32_pools

    n_rows, n_items, pool = 6, 512, 5
    rng = np.random.default_rng(1)
    rows = (rng.integers(-20, 20, size=(n_rows, n_items)) / 4).astype(np.float32)  # ties
    rows[0, [7, 3, 200]] = [-0.0, 0.0, 0.0]
    rows[1] = 1.0  # every item ties: more than the pool's capacity
    rows[2, 3:] = -np.inf  # fewer items than the pool above -inf: no pool
    seen = rng.random((n_rows, n_items)) < 0.2
    csr = sp.csr_matrix(seen.astype(np.float32))
    masked = np.where(seen, -np.inf, rows)
    members = np.empty((n_rows, 4 * pool), np.int64)
    counts, threshold = np.empty(n_rows, np.int64), np.empty(n_rows, np.float32)
    assert n_items >= GROUP**n_levels * 4 * pool
    fp32_pools(0, n_rows, rows, csr.indptr, csr.indices, 0, n_items, n_levels, pool, members, counts, threshold)
    assert counts[1] == counts[2] == NO_POOL
    for r in (0, 3, 4, 5):
        reaching = np.flatnonzero(masked[r] >= threshold[r])
        assert sorted(members[r, : counts[r]].tolist()) == reaching.tolist()
        assert len(reaching) >= pool and threshold[r] <= np.sort(masked[r])[-pool]
        assert not seen[r, members[r, : counts[r]]].any()


@pytest.mark.parametrize("n_levels", [0, 1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_pool_at_exactly_its_capacity_is_kept_and_one_more_member_is_not(precision, n_levels):
    from recsys_core.serving.pool_kernels import NO_POOL, bf16_pools, fp32_pools

    n_items, pool, capacity = 512, 5, 20
    rows = np.full((2, n_items), -1.0, dtype=np.float32)
    rows[0, :capacity] = 5.0  # ties at the threshold: exactly as many as the pool can hold
    rows[1, : capacity + 1] = 5.0  # one more
    nothing_seen = sp.csr_matrix((2, n_items), dtype=np.float32)
    members, counts = np.full((2, capacity), -7, dtype=np.int64), np.empty(2, dtype=np.int64)
    if precision == "bf16":
        scores, threshold, kernel = torch.from_numpy(rows).bfloat16().view(torch.int16).numpy(), np.empty(2, np.int16), bf16_pools
    else:
        scores, threshold, kernel = rows, np.empty(2, np.float32), fp32_pools
    kernel(0, 2, scores, nothing_seen.indptr, nothing_seen.indices, 0, n_items, n_levels, pool, members, counts, threshold)
    assert counts.tolist() == [capacity, NO_POOL]
    assert sorted(members[0].tolist()) == list(range(capacity))


def test_fp32_lists_are_exact_where_the_gemm_rounds_a_near_tie_the_other_way():
    users = torch.ones(3, 3)
    items = torch.tensor([[1.0, 1e8, -1e8], [0.0, 0.0, 0.5], [0.25, 0.0, 0.0], [0.0, 0.125, 0.0]])
    assert torch.mm(users, items.T)[0, 0] == 0  # the GEMM sums 1 + 1e8 first and loses the 1
    top, scores = score_top_k(users, items, 2)
    assert top.tolist() == [[0, 1]] * 3 and scores[:, 0].tolist() == [1.0] * 3
