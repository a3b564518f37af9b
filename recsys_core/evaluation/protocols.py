"""Evaluation protocols: leave-last-out and the temporal as-of backtest.

Both rank the whole catalogue for every evaluated user, with the user's seen
items excluded, and report accuracy, beyond-accuracy and per-segment results.
A protocol takes a scoring function ``rows -> scores[len(rows), n_items]`` so
every model (sequence model, baselines, the current champion) is measured by
the same code on the same users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from recsys_core.evaluation import metrics as M

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


def evaluate(
    score: ScoreFn,
    case: EvalCase,
    *,
    ks: tuple[int, ...],
    item_popularity: np.ndarray,
    item_categories: sp.csr_matrix,
    cold_user_max_events: int,
    batch: int = 512,
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
    for k in ks:
        results[f"coverage@{k}"] = M.catalog_coverage(top, item_popularity.shape[0], k)
    results["novelty@10"] = M.novelty(top, item_popularity, 10)
    results["diversity@10"] = M.intra_list_diversity(top, item_categories, 10)
    bias = M.popularity_bias(top, item_popularity, 10)
    results.update({f"{name}@10": float(value) for name, value in bias.items()})
    cold = case.history_lengths <= cold_user_max_events
    for segment, values in M.segment_metrics(per_user, {"cold_users": cold, "warm_users": ~cold}).items():
        for name in ("ndcg@10", "hitrate@10", "users"):
            results[f"{segment}/{name}"] = float(values[name]) if name in values else float("nan")
    if case.single_target:
        targets = np.array([r[0] for r in case.relevant], dtype=np.int64)
        head = M.head_items(item_popularity)
        for segment, values in M.split_by_target(per_user, targets, head).items():
            for name in ("ndcg@10", "hitrate@10", "users"):
                results[f"{segment}/{name}"] = float(values[name]) if name in values else float("nan")
    return EvalResult(results, top)
