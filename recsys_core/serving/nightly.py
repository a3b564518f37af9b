"""The nightly job's per-user work, one function for both engines: a batch of users (their
interactions and profiles) → their published rows, scores and reasons (pure: torch, numpy, Arrow).

The local engine calls ``score_and_explain`` once over every user; the Spark engine calls it in
each task over one group of users (``serving.spark_score``), with the champion loaded
once per Python worker. ``NightCatalogue`` is what every batch is scored against: built once (on
the driver) from the run date's item features, the same for every user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import torch

from recsys_core.config import ServeSettings
from recsys_core.models.attribution import explain
from recsys_core.models.bundle import ModelBundle
from recsys_core.models.scorer import Scorer
from recsys_core.serving.output import build_table
from recsys_core.serving.rerank import category_matrix
from recsys_core.serving.score import recommend_top_k, score_top_k, seen_matrix
from recsys_core.windows import popularity_column

# Columns of the interactions a batch needs: the history's order is (event_ts, source_file, line_no).
INTERACTION_COLUMNS = ["user_id", "item_id", "event_ts", "source_file", "line_no"]
PROFILE_COLUMNS = ["user_id", "age", "gender", "occupation"]


@dataclass(frozen=True)
class NightCatalogue:
    """The recommendable items (sorted by id) and what scoring over them needs, as plain arrays.

    ``item_vectors`` [m, d] and ``trend`` [m, w] (None: no trend prior) are the champion's item side
    of the score (``ModelBundle.item_vectors``, ``catalogue_trend``), ``item_affine`` its served
    item adjustment as (scale [m], offset [m]) (None: none); ``trending`` [m] ranks the
    fallback list; ``categories`` [m, c] (None: no MMR) the diversity re-rank; ``titles`` names
    reason items (any item of the features, recommendable or not); ``now`` is the prediction time
    (epoch seconds: the end of the run date).
    """

    item_ids: list[str]
    item_vectors: np.ndarray
    trend: np.ndarray | None
    trending: np.ndarray
    categories: np.ndarray | None
    titles: dict[str, str]
    now: int
    model_name: str
    model_version: str
    generated_at: datetime
    item_affine: tuple[np.ndarray, np.ndarray] | None = None


def night_catalogue(
    bundle: ModelBundle,
    catalogue: pa.Table,
    items: pa.Table,
    serve: ServeSettings,
    trending_window_days: int,
    *,
    now: int,
    model_name: str,
    model_version: str,
    generated_at: datetime,
) -> NightCatalogue:
    """``catalogue``: the recommendable rows of ``items`` (the run date's item features), sorted by id."""
    trending = catalogue[popularity_column(trending_window_days)].to_numpy().astype(np.float32)
    trending = trending + catalogue["pop_all"].to_numpy().astype(np.float32) * 1e-6  # all-time breaks ties
    trend = bundle.catalogue_trend(catalogue)
    item_ids = catalogue["item_id"].to_pylist()
    return NightCatalogue(
        item_ids=item_ids,
        item_vectors=bundle.item_vectors(catalogue).numpy(),
        trend=None if trend is None else trend.numpy(),
        trending=trending,
        categories=category_matrix(catalogue["genres"].to_pylist()) if serve.mmr_lambda is not None else None,
        titles=dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist())),
        now=now,
        model_name=model_name,
        model_version=model_version,
        generated_at=generated_at,
        item_affine=bundle.item_affine(item_ids),
    )


@dataclass
class BatchStats:
    """What a batch adds to the night's report (sums over batches)."""

    users: int = 0
    with_history: int = 0
    profile_only: int = 0
    fallback: int = 0
    rows_with_reason_item: int = 0
    scoring_seconds: float = 0.0
    reasons_seconds: float = 0.0


