"""The prepare → evaluate hand-off file: a lossless, typed, versioned copy of the prepared data."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from recsys_core.errors import DataError, MissingInput
from recsys_core.stages.training.handoff import HANDOFF_VERSION, load_prepared, save_prepared
from recsys_core.training.dataset import prepare
from tests.training.test_data import small_world


def _same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, list) and a and isinstance(a[0], np.ndarray):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif hasattr(a, "__dataclass_fields__"):
        for f in fields(a):
            _same(getattr(a, f.name), getattr(b, f.name))
    else:
        assert a == b


def test_prepared_data_round_trips_exactly(tmp_path):
    data = prepare(*small_world(), trend_windows=(1, 7))
    save_prepared(tmp_path / "prepared-loo.pt", data)
    _same(data, load_prepared(tmp_path / "prepared-loo.pt"))


def test_missing_or_other_version_names_the_file(tmp_path):
    path = tmp_path / "prepared-loo.pt"
    with pytest.raises(MissingInput, match=r"prepared-loo\.pt"):
        load_prepared(path)
    torch.save({"version": HANDOFF_VERSION + 1}, path)
    with pytest.raises(DataError, match=rf"prepared-loo\.pt.*version {HANDOFF_VERSION + 1}"):
        load_prepared(path)
