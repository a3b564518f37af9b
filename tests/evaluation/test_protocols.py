"""recsys_core.evaluation.protocols: segments of the evaluated users."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_core.evaluation.protocols import EvalCase, EvalResult, evaluate


def _evaluated(case: EvalCase, scores: np.ndarray, ks: tuple[int, ...]) -> EvalResult:
    """``scores`` [users, items] evaluated on ``case``: every item equally popular, no categories, cold up to 5 events."""
    n_items = scores.shape[1]
    return evaluate(
        lambda rows: scores[rows],
        case,
        ks=ks,
        item_popularity=np.ones(n_items),
        item_categories=sp.csr_matrix((n_items, 1)),
        cold_user_max_events=5,
    )


def test_new_users_are_the_segment_with_no_history():
    n_items = 6
    case = EvalCase(
        rows=np.arange(4),
        seen=sp.csr_matrix((4, n_items)),
        relevant=[np.array([0]), np.array([1]), np.array([0]), np.array([5])],
        history_lengths=np.array([0, 0, 3, 40]),
    )
    scores = np.tile(np.arange(n_items, 0, -1, dtype=np.float32), (4, 1))  # item 0 first for everybody
    evaluated = _evaluated(case, scores, ks=(1, 5))
    result = evaluated.metrics
    assert result["new_users/users"] == 2 and result["new_users/hitrate@1"] == 0.5
    assert result["cold_users/users"] == 3 and result["warm_users/users"] == 1
    # Per user, for comparisons user by user: the first two are new, and only user 0's item comes first.
    assert evaluated.segments["new_users"].tolist() == [True, True, False, False]
    assert evaluated.per_user["hitrate@1"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_two_models_on_the_same_case_compare_user_by_user_within_a_segment():
    n_items = 6
    case = EvalCase(
        rows=np.arange(4),
        seen=sp.csr_matrix((4, n_items)),
        relevant=[np.array([0]), np.array([1]), np.array([1]), np.array([5])],
        history_lengths=np.array([0, 0, 3, 40]),
    )
    item_0_first = np.tile(np.arange(n_items, 0, -1, dtype=np.float32), (4, 1))
    item_1_first = item_0_first.copy()
    item_1_first[:, 1] = n_items + 1
    ones, zeros = _evaluated(case, item_1_first, ks=(1,)), _evaluated(case, item_0_first, ks=(1,))
    # hitrate@1 per user: item 1 first hits users 1 and 2, item 0 first hits user 0.
    everyone = ones.difference_from(zeros, "hitrate@1")
    assert everyone["users"] == 4 and everyone["difference"] == 0.25
    new = ones.difference_from(zeros, "hitrate@1", segment="new_users")
    assert new == {"difference": 0.0, "difference_se": 1.0, "users": 2}
