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
    tolerance_se: float = 0.0,
) -> TrendCalibration:
    """Per group, the offset of ``grid`` whose scores ``base + offset * popularity`` rank ``relevant``
    best (NDCG@k); ties go to the smaller offset. Groups with fewer than ``min_users`` users keep 0.

    With ``tolerance_se`` > 0 the choice is the smallest offset whose NDCG@k falls short of the
    best by no more than that many standard errors of the per-user difference (paired, over the
    group's users): the one-standard-error rule. A window of a hundred users cannot tell nearby
    offsets apart, and the larger ones it happened to favour did not carry over to the next window.

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
        per_user = {}
        for offset in sorted(grid):
            top = M.top_k(scores + offset * popularity[None, :], k, exclude=excluded)
            per_user[float(offset)] = np.asarray(M.per_user_ranking_metrics(top, targets, (k,))[metric_name("ndcg", k)])
        curve = [(offset, float(values.mean())) for offset, values in per_user.items()]
        best = max(curve, key=lambda point: (round(point[1], 9), -point[0]))[0]
        result.curves[group] = curve
        result.offsets[group] = next(o for o in per_user if _within(per_user[best] - per_user[o], tolerance_se))
    return result


def _within(shortfall: np.ndarray, tolerance_se: float) -> bool:
    """Whether a per-user shortfall against the best offset is within ``tolerance_se`` standard errors of 0."""
    standard_error = shortfall.std(ddof=1) / np.sqrt(len(shortfall)) if len(shortfall) > 1 else 0.0
    return bool(round(float(shortfall.mean()), 9) <= tolerance_se * standard_error)
