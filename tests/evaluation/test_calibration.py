"""recsys_core.evaluation.calibration: fitting the trend prior's out-of-sample offsets by hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_core.evaluation.calibration import TrendCalibration, fit_trend_offsets, recency_groups

GRID = (0.0, 1.0, 10.0)


def nothing_seen(n_users: int, n_items: int = 6) -> sp.csr_matrix:
    return sp.csr_matrix((n_users, n_items), dtype=np.float32)


def test_recency_groups_split_new_returning_and_mid_session():
    groups = recency_groups(np.array([0, 1, 10, 11, 23]), returning_bucket=11)
    np.testing.assert_array_equal(groups["new"], [True, False, False, False, False])
    np.testing.assert_array_equal(groups["returning"], [False, False, False, True, True])


def test_offsets_follow_what_each_group_takes_up():
    # Item 5 is trending. New users (bucket 0) take it up; returning users (bucket 12) take item 0,
    # which the model already ranks first; mid-session users (bucket 1) are never calibrated.
    n = 30
    buckets = np.array([0] * 10 + [12] * 10 + [1] * 10)
    base = np.tile(np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.0]), (n, 1))
    popularity = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    relevant = [np.array([5])] * 10 + [np.array([0])] * 10 + [np.array([5])] * 10
    fitted = fit_trend_offsets(
        base, popularity, buckets, nothing_seen(n), relevant, grid=GRID, returning_bucket=11, k=3, min_users=5
    )
    # New users: offset 10 lifts item 5 to the top (offset 1 leaves it fourth, out of the top 3).
    assert fitted.offsets == {"new": 10.0, "returning": 0.0}  # returning: every offset ties, the smallest wins
    assert fitted.users == {"new": 10, "returning": 10}
    new_curve = dict(fitted.curves["new"])
    assert new_curve[0.0] == 0.0 and new_curve[1.0] == 0.0 and new_curve[10.0] == pytest.approx(1.0)
    returning_curve = dict(fitted.curves["returning"])
    assert returning_curve[0.0] == pytest.approx(1.0) and returning_curve[1.0] == pytest.approx(1.0)
    assert returning_curve[10.0] == pytest.approx(1 / np.log2(3))  # item 0 pushed to second place


def test_seen_items_are_excluded_before_ranking():
    base = np.array([[5.0, 4.0, 0.0]])
    popularity = np.array([1.0, 0.0, 0.0])
    seen = sp.csr_matrix(np.array([[1.0, 0.0, 0.0]], dtype=np.float32))  # the trending item was seen
    fitted = fit_trend_offsets(
        base, popularity, np.array([0]), seen, [np.array([1])], grid=GRID, returning_bucket=11, k=1, min_users=1
    )
    assert fitted.offsets["new"] == 0.0
    assert all(value == pytest.approx(1.0) for _, value in fitted.curves["new"])


def test_small_groups_keep_zero_and_the_grid_needs_zero():
    base, popularity = np.zeros((3, 4)), np.arange(4.0)
    fitted = fit_trend_offsets(
        base,
        popularity,
        np.array([0, 0, 12]),
        nothing_seen(3, 4),
        [np.array([3])] * 3,
        grid=GRID,
        returning_bucket=11,
        min_users=5,
    )
    assert fitted.offsets == TrendCalibration.none().offsets
    assert fitted.curves == {} and fitted.users == {"new": 2, "returning": 1}
    with pytest.raises(ValueError, match="must contain 0"):
        fit_trend_offsets(
            base, popularity, np.array([0, 0, 12]), nothing_seen(3, 4), [np.array([3])] * 3, grid=(1.0, 2.0), returning_bucket=11
        )


def test_the_one_standard_error_rule_keeps_the_smaller_offset_the_window_cannot_tell_apart():
    # 40 new users; the trending item 5 is the target of some. Offset 10 ranks item 5 first for
    # everybody: it gains on the 12 users who take it up and loses on the 28 who take item 0.
    n = 40
    base = np.tile(np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.0]), (n, 1))
    popularity = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    relevant = [np.array([5])] * 12 + [np.array([0])] * 28
    fit = lambda tolerance: fit_trend_offsets(  # noqa: E731
        base,
        popularity,
        np.zeros(n, dtype=np.int64),
        nothing_seen(n),
        relevant,
        grid=GRID,
        returning_bucket=11,
        k=3,
        min_users=5,
        tolerance_se=tolerance,
    )
    best = fit(0.0)
    curve = dict(best.curves["new"])
    assert best.offsets["new"] == 10.0 and curve[10.0] > curve[0.0]  # the best, by a little
    shortfall = np.array([1.0] * 12 + [1 / np.log2(3) - 1] * 28)  # per user: offset 10 minus offset 0
    assert shortfall.mean() < shortfall.std(ddof=1) / np.sqrt(n)  # within one standard error
    one_se = fit(1.0)
    assert one_se.offsets["new"] == 0.0 and one_se.curves == best.curves  # same curves, the smaller choice
