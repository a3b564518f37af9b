"""The item adjustment: a per-item affine change of the model's score that trades accuracy for
catalogue coverage.

    adjusted[u, i] = (score[u, i] - centering · mean_i) / spread_i ** scaling

``mean_i`` and ``spread_i`` are item i's score mean and standard deviation over a reference set
of users. Centering removes the part of an item's score that every user shares (its general
appeal, which is what puts the same popular items on every list); scaling ranks an item by how
far a user's score stands out from the others' rather than by its raw size. Both at 0 is the
model as trained. The frontier (``evaluation.frontier``) sweeps both, and the served point's
values travel with the model (``ModelBundle.adjustment``), so every scorer applies the same
change. Pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A spread below this counts as this: items every user scores alike would otherwise be blown up.
MIN_SPREAD = 1e-3


class ScoreMoments:
    """Each item's score mean and standard deviation over users, gathered batch by batch: the
    statistics of a large case without holding its [users, items] scores at once."""

    def __init__(self) -> None:
        self.users = 0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def add(self, scores: np.ndarray) -> np.ndarray:
        """Count the users (rows) of ``scores`` [n, m]; returns ``scores``, so that a scorer can be wrapped."""
        batch = np.asarray(scores, dtype=np.float64)
        total, squares = batch.sum(axis=0), np.square(batch).sum(axis=0)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.users += len(batch)
        return scores

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.total is None or self.squares is None or self.users == 0:
            raise ValueError("no scores were counted")
        mean = self.total / self.users
        spread = np.sqrt(np.maximum(self.squares / self.users - np.square(mean), 0.0))
        return mean.astype(np.float32), spread.astype(np.float32)


def item_score_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each item's score mean and standard deviation over the users (rows) of ``scores`` [n, m]."""
    moments = ScoreMoments()
    moments.add(scores)
    return moments.stats()


def affine(mean: np.ndarray, spread: np.ndarray, centering: float, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) per item, so that ``adjusted = score * scale + offset``."""
    scale = np.power(np.maximum(spread, MIN_SPREAD), -scaling).astype(np.float32)
    return scale, (-centering * mean * scale).astype(np.float32)


def adjust(scores: np.ndarray, centering: float, scaling: float) -> np.ndarray:
    """``scores`` [n, m] adjusted with statistics over their own rows (the frontier's sweep)."""
    if centering == 0 and scaling == 0:
        return scores
    scale, offset = affine(*item_score_stats(scores), centering, scaling)
    return scores * scale[None, :] + offset[None, :]


@dataclass(frozen=True)
class ItemAdjustment:
    """The served adjustment of a model: its two knobs and the statistics of its own scores
    (``mean``/``spread`` per item of the model's vocabulary, in ``Preprocessing.item_ids`` order)."""

    centering: float
    scaling: float
    mean: np.ndarray
    spread: np.ndarray

    @classmethod
    def of_scores(cls, scores: np.ndarray, centering: float, scaling: float) -> ItemAdjustment:
        return cls(centering, scaling, *item_score_stats(scores))

    def affine_of(self, vocabulary_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) of catalogue items given their 1-based index in the model's vocabulary;
        0 (an item the model never saw) gets the median statistics."""
        index = np.asarray(vocabulary_index, dtype=np.int64)
        mean = np.concatenate([[np.median(self.mean)], self.mean]).astype(np.float32)
        spread = np.concatenate([[np.median(self.spread)], self.spread]).astype(np.float32)
        return affine(mean[index], spread[index], self.centering, self.scaling)
