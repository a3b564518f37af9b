"""Stage 3: the nightly job. Score every known user with the champion and publish the top-K.

- Scoring: the "local" engine (one process, torch) or the "spark" engine (user
  batches scored by Spark tasks with the same kernel); ``serve.engine`` selects,
  both publish the same table.
- Exclusions: items the user interacted with, items listed in
  ``serve.unavailable_items``, and items whose status column (if the item
  features carry one) says they are not available.
- Cold start: users without history but with a profile are scored by the
  model (source "model"); users with neither get the trending items (source
  "fallback"); items without interactions are scored through their content.
- Optional MMR diversity re-rank by genre (``serve.mmr_lambda``).
- Publishing: the table is validated, written to staging, read back and
  checked, then swapped into ``recommendations/dt=D/`` with its manifest; the
  ``latest`` pointer moves last. A rerun whose rows are identical (same
  ``content_digest``) leaves the published partition untouched, generated_at
  included. A killed run leaves every earlier night untouched; its leftovers
  are cleaned by the next run of the same date.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import torch

from recsys_core.config import ServeSettings, Settings
from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.errors import RegistryError
from recsys_core.evaluation import metrics as M
from recsys_core.io.lake import STAGING, TRASH, Lake, partition_name
from recsys_core.io.recommendations import LATEST
from recsys_core.io.tables import ingests_as_of, read_interactions, spark_interactions
from recsys_core.models.bundle import ModelBundle, bundle_trained_as_of
from recsys_core.serving.output import build_table, combine_digests, content_digest, format_report
from recsys_core.serving.rerank import category_matrix
from recsys_core.serving.score import recommend_top_k, score_top_k, seen_matrix
from recsys_core.serving.validate import InvalidRecommendations, validate_recommendations, validate_spark_recommendations
from recsys_core.timeutil import end_of_day
from recsys_core.windows import popularity_column

log = logging.getLogger(__name__)


def run_recommend(settings: Settings, run_date: date, spark=None) -> dict:
    from recsys_core.io.registry import champion

    started = time.monotonic()
    lake = Lake(settings.lake)
    serve = settings.serve
    k = serve.top_k
    current = champion(settings, settings.work_dir / "registry")
    if current is None:
        raise RegistryError(f"no model holds @{settings.registry.champion_alias} for {settings.train.model_name}")
    tidy_leftovers(lake, run_date)
    bundle = ModelBundle.load(current.bundle_dir)
    trained_as_of = bundle_trained_as_of(current.bundle_dir)
    if trained_as_of and trained_as_of > run_date:
        log.warning(
            "%s v%s was trained on events up to the end of %s, after this run date %s: "
            "this night is scored by a model that saw later data (a backfill with today's champion)",
            current.name,
            current.version,
            trained_as_of,
            run_date,
        )
    interactions = read_interactions(
        lake, run_date, settings.ingest.lateness_days, columns=["user_id", "item_id", "event_ts", "source_file", "line_no"]
    )
    profiles = lake.read_partition(USER_PROFILES, run_date).sort_by("user_id")
    items = lake.read_partition(ITEM_FEATURES, run_date)
    catalogue, excluded = available_catalogue(items, serve)
    catalogue_ids = catalogue["item_id"].to_pylist()

    # The list is read from the end of the run date on: that is when each user's recency is taken.
    user_ids, _, inputs = bundle.user_inputs(interactions, profiles, now=int(end_of_day(run_date).timestamp()))
    # One popularity snapshot (the run date's item features) for every user: the matrix-product form of the score.
    scorer = bundle.scorer(inputs, catalogue, batch=serve.score_batch_users)
    seen = seen_matrix(user_ids, catalogue_ids, interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist())
    has_history = np.asarray(seen.sum(axis=1)).ravel() > 0
    has_profile = (inputs.user_feats > 0).any(dim=1).numpy()
    use_model = has_history | has_profile
    log.info(
        "scoring %d users (%d with history, %d profile only, %d fallback) over %d items (%d unavailable excluded) "
        "with %s v%s on the %s engine",
        len(user_ids),
        int(has_history.sum()),
        int((~has_history & has_profile).sum()),
        int((~use_model).sum()),
        len(catalogue_ids),
        len(excluded),
        current.name,
        current.version,
        serve.engine,
    )

    model_rows = np.flatnonzero(use_model)
    categories = category_matrix(catalogue["genres"].to_pylist()) if serve.mmr_lambda is not None else None
    trending = catalogue[popularity_column(settings.train.trending_window_days)].to_numpy().astype(np.float32)
    trending = trending + catalogue["pop_all"].to_numpy().astype(np.float32) * 1e-6  # all-time breaks ties
    generated_at = datetime.now(UTC).replace(microsecond=0)
    target = lake.partition_path(RECOMMENDATIONS, run_date)
    scoring_started = time.monotonic()
    staged: str | None = None
    if serve.engine == "spark":
        # Executors score, write and check the night; only aggregates come back.
        staged = lake.new_staging_path(RECOMMENDATIONS, partition_name("dt", run_date))
        try:
            digest, item_counts = _stage_on_spark(
                settings,
                lake,
                run_date,
                spark,
                staged,
                user_ids,
                use_model,
                scorer,
                catalogue_ids,
                seen,
                categories,
                trending,
                {"model_name": current.name, "model_version": current.version, "generated_at": generated_at},
            )
        except BaseException:
            lake.fs.delete_dir(staged)
            raise
        scoring_seconds = time.monotonic() - scoring_started
        rows = len(user_ids) * k
    else:
        top_items = np.empty((len(user_ids), k), dtype=np.int64)
        top_scores = np.empty((len(user_ids), k), dtype=np.float32)
        if len(model_rows):
            top_items[model_rows], top_scores[model_rows] = score_users(
                settings, scorer.user_vectors(model_rows), scorer.item_matrix(), seen[model_rows], categories
            )
        fallback_rows = np.flatnonzero(~use_model)
        if len(fallback_rows):
            top_items[fallback_rows], top_scores[fallback_rows] = score_top_k(
                torch.ones(len(fallback_rows), 1), torch.as_tensor(trending).unsqueeze(1), k, exclude=seen[fallback_rows]
            )
        scoring_seconds = time.monotonic() - scoring_started
        table = build_table(
            user_ids,
            catalogue_ids,
            top_items,
            top_scores,
            np.where(use_model, "model", "fallback"),
            current.name,
            current.version,
            generated_at,
        )
        validate_recommendations(table, k=k, users=user_ids, catalogue=set(catalogue_ids), seen=_seen_sets(interactions))
        digest = content_digest(table)
        item_counts = np.bincount(top_items.ravel(), minlength=len(catalogue_ids))
        rows = table.num_rows

    report = nightly_report(item_counts, k, use_model, catalogue, has_history=has_history, unavailable=len(excluded))
    previous = lake.read_manifest(target) if lake.is_complete(RECOMMENDATIONS, run_date) else None
    unchanged = previous is not None and previous.get("content_digest") == digest
    if unchanged and previous is not None:
        log.info(
            "unchanged: %s already holds these rows (content_digest %s); left as published at %s",
            target,
            digest[:12],
            previous.get("created_at"),
        )
        rows = previous["rows"]
        if staged is not None:
            lake.fs.delete_dir(staged)
    else:
        if staged is None:
            staged = lake.new_staging_path(RECOMMENDATIONS, partition_name("dt", run_date))
            lake.write_parquet(table, staged)
            _check_staged(lake, staged, table.num_rows, digest)
        manifest = {
            "users": len(user_ids),
            "k": k,
            "model_name": current.name,
            "model_version": current.version,
            "mlflow_run_id": current.run_id,
            "model_trained_as_of": trained_as_of.isoformat() if trained_as_of else None,
            "model_train_cutoff": end_of_day(trained_as_of).isoformat() if trained_as_of else None,
            "content_digest": digest,
            "engine": serve.engine,
            "mmr_lambda": serve.mmr_lambda,
            "input_partitions": {
                "interactions_ingests": [d.isoformat() for d in ingests_as_of(lake, run_date, settings.ingest.lateness_days)],
                "user_profiles": lake.partition_path(USER_PROFILES, run_date),
                "item_features": lake.partition_path(ITEM_FEATURES, run_date),
            },
            "report": report,
        }
        lake.publish(RECOMMENDATIONS, run_date, staged, manifest)
    moved = _update_latest(lake, run_date, target)
    dropped = lake.drop_partitions_older_than(RECOMMENDATIONS, serve.keep_days)
    seconds = round(time.monotonic() - started, 1)
    log.info(
        "%s", format_report(report, title=f"nightly report {run_date} ({current.name} v{current.version}, {serve.engine} engine)")
    )
    _log_nightly(settings, run_date, report, item_counts, k, catalogue, current, seconds, unchanged=unchanged)
    summary = {
        "dt": run_date.isoformat(),
        "path": target,
        "rows": rows,
        "users": len(user_ids),
        "k": k,
        "model": f"{current.name} v{current.version}",
        "engine": serve.engine,
        "status": "unchanged" if unchanged else "published",
        "content_digest": digest,
        "latest_moved": moved,
        **report,
        "dropped_partitions": dropped,
        "scoring_seconds": round(scoring_seconds, 2),
        "seconds": seconds,
    }
    log.info(
        "%s %d rows for %d users to %s (catalogue coverage %.1f%%, fallback users %d) in %.1fs",
        "kept" if unchanged else "published",
        rows,
        len(user_ids),
        target,
        100 * report["catalogue_coverage"],
        report["fallback_users"],
        seconds,
    )
    return summary


# Scoring ------------------------------------------------------------------------
def score_users(
    settings: Settings, vectors: torch.Tensor, item_matrix: torch.Tensor, exclude, categories: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-K item columns and scores for model users on the local engine."""
    serve = settings.serve
    return recommend_top_k(
        vectors,
        item_matrix,
        serve.top_k,
        exclude=exclude,
        batch_users=serve.score_batch_users,
        mmr_lambda=serve.mmr_lambda,
        categories=categories,
        pool_factor=serve.mmr_pool_factor,
    )


