"""The accuracy/coverage frontier of the served lists, and the choice of the served point on it.

Two knobs trade accuracy for catalogue coverage and novelty:

- the trend calibration (``evaluation.calibration``): its offsets pull new and returning users'
  lists towards what is popular now; ``trend_scale`` multiplies the fitted offsets (0: the model
  as trained, 1: as calibrated);
- MMR re-ranking by genre (``serve.mmr_lambda``, ``serving.rerank``): None keeps the score's order;
- the item adjustment (``models.adjustment``): ``centering`` removes the score every user gives an
  item, ``scaling`` ranks by how far a user's score stands out; its statistics are the window's own.

Every combination of the grids is scored on one window (NDCG@k and coverage@k of the top-k lists).
The served point is the most accurate one whose coverage reaches ``min_coverage`` (None: the most
accurate of all). The choice is made on the calibration window, and the backtest reports the
chosen point, so no figure is measured on the window it was chosen on. Pure: scores in, points out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from recsys_core.evaluation import metrics as M
from recsys_core.evaluation.calibration import recency_groups
from recsys_core.evaluation.metric_names import metric_name

Rerank = Callable[[np.ndarray, np.ndarray, np.ndarray, int, float], tuple[np.ndarray, np.ndarray]]
Adjust = Callable[[np.ndarray, float, float], np.ndarray]  # scores, centering, scaling → adjusted scores


@dataclass(frozen=True)
class OperatingPoint:
    trend_scale: float  # multiple of the fitted calibration offsets
    mmr_lambda: float | None  # None: no re-ranking
    ndcg: float
    coverage: float
    centering: float = 0.0  # the item adjustment's knobs (models.adjustment); 0, 0: none
    scaling: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def knobs(self) -> Knobs:
        return self.trend_scale, self.mmr_lambda, self.centering, self.scaling


# (trend scale, MMR lambda, item centering, item scaling)
Knobs = tuple[float, float | None, float, float]


def sweep(
    base_scores: np.ndarray,
    popularity: np.ndarray,
    query_buckets: np.ndarray,
    seen: sp.csr_matrix,
    relevant: list[np.ndarray],
    *,
    offsets: dict[str, float],
    returning_bucket: int,
    trend_scales: tuple[float, ...],
    mmr_lambdas: tuple[float | None, ...],
    centerings: tuple[float, ...] = (0.0,),
    scalings: tuple[float, ...] = (0.0,),
    categories: np.ndarray,
    pool_factor: int,
    rerank: Rerank,
    adjust: Adjust,
    k: int = 10,
) -> list[OperatingPoint]:
    """NDCG@k and coverage@k of every (trend scale, MMR lambda, item centering, item scaling) on one window.

    ``base_scores`` [n, items]: the model's scores without the calibration offsets; ``popularity``
    [items] the feature the offsets multiply; ``query_buckets`` [n] each user's recency bucket;
    ``categories`` [items, C] multi-hot genres for MMR, ``rerank`` the serving's MMR
    (``serving.rerank.mmr_rerank``: pool items, pool scores, categories, k, lambda → items, objectives);
    ``adjust`` the item adjustment (``models.adjustment.adjust``: statistics over the window's own users).
    """
    groups = recency_groups(query_buckets, returning_bucket)
    per_user_offset = np.zeros(len(base_scores), dtype=np.float32)
    for group, mask in groups.items():
        per_user_offset[mask] = offsets.get(group, 0.0)
    n_items = base_scores.shape[1]
    pool = min(max(pool_factor, 1) * k, n_items)
    unseen = seen.toarray() == 0
    points = []
    for scale in trend_scales:
        calibrated = base_scores + (scale * per_user_offset)[:, None] * popularity[None, :]
        for centering in centerings:
            for scaling in scalings:
                scores = adjust(calibrated, centering, scaling)
                masked = np.where(unseen, scores, -np.inf)
                pool_items = M.top_k(scores, pool, exclude=seen)
                pool_scores = np.take_along_axis(masked, pool_items, axis=1)
                for lam in mmr_lambdas:
                    top = pool_items[:, :k] if lam is None else rerank(pool_items, pool_scores, categories, k, lam)[0]
                    ndcg = float(np.mean(M.per_user_ranking_metrics(top, relevant, (k,))[metric_name("ndcg", k)]))
                    coverage = M.catalog_coverage(top, n_items, k)
                    points.append(OperatingPoint(float(scale), lam, ndcg, coverage, float(centering), float(scaling)))
    return points


def choose(points: list[OperatingPoint], min_coverage: float | None) -> OperatingPoint:
    """The most accurate point whose coverage is at least ``min_coverage`` (None: of all points);
    when none reaches it, the point of highest coverage. Ties go to the earlier point of the grid."""
    if not points:
        raise ValueError("no operating point to choose from")
    eligible = [p for p in points if min_coverage is None or p.coverage >= min_coverage]
    if not eligible:
        return max(points, key=lambda p: p.coverage)
    return max(eligible, key=lambda p: round(p.ndcg, 9))


def pareto(points: list[OperatingPoint]) -> list[OperatingPoint]:
    """The points no other point beats on both accuracy and coverage (at least as good on both,
    better on one), by increasing coverage: the frontier proper."""
    front = [
        p
        for p in points
        if not any(q.ndcg >= p.ndcg and q.coverage >= p.coverage and (q.ndcg > p.ndcg or q.coverage > p.coverage) for q in points)
    ]
    return sorted(front, key=lambda p: (p.coverage, -p.ndcg))


def point_at(points: list[OperatingPoint], knobs: Knobs) -> OperatingPoint:
    """The point of ``points`` with these knobs."""
    return next(p for p in points if p.knobs == knobs)
