"""The training dataset file: every tensor the ranks need, built once before torchrun.

It is a dict of tensors saved with ``torch.save`` and loaded with
``weights_only=True`` by every rank.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recsys_core.config import FeatureSettings, ModelSettings
from recsys_core.models.transformer import SeqRecConfig, gap_buckets
from recsys_core.training.data import (
    SECONDS_PER_DAY,
    LeaveLastOut,
    Preprocessing,
    Sequences,
    TrendTable,
    build_sequences,
    event_gaps,
    gaps_of,
    last_event_days,
    left_pad,
    query_gaps_of,
)
from recsys_core.training.checkpoint import save_checkpoint


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
    trend_windows: tuple[int, ...] = FeatureSettings().trend_windows,
    fitted: PreparedData | None = None,
) -> PreparedData:
    """Everything derived from the inputs, for data that ends at the start of ``until_day``
    (epoch days; default: the day after the last event). ``fitted``: data prepared from the same
    profiles and items, whose preprocessing, user features and content matrix are reused."""
    if until_day is None:
        last = pc.max(interactions["event_ts"]).as_py() if interactions.num_rows else None
        until_day = int(last.timestamp()) // SECONDS_PER_DAY + 1 if last else 0
    if fitted is None:
        prep = Preprocessing.fit(item_features, user_profiles)
        user_ids, user_feats = prep.user_features(user_profiles.sort_by("user_id"))
        item_content = prep.content_matrix(item_features)
    else:
        prep, user_ids, user_feats, item_content = fitted.prep, fitted.sequences.user_ids, fitted.user_feats, fitted.item_content
    sequences = build_sequences(interactions, prep, user_ids)
    return PreparedData(
        prep=prep,
        sequences=sequences,
        split=LeaveLastOut.split(sequences),
        user_feats=user_feats,
        item_content=item_content,
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
        use_query_gap=settings.use_query_gap and settings.use_time,
        future_horizon_days=settings.future_horizon_days,
        future_samples=settings.future_samples,
        future_weight=settings.future_weight,
    )


def window_bounds(n_steps: int, length: int) -> list[tuple[int, int]]:
    """(start, end) of the windows of ``length`` steps that cut ``n_steps`` steps, newest first."""
    bounds, end = [], n_steps
    while end > 0:
        bounds.append((max(0, end - length), end))
        end = bounds[-1][0]
    return bounds


class Windows(NamedTuple):
    inputs: list[np.ndarray]
    targets: list[np.ndarray]
    gaps: list[np.ndarray]  # seconds before each input event
    days: list[np.ndarray]  # each step's prediction day
    users: np.ndarray  # each window's user row
    query_gaps: list[np.ndarray]  # seconds from each input event to its target (the prediction's recency)


def training_windows(split: LeaveLastOut, length: int) -> Windows:
    """Cut each training sequence into windows of ``length`` next-item steps, newest first.

    The first step predicts the first item from an empty history (input 0, the
    padding id), so the model also learns what to recommend to a user with no
    events yet. Every event of a long history is trained on, while attention
    stays ``length`` wide. A step's prediction day is that of its input event
    (the first item's own day for the empty-history step).
    """
    inputs, targets, gaps, days, users, query_gaps = [], [], [], [], [], []
    for user, (seq, times) in enumerate(zip(split.train, split.train_times)):
        gaps_before = event_gaps(times)
        steps_in = np.concatenate([[0], seq[:-1]])
        steps_gap = np.concatenate([[0], gaps_before[:-1]])
        steps_day = np.concatenate([times[:1], times[:-1]]) // SECONDS_PER_DAY
        for start, end in window_bounds(len(seq), length):
            inputs.append(steps_in[start:end])
            targets.append(seq[start:end])
            gaps.append(steps_gap[start:end])
            days.append(steps_day[start:end])
            users.append(user)
            query_gaps.append(gaps_before[start:end])
    return Windows(inputs, targets, gaps, days, np.array(users, dtype=np.int64), query_gaps)


def future_targets(split: LeaveLastOut, length: int, horizon_days: float, samples: int, seed: int) -> list[np.ndarray]:
    """For every step of ``training_windows``, ``samples`` items drawn from what the user meets within
    ``horizon_days`` of that step's target event (the target itself included): [steps, samples] per window.

    This is the nightly product's question ("what will this user take up over the coming days?"),
    next to the next-item one; drawn once per dataset with ``seed`` so the dataset is reproducible.
    """
    rng = np.random.default_rng(seed)
    horizon = horizon_days * SECONDS_PER_DAY
    out = []
    for seq, times in zip(split.train, split.train_times):
        if not len(seq):
            continue
        # Steps t..stop[t]-1 fall within the horizon of step t's target event.
        stop = np.searchsorted(times, times + horizon, side="left")
        span = np.maximum(stop - np.arange(len(seq)), 1)
        draws = np.arange(len(seq))[:, None] + (rng.random((len(seq), samples)) * span[:, None]).astype(np.int64)
        picked = seq[np.minimum(draws, len(seq) - 1)]
        for start, end in window_bounds(len(seq), length):
            out.append(picked[start:end])
    return out


def build_tensors(data: PreparedData, config: SeqRecConfig, seed: int = 0) -> dict:
    length = config.max_len
    split = data.split
    windows = training_windows(split, length)

    def buckets(seconds: np.ndarray, items: np.ndarray) -> np.ndarray:
        return gap_buckets(torch.as_tensor(seconds), torch.as_tensor(items)).numpy()

    train_items = left_pad(windows.inputs, length)
    valid_items = left_pad(split.valid_input, length)
    test_items = left_pad(split.test_input, length)
    tensors = {
        "train_inputs": train_items,
        "train_targets": left_pad(windows.targets, length),
        "train_gaps": buckets(left_pad(windows.gaps, length), train_items),
        "train_query_gaps": buckets(left_pad(windows.query_gaps, length), train_items),
        "train_users": windows.users,
        # Leave-last-out predicts right after the last input event.
        "valid_inputs": valid_items,
        "valid_gaps": buckets(gaps_of(split.valid_times, length), valid_items),
        "valid_query_gaps": buckets(query_gaps_of(split.valid_times, length), valid_items),
        "valid_targets": split.valid_target,
        "test_inputs": test_items,
        "test_gaps": buckets(gaps_of(split.test_times, length), test_items),
        "test_query_gaps": buckets(query_gaps_of(split.test_times, length), test_items),
        "test_targets": split.test_target,
        "user_feats": data.user_feats,
        # Trend rows: where each prediction stands in time (clipped into the table).
        "trend_table": data.trend.values,
        "train_trend_rows": left_pad([data.trend.row(d) for d in windows.days], length),
        "valid_trend_rows": data.trend.row(last_event_days(split.valid_times, 0)),
        "test_trend_rows": data.trend.row(last_event_days(split.test_times, 0)),
    }
    if config.future_horizon_days > 0:
        future = future_targets(split, length, config.future_horizon_days, config.future_samples, seed)
        tensors["train_future"] = left_pad(future, length)
    out = {k: torch.as_tensor(v) for k, v in tensors.items()}
    if not config.use_time:
        for key in ("train_gaps", "valid_gaps", "test_gaps", "train_query_gaps", "valid_query_gaps", "test_query_gaps"):
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


def save_dataset(tensors: dict, path: Path) -> None:
    save_checkpoint(path, tensors)  # the same atomic write