def _stage_on_spark(
    settings: Settings,
    lake: Lake,
    run_date: date,
    spark,
    staged: str,
    user_ids: list[str],
    use_model: np.ndarray,
    scorer,
    catalogue_ids: list[str],
    seen,
    categories: np.ndarray | None,
    trending: np.ndarray,
    constants: dict[str, Any],
) -> tuple[str, np.ndarray]:
    """The Spark engine: executors score and write ``staged``, then check it; returns (content_digest, item counts)."""
    from pyspark.sql import SparkSession

    from recsys_core.io.spark import spark_session
    from recsys_core.serving.spark_score import spark_write_top_k, write_score_inputs

    serve = settings.serve
    session, owned = spark, False
    if session is None:
        owned = SparkSession.getActiveSession() is None
        session = spark_session(settings, f"recommend-{run_date}")
    inputs = f"{staged}.inputs"
    try:
        model_rows = np.flatnonzero(use_model)
        vectors = scorer.user_vectors(model_rows).numpy() if len(model_rows) else np.zeros((0, 1), np.float32)
        dim = vectors.shape[1] if len(model_rows) else scorer.item_matrix().shape[1]
        write_score_inputs(lake.fs, inputs, user_ids, vectors.reshape(len(model_rows), dim), use_model, seen)
        parts = spark_write_top_k(
            session,
            lake.spark_uri(inputs),
            lake.spark_uri(staged),
            catalogue_ids,
            scorer.item_matrix().detach().numpy(),
            serve.top_k,
            trending,
            RECOMMENDATIONS,
            constants,
            batch_users=serve.score_batch_users,
            mmr_lambda=serve.mmr_lambda,
            categories=categories,
            pool_factor=serve.mmr_pool_factor,
        )
        lake.drop_spark_markers(staged)
        written = session.read.parquet(lake.spark_uri(staged))
        ingests = ingests_as_of(lake, run_date, settings.ingest.lateness_days)
        counts = validate_spark_recommendations(
            written,
            k=serve.top_k,
            users=session.read.parquet(lake.spark_uri(inputs)).select("user_id"),
            catalogue=session.createDataFrame([(i,) for i in catalogue_ids], "item_id string"),
            seen=spark_interactions(session, lake, run_date, ingests),
        )
    finally:
        if lake.exists(inputs):
            lake.fs.delete_dir(inputs)
        if owned:
            session.stop()
    item_counts = np.array([counts.get(i, 0) for i in catalogue_ids], dtype=np.int64)
    return combine_digests(parts), item_counts


