"""Reading published recommendations: only complete partitions are ever visible."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS
from recsys_core.errors import DataError, MissingInput
from recsys_core.io.lake import Lake

LATEST = "_latest.json"


class UnknownUser(DataError, ValueError):
    """The published list of the date has no rows for the user."""

    hint = "check the user id: only users known on that date (in user_profiles) get a list"


class RecommendationReader:
    def __init__(self, settings: Settings):
        self.lake = Lake(settings.lake)

    def dates(self) -> list[str]:
        """Dates with a complete (manifested) partition, oldest first."""
        return self.lake.partitions(RECOMMENDATIONS)

    def latest_date(self) -> str:
        pointer = self.lake.path(RECOMMENDATIONS.name, LATEST)
        if self.lake.exists(pointer):
            dt = self.lake.read_json(pointer)["dt"]
            if self.lake.is_complete(RECOMMENDATIONS, dt):
                return dt
        dates = self.dates()
        if not dates:
            raise MissingInput(
                f"no published recommendations under {self.lake.table_path(RECOMMENDATIONS)}",
                hint="run `recsys recommend --date D`",
            )
        return dates[-1]

    def manifest(self, dt: date | str | None = None) -> dict:
        value = str(dt) if dt else self.latest_date()
        return self.lake.read_manifest(self.lake.partition_path(RECOMMENDATIONS, value))

    def table(self, dt: date | str | None = None, user_id: str | None = None) -> pa.Table:
        value = str(dt) if dt else self.latest_date()
        path = self.lake.require_partition(RECOMMENDATIONS, value, hint="pick a date from `dates()`")
        flt = pc.field("user_id") == user_id if user_id is not None else None
        return pq.read_table(self.lake.data_files(path), filesystem=self.lake.fs, filters=flt).sort_by(
            [("user_id", "ascending"), ("rank", "ascending")]
        )

    def for_user(self, user_id: str, dt: date | str | None = None) -> tuple[str, list[dict]]:
        """(date, rows) of one user's list, with item titles when the features of that date are there.

        Each row carries the contract's columns, ``reason_item_id`` and ``reason`` included (None on
        nights published before the contract had them), and ``title``."""
        value = str(dt) if dt else self.latest_date()
        rows = self.table(value, user_id).to_pylist()
        if not rows:
            raise UnknownUser(f"user {user_id!r} has no recommendations on {value}")
        titles = self._titles(value)
        for row in rows:
            row.setdefault("reason_item_id", None)
            row.setdefault("reason", None)
            row["title"] = titles.get(row["item_id"])
        return value, rows

    def _titles(self, value: str) -> dict[str, str]:
        path = self.lake.partition_path(ITEM_FEATURES, value)
        if not self.lake.exists(path):
            return {}
        items = pq.read_table(self.lake.data_files(path), filesystem=self.lake.fs, columns=["item_id", "title"])
        return dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist()))
