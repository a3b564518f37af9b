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
    # The last N events come from the same aggregate (a sort of each user's own events), not from a
    # window over every event (a sort of all of them): newest first, then reversed into a timeline.
    newest_first = F.sort_array(F.collect_list(F.struct("event_ts", "source_file", "line_no", "item_id")), asc=False)
    activity = (
        interactions.groupBy("user_id")
        .agg(
            *counts,
            F.reverse(F.slice(newest_first, 1, settings.recent_items)).getField("item_id").alias("recent_items"),
            # A set per user, not countDistinct: that would expand every row once per distinct aggregate.
            F.size(F.collect_set(F.to_date("event_ts"))).cast("long").alias("active_days"),
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
    known = users.select("user_id").union(interactions.select("user_id")).distinct()
    zero = {activity_column(d): 0 for d in settings.activity_windows_days}
    return (
        known.join(activity, "user_id", "left")
        .join(by_type, "user_id", "left")
        .join(affinity, "user_id", "left")
        .join(users.select("user_id", "age", "gender", "occupation"), "user_id", "left")
        .fillna({"n_events": 0, "active_days": 0, **zero})
        .withColumn("events_by_type", F.coalesce("events_by_type", F.create_map().cast("map<string,bigint>")))
        .withColumn("genre_affinity", F.coalesce("genre_affinity", F.create_map().cast("map<string,double>")))
        .withColumn("recent_items", F.coalesce("recent_items", F.array().cast("array<string>")))
    )
