"""Item features as of a date (Spark transformations, point-in-time correct)."""

from __future__ import annotations

from datetime import datetime

from recsys_core.config import FeatureSettings
from recsys_core.windows import popularity_column


def item_features(interactions, items, as_of_end: datetime, settings: FeatureSettings):
    """interactions (as of), items snapshot → one row per catalogue item.

    The catalogue is the snapshot plus any item seen in events (those get no
    title or genres but are still scorable). Trend compares the daily rate of
    the short window with that of the long window: above 1 means rising.
    ``description`` is passed through for the text embedding (it is not a
    column of the contract).
    """
    from pyspark.sql import functions as F

    end = F.lit(as_of_end)

    def window_count(days: int):
        return F.sum(F.when(F.col("event_ts") >= end - F.expr(f"INTERVAL {days} DAYS"), 1).otherwise(0)).cast("long")

    windows = sorted(set(settings.popularity_windows_days))  # the trend windows are among them (config checks)
    popularity = interactions.groupBy("item_id").agg(
        F.count("*").alias("pop_all"),
        F.min("event_ts").alias("first_seen_ts"),
        *[window_count(d).alias(popularity_column(d)) for d in windows],
    )
    short, long_ = settings.trend_windows
    catalogue = items.select("item_id", "title", "description", "genres", "release_date")
    seen_only = interactions.select("item_id").distinct().join(catalogue.select("item_id"), "item_id", "left_anti")
    catalogue = catalogue.unionByName(seen_only, allowMissingColumns=True)
    pop_cols = {popularity_column(d): 0 for d in windows}
    return (
        catalogue.join(popularity, "item_id", "left")
        .fillna({"pop_all": 0, **pop_cols})
        .withColumn(
            "trend",
            ((F.col(popularity_column(short)) + 1) / F.lit(short)) / ((F.col(popularity_column(long_)) + 1) / F.lit(long_)),
        )
        .withColumn(
            "days_since_first_seen",
            (F.unix_micros(end) - F.unix_micros("first_seen_ts")) / F.lit(86_400_000_000.0),
        )
        .withColumn("release_year", F.regexp_extract("release_date", r"(\d{4})", 1).try_cast("int"))
        .withColumn("genres", F.coalesce("genres", F.array().cast("array<string>")))
        .drop("release_date")
    )
