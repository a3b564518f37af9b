"""recsys_core.evaluation.frontier: the accuracy/coverage sweep and the choice of the served point."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_core.evaluation import metrics as M
from recsys_core.evaluation.frontier import OperatingPoint, choose, pareto, point_at, sweep
from recsys_core.models.adjustment import adjust
from recsys_core.serving.rerank import mmr_rerank

N_USERS, N_ITEMS = 40, 30


def window():
    """Users whose targets are niche items the model ranks well; a popularity boost pushes the same
    few popular items to everybody (accurate for nobody, low coverage)."""
    rng = np.random.default_rng(0)
    relevant = [np.array([10 + u % 20]) for u in range(N_USERS)]
    scores = rng.normal(size=(N_USERS, N_ITEMS)).astype(np.float32)
    for u, r in enumerate(relevant):
        scores[u, r] += 3.0
    popularity = np.zeros(N_ITEMS, dtype=np.float32)
    popularity[:5] = np.log1p([500, 400, 300, 200, 100])
    categories = np.zeros((N_ITEMS, 3), dtype=bool)
    categories[np.arange(N_ITEMS), np.arange(N_ITEMS) % 3] = True
    return scores, popularity, np.zeros(N_USERS, dtype=np.int64), sp.csr_matrix((N_USERS, N_ITEMS)), relevant, categories


def run_sweep(scales=(0.0, 1.0), lambdas=(None, 0.5), query=None, centerings=(0.0,), scalings=(0.0,), scores=None):
    base, popularity, new_users, seen, relevant, categories = window()
    return sweep(
        base if scores is None else scores,
        popularity,
        new_users if query is None else query,
        seen,
        relevant,
        offsets={"new": 5.0, "returning": 5.0},
        returning_bucket=10,
        trend_scales=scales,
        mmr_lambdas=lambdas,
        centerings=centerings,
        scalings=scalings,
        categories=categories,
        pool_factor=3,
        rerank=mmr_rerank,
        adjust=adjust,
        k=3,
    )


def test_sweep_scores_every_combination_and_the_popularity_boost_costs_coverage():
    points = run_sweep()
    assert [p.knobs for p in points] == [(0.0, None, 0.0, 0.0), (0.0, 0.5, 0.0, 0.0), (1.0, None, 0.0, 0.0), (1.0, 0.5, 0.0, 0.0)]
    plain, boosted = point_at(points, (0.0, None, 0.0, 0.0)), point_at(points, (1.0, None, 0.0, 0.0))
    assert boosted.coverage < plain.coverage and boosted.ndcg < plain.ndcg
    assert all(0.0 <= p.coverage <= 1.0 and 0.0 <= p.ndcg <= 1.0 for p in points)


def test_each_point_is_the_metrics_of_the_lists_it_stands_for():
    scores, popularity, _, seen, relevant, _ = window()
    plain, boosted, mmr_off = (
        point_at(run_sweep(lambdas=(None, 1.0)), (*knobs, 0.0, 0.0)) for knobs in ((0.0, None), (1.0, None), (1.0, 1.0))
    )
    for point, shifted in ((plain, scores), (boosted, scores + 5.0 * popularity[None, :])):
        top = M.top_k(shifted, 3, exclude=seen)
        assert point.ndcg == np.mean(M.per_user_ranking_metrics(top, relevant, (3,))["ndcg@3"])
        assert point.coverage == M.catalog_coverage(top, N_ITEMS, 3)
    # MMR at lambda 1 is the score's order: the same lists as no re-ranking.
    assert (mmr_off.ndcg, mmr_off.coverage) == (boosted.ndcg, boosted.coverage)


def test_only_new_and_returning_users_get_the_offsets():
    steady = np.full(N_USERS, 5, dtype=np.int64)  # came back within the returning threshold: neither new nor returning
    (points,) = run_sweep(scales=(1.0,), lambdas=(None,), query=steady)
    plain = point_at(run_sweep(scales=(0.0,), lambdas=(None,)), (0.0, None, 0.0, 0.0))
    assert (points.ndcg, points.coverage) == (plain.ndcg, plain.coverage)


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both():
    points = [
        OperatingPoint(1.0, None, ndcg=0.30, coverage=0.10),
        OperatingPoint(0.5, None, ndcg=0.25, coverage=0.35),
        OperatingPoint(0.5, 0.8, ndcg=0.24, coverage=0.30),  # beaten on both by the point above
        OperatingPoint(0.0, 0.6, ndcg=0.20, coverage=0.60),
        OperatingPoint(0.0, 0.4, ndcg=0.20, coverage=0.50),  # as accurate as the point above, narrower
    ]
    assert pareto(points) == [points[0], points[1], points[3]]  # by increasing coverage
    assert choose(points, None) in pareto(points) and choose(points, 0.4) in pareto(points)
    assert pareto([points[2]]) == [points[2]]


def test_choose_the_most_accurate_point_that_reaches_the_minimum_coverage():
    points = [
        OperatingPoint(1.0, None, ndcg=0.30, coverage=0.10),
        OperatingPoint(0.5, None, ndcg=0.25, coverage=0.35),
        OperatingPoint(0.0, 0.6, ndcg=0.20, coverage=0.60),
    ]
    assert choose(points, None) == points[0]
    assert choose(points, 0.3) == points[1]
    assert choose(points, 0.5) == points[2]
    # No point reaches it: the widest one, rather than none.
    assert choose(points, 0.9) == points[2]


def test_choose_on_a_sweep_reaches_the_minimum_coverage_at_the_least_cost():
    points = run_sweep(scales=(0.0, 0.5, 1.0), lambdas=(None, 0.5))
    best = choose(points, None)
    assert best.ndcg == max(p.ndcg for p in points)
    floor = (best.coverage + max(p.coverage for p in points)) / 2
    wide = choose(points, floor)
    assert wide.coverage >= floor and wide.ndcg == max(p.ndcg for p in points if p.coverage >= floor)


def shared_appeal_scores():
    """The window's scores plus an appeal every user gives the first 5 items, larger than any
    user's own signal: the lists are the same 5 items for everybody."""
    scores = window()[0].copy()
    scores[:, :5] += 6.0
    return scores


def test_item_centering_takes_out_the_appeal_every_user_shares_and_widens_coverage():
    scores = shared_appeal_scores()
    points = run_sweep(scales=(0.0,), lambdas=(None,), centerings=(0.0, 1.0), scalings=(0.0, 0.5), scores=scores)
    assert [p.knobs[2:] for p in points] == [(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)]
    raw, centred = point_at(points, (0.0, None, 0.0, 0.0)), point_at(points, (0.0, None, 1.0, 0.0))
    assert raw.coverage <= 5 / N_ITEMS < centred.coverage
    assert centred.ndcg > raw.ndcg
    # Each adjusted point is the metrics of the lists of the adjusted scores.
    _, _, _, seen, relevant, _ = window()
    for point in points:
        top = M.top_k(adjust(scores, point.centering, point.scaling), 3, exclude=seen)
        assert point.ndcg == np.mean(M.per_user_ranking_metrics(top, relevant, (3,))["ndcg@3"])
        assert point.coverage == M.catalog_coverage(top, N_ITEMS, 3)