def available_catalogue(items: pa.Table, serve: ServeSettings) -> tuple[pa.Table, list[str]]:
    """Items that may be recommended (sorted by id), and the ids excluded as unavailable."""
    keep = pa.array(np.ones(items.num_rows, dtype=bool))
    if serve.unavailable_items:
        keep = pc.and_(keep, pc.invert(pc.is_in(items["item_id"], pa.array(sorted(set(serve.unavailable_items)), pa.string()))))
    column = serve.item_status_column
    if column and column in items.column_names:
        status = items[column]
        if pa.types.is_boolean(status.type):
            ok = pc.fill_null(status, True)
        else:
            ok = pc.or_(
                pc.is_null(status), pc.is_in(pc.cast(status, pa.string()), pa.array(serve.available_statuses, pa.string()))
            )
        keep = pc.and_(keep, ok)
    excluded = sorted(items.filter(pc.invert(keep))["item_id"].to_pylist())
    return items.filter(keep).sort_by("item_id"), excluded


def _seen_sets(interactions: pa.Table) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for user, item in zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()):
        seen.setdefault(user, set()).add(item)
    return seen


# Publishing ---------------------------------------------------------------------
def tidy_leftovers(lake: Lake, run_date: date) -> None:
    """Undo or delete what a killed run of this date left behind.

    A run killed between publish's two renames left the previous partition in
    ``_trash``: it is restored. Staging folders of this date and trash copies of
    a partition that is in place are garbage. Other dates' leftovers are not
    touched (a backfill of another date may be running).
    """
    lake.recover(RECOMMENDATIONS, run_date)
    prefix = partition_name("dt", run_date) + "."
    complete = lake.is_complete(RECOMMENDATIONS, run_date)
    for folder in (STAGING, TRASH):
        base = lake.path(RECOMMENDATIONS.name, folder)
        if not lake.exists(base):
            continue
        for info in lake.fs.get_file_info(pafs.FileSelector(base)):
            if info.base_name.startswith(prefix) and (folder == STAGING or complete):
                lake.fs.delete_dir(info.path)
                log.info("removed %s left by an interrupted run", info.path)


