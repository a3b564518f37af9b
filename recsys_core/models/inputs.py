"""The model's input boundary: one typed structure and one ``encode`` for every path.

Dataset building (training windows and evaluation splits), training, evaluation, the nightly
bundle and the MLflow model all hand the model a ``ModelInputs``, built by ``encode`` (or, for
training windows whose recency is measured to each step's target, ``encode_steps``). A new
model input is a new field here and a line in ``encode_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from recsys_core.models.data import gaps_of, left_pad, query_gaps_of
from recsys_core.models.transformer import SeqRecConfig, gap_buckets


@dataclass(frozen=True)
class ModelInputs:
    """One row per prediction; sequences are left-padded to the model's ``max_len`` (item 0 = padding)."""

    items: torch.Tensor  # [n, L] item indices, oldest first
    gaps: torch.Tensor  # [n, L] bucketed time before each event (0: padding, or time not used)
    query_gaps: torch.Tensor  # [n, L] bucketed time from each event to the prediction made there (recency)
    user_feats: torch.Tensor  # [n, n_user_features] categorical user features

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, index: np.ndarray | torch.Tensor | slice) -> ModelInputs:
        index = index if isinstance(index, slice) else torch.as_tensor(index)
        return ModelInputs(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> ModelInputs:
        return ModelInputs(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat ``{"<prefix>.<field>": tensor}``, for a file that loads with ``weights_only=True``."""
        return {f"{prefix}.{f.name}": getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> ModelInputs:
        return cls(**{f.name: tensors[f"{prefix}.{f.name}"] for f in fields(cls)})


def encode_steps(
    config: SeqRecConfig,
    items: np.ndarray,
    gap_seconds: np.ndarray,
    query_gap_seconds: np.ndarray,
    user_feats: np.ndarray,
) -> ModelInputs:
    """Model inputs from left-padded [n, L] items and seconds: gaps bucketed, and zeroed when the
    model does not use time."""
    items_t = torch.as_tensor(items)
    gaps = gap_buckets(torch.as_tensor(gap_seconds), items_t)
    query_gaps = gap_buckets(torch.as_tensor(query_gap_seconds), items_t)
    if not config.use_time:
        gaps, query_gaps = torch.zeros_like(gaps), torch.zeros_like(query_gaps)
    return ModelInputs(items_t, gaps, query_gaps, torch.as_tensor(user_feats))


def encode(
    config: SeqRecConfig,
    items: list[np.ndarray],
    times: list[np.ndarray],
    user_feats: np.ndarray,
    now: int | np.ndarray | None = None,
) -> ModelInputs:
    """Inputs of users predicted at ``now`` (epoch seconds; default: right after each one's last event)
    from their histories (item indices and event times, oldest first)."""
    length = config.max_len
    return encode_steps(config, left_pad(items, length), gaps_of(times, length), query_gaps_of(times, length, now), user_feats)
