"""The training dataset file: every tensor the ranks need, built once before torchrun.

``TrainingDataset`` is typed (model inputs are ``models.inputs.ModelInputs``) and versioned;
on disk it is a flat dict of tensors saved with ``torch.save`` and loaded with
``weights_only=True`` by every rank.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recsys_core.config import FeatureSettings, ModelSettings
from recsys_core.errors import DataError
from recsys_core.models.data import (
    LeaveLastOut,
    Preprocessing,
    Sequences,
    TrendTable,
    build_sequences,
    event_gaps,
    last_event_days,
    left_pad,
)
from recsys_core.models.inputs import ModelInputs, encode, encode_steps
from recsys_core.models.transformer import SeqRecConfig
from recsys_core.timeutil import SECONDS_PER_DAY
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
    return SeqRecConfig.from_settings(
        settings, data.prep.n_items, data.prep.content_dim, data.prep.user_cardinalities, data.trend.windows
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


DATASET_VERSION = 2  # raise with any change to the fields below or to their meaning


@dataclass(frozen=True)
class TrainingSteps:
    """Training windows: every position predicts its target (0: padding, no target)."""

    inputs: ModelInputs  # the window's user features on every row
    targets: torch.Tensor  # [n, L] next items
    trend_rows: torch.Tensor  # [n, L] the trend table's row (day) of each step's prediction
    future: torch.Tensor | None  # [n, L, samples] items taken up within the horizon (model.future_horizon_days > 0)


@dataclass(frozen=True)
class HeldOutSplit:
    """Leave-last-out validation or test: one target per user row (0: none), predicted right after its inputs."""

    inputs: ModelInputs
    targets: torch.Tensor  # [n]
    trend_rows: torch.Tensor  # [n]
    seen_indptr: torch.Tensor  # CSR of each user's distinct input items (0-based), excluded from the ranking
    seen_indices: torch.Tensor


@dataclass(frozen=True)
class TrainingDataset:
    """Everything the ranks read, built once before torchrun; on disk a flat dict of tensors (loaded
    with ``weights_only=True``) with a format version, checked when it is read."""

    config: SeqRecConfig
    train: TrainingSteps
    valid: HeldOutSplit
    test: HeldOutSplit
    trend_table: torch.Tensor  # [days, n_items + 1, windows] (models.data.TrendTable)
    item_content: torch.Tensor  # [n_items + 1, content_dim]
    fingerprint: str = ""  # of the tensors; set by ``build_dataset``

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {**_flat(self.train, "train"), **_flat(self.valid, "valid"), **_flat(self.test, "test")}
        return {**out, "trend_table": self.trend_table, "item_content": self.item_content}

    def save(self, path: Path) -> None:
        content = {**self.tensors(), "version": DATASET_VERSION, "config_json": json.dumps(self.config.to_dict())}
        save_checkpoint(path, {**content, "fingerprint": self.fingerprint})  # the same atomic write

    @classmethod
    def load(cls, path: Path, mmap: bool = False) -> TrainingDataset:
        """``mmap``: tensors are read from the file when used (e.g. only the config and the content)."""
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        version = content.get("version", 1)
        if version != DATASET_VERSION:
            raise DataError(
                f"{path} is a training dataset of format version {version}; this code reads version {DATASET_VERSION}",
                hint="rebuild it with this code: rerun the training's prepare step for that date",
            )
        return cls(
            config=SeqRecConfig.from_dict(json.loads(content["config_json"])),
            train=_unflat(TrainingSteps, content, "train"),
            valid=_unflat(HeldOutSplit, content, "valid"),
            test=_unflat(HeldOutSplit, content, "test"),
            trend_table=content["trend_table"],
            item_content=content["item_content"],
            fingerprint=content["fingerprint"],
        )


def _flat(split, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for field in fields(split):
        value = getattr(split, field.name)
        if isinstance(value, ModelInputs):
            out.update(value.to_tensors(prefix))
        elif value is not None:
            out[f"{prefix}.{field.name}"] = value
    return out


def _unflat(cls, content: dict, prefix: str):
    values = {f.name: content.get(f"{prefix}.{f.name}") for f in fields(cls)}
    return cls(**{**values, "inputs": ModelInputs.from_tensors(content, prefix)})


def build_dataset(data: PreparedData, config: SeqRecConfig, seed: int = 0) -> TrainingDataset:
    length = config.max_len
    split = data.split
    windows = training_windows(split, length)
    future = None
    if config.future_horizon_days > 0:
        drawn = future_targets(split, length, config.future_horizon_days, config.future_samples, seed)
        future = torch.as_tensor(left_pad(drawn, length))

    def held_out(items: list[np.ndarray], times: list[np.ndarray], targets: np.ndarray) -> HeldOutSplit:
        indptr, indices = seen_csr(items)
        # Leave-last-out predicts right after the last input event; trend rows: where that stands in time.
        trend_rows = torch.as_tensor(data.trend.row(last_event_days(times, 0)))
        inputs = encode(config, items, times, data.user_feats)
        return HeldOutSplit(inputs, torch.as_tensor(targets), trend_rows, indptr, indices)

    train = TrainingSteps(
        inputs=encode_steps(
            config,
            left_pad(windows.inputs, length),
            left_pad(windows.gaps, length),
            left_pad(windows.query_gaps, length),
            data.user_feats[windows.users],
        ),
        targets=torch.as_tensor(left_pad(windows.targets, length)),
        trend_rows=torch.as_tensor(left_pad([data.trend.row(d) for d in windows.days], length)),
        future=future,
    )
    content = data.item_content if config.content_dim else np.zeros((config.n_items + 1, 0), dtype=np.float32)
    dataset = TrainingDataset(
        config=config,
        train=train,
        valid=held_out(split.valid_input, split.valid_times, split.valid_target),
        test=held_out(split.test_input, split.test_times, split.test_target),
        trend_table=torch.as_tensor(data.trend.values),
        item_content=torch.as_tensor(content),
    )
    digest = hashlib.sha256()
    for key, tensor in sorted(dataset.tensors().items()):
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    return replace(dataset, fingerprint=digest.hexdigest()[:16])
