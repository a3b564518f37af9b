"""The training dataset file: every tensor the ranks need, built once before torchrun.

It is a dict of tensors saved with ``torch.save`` and loaded with
``weights_only=True`` by every rank.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recsys_core.config import ModelSettings
from recsys_core.models.transformer import SeqRecConfig, gap_buckets
from recsys_core.training.data import (
    SECONDS_PER_DAY,
    LeaveLastOut,
    Preprocessing,
    Sequences,
    TrendTable,
    build_sequences,
    event_gaps,
    left_pad,
)


@dataclass
class PreparedData:
    prep: Preprocessing
    sequences: Sequences
    split: LeaveLastOut
    user_feats: np.ndarray
    item_content: np.ndarray
    trend: TrendTable
    until_day: int  # the scoring time of this data: the start of this UTC day (epoch days)


def prepare(
    interactions: pa.Table,
    user_profiles: pa.Table,
    item_features: pa.Table,
    until_day: int | None = None,
    trend_windows: tuple[int, ...] = (7, 30),
) -> PreparedData:
    """Everything derived from the inputs, for data that ends at the start of ``until_day``
    (epoch days; default: the day after the last event)."""
    if until_day is None:
        last = pc.max(interactions["event_ts"]).as_py() if interactions.num_rows else None
        until_day = int(last.timestamp()) // SECONDS_PER_DAY + 1 if last else 0
    prep = Preprocessing.fit(item_features, user_profiles)
    profiles = user_profiles.sort_by("user_id")
    user_ids, user_feats = prep.user_features(profiles)
    sequences = build_sequences(interactions, prep, user_ids)
    return PreparedData(
        prep=prep,
        sequences=sequences,
        split=LeaveLastOut.split(sequences),
        user_feats=user_feats,
        item_content=prep.content_matrix(item_features),
        trend=TrendTable.build(interactions, prep, trend_windows, until_day),
        until_day=until_day,
    )


def seen_csr(histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (indptr, 0-based item indices) of each user's distinct history items."""
    indptr = [0]
    indices: list[np.ndarray] = []
    for h in histories:
        distinct = np.unique(h) - 1
        indices.append(distinct)
        indptr.append(indptr[-1] + len(distinct))
    flat = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    return torch.as_tensor(np.array(indptr, dtype=np.int64)), torch.as_tensor(flat.astype(np.int64))


def model_config(data: PreparedData, settings: ModelSettings) -> SeqRecConfig:
    return SeqRecConfig(
        n_items=data.prep.n_items,
        max_len=settings.max_len,
        d_model=settings.d_model,
        n_heads=settings.n_heads,
        n_layers=settings.n_layers,
        dropout=settings.dropout,
        content_dim=data.prep.content_dim if settings.use_content else 0,
        user_cardinalities=data.prep.user_cardinalities if settings.use_user_features else (),
        use_time=settings.use_time,
        loss=settings.loss,
        n_negatives=settings.n_negatives,
        trend_windows=data.trend.windows if settings.use_trend else (),
    )


def training_windows(
    split: LeaveLastOut, length: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Cut each training sequence into windows of ``length`` next-item steps, newest first.

    The first step predicts the first item from an empty history (input 0, the
    padding id), so the model also learns what to recommend to a user with no
    events yet. Every event of a long history is trained on, while attention
    stays ``length`` wide. Returns inputs, targets, gaps (seconds) and each
    window's user row, plus each step's prediction day (that of its input
    event; the first item's own day for the empty-history step).
    """
    inputs, targets, gaps, days, users = [], [], [], [], []
    for user, (seq, times) in enumerate(zip(split.train, split.train_times)):
        if len(seq) == 0:
            continue
        steps_in = np.concatenate([[0], seq[:-1]])
        steps_gap = np.concatenate([[0], event_gaps(times)[:-1]])
        steps_day = np.concatenate([times[:1], times[:-1]]) // SECONDS_PER_DAY
        end = len(seq)
        while end > 0:
            start = max(0, end - length)
            inputs.append(steps_in[start:end])
            targets.append(seq[start:end])
            gaps.append(steps_gap[start:end])
            days.append(steps_day[start:end])
            users.append(user)
            end = start
    return inputs, targets, gaps, days, np.array(users, dtype=np.int64)


def build_tensors(data: PreparedData, config: SeqRecConfig) -> dict:
    length = config.max_len
    split = data.split
    train_inputs, train_targets, train_gaps, train_days, train_users = training_windows(split, length)
    def padded(items: list[np.ndarray], gaps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        items_padded = left_pad(items, length)
        return items_padded, gap_buckets(torch.as_tensor(left_pad(gaps, length)), torch.as_tensor(items_padded)).numpy()

    train_items, train_gap_buckets = padded(train_inputs, train_gaps)
    valid_items, valid_gap_buckets = padded(split.valid_input, [event_gaps(t) for t in split.valid_times])
    test_items, test_gap_buckets = padded(split.test_input, [event_gaps(t) for t in split.test_times])
    tensors = {
        "train_inputs": train_items,
        "train_targets": left_pad(train_targets, length),
        "train_gaps": train_gap_buckets,
        "train_users": train_users,
        "valid_inputs": valid_items,
        "valid_gaps": valid_gap_buckets,
        "valid_targets": split.valid_target,
        "test_inputs": test_items,
        "test_gaps": test_gap_buckets,
        "test_targets": split.test_target,
        "user_feats": data.user_feats,
        # Trend rows: where each prediction stands in time (clipped into the table).
        "trend_table": data.trend.values,
        "train_trend_rows": left_pad([data.trend.row(d) for d in train_days], length),
        "valid_trend_rows": data.trend.row(_last_day(split.valid_times)),
        "test_trend_rows": data.trend.row(_last_day(split.test_times)),
    }
    out = {k: torch.as_tensor(v) for k, v in tensors.items()}
    if not config.use_time:
        for key in ("train_gaps", "valid_gaps", "test_gaps"):
            out[key] = torch.zeros_like(out[key])
    out["valid_seen_indptr"], out["valid_seen_indices"] = seen_csr(split.valid_input)
    out["test_seen_indptr"], out["test_seen_indices"] = seen_csr(split.test_input)
    content = data.item_content if config.content_dim else np.zeros((config.n_items + 1, 0), dtype=np.float32)
    out["item_content"] = torch.as_tensor(content)
    digest = hashlib.sha256()
    for key in sorted(out):
        digest.update(key.encode())
        digest.update(out[key].numpy().tobytes())
    out["dataset_fingerprint"] = digest.hexdigest()[:16]
    out["config_json"] = json.dumps(config.to_dict())
    out["n_items"] = config.n_items
    return out


def _last_day(times: list[np.ndarray]) -> np.ndarray:
    return np.array([t[-1] // SECONDS_PER_DAY if len(t) else 0 for t in times], dtype=np.int64)


def save_dataset(tensors: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(tensors, tmp)
    tmp.replace(path)
