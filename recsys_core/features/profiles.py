"""User profiles as of a date (Spark transformations, point-in-time correct).

The caller passes only interactions with event time before the end of the
as-of day; nothing here looks at the wall clock.
"""

from __future__ import annotations

from datetime import datetime

from recsys_core.config import FeatureSettings
from recsys_core.windows import activity_column


def user_profiles(interactions, users, items, as_of_end: datetime, settings: FeatureSettings):
    """interactions (as of), users snapshot, items snapshot → one row per known user.

    Known users are those in the snapshot or with any event. The last-N item
    sequence is ordered by event time, ties broken by source file then line
    (the order the events arrived in), so it is deterministic.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    end = F.lit(as_of_end)
    counts = [F.count("*").alias("n_events")]
    for days in settings.activity_windows_days:
        counts.append(
            F.sum(F.when(F.col("event_ts") >= end - F.expr(f"INTERVAL {days} DAYS"), 1).otherwise(0))
            .cast("long")
            .alias(activity_column(days))
        )
    activity = (
        interactions.groupBy("user_id")
        .agg(
            *counts,
            F.countDistinct(F.to_date("event_ts")).alias("active_days"),
            F.min("event_ts").alias("first_event_ts"),
            F.max("event_ts").alias("last_event_ts"),
            # The values are summed in sorted order, so the mean does not depend on how the
            # rows happen to be partitioned (a float sum does): reruns give identical bits.
            F.try_divide(
                F.aggregate(F.array_sort(F.collect_list("value")), F.lit(0.0).cast("double"), lambda acc, x: acc + x),
                F.count("value"),
            ).alias("mean_value"),
        )
        .withColumn(
            "days_since_last_event",
            (F.unix_micros(end) - F.unix_micros("last_event_ts")) / F.lit(86_400_000_000.0),
        )
    )
    by_type = (
        interactions.groupBy("user_id", "event_type")
        .count()
        .groupBy("user_id")
        # Entries sorted by type: the map's order does not depend on the shuffle.
        .agg(
            F.map_from_entries(F.array_sort(F.collect_list(F.struct("event_type", F.col("count").cast("long"))))).alias(
                "events_by_type"
            )
        )
    )
    genre_counts = (
        interactions.join(items.select("item_id", F.explode("genres").alias("genre")), "item_id")
        .groupBy("user_id", "genre")
        .count()
    )
    totals = Window.partitionBy("user_id")
    affinity = (
        genre_counts.withColumn("share", F.col("count") / F.sum("count").over(totals))
        .groupBy("user_id")
        .agg(F.map_from_entries(F.array_sort(F.collect_list(F.struct("genre", "share")))).alias("genre_affinity"))
    )
    latest_first = Window.partitionBy("user_id").orderBy(
        F.col("event_ts").desc(), F.col("source_file").desc(), F.col("line_no").desc()
    )
    recent = (
        interactions.withColumn("pos", F.row_number().over(latest_first))
        .where(F.col("pos") <= settings.recent_items)
        .groupBy("user_id")
        # Oldest first, so the list reads as the user's timeline.
        .agg(F.sort_array(F.collect_list(F.struct(F.col("pos").alias("neg"), "item_id")), asc=False).alias("seq"))
        .select("user_id", F.col("seq.item_id").alias("recent_items"))
    )
    known = users.select("user_id").union(interactions.select("user_id")).distinct()
    zero = {activity_column(d): 0 for d in settings.activity_windows_days}
    return (
        known.join(activity, "user_id", "left")
        .join(by_type, "user_id", "left")
        .join(affinity, "user_id", "left")
        .join(recent, "user_id", "left")
        .join(users.select("user_id", "age", "gender", "occupation"), "user_id", "left")
        .fillna({"n_events": 0, "active_days": 0, **zero})
        .withColumn("events_by_type", F.coalesce("events_by_type", F.create_map().cast("map<string,bigint>")))
        .withColumn("genre_affinity", F.coalesce("genre_affinity", F.create_map().cast("map<string,double>")))
        .withColumn("recent_items", F.coalesce("recent_items", F.array().cast("array<string>")))
    )
