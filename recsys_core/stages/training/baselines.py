"""The baselines, fitted on a protocol's data and scored on its case."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from recsys_core.config import Settings
from recsys_core.evaluation.protocols import EvalResult, evaluate
from recsys_core.models.baselines import EASE, Popularity, history_matrix
from recsys_core.stages.training.protocols import ScoredCase

log = logging.getLogger(__name__)


def history_scorer(model: Popularity | EASE, history) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rows: model.score(history[rows])


def evaluate_baselines(settings: Settings, scored: ScoredCase) -> dict[str, EvalResult]:
    """Every configured baseline (``train.baselines``), fitted on the histories the case's users
    show the models, and scored on the same users and targets."""
    data, inputs, case, common = scored.data, scored.inputs, scored.case, scored.context
    n_items = data.prep.n_items
    histories = [np.asarray(s) for s in inputs.items]
    all_items, all_times = np.concatenate(histories), np.concatenate([np.asarray(t) for t in inputs.times])
    history = history_matrix(histories, n_items)
    results: dict[str, EvalResult] = {}

    for name in settings.train.baselines:
        started = time.monotonic()
        if name == "popularity":
            popularity = Popularity(settings.train.trending_window_days).fit(all_items, all_times, n_items, int(all_times.max()))
            results[name] = evaluate(history_scorer(popularity, history), case, **common)
        elif name == "ease":
            ease = EASE(settings.train.ease_lambda).fit(history)
            results[name] = evaluate(history_scorer(ease, history), case, **common)
        elif name == "als":
            from recsys_core.io.spark import spark_session
            from recsys_core.models.als import fit_als

            factors = fit_als(settings, history, spark=spark_session(settings, "als"))
            results[name] = evaluate(factors.score, case, **common)
        log.info("baseline %s: ndcg@10 %.4f (%.1fs)", name, results[name].metrics["ndcg@10"], time.monotonic() - started)
    return results


def trending_windows(settings: Settings, scored: ScoredCase) -> dict[str, EvalResult]:
    """Trending popularity over every popularity window the features carry, on the case's users:
    the reference new users (profile only) are compared with, the best window included."""
    data, inputs, case, common = scored.data, scored.inputs, scored.case, scored.context
    n_items = data.prep.n_items
    histories = [np.asarray(s) for s in inputs.items]
    all_items, all_times = np.concatenate(histories), np.concatenate([np.asarray(t) for t in inputs.times])
    history = history_matrix(histories, n_items)
    cutoff = int(all_times.max())  # as the popularity baseline counts its window
    results = {}
    for days in sorted(settings.features.popularity_windows_days):
        popularity = Popularity(days).fit(all_items, all_times, n_items, cutoff)
        results[f"trending_{days}d"] = evaluate(history_scorer(popularity, history), case, **common)
    return results
