"""recsys_core.evaluation.sampling: seeded user samples for large evaluations."""

from __future__ import annotations

import numpy as np

from recsys_core.evaluation.sampling import sample_rows


def test_no_bound_or_a_large_one_keeps_every_row():
    rows = np.array([5, 3, 9])
    assert sample_rows(rows, None, 1) is rows
    assert sample_rows(rows, 3, 1) is rows


def test_a_bound_keeps_that_many_distinct_rows_in_order_and_the_same_for_the_same_seed():
    rows = np.arange(100, 1100)
    picked = sample_rows(rows, 50, 7)
    assert len(picked) == 50 and len(np.unique(picked)) == 50
    assert np.all(np.diff(picked) > 0) and np.isin(picked, rows).all()
    assert np.array_equal(picked, sample_rows(rows, 50, 7))
    assert not np.array_equal(picked, sample_rows(rows, 50, 8))
