"""recsys_core.models.baselines: history matrix, EASE closed form, trending popularity."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_core.models.baselines import EASE, Popularity, history_matrix

DAY = 86_400


def test_history_matrix_is_binary_and_dedups():
    m = history_matrix([np.array([1, 3, 3, 3]), np.array([], dtype=np.int64), np.array([2, 4])], n_items=4)
    assert isinstance(m, sp.csr_matrix)
    assert m.shape == (3, 4)
    np.testing.assert_array_equal(
        m.toarray(),
        np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=np.float32),
    )
    assert m.nnz == 4  # (0,0), (0,2), (2,1), (2,3): the repeated item is one entry


def test_history_matrix_of_no_users():
    m = history_matrix([], n_items=5)
    assert m.shape == (0, 5)


def test_ease_two_items_by_hand():
    # X = [[1,1],[1,0]], lambda = 1:  G = X'X + I = [[3,1],[1,2]], P = G^-1 = [[2,-1],[-1,3]] / 5
    # B_ij = -P_ij / P_jj (i != j), B_ii = 0  ->  B_01 = (1/5)/(3/5) = 1/3,  B_10 = (1/5)/(2/5) = 1/2
    x = history_matrix([np.array([1, 2]), np.array([1])], n_items=2)
    model = EASE(l2=1.0).fit(x)
    np.testing.assert_allclose(model.weights, [[0.0, 1.0 / 3.0], [0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(model.score(history_matrix([np.array([1])], 2)), [[0.0, 1.0 / 3.0]], rtol=1e-6)


def test_ease_matches_closed_form_on_a_random_matrix():
    rng = np.random.default_rng(0)
    dense = (rng.random((12, 6)) < 0.4).astype(np.float64)
    x = sp.csr_matrix(dense.astype(np.float32))
    lam = 2.5
    model = EASE(l2=lam).fit(x)
    p = np.linalg.inv(dense.T @ dense + lam * np.eye(6))
    expected = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            if i != j:
                expected[i, j] = -p[i, j] / p[j, j]
    assert model.weights.dtype == np.float32
    np.testing.assert_allclose(model.weights, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(model.weights) == 0)
    np.testing.assert_allclose(model.score(x), dense @ expected, rtol=1e-4, atol=1e-5)


def test_ease_scores_co_occurring_items_higher():
    # Items 1 and 2 always appear together; 3 and 4 together; item 5 alone.
    histories = [np.array([1, 2])] * 5 + [np.array([3, 4])] * 5 + [np.array([5])] * 3
    model = EASE(l2=1.0).fit(history_matrix(histories, 5))
    scores = model.score(history_matrix([np.array([1])], 5))[0]
    assert scores.shape == (5,)
    assert scores[1] > 0
    assert scores[1] > max(scores[2], scores[3], scores[4])


def test_popularity_window_counts_only_recent_events():
    cutoff = 100 * DAY
    items = np.array([1, 1, 1, 2, 3, 3, 2])
    times = np.array([10, 11, 12, 98, 99, 100, 97]) * DAY  # item 1 is popular only long ago
    pop = Popularity(window_days=3).fit(items, times, n_items=4, cutoff_ts=cutoff)
    np.testing.assert_array_equal(pop.counts, [0, 2, 2, 0])  # 0-based columns: items 1..4
    assert pop.counts.dtype == np.float32


def test_popularity_window_boundary_is_inclusive():
    cutoff = 100 * DAY
    pop = Popularity(window_days=2).fit(np.array([1, 2]), np.array([98 * DAY, 98 * DAY - 1]), 2, cutoff)
    np.testing.assert_array_equal(pop.counts, [1, 0])


def test_popularity_falls_back_to_all_time_when_window_empty():
    cutoff = 100 * DAY
    items = np.array([1, 1, 3])
    times = np.array([1, 2, 3]) * DAY
    pop = Popularity(window_days=7).fit(items, times, n_items=3, cutoff_ts=cutoff)
    np.testing.assert_array_equal(pop.counts, [2, 0, 1])


def test_popularity_scores_every_user_the_same_and_writable():
    pop = Popularity(window_days=7).fit(np.array([2, 2, 1]), np.array([5, 6, 7]) * DAY, 3, 7 * DAY)
    history = history_matrix([np.array([1]), np.array([2, 3])], 3)
    scores = pop.score(history)
    np.testing.assert_array_equal(scores, [[1, 2, 0], [1, 2, 0]])
    scores[0, 0] = -1  # a copy, not a read-only broadcast view
    assert pop.counts[0] == 1
