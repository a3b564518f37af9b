"""Diversity re-ranking: Maximal Marginal Relevance (MMR) by item category (pure numpy).

Given each user's candidate pool (the model's top ``pool_factor * K``, best
first), MMR picks K items greedily; at each step it takes the candidate that maximises

    objective(i) = lambda * relevance(i) - (1 - lambda) * max_{j already picked} similarity(i, j)

- relevance: the model score min-max scaled to [0, 1] within the user's pool
  (1 for the best candidate), so ``lambda`` means the same for every model;
- similarity: Jaccard overlap of the two items' category (genre) sets, 0 when
  either has none;
- ties go to the candidate the model ranks higher.

``lambda = 1`` keeps the model's order; smaller values trade relevance for
category diversity.

Published score: the objective at the step the item was picked. It is
non-increasing with rank: picking adds an item to the selected set, so every
remaining candidate's max-similarity can only grow and its objective only
shrink, and the next pick is the best of those shrunken objectives. The
property holds exactly in floating point too (a - b is monotone in b).
"""

from __future__ import annotations

import numpy as np

_CHUNK_USERS = 1024


def category_matrix(genres: list[list[str] | None], vocabulary: list[str] | None = None) -> np.ndarray:
    """[n_items, n_categories] bool multi-hot of each item's category list (None = no category)."""
    vocabulary = vocabulary if vocabulary is not None else sorted({g for gs in genres for g in (gs or [])})
    index = {g: j for j, g in enumerate(vocabulary)}
    matrix = np.zeros((len(genres), len(vocabulary)), dtype=bool)
    for row, gs in enumerate(genres):
        for g in gs or []:
            if g in index:
                matrix[row, index[g]] = True
    return matrix


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Jaccard similarity of multi-hot rows: a [..., m, c], b [..., n, c] → [..., m, n]."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    inter = a @ np.swapaxes(b, -1, -2)
    union = a.sum(-1)[..., :, None] + b.sum(-1)[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mmr_rerank(
    pool_items: np.ndarray,
    pool_scores: np.ndarray,
    categories: np.ndarray,
    k: int,
    mmr_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick k of each user's pool by MMR; returns (items [n, k] int64, objectives [n, k] float32).

    pool_items: [n, P] item columns, best first; -1 marks an empty slot (score -inf).
    pool_scores: [n, P] model scores. categories: [n_items, C] multi-hot.
    Every user needs at least k valid candidates.
    """
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
    n, pool = pool_items.shape
    if k > pool:
        raise ValueError(f"K={k} is larger than the candidate pool ({pool})")
    items_out = np.empty((n, k), dtype=np.int64)
    scores_out = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, _CHUNK_USERS):
        stop = min(start + _CHUNK_USERS, n)
        items_out[start:stop], scores_out[start:stop] = _mmr_chunk(
            pool_items[start:stop], pool_scores[start:stop], categories, k, float(mmr_lambda)
        )
    return items_out, scores_out


def _mmr_chunk(items: np.ndarray, scores: np.ndarray, categories: np.ndarray, k: int, lam: float):
    n, pool = items.shape
    valid = (items >= 0) & np.isfinite(scores)
    if (valid.sum(axis=1) < k).any():
        row = int(np.flatnonzero(valid.sum(axis=1) < k)[0])
        raise ValueError(f"user row {row} has fewer than K={k} candidates to re-rank")
    s = np.where(valid, scores, np.nan).astype(np.float64)
    top = np.nanmax(s, axis=1, keepdims=True)
    bottom = np.nanmin(s, axis=1, keepdims=True)
    spread = top - bottom
    relevance = np.where(spread > 0, (s - bottom) / np.where(spread > 0, spread, 1.0), 1.0)
    relevance = np.where(valid, relevance, 0.0)
    cats = categories[np.where(valid, items, 0)]
    similarity = jaccard(cats, cats).astype(np.float64)  # [n, P, P]
    base = lam * relevance
    penalty = np.zeros((n, pool), dtype=np.float64)
    available = valid.copy()
    rows = np.arange(n)
    picked_items = np.empty((n, k), dtype=np.int64)
    picked_scores = np.empty((n, k), dtype=np.float64)
    for step in range(k):
        objective = np.where(available, base - (1.0 - lam) * penalty, -np.inf)
        pick = np.argmax(objective, axis=1)  # first maximum: the model's better candidate
        picked_items[:, step] = items[rows, pick]
        picked_scores[:, step] = objective[rows, pick]
        available[rows, pick] = False
        np.maximum(penalty, similarity[rows, pick, :], out=penalty)
    return picked_items, picked_scores.astype(np.float32)
