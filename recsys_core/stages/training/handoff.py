"""The hand-off from the prepare task to the evaluate task: each protocol's prepared data, as a typed,
versioned file in the workspace, so evaluation reads what preparation produced instead of recomputing it.

On disk a flat dict of tensors, ints and JSON strings, saved with ``torch.save`` and loaded with
``weights_only=True`` (no pickled objects). The leave-last-out split is not stored: it is a pure
function of the sequences (``LeaveLastOut.split``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recsys_core.errors import DataError, MissingInput
from recsys_core.models.data import LeaveLastOut, Preprocessing, Sequences, TrendTable
from recsys_core.training.checkpoint import save_checkpoint
from recsys_core.training.dataset import PreparedData

HANDOFF_VERSION = 1  # raise with any change to the fields below or to their meaning
HANDOFF_HINT = "rerun the training's prepare step for that date"


def _ragged(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets, values) of int64 arrays of different lengths."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    values = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, dtype=np.int64)
    return torch.as_tensor(offsets), torch.as_tensor(values)


def _unragged(offsets: torch.Tensor, values: torch.Tensor) -> list[np.ndarray]:
    bounds, flat = offsets.numpy(), values.numpy()
    return [flat[bounds[i] : bounds[i + 1]].copy() for i in range(len(bounds) - 1)]


def save_prepared(path: Path, data: PreparedData) -> None:
    """Write one protocol's prepared data (atomically)."""
    item_offsets, item_values = _ragged(data.sequences.items)
    time_offsets, time_values = _ragged(data.sequences.times)
    content = {
        "version": HANDOFF_VERSION,
        "prep_json": json.dumps(data.prep.to_dict()),
        "user_ids_json": json.dumps(data.sequences.user_ids),
        "items.offsets": item_offsets,
        "items.values": item_values,
        "times.offsets": time_offsets,
        "times.values": time_values,
        "user_feats": torch.as_tensor(data.user_feats),
        "item_content": torch.as_tensor(data.item_content),
        "trend.first_day": int(data.trend.first_day),
        "trend.windows_json": json.dumps(list(data.trend.windows)),
        "trend.values": torch.as_tensor(data.trend.values),
        "until_day": int(data.until_day),
    }
    save_checkpoint(path, content)


def load_prepared(path: Path) -> PreparedData:
    """Read one protocol's prepared data; a clear error when the file is missing or of another version."""
    if not path.exists():
        raise MissingInput(f"no prepared training data at {path}", hint=HANDOFF_HINT)
    content = torch.load(path, map_location="cpu", weights_only=True)
    version = content.get("version") if isinstance(content, dict) else None
    if version != HANDOFF_VERSION:
        raise DataError(
            f"{path} is prepared training data of format version {version}; this code reads version {HANDOFF_VERSION}",
            hint=HANDOFF_HINT,
        )
    sequences = Sequences(
        user_ids=json.loads(content["user_ids_json"]),
        items=_unragged(content["items.offsets"], content["items.values"]),
        times=_unragged(content["times.offsets"], content["times.values"]),
    )
    trend = TrendTable(
        first_day=int(content["trend.first_day"]),
        windows=tuple(json.loads(content["trend.windows_json"])),
        values=content["trend.values"].numpy(),
    )
    return PreparedData(
        prep=Preprocessing.from_dict(json.loads(content["prep_json"])),
        sequences=sequences,
        split=LeaveLastOut.split(sequences),
        user_feats=content["user_feats"].numpy(),
        item_content=content["item_content"].numpy(),
        trend=trend,
        until_day=int(content["until_day"]),
    )
