"""Stage 1b: user profiles and item features as of a date, from interactions up to its end."""

from __future__ import annotations

import logging
import time
from datetime import date
from functools import partial

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, RAW_ITEMS, RAW_USERS, USER_PROFILES, spark_conform
from recsys_core.features.checks import spark_check, staged_frame
from recsys_core.features.items import item_features
from recsys_core.features.profiles import user_profiles
from recsys_core.features.text import EMBEDDINGS_SCHEMA, embed_batches
from recsys_core.io.lake import Lake
from recsys_core.io.tables import required_ingests, snapshot_path, spark_interactions
from recsys_core.timeutil import end_of_day

log = logging.getLogger(__name__)

EMBEDDING_CACHE = "embeddings_cache"
# The interaction columns that profiles and item features read: only these are cached, not the
# event ids and the raw lines' extra fields, which would double what every aggregate scans. The
# cache is partitioned and sorted by user, so that every per-user aggregate and their joins need
# no shuffle of their own, and their sorts by user find the rows in order.
FEATURE_INPUTS = ("user_id", "item_id", "event_type", "event_ts", "value", "source_file", "line_no")


def run_features(settings: Settings, as_of: date, spark=None) -> dict:
    from recsys_core.io.spark import spark_session
    from recsys_core.io.spark_progress import spark_progress

    started = time.monotonic()
    lake = Lake(settings.lake)
    spark = spark or spark_session(settings, f"features-{as_of}")
    # Listed once: the lineage names exactly what is read.
    ingests = required_ingests(lake, as_of, settings.ingest.lateness_days)
    users_path, items_path = snapshot_path(lake, RAW_USERS, as_of), snapshot_path(lake, RAW_ITEMS, as_of)
    interactions = spark_interactions(spark, lake, as_of, ingests).select(*FEATURE_INPUTS)
    interactions = interactions.repartition("user_id").sortWithinPartitions("user_id").persist()
    users = spark.read.parquet(lake.spark_uri(users_path))
    items = spark.read.parquet(lake.spark_uri(items_path))
    end = end_of_day(as_of)
    lineage = {
        "as_of": as_of.isoformat(),
        "interaction_ingests": [d.isoformat() for d in ingests],
        "users_snapshot": users_path,
        "items_snapshot": items_path,
    }
    staged: dict = {}
    with spark_progress(spark, f"features as of {as_of}"):
        try:
            n_interactions = interactions.count()
            profiles = user_profiles(interactions, users, items, end, settings.features)
            features = item_features(interactions, items, end, settings.features)
            embedded = 0
            if settings.features.text_embeddings:
                features, embedded = _with_text_embeddings(spark, lake, features, settings)
            else:
                from pyspark.sql import functions as F

                features = features.withColumn("text_embedding", F.lit(None).cast("array<float>"))
            # Both tables are written and checked before either is published, so a failed
            # check leaves the previous partitions of both in place.
            staged[USER_PROFILES] = _stage(lake, USER_PROFILES, as_of, profiles)
            staged[ITEM_FEATURES] = _stage(lake, ITEM_FEATURES, as_of, features)
            rows = {contract: _check_staged(spark, lake, contract, as_of, path) for contract, path in staged.items()}
            for contract in (USER_PROFILES, ITEM_FEATURES):
                lake.publish(contract, as_of, staged.pop(contract), {"lineage": lineage})
            n_users, n_items = rows[USER_PROFILES], rows[ITEM_FEATURES]
        finally:
            interactions.unpersist()
            for path in staged.values():
                if lake.exists(path):
                    lake.fs.delete_dir(path)
    summary = {
        "as_of": as_of.isoformat(),
        "interactions": n_interactions,
        "user_profiles": n_users,
        "item_features": n_items,
        "embedded_new_texts": embedded,
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info(
        "features as of %s: %d interactions -> %d user profiles, %d item features (%d texts embedded) in %.1fs",
        as_of,
        n_interactions,
        n_users,
        n_items,
        embedded,
        summary["seconds"],
    )
    return summary


def _stage(lake: Lake, contract, as_of: date, df) -> str:
    """Write a features table to staging: every task writes its own file, sorted by the key (no single-task stage)."""
    staged = lake.new_staging_path(contract, f"dt={as_of}")
    key = contract.columns[0]
    # Range-partitioned by the key, so that the files are ordered and a rerun writes the same rows to the same files.
    # The range bounds come from a sample, a job of their own: cached, the table is computed once for both.
    conformed = spark_conform(df, contract).persist()
    try:
        conformed.repartitionByRange(key).sortWithinPartitions(key).write.mode("overwrite").parquet(lake.spark_uri(staged))
    finally:
        conformed.unpersist()
    lake.drop_spark_markers(staged)
    return staged


def _check_staged(spark, lake: Lake, contract, as_of: date, staged: str) -> int:
    """The data checks of a staged features partition (with its dt), as Spark aggregates, before it is published."""
    uri = lake.spark_uri(staged) if lake.data_files(staged) else None
    return spark_check(staged_frame(spark, uri, contract, {"dt": as_of}), contract, where=f"dt={as_of}, staged")


def _with_text_embeddings(spark, lake: Lake, features, settings: Settings):
    """Join cached embeddings by content hash; embed (and cache) only texts not seen before.

    The text of an item is ``recsys_core.features.text.item_text`` (title,
    description, genres); an item without any has no embedding. Returns the
    features with ``text_embedding`` and the number of texts embedded now.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    model = settings.features.text_model
    keyed = features.withColumn("_text", spark_item_text()).withColumn(
        "content_hash", F.when(F.col("_text") != "", F.sha2(F.concat(F.lit(model + "\x00"), "_text"), 256))
    )
    cache_dir = lake.path(EMBEDDING_CACHE, f"model={model}")
    schema = from_arrow_schema(EMBEDDINGS_SCHEMA)
    cached = (
        spark.read.schema(schema).parquet(lake.spark_uri(cache_dir))
        if lake.exists(cache_dir) and lake.data_files(cache_dir)
        else spark.createDataFrame([], schema)
    )
    missing = (
        keyed.where(F.col("content_hash").isNotNull())
        .select("content_hash", F.col("_text").alias("text"))
        .dropDuplicates(["content_hash"])
        .join(cached.select("content_hash"), "content_hash", "left_anti")
    )
    n_missing = missing.count()
    if n_missing:
        started = time.monotonic()
        fresh = missing.repartition(max(1, min(4, n_missing // 500))).mapInArrow(
            partial(embed_batches, model=model, batch_size=settings.features.embedding_batch_size), schema
        )
        staged = lake.new_staging_path(ITEM_FEATURES, "embeddings")
        fresh.write.mode("overwrite").parquet(lake.spark_uri(staged))
        lake.fs.create_dir(cache_dir, recursive=True)
        for path in lake.data_files(staged):
            lake.fs.copy_file(path, f"{cache_dir}/{int(time.time() * 1000)}-{path.rsplit('/', 1)[-1]}")
        lake.fs.delete_dir(staged)
        log.info(
            "embedded %d new item texts with %s in %.1fs (cache: %s)", n_missing, model, time.monotonic() - started, cache_dir
        )
        cached = spark.read.schema(schema).parquet(lake.spark_uri(cache_dir))
    else:
        log.info("all item texts found in the embedding cache (%s)", cache_dir)
    joined = keyed.join(cached.dropDuplicates(["content_hash"]), "content_hash", "left").drop("_text", "content_hash")
    return joined, n_missing


def spark_item_text():
    """``item_text(title, description, genres)`` as a Spark column: the non-empty parts joined by ". "."""
    from pyspark.sql import functions as F

    genres = F.array_join(F.coalesce(F.col("genres"), F.array().cast("array<string>")), ", ")
    parts = F.array(F.col("title"), F.col("description"), genres)
    return F.array_join(F.filter(parts, lambda p: p.isNotNull() & (p != "")), ". ")
