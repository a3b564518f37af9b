"""Seeded user samples for evaluations too large to run on every user."""

from __future__ import annotations

import numpy as np


def sample_rows(rows: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """``rows`` when ``max_rows`` is None or not smaller; otherwise a seeded sample of ``max_rows``
    of them, in their original order (the same seed and rows give the same sample)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False)
    return rows[np.sort(picked)]
