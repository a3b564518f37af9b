"""Sparse helpers shared by training validation and the nightly scoring (no I/O, no models)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def exclusion_from_lists(offsets: np.ndarray, indices: np.ndarray, n_items: int) -> sp.csr_matrix:
    """A users x items CSR exclusion matrix from list offsets and item columns (e.g. an Arrow list column)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int32)
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, offsets - offsets[0]), shape=(len(offsets) - 1, n_items)
    )