def score_and_explain(
    bundle: ModelBundle,
    night: NightCatalogue,
    serve: ServeSettings,
    interactions: pa.Table,
    profiles: pa.Table,
) -> tuple[pa.Table, BatchStats, np.ndarray]:
    """The published rows of the users of ``profiles`` (one per user), scored from their
    ``interactions`` (every event of theirs up to the run date; other users' are ignored).

    Users with a history or a profile are ranked by the model (``recommend_top_k``: seen items
    masked, ``serve.precision``, optional MMR), each row with its reason (``explain``, reusing the
    scoring pass's hidden states); the others get the trending items. Returns the rows (contract
    schema), the batch's figures and each user's has-history flag (profile order).
    """
    k = serve.top_k
    user_ids, sequences, inputs = bundle.user_inputs(interactions, profiles, now=night.now)
    seen = seen_matrix(user_ids, night.item_ids, interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist())
    has_history = np.asarray(seen.sum(axis=1)).ravel() > 0
    has_profile = (inputs.user_feats > 0).any(dim=1).numpy()
    use_model = has_history | has_profile
    trend = None if night.trend is None else torch.from_numpy(night.trend)
    affine = (
        None if night.item_affine is None else (torch.from_numpy(night.item_affine[0]), torch.from_numpy(night.item_affine[1]))
    )
    scorer = Scorer(
        bundle.model, inputs, torch.from_numpy(night.item_vectors), trend, batch=serve.score_batch_users, item_affine=affine
    )

    started = time.monotonic()
    top_items = np.empty((len(user_ids), k), dtype=np.int64)
    top_scores = np.empty((len(user_ids), k), dtype=np.float32)
    model_rows = np.flatnonzero(use_model)
    if len(model_rows):
        vectors = scorer.user_vectors(model_rows)
        top_items[model_rows], top_scores[model_rows] = recommend_top_k(
            vectors,
            scorer.item_matrix(),
            k,
            exclude=seen[model_rows],
            batch_users=serve.score_batch_users,
            mmr_lambda=serve.mmr_lambda,
            categories=night.categories,
            pool_factor=serve.mmr_pool_factor,
            precision=serve.precision,
        )
    fallback_rows = np.flatnonzero(~use_model)
    if len(fallback_rows):
        top_items[fallback_rows], top_scores[fallback_rows] = score_top_k(
            torch.ones(len(fallback_rows), 1), torch.as_tensor(night.trending).unsqueeze(1), k, exclude=seen[fallback_rows]
        )
    scored = time.monotonic()

    reason_index = np.zeros_like(top_items)
    if len(model_rows):
        reason_index[model_rows], _ = explain(
            scorer,
            bundle.config,
            model_rows,
            [sequences.items[i] for i in model_rows],
            [sequences.times[i] for i in model_rows],
            top_items[model_rows],
            n_last=serve.reason_history,
            now=night.now,
            batch_users=serve.score_batch_users,
            hidden=vectors[:, : bundle.model.state_width],  # the scoring pass's states: not encoded twice
        )
    table = build_table(
        user_ids,
        night.item_ids,
        top_items,
        top_scores,
        np.where(use_model, "model", "fallback"),
        night.model_name,
        night.model_version,
        night.generated_at,
        reason_item_ids=reason_item_ids(reason_index, bundle.prep.item_ids),
        titles=night.titles,
    )
    stats = BatchStats(
        users=len(user_ids),
        with_history=int(has_history.sum()),
        profile_only=int((use_model & ~has_history).sum()),
        fallback=int((~use_model).sum()),
        rows_with_reason_item=int((reason_index > 0).sum()),
        scoring_seconds=scored - started,
        reasons_seconds=time.monotonic() - scored,
    )
    return table, stats, has_history


def reason_item_ids(reason_index: np.ndarray, model_item_ids: list[str]) -> np.ndarray:
    """[n, K] item ids (None where 0: no reason) of model item indices (1-based, ``prep.item_ids``)."""
    names = np.asarray([None, *model_item_ids], dtype=object)
    return names[reason_index]
