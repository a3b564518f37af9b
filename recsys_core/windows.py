"""The time windows the feature tables carry, in one place.

The contracts (recsys_core.contracts) build the ``pop_<n>d`` and ``n_events_<n>d`` columns from
these, and the configuration (recsys_core.config) accepts only these windows, so a window the
tables do not carry is rejected when the configuration is loaded, not after training.
No pyarrow here: config.py is imported by every DAG parse.
"""

from __future__ import annotations

# item_features.pop_<n>d: an item's events in the n days before the as-of date (trend windows among them).
POPULARITY_WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)
# user_profiles.n_events_<n>d: a user's events in the n days before the as-of date.
ACTIVITY_WINDOWS_DAYS: tuple[int, ...] = (1, 7, 30)


def popularity_column(days: int) -> str:
    return f"pop_{days}d"


def activity_column(days: int) -> str:
    return f"n_events_{days}d"
