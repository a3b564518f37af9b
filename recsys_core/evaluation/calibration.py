"""Out-of-sample calibration of the trend prior.

In training, a user's next items are explained by their own history and the
items' embeddings, so the learned weight of recent popularity stays small. Out
of sample (what the nightly list meets in the days after it is made) recent
popularity carries much more: users arriving or coming back follow what is
being taken up now. This fits, on a temporal window the model never trained
on, how much weight to add to the trend prior for those two groups of users:

- ``new``: no event yet (recency bucket 0),
- ``returning``: last event at least a day before the prediction.

Users predicted right after an event (mid-session, the leave-last-out case)
keep the learned weight. Pure: scores in, offsets and curves out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys_core.evaluation import metrics as M
from recsys_core.evaluation.metric_names import metric_name

GROUPS = ("new", "returning")


@dataclass
class TrendCalibration:
    offsets: dict[str, float]  # per group: weight added to log1p(recent popularity)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # per group: (offset, ndcg@k)
    users: dict[str, int] = field(default_factory=dict)

    @classmethod
    def none(cls) -> TrendCalibration:
        return cls(dict.fromkeys(GROUPS, 0.0))

    def to_dict(self) -> dict:
        return {"offsets": self.offsets, "curves": self.curves, "users": self.users}


def recency_groups(query_buckets: np.ndarray, returning_bucket: int) -> dict[str, np.ndarray]:
    """Boolean masks of the calibrated groups, from each user's recency bucket at prediction time."""
    return {"new": query_buckets == 0, "returning": query_buckets >= returning_bucket}


def fit_trend_offsets(
    base_scores: np.ndarray,
    popularity: np.ndarray,
    query_buckets: np.ndarray,
    seen: sp.csr_matrix,
    relevant: list[np.ndarray],
    *,
    grid: tuple[float, ...],
    returning_bucket: int,
    k: int = 10,
    min_users: int = 20,
) -> TrendCalibration:
    """Per group, the offset of ``grid`` whose scores ``base + offset * popularity`` rank ``relevant``
    best (NDCG@k); ties go to the smaller offset. Groups with fewer than ``min_users`` users keep 0.

    ``base_scores`` [n, items] are the model's scores; ``popularity`` [items] the trend feature the
    offset multiplies (log1p of recent events); ``query_buckets`` [n] the users' recency buckets.
    """
    if 0.0 not in grid:
        raise ValueError("the grid must contain 0 (no change)")
    result = TrendCalibration.none()
    for group, mask in recency_groups(query_buckets, returning_bucket).items():
        rows = np.flatnonzero(mask)
        result.users[group] = len(rows)
        if len(rows) < min_users:
            continue
        targets, scores, excluded = [relevant[r] for r in rows], base_scores[rows], seen[rows]
        curve = []
        for offset in sorted(grid):
            top = M.top_k(scores + offset * popularity[None, :], k, exclude=excluded)
            curve.append((float(offset), float(np.mean(M.per_user_ranking_metrics(top, targets, (k,))[metric_name("ndcg", k)]))))
        best = max(curve, key=lambda point: (round(point[1], 9), -point[0]))
        result.curves[group] = curve
        result.offsets[group] = best[0]
    return result
