"""The item-item term of the sequence model's score: EASE (Steck, 2019) in low rank.

EASE scores a user with history row x as x B, B its item-item weights. Added to the sequence
model's score, it brings back what a co-occurrence model knows and attention over the last
``max_len`` events misses. To keep the one matrix-product form of the score (``models.scorer``),
B is cut to rank r along the directions its scores use most: with V the top r eigenvectors of
Bᵀ G B (G = XᵀX, so V holds the top right singular vectors of the training score matrix X B),

    x B ≈ x (B V) Vᵀ = Σ_{j in history} P_j · Q_i,   P = B V (history side), Q = V (item side),

so a user's state gains the r columns Σ_j P_j and an item's output vector the r columns Q_i.

EASE is blind to order. Its sequential sibling (SLIT, Choi et al., 2021) regresses each next item on
the events before it, the k-th newest counted decay^k: its weights T map a decayed history to the
next item's scores. T is kept whole (a low rank loses most of what transitions say), so its item
side is the identity: the state gains n_items columns Σ_j decay^k_j T_j, one per item, and an item's
output vector its one-hot row (built by the model, not stored: it is a third of the term's size).
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


def transition_weights(
    histories: list[np.ndarray], n_items: int, l2: float, decays: list[float], window: int
) -> dict[float, np.ndarray]:
    """Per decay, P [n_items + 1, n_items] float32 with row 0 zero: the ridge regression (``l2``) of every
    next item of the 1-based ``histories`` on the ``window`` events before it, the k-th newest counted
    ``decay^k`` (k = 0 for the newest), so that ``h P`` scores the next item of a decayed history h.
    The item side is the identity (``SeqRec.item_item_side``): built where it is used, not stored."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    events = np.concatenate(histories).astype(np.int64) - 1 if len(histories) else np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    steps = np.flatnonzero(np.arange(len(events)) > starts)  # every event after its sequence's first
    # Each (step, earlier event) pair once, with its lag: only the pairs' weights differ between decays.
    step_rows, history_items, lags = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for k in range(min(window, int(lengths.max(initial=0)))):
        source = steps - 1 - k
        keep = source >= starts[steps]
        step_rows.append(np.flatnonzero(keep))
        history_items.append(events[source[keep]])
        lags.append(np.full(int(keep.sum()), k))
    pairs, lag = (np.concatenate(step_rows), np.concatenate(history_items)), np.concatenate(lags)
    shape = (len(steps), n_items)
    targets = sp.csr_matrix((np.ones(len(steps)), (np.arange(len(steps)), events[steps])), shape=shape)
    weights = {}
    for decay in decays:
        history = sp.csr_matrix((float(decay) ** lag, pairs), shape=shape)
        gram = (history.T @ history).toarray()
        gram[np.diag_indices_from(gram)] += l2
        solved = np.linalg.solve(gram, (history.T @ targets).toarray())
        weights[decay] = np.vstack([np.zeros((1, n_items)), solved]).astype(np.float32)
    return weights


def cold_item_donors(content: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cold, donors), 0-based: each item with no training events (``counts`` 0) and some content
    (rows of ``content``), and the item with events whose content is the most similar (cosine).

    An item-item model learns nothing of an item nobody has taken yet, so next to items it has
    learned, such an item would drop out of every list the term touches. Given its closest item's
    columns, it is placed as that item is, as the transformer places it through its content."""
    norms = np.linalg.norm(content, axis=1)
    cold = np.flatnonzero((counts == 0) & (norms > 0))
    warm = np.flatnonzero((counts > 0) & (norms > 0))
    if len(cold) == 0 or len(warm) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    unit = content / np.maximum(norms, np.finfo(np.float64).tiny)[:, None]
    return cold, warm[np.argmax(unit[cold] @ unit[warm].T, axis=1)]


def term_item_index(index: np.ndarray, known_content: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The 1-based vocabulary item whose item-item term's item side each catalogue row takes: its own
    (``index``), or, for a row the model never saw (0) that has content, that of the model's item
    closest to it by content (``cold_item_donors``; ``known_content``: the vocabulary's content rows)."""
    index = index.copy()
    unseen = np.flatnonzero(index == 0)
    if len(unseen):
        both = np.concatenate([known_content, content[unseen]])
        cold, donors = cold_item_donors(both, np.r_[np.ones(len(known_content)), np.zeros(len(unseen))])
        index[unseen[cold - len(known_content)]] = donors + 1
    return index
