"""Evaluation protocols: leave-last-out and the temporal as-of backtest.

Both rank the whole catalogue for every evaluated user, with the user's seen
items excluded, and report accuracy, beyond-accuracy and per-segment results.
A protocol takes a scoring function ``rows -> scores[len(rows), n_items]`` so
every model (sequence model, baselines, the current champion) is measured by
the same code on the same users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys_core.evaluation import metrics as M
from recsys_core.evaluation.metric_names import metric_cutoffs, metric_name

ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalCase:
    """What a protocol evaluates: for each user row, the seen items and the relevant ones (0-based)."""

    rows: np.ndarray  # user rows to evaluate
    seen: sp.csr_matrix  # [len(rows), n_items] items to exclude
    relevant: list[np.ndarray]  # per evaluated row
    history_lengths: np.ndarray  # events before the cut, per evaluated row

    @property
    def single_target(self) -> bool:
        return all(len(r) == 1 for r in self.relevant)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    recommended: np.ndarray  # [n_users, max_k] top items, for plots
    # Per evaluated row: each metric (NaN where a user has nothing to evaluate), and each user segment's
    # mask, so that two models scored on the same case can be compared user by user (M.paired_difference).
    per_user: dict[str, np.ndarray] = field(default_factory=dict)
    segments: dict[str, np.ndarray] = field(default_factory=dict)

    def difference_from(self, other: EvalResult, metric: str, segment: str | None = None) -> dict[str, float]:
        """This model against ``other``, scored on the same case, user by user on ``metric`` (over the
        users of ``segment``, or all): the mean difference, its standard error and the users compared."""
        mine, theirs = self.per_user[metric], other.per_user[metric]
        if segment is not None:
            mine, theirs = mine[self.segments[segment]], theirs[self.segments[segment]]
        difference, se, users = M.paired_difference(mine, theirs)
        return {"difference": difference, "difference_se": se, "users": users}


EVAL_BATCH = 512  # users scored at once: [batch, items] scores in memory


def evaluate(
    score: ScoreFn,
    case: EvalCase,
    *,
    ks: tuple[int, ...],
    item_popularity: np.ndarray,
    item_categories: sp.csr_matrix,
    cold_user_max_events: int,
    batch: int = EVAL_BATCH,
) -> EvalResult:
    max_k = max(ks)
    ranks, recommended = [], []
    for start in range(0, len(case.rows), batch):
        rows = case.rows[start : start + batch]
        scores = score(rows)
        seen = case.seen[start : start + batch]
        recommended.append(M.top_k(scores, max_k, exclude=seen))
        if case.single_target:
            targets = np.array([r[0] for r in case.relevant[start : start + batch]], dtype=np.int64)
            ranks.append(M.target_ranks(scores, targets, exclude=seen))
    top = np.concatenate(recommended) if recommended else np.zeros((0, max_k), dtype=np.int64)
    if case.single_target:
        per_user = M.per_user_metrics_from_ranks(np.concatenate(ranks), ks)
    else:
        per_user = M.per_user_ranking_metrics(top, case.relevant, ks)
    results = {k: float(np.nanmean(v)) if len(v) else float("nan") for k, v in per_user.items()}
    results["users"] = float(len(case.rows))
    results.update(_list_metrics(top, ks, item_popularity, item_categories))
    by_history = _history_segments(case, cold_user_max_events)
    segments = M.segment_metrics(per_user, by_history)
    if case.single_target:
        targets = np.array([r[0] for r in case.relevant], dtype=np.int64)
        segments.update(M.split_by_target(per_user, targets, M.head_items(item_popularity)))
    shortest = min(ks)
    for segment, values in segments.items():
        for name in (metric_name("ndcg", shortest), metric_name("hitrate", shortest), "users"):
            results[f"{segment}/{name}"] = float(values.get(name, float("nan")))
    return EvalResult(results, top, dict(per_user), by_history)


def _history_segments(case: EvalCase, cold_user_max_events: int) -> dict[str, np.ndarray]:
    cold = case.history_lengths <= cold_user_max_events
    # New users have only a profile: what the model knows of them is who they are and what is trending.
    return {"cold_users": cold, "warm_users": ~cold, "new_users": case.history_lengths == 0}


def _list_metrics(
    top: np.ndarray, ks: tuple[int, ...], item_popularity: np.ndarray, item_categories: sp.csr_matrix
) -> dict[str, float]:
    """The beyond-accuracy metrics of the top-k lists, at the cut-offs the metric registry names."""
    at = {metric: metric_cutoffs(metric, ks) for metric in ("coverage", "novelty", "diversity", "arp")}
    results = {metric_name("coverage", k): M.catalog_coverage(top, item_popularity.shape[0], k) for k in at["coverage"]}
    results.update({metric_name("novelty", k): M.novelty(top, item_popularity, k) for k in at["novelty"]})
    results.update({metric_name("diversity", k): M.intra_list_diversity(top, item_categories, k) for k in at["diversity"]})
    for k in at["arp"]:  # arp, head_share and gini come from one pass
        results.update({metric_name(name, k): float(value) for name, value in M.popularity_bias(top, item_popularity, k).items()})
    return results
