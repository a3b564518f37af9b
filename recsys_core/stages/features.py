"""Stage 1b: user profiles and item features as of a date, from interactions up to its end."""

from __future__ import annotations

import logging
import time
from datetime import date
from functools import partial

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, RAW_ITEMS, RAW_USERS, USER_PROFILES, spark_conform
from recsys_core.features.ingest import end_of_day
from recsys_core.features.items import item_features
from recsys_core.features.profiles import user_profiles
from recsys_core.features.text import EMBEDDINGS_SCHEMA, embed_batches
from recsys_core.io.lake import Lake
from recsys_core.io.tables import ingests_as_of, snapshot_path, spark_interactions

log = logging.getLogger(__name__)

EMBEDDING_CACHE = "embeddings_cache"


def run_features(settings: Settings, as_of: date, spark=None) -> dict:
    from recsys_core.io.spark import spark_session

    started = time.monotonic()
    lake = Lake(settings.lake)
    spark = spark or spark_session(settings, f"features-{as_of}")
    interactions = spark_interactions(spark, lake, as_of, settings.ingest.lateness_days).persist()
    users = spark.read.parquet(lake.spark_uri(snapshot_path(lake, RAW_USERS, as_of)))
    items = spark.read.parquet(lake.spark_uri(snapshot_path(lake, RAW_ITEMS, as_of)))
    end = end_of_day(as_of)
    lineage = {
        "as_of": as_of.isoformat(),
        "interaction_ingests": [d.isoformat() for d in ingests_as_of(lake, as_of, settings.ingest.lateness_days)],
        "users_snapshot": snapshot_path(lake, RAW_USERS, as_of),
        "items_snapshot": snapshot_path(lake, RAW_ITEMS, as_of),
    }
    try:
        n_interactions = interactions.count()
        profiles = user_profiles(interactions, users, items, end, settings.features)
        features = item_features(interactions, items, end, settings.features)
        if settings.features.text_embeddings:
            features = _with_text_embeddings(spark, lake, features, settings)
        else:
            from pyspark.sql import functions as F

            features = features.withColumn("text_embedding", F.lit(None).cast("array<float>"))
        n_users = _publish(lake, USER_PROFILES, as_of, profiles, lineage)
        n_items = _publish(lake, ITEM_FEATURES, as_of, features, lineage)
    finally:
        interactions.unpersist()
    summary = {
        "as_of": as_of.isoformat(),
        "interactions": n_interactions,
        "user_profiles": n_users,
        "item_features": n_items,
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info(
        "features as of %s: %d interactions -> %d user profiles, %d item features in %.1fs",
        as_of, n_interactions, n_users, n_items, summary["seconds"],
    )  # fmt: skip
    return summary


def _publish(lake: Lake, contract, as_of: date, df, lineage: dict) -> int:
    staged = lake.new_staging_path(contract, f"dt={as_of}")
    spark_conform(df, contract).coalesce(1).sortWithinPartitions(df.columns[0]).write.mode("overwrite").parquet(
        lake.spark_uri(staged)
    )
    lake.drop_spark_markers(staged)
    return lake.read_manifest(lake.publish(contract, as_of, staged, {"lineage": lineage}))["rows"]


def _with_text_embeddings(spark, lake: Lake, features, settings: Settings):
    """Join cached embeddings by content hash; embed (and cache) only texts not seen before."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    model = settings.features.text_model
    text = F.concat_ws(". ", F.col("title"), F.array_join(F.col("genres"), ", "))
    keyed = features.withColumn("_text", text).withColumn("content_hash", F.sha2(F.concat(F.lit(model + "\x00"), "_text"), 256))
    cache_dir = lake.path(EMBEDDING_CACHE, f"model={model}")
    schema = from_arrow_schema(EMBEDDINGS_SCHEMA)
    cached = (
        spark.read.schema(schema).parquet(lake.spark_uri(cache_dir))
        if lake.exists(cache_dir) and lake.data_files(cache_dir)
        else spark.createDataFrame([], schema)
    )
    missing = (
        keyed.select("content_hash", F.col("_text").alias("text"))
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
        log.info("embedded %d new item texts with %s in %.1fs (cache: %s)", n_missing, model, time.monotonic() - started, cache_dir)
        cached = spark.read.schema(schema).parquet(lake.spark_uri(cache_dir))
    else:
        log.info("all item texts found in the embedding cache (%s)", cache_dir)
    return keyed.join(cached.dropDuplicates(["content_hash"]), "content_hash", "left").drop("_text", "content_hash")
