"""Batch top-K scoring: user vectors x item matrix, seen items masked, top-k per row (pure torch)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def score_top_k(
    user_vectors: torch.Tensor,
    item_matrix: torch.Tensor,
    k: int,
    exclude: sp.csr_matrix | None = None,
    batch_users: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item columns and their scores per user, best first, excluded items never returned.

    Raises when a user has fewer than k items left to recommend.
    """
    n_users, n_items = user_vectors.shape[0], item_matrix.shape[0]
    if k > n_items:
        raise ValueError(f"K={k} is larger than the catalogue ({n_items} items)")
    items_out = np.empty((n_users, k), dtype=np.int64)
    scores_out = np.empty((n_users, k), dtype=np.float32)
    item_t = item_matrix.T.contiguous()
    with torch.no_grad():
        for start in range(0, n_users, batch_users):
            stop = min(start + batch_users, n_users)
            scores = user_vectors[start:stop] @ item_t
            if exclude is not None:
                block = exclude[start:stop].tocoo()
                scores[torch.as_tensor(block.row, dtype=torch.long), torch.as_tensor(block.col, dtype=torch.long)] = float("-inf")
            values, indices = torch.topk(scores, k, dim=1, sorted=True)
            if not torch.isfinite(values).all():
                row = int(torch.nonzero(~torch.isfinite(values).all(dim=1))[0]) + start
                raise ValueError(f"user row {row} has fewer than K={k} recommendable items (or non-finite scores)")
            items_out[start:stop] = indices.numpy()
            scores_out[start:stop] = values.numpy()
    return items_out, scores_out


def seen_matrix(user_ids: list[str], item_ids: list[str], interactions_users, interactions_items) -> sp.csr_matrix:
    """users x catalogue matrix of the items each user interacted with (items outside the catalogue ignored)."""
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = {it: j for j, it in enumerate(item_ids)}
    rows = np.fromiter((user_index.get(u, -1) for u in interactions_users), dtype=np.int64)
    cols = np.fromiter((item_index.get(i, -1) for i in interactions_items), dtype=np.int64)
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])), shape=(len(user_ids), len(item_ids))
    )
    matrix.sum_duplicates()
    return matrix
