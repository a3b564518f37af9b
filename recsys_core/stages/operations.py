"""What the DAGs decide between stages, from durable state only (lake, registry, workspace).

- Is a day's input there? (``raw_events_landed``, ``features_ready``): the sensors poke these.
- Should training run today? (``training_decision``): the first champion, the cadence, a manual run.
- What does an asset event say? (``*_event``): run date, row counts, partition paths, model version,
  read back from manifests and the training summary rather than from a task's stdout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, RAW_EVENTS, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.io.recommendations import RecommendationReader

log = logging.getLogger(__name__)

FEATURE_TABLES = (USER_PROFILES, ITEM_FEATURES)


# Inputs -----------------------------------------------------------------------
def raw_events_folder(settings: Settings, day: date) -> str:
    return Lake(settings.lake).partition_path(RAW_EVENTS, day)


def raw_events_landed(settings: Settings, day: date) -> bool:
    """Whether the landing folder of ``day`` holds at least one file."""
    lake = Lake(settings.lake)
    folder = lake.partition_path(RAW_EVENTS, day)
    return lake.exists(folder) and bool(lake.visible_files(folder))


def features_folders(settings: Settings, day: date) -> list[str]:
    lake = Lake(settings.lake)
    return [lake.partition_path(table, day) for table in FEATURE_TABLES]


def features_ready(settings: Settings, day: date) -> bool:
    lake = Lake(settings.lake)
    return all(lake.is_complete(table, day) for table in FEATURE_TABLES)


# Training cadence -----------------------------------------------------------------
@dataclass(frozen=True)
class TrainingDecision:
    train: bool
    reason: str


def champion_trained_as_of(settings: Settings) -> tuple[str, date | None] | None:
    """(version, the date its training data ends) of the current champion; None without one."""
    from recsys_core.io.registry import champion
    from recsys_core.models.bundle import bundle_trained_as_of

    current = champion(settings, settings.work_dir / "registry")
    if current is None:
        return None
    return current.version, bundle_trained_as_of(current.bundle_dir)


def training_decision(settings: Settings, run_date: date, *, requested: bool) -> TrainingDecision:
    """Train when asked by hand, when there is no champion, or when the champion is due for renewal."""
    if requested:
        return TrainingDecision(True, "triggered by hand")
    current = champion_trained_as_of(settings)
    if current is None:
        return TrainingDecision(True, f"no model holds @{settings.registry.champion_alias} yet")
    version, as_of = current
    if as_of is None:
        return TrainingDecision(True, f"champion v{version} does not record the date it was trained as of")
    every = settings.orchestration.train_every_days
    age = (run_date - as_of).days
    if age < 0:
        return TrainingDecision(False, f"champion v{version} was trained as of {as_of}, after this run date {run_date}")
    if age >= every:
        return TrainingDecision(
            True, f"champion v{version} was trained as of {as_of}, {age} days before {run_date} (every {every} days)"
        )
    return TrainingDecision(
        False,
        f"champion v{version} was trained as of {as_of}, {age} days before {run_date}; next due {as_of + timedelta(days=every)}",
    )


def refresh_date(settings: Settings, trained_as_of: date) -> date:
    """The night a new champion re-publishes: the latest published one if it is newer, else its own date."""
    reader = RecommendationReader(settings)
    if reader.dates():
        latest = date.fromisoformat(reader.latest_date())
        if latest > trained_as_of and features_ready(settings, latest):
            return latest
    return trained_as_of


# Asset events -----------------------------------------------------------------------
def _partition_summary(lake: Lake, table, day: date) -> dict:
    path = lake.partition_path(table, day)
    return {"path": path, "rows": lake.read_manifest(path)["rows"]}


def features_event(settings: Settings, day: date) -> dict:
    lake = Lake(settings.lake)
    return {"run_date": day.isoformat(), **{table.name: _partition_summary(lake, table, day) for table in FEATURE_TABLES}}


def model_event(settings: Settings, day: date) -> dict:
    """The decision of the training of ``day``, and the night a promotion refreshes."""
    from recsys_core.stages.train import workspace

    summary = json.loads((workspace(settings, day) / "summary.json").read_text())
    return {
        "run_date": refresh_date(settings, day).isoformat(),
        "trained_as_of": day.isoformat(),
        "model_name": summary["model_name"],
        "model_version": summary["model_version"],
        "promoted": summary["promoted"],
        "gate": summary["gate"],
    }


def recommendations_event(settings: Settings, day: date) -> dict:
    manifest = RecommendationReader(settings).manifest(day)
    return {
        "run_date": day.isoformat(),
        "path": Lake(settings.lake).partition_path(RECOMMENDATIONS, day),
        "rows": manifest["rows"],
        "users": manifest["users"],
        "model_name": manifest["model_name"],
        "model_version": manifest["model_version"],
    }
