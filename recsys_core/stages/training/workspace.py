"""Where a date's training keeps its state between steps, and the cut-off of each protocol."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

from recsys_core.config import Settings
from recsys_core.timeutil import end_of_day

PROTOCOLS = ("loo", "backtest", "calibration")

# Horizons (eval.backtest_horizon_days) between the end of the run date and each protocol's cut.
HORIZONS_BEFORE = {"loo": 0, "backtest": 1, "calibration": 2}

# The protocols every model is scored on (the calibration model only fits the trend prior's offsets).
EVALUATED = ("loo", "backtest")

RUNS = "runs.json"
SETTINGS = "settings.json"  # the exact settings the ranks train with


def workspace(settings: Settings, as_of: date) -> Path:
    return settings.work_dir / "train" / as_of.isoformat()


def dataset_path(ws: Path, protocol: str) -> Path:
    return ws / f"dataset-{protocol}.pt"


def prepared_path(ws: Path, protocol: str) -> Path:
    """The prepare task's hand-off to the evaluate task (``stages.training.handoff``)."""
    return ws / f"prepared-{protocol}.pt"


def checkpoint_dir(ws: Path, protocol: str) -> Path:
    return ws / "checkpoints" / protocol


def backtest_cut(settings: Settings, as_of: date, horizons: int = 1) -> datetime:
    """Events before this instant train the backtest model (``horizons`` = 2: the calibration model);
    new items after it, up to one horizon later, are its targets."""
    return end_of_day(as_of - timedelta(days=horizons * settings.eval.backtest_horizon_days))


def train_cutoff(settings: Settings, as_of: date, protocol: str) -> datetime:
    """The exclusive upper bound of the events a protocol's models are fitted on: the end of the
    run date for leave-last-out, ``backtest_cut`` for the temporal protocols."""
    return backtest_cut(settings, as_of, HORIZONS_BEFORE[protocol])
