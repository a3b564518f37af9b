"""Strong simple baselines, trained and evaluated on the same split as the large model.

All score a user from their history matrix row (users x items, 0-based item
columns) and return dense scores over the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys_core.timeutil import SECONDS_PER_DAY


def history_matrix(histories: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary users x items matrix from 1-based item index histories."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) - 1 if histories else np.zeros(0, dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(histories), n_items))
    matrix.data[:] = 1.0  # repeated interactions count once
    return matrix


def gram_matrix(history: sp.csr_matrix) -> np.ndarray:
    """[items, items] float64 co-occurrence counts of a users x items history matrix."""
    return (history.T @ history).toarray().astype(np.float64)


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's closed-form item-item weights B (zero diagonal) from a Gram matrix, float64."""
    regularized = gram.copy()
    regularized[np.diag_indices_from(regularized)] += l2
    precision = np.linalg.inv(regularized)
    weights = -precision / np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    return weights


@dataclass
class Popularity:
    """Trending: interaction counts over the last ``window_days`` before the cut-off (all time if empty)."""

    window_days: int
    counts: np.ndarray | None = None

    def fit(self, item_idx: np.ndarray, times: np.ndarray, n_items: int, cutoff_ts: int) -> Popularity:
        recent = times >= cutoff_ts - self.window_days * SECONDS_PER_DAY
        chosen = item_idx[recent] if recent.any() else item_idx
        self.counts = np.bincount(chosen - 1, minlength=n_items).astype(np.float32)
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        assert self.counts is not None, "fit() first"
        return np.broadcast_to(self.counts, (history.shape[0], len(self.counts))).copy()


@dataclass
class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019): closed-form item-item weights."""

    l2: float
    weights: np.ndarray | None = None

    def fit(self, history: sp.csr_matrix) -> EASE:
        self.weights = ease_weights(gram_matrix(history), self.l2).astype(np.float32)
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        return np.asarray(history @ self.weights)
