"""The item-item term of the sequence model's score: EASE (Steck, 2019) in low rank.

EASE scores a user with history row x as x B, B its item-item weights. Added to the sequence
model's score, it brings back what a co-occurrence model knows and attention over the last
``max_len`` events misses. To keep the one matrix-product form of the score (``models.scorer``),
B is cut to rank r along the directions its scores use most: with V the top r eigenvectors of
Bᵀ G B (G = XᵀX, so V holds the top right singular vectors of the training score matrix X B),

    x B ≈ x (B V) Vᵀ = Σ_{j in history} P_j · Q_i,   P = B V (history side), Q = V (item side),

so a user's state gains the r columns Σ_j P_j and an item's output vector the r columns Q_i.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_core.models.baselines import ease_weights, gram_matrix


def item_item_factors(history: sp.csr_matrix, l2: float, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, Q), each [n_items + 1, rank] float32 with row 0 (the padding item) zero, fitted on a users x
    items history matrix (0-based item columns): ``x P Qᵀ`` is EASE's ``x B`` cut to ``rank``."""
    gram = gram_matrix(history)
    weights = ease_weights(gram, l2)
    _, vectors = np.linalg.eigh(weights.T @ gram @ weights)  # ascending eigenvalues
    top = vectors[:, ::-1][:, :rank]
    padding = np.zeros((1, top.shape[1]))
    return (np.vstack([padding, weights @ top]).astype(np.float32), np.vstack([padding, top]).astype(np.float32))