def _check_staged(lake: Lake, staged: str, rows: int, digest: str) -> None:
    """Read the staged files back: the bytes on storage must hold exactly the validated rows."""
    import pyarrow.parquet as pq

    files = lake.data_files(staged)
    back = pq.read_table(files, filesystem=lake.fs, partitioning=None) if files else RECOMMENDATIONS.schema.empty_table()
    if back.num_rows != rows or content_digest(back) != digest:
        raise InvalidRecommendations(
            f"staged table {staged} does not read back as written ({back.num_rows} rows, expected {rows})"
        )


def _update_latest(lake: Lake, run_date: date, target: str) -> bool:
    """Point ``latest`` at this night unless a newer complete night is already there (a backfill)."""
    pointer = lake.path(RECOMMENDATIONS.name, LATEST)
    if lake.exists(pointer):
        current = lake.read_json(pointer).get("dt", "")
        newer = lake.is_complete(RECOMMENDATIONS, current) if current else False
        if current == run_date.isoformat() or (newer and current > run_date.isoformat()):
            return False
    lake.write_json(pointer, {"dt": run_date.isoformat(), "path": target, "updated_at": datetime.now(UTC).isoformat()})
    return True


# Report ---------------------------------------------------------------------------
def nightly_report(
    item_counts: np.ndarray,
    k: int,
    use_model: np.ndarray,
    catalogue: pa.Table,
    *,
    has_history: np.ndarray | None = None,
    unavailable: int = 0,
) -> dict:
    """The night's figures from how often each catalogue item is recommended (``item_counts``, catalogue order)."""
    popularity = catalogue["pop_all"].to_numpy().astype(np.float64)
    counts = np.asarray(item_counts, dtype=np.int64)
    slots = int(counts.sum())
    report = {
        "catalogue_coverage": round(float((counts > 0).sum() / len(popularity)), 6) if len(popularity) else 0.0,
        "gini": round(float(M.gini_index(counts)), 6) if slots else float("nan"),
        "head_share": round(float(counts[M.head_items(popularity)].sum() / slots), 6) if slots else float("nan"),
        "fallback_users": int((~use_model).sum()),
        "fallback_share": round(float((~use_model).mean()) if len(use_model) else 0.0, 6),
        "users": len(use_model),
        "users_source_model": int(use_model.sum()),
        "users_source_fallback": int((~use_model).sum()),
        "catalogue_items": int(catalogue.num_rows),
        "unavailable_items": int(unavailable),
    }
    if has_history is not None:
        report["users_model_profile_only"] = int((use_model & ~has_history).sum())
    return report


def _log_nightly(
    settings: Settings,
    run_date: date,
    report: dict,
    item_counts: np.ndarray,
    k: int,
    catalogue,
    current,
    seconds: float,
    unchanged: bool = False,
) -> None:
    import mlflow

    from recsys_core.evaluation.report import popularity_bias_figure
    from recsys_core.io.registry import configure_tracking, log_metrics

    configure_tracking(settings)
    with mlflow.start_run(run_name=f"nightly-{run_date}"):
        mlflow.set_tags(
            {
                "stage": "nightly",
                "dt": run_date.isoformat(),
                "model_name": current.name,
                "model_version": current.version,
                "engine": settings.serve.engine,
                "publish": "unchanged" if unchanged else "published",
            }
        )
        log_metrics({**report, "seconds": seconds})
        popularity = catalogue["pop_all"].to_numpy().astype(np.float64)
        # The figure reads only which items fill the slots: the counts, unrolled.
        slots = np.repeat(np.arange(len(item_counts)), item_counts).reshape(-1, k)
        mlflow.log_figure(
            popularity_bias_figure({f"{current.name} v{current.version}": slots}, popularity, k=k),
            "plots/nightly_popularity.png",
        )
