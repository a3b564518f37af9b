"""Day arithmetic shared by every layer: UTC day bounds and epoch days.

It depends on nothing else in the package, so io, features, training and the stages can all use it
without importing one another.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

SECONDS_PER_DAY = 86_400


def end_of_day(day: date) -> datetime:
    """The exclusive upper bound of a UTC day: events strictly before it belong to it or earlier."""
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)


def epoch_day(moment: datetime) -> int:
    """Days since 1970-01-01 (UTC) of ``moment``."""
    return int(moment.timestamp()) // SECONDS_PER_DAY
