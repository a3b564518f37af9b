"""recsys_core.models.als: the Spark MLlib implicit ALS baseline on a matrix with two clear tastes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_core.models.als import fit_als

pytestmark = pytest.mark.spark


def test_als_recovers_two_tastes_and_leaves_unknown_users_at_zero(spark, settings):
    # Users 0-9 take items 0-4, users 10-19 take items 5-9; user 20 has no history at all.
    rng = np.random.default_rng(0)
    rows, cols = [], []
    for user in range(20):
        taste = range(0, 5) if user < 10 else range(5, 10)
        for item in rng.choice(list(taste), size=4, replace=False):
            rows.append(user)
            cols.append(item)
    history = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(21, 10))
    settings = settings.model_copy(update={"train": settings.train.model_copy(update={"als_rank": 4, "als_iterations": 10})})
    factors = fit_als(settings, history, spark=spark)
    scores = factors.score(np.arange(21))
    assert scores.shape == (21, 10)
    own = np.where(np.arange(20)[:, None] < 10, scores[:20, :5].mean(1, keepdims=True), scores[:20, 5:].mean(1, keepdims=True))
    other = np.where(np.arange(20)[:, None] < 10, scores[:20, 5:].mean(1, keepdims=True), scores[:20, :5].mean(1, keepdims=True))
    assert np.all(own > other + 0.1)
    np.testing.assert_array_equal(scores[20], 0.0)  # no factors: scores 0, as documented
