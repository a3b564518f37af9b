"""Stage 3: the nightly job. Score every known user with the champion and publish the top-K.

- Scoring: the per-user work (encoding, top-K, reasons) is one function,
  ``serving.nightly.score_and_explain``; the "local" engine runs it once in this
  process, the "spark" engine in Spark tasks, one group of users each (whole digest buckets),
  which also write the rows (``serving.spark_score``): the driver builds the item
  side of the score once, copies the champion to the lake, and gets back only
  aggregates. ``serve.engine`` selects; both publish the same table.
- Exclusions: items the user interacted with, items listed in
  ``serve.unavailable_items``, and items whose status column (if the item
  features carry one) says they are not available.
- Cold start: users without history but with a profile are scored by the
  model (source "model"); users with neither get the trending items (source
  "fallback"); items without interactions are scored through their content.
- Optional MMR diversity re-rank by genre (``serve.mmr_lambda``).
- Reasons: each model row names the event of the user's history (up to the run
  date) whose removal lowers that item's score the most (``models.attribution``,
  leave-one-out over the last ``serve.reason_history`` events, scored by the same
  scorer on the K chosen items only, where the users are scored); fallback
  rows and rows no event supports get a non-personal reason.
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
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from recsys_core.config import ServeSettings, Settings
from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.errors import RegistryError
from recsys_core.evaluation import metrics as M
from recsys_core.io.lake import STAGING, TRASH, Lake, partition_name
from recsys_core.io.recommendations import LATEST
from recsys_core.io.tables import ingests_as_of, read_interactions, required_ingests, spark_interactions
from recsys_core.models.bundle import FILES, ModelBundle, bundle_metadata, bundle_trained_as_of, files_digest
from recsys_core.serving.nightly import INTERACTION_COLUMNS, BatchStats, NightCatalogue, night_catalogue, score_and_explain
from recsys_core.serving.output import combine_digests, content_digest, format_report
from recsys_core.serving.precision import resolve_precision
from recsys_core.serving.validate import InvalidRecommendations, validate_recommendations, validate_spark_recommendations
from recsys_core.timeutil import end_of_day

log = logging.getLogger(__name__)

# Where the Spark engine's executors read the champion: one folder per bundle content digest.
MODELS = "_models"
# A copy another night may still be reading (a backfill started under the previous champion) is
# kept this long after its last write; the current champion's copy is always kept.
MODEL_COPY_GRACE = timedelta(days=1)


def run_recommend(settings: Settings, run_date: date, spark=None) -> dict:
    from recsys_core.io.registry import champion

    started = time.monotonic()
    lake = Lake(settings.lake)
    k = settings.serve.top_k
    current = champion(settings, settings.work_dir / "registry")
    if current is None:
        raise RegistryError(f"no model holds @{settings.registry.champion_alias} for {settings.train.model_name}")
    tidy_leftovers(lake, run_date)
    bundle = ModelBundle.load(current.bundle_dir)
    trained_as_of = bundle_trained_as_of(current.bundle_dir)
    operating_point = bundle_metadata(current.bundle_dir).get("operating_point")
    settings = served_settings(settings, operating_point)
    serve = settings.serve
    served_point = served_point_report(operating_point, serve.mmr_lambda)
    if trained_as_of and trained_as_of > run_date:
        log.warning(
            "%s v%s was trained on events up to the end of %s, after this run date %s: "
            "this night is scored by a model that saw later data (a backfill with today's champion)",
            current.name,
            current.version,
            trained_as_of,
            run_date,
        )
    lake.require_partition(USER_PROFILES, run_date, hint="run the stage that builds it first")
    items = lake.read_partition(ITEM_FEATURES, run_date)
    catalogue, excluded = available_catalogue(items, serve)
    # The list is read from the end of the run date on: that is when each user's recency is taken.
    night = night_catalogue(
        bundle,
        catalogue,
        items,
        serve,
        settings.train.trending_window_days,
        now=int(end_of_day(run_date).timestamp()),
        model_name=current.name,
        model_version=current.version,
        generated_at=datetime.now(UTC).replace(microsecond=0),
    )
    log.info(
        "scoring the users of %s over %d items (%d unavailable excluded) with %s v%s on the %s engine, precision %s",
        lake.partition_path(USER_PROFILES, run_date),
        len(night.item_ids),
        len(excluded),
        current.name,
        current.version,
        serve.engine,
        serve.precision if serve.precision != "auto" else f"auto ({resolve_precision('auto')} on this machine)",
    )
    target = lake.partition_path(RECOMMENDATIONS, run_date)
    scoring_started = time.monotonic()
    staged: str | None = None
    model_copy: str | None = None  # the Spark engine's copy of the champion on the lake
    if serve.engine == "spark":
        # Executors encode, score, explain and write the night; only aggregates come back.
        staged = lake.new_staging_path(RECOMMENDATIONS, partition_name("dt", run_date))
        try:
            digest, item_counts, stats, model_copy = _stage_on_spark(settings, lake, run_date, spark, staged, current, night)
        except BaseException:
            lake.fs.delete_dir(staged)
            raise
        rows = int(item_counts.sum())
    else:
        interactions = read_interactions(lake, run_date, settings.ingest.lateness_days, columns=INTERACTION_COLUMNS)
        profiles = lake.read_partition(USER_PROFILES, run_date).sort_by("user_id")
        table, stats, _ = score_and_explain(bundle, night, serve, interactions, profiles)
        validate_recommendations(
            table, k=k, users=profiles["user_id"].to_pylist(), catalogue=set(night.item_ids), seen=_seen_sets(interactions)
        )
        digest = content_digest(table)
        counts = dict(zip(*np.unique(table["item_id"].to_numpy(zero_copy_only=False), return_counts=True)))
        item_counts = np.array([counts.get(i, 0) for i in night.item_ids], dtype=np.int64)
        rows = table.num_rows
    # Local: encoding and top-K, as before reasons existed (reasons_seconds apart); Spark: the whole
    # engine (tasks score, explain and write; the checks), as the tasks' split is not collected.
    scoring_seconds = stats.scoring_seconds if serve.engine == "local" else time.monotonic() - scoring_started
    log.info(
        "scored %d users (%d with history, %d profile only, %d fallback), %d rows with a reason item",
        stats.users,
        stats.with_history,
        stats.profile_only,
        stats.fallback,
        stats.rows_with_reason_item,
    )

    report = nightly_report(item_counts, catalogue, stats, unavailable=len(excluded))
    report.update(served_point)
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
            "users": stats.users,
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
    if model_copy is not None:
        prune_model_copies(lake, model_copy, datetime.now(UTC))
    seconds = round(time.monotonic() - started, 1)
    log.info(
        "%s", format_report(report, title=f"nightly report {run_date} ({current.name} v{current.version}, {serve.engine} engine)")
    )
    _log_nightly(settings, run_date, report, item_counts, k, catalogue, current, seconds, unchanged=unchanged)
    summary = {
        "dt": run_date.isoformat(),
        "path": target,
        "rows": rows,
        "users": stats.users,
        "k": k,
        "model": f"{current.name} v{current.version}",
        "engine": serve.engine,
        "status": "unchanged" if unchanged else "published",
        "content_digest": digest,
        "latest_moved": moved,
        **report,
        "dropped_partitions": dropped,
        "scoring_seconds": round(scoring_seconds, 2),
        "reasons_seconds": round(stats.reasons_seconds, 2) if serve.engine == "local" else None,
        "seconds": seconds,
    }
    log.info(
        "%s %d rows for %d users to %s (catalogue coverage %.1f%%, fallback users %d) in %.1fs",
        "kept" if unchanged else "published",
        rows,
        stats.users,
        target,
        100 * report["catalogue_coverage"],
        report["fallback_users"],
        seconds,
    )
    return summary


def served_point_report(operating_point: dict | None, mmr_lambda: float | None) -> dict:
    """The night's operating point for its report: the champion's trend scale and item adjustment,
    the MMR lambda served, and the point's backtest NDCG@k and coverage@k when the night serves the
    point that was measured."""
    if not operating_point:
        return {"served_mmr_lambda": mmr_lambda}
    report = {
        "served_trend_scale": operating_point["trend_scale"],
        "served_mmr_lambda": mmr_lambda,
        # Champions registered before the item adjustment have none.
        "served_item_centering": operating_point.get("item_centering", 0.0),
        "served_item_scaling": operating_point.get("item_scaling", 0.0),
    }
    measured = operating_point.get("backtest")
    if measured is None:
        return report
    if mmr_lambda != operating_point["mmr_lambda"]:
        log.warning(
            "serve.mmr_lambda %s is not the champion's operating point (mmr lambda %s): its backtest figures do not "
            "describe tonight's lists; unset serve.mmr_lambda or retrain with it",
            mmr_lambda,
            operating_point["mmr_lambda"],
        )
        return report
    k = operating_point["k"]
    report.update({f"served_backtest_ndcg@{k}": measured["ndcg"], f"served_backtest_coverage@{k}": measured["coverage"]})
    log.info(
        "served operating point (chosen at training): trend scale x%g, mmr lambda %s, item centering %g, "
        "item scaling %g; on the backtest ndcg@%d %.4f, coverage@%d %.1f%%",
        operating_point["trend_scale"],
        mmr_lambda,
        report["served_item_centering"],
        report["served_item_scaling"],
        k,
        measured["ndcg"],
        k,
        100 * measured["coverage"],
    )
    return report


def served_settings(settings: Settings, operating_point: dict | None) -> Settings:
    """The settings the night is served with: the MMR lambda of the champion's operating point
    (chosen on its frontier, see ``evaluation.frontier``) unless ``serve.mmr_lambda`` is set."""
    lam = (operating_point or {}).get("mmr_lambda")
    if settings.serve.mmr_lambda is not None or lam is None:
        return settings
    return settings.model_copy(update={"serve": settings.serve.model_copy(update={"mmr_lambda": lam})})


# Scoring on Spark ----------------------------------------------------------------
def _stage_on_spark(
    settings: Settings, lake: Lake, run_date: date, spark, staged: str, current, night: NightCatalogue
) -> tuple[str, np.ndarray, BatchStats, str]:
    """The Spark engine: executors score, explain and write ``staged``, then the checks run as
    Spark aggregates; returns (content_digest, item counts in catalogue order, the night's figures,
    the digest of the champion's copy on the lake, which a published night keeps)."""
    from pyspark.sql import SparkSession

    from recsys_core.io.spark import spark_session
    from recsys_core.io.spark_progress import spark_progress
    from recsys_core.serving.spark_score import spark_score_night

    serve = settings.serve
    session, owned = spark, False
    if session is None:
        owned = SparkSession.getActiveSession() is None
        session = spark_session(settings, f"recommend-{run_date}")
    try:
        source = champion_on_lake(lake, current.bundle_dir)
        profiles = session.read.parquet(lake.spark_uri(lake.partition_path(USER_PROFILES, run_date)))
        interactions = spark_interactions(
            session, lake, run_date, required_ingests(lake, run_date, settings.ingest.lateness_days)
        )
        with spark_progress(session, f"scoring the night of {run_date}"):
            parts, figures = spark_score_night(session, profiles, interactions, lake.spark_uri(staged), source, night, serve)
        lake.drop_spark_markers(staged)
        counts = validate_spark_recommendations(
            session.read.parquet(lake.spark_uri(staged)),
            k=serve.top_k,
            users=profiles.select("user_id"),
            catalogue=session.createDataFrame([(i,) for i in night.item_ids], "item_id string"),
            seen=interactions,
        )
    finally:
        if owned:
            session.stop()
    item_counts = np.array([counts.get(i, 0) for i in night.item_ids], dtype=np.int64)
    return combine_digests(parts), item_counts, BatchStats(**figures), source.digest


def champion_on_lake(lake: Lake, bundle_dir: Path):
    """The champion's files on the lake, where every executor reads them: one copy per content
    (``models/<digest>/``), written once under a temporary name and moved into place."""
    from recsys_core.serving.spark_score import BundleSource

    files = {name: (bundle_dir / name).read_bytes() for name in FILES if (bundle_dir / name).exists()}
    digest = files_digest(files)
    folder = lake.path(MODELS, digest)
    if not lake.exists(folder):
        temporary = lake.path(MODELS, f".{digest}.{uuid.uuid4().hex}")
        lake.fs.create_dir(temporary, recursive=True)
        for name, data in files.items():
            with lake.fs.open_output_stream(f"{temporary}/{name}") as out:
                out.write(data)
        lake.move_dir(temporary, folder)
        log.info(
            "copied the champion's bundle (%d files, %.1f MB) to %s", len(files), sum(map(len, files.values())) / 1e6, folder
        )
    return BundleSource(lake.fs, folder, digest)


def prune_model_copies(lake: Lake, keep: str, now: datetime) -> list[str]:
    """Delete the champion copies other than ``keep`` (and copies a killed run left half-written)
    whose newest file is older than ``MODEL_COPY_GRACE``; returns their folder names."""
    base = lake.path(MODELS)
    if not lake.exists(base):
        return []
    dropped = []
    for folder in lake.fs.get_file_info(pafs.FileSelector(base)):
        if folder.type != pafs.FileType.Directory or folder.base_name == keep:
            continue
        files = lake.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
        newest = max((f.mtime for f in files if f.mtime is not None), default=folder.mtime)
        if newest is None or now - newest.astimezone(UTC) < MODEL_COPY_GRACE:
            continue
        lake.fs.delete_dir(folder.path)
        dropped.append(folder.base_name)
    if dropped:
        log.info("dropped %d champion copies older than %s from %s: %s", len(dropped), MODEL_COPY_GRACE, base, dropped)
    return dropped


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
def nightly_report(item_counts: np.ndarray, catalogue: pa.Table, stats: BatchStats, *, unavailable: int = 0) -> dict:
    """The night's figures from how often each catalogue item is recommended (``item_counts``,
    catalogue order) and the users' figures (``stats``)."""
    popularity = catalogue["pop_all"].to_numpy().astype(np.float64)
    counts = np.asarray(item_counts, dtype=np.int64)
    slots = int(counts.sum())
    users, fallback = stats.users, stats.fallback
    return {
        "catalogue_coverage": round(float((counts > 0).sum() / len(popularity)), 6) if len(popularity) else 0.0,
        "gini": round(float(M.gini_index(counts)), 6) if slots else float("nan"),
        "head_share": round(float(counts[M.head_items(popularity)].sum() / slots), 6) if slots else float("nan"),
        "fallback_users": fallback,
        "fallback_share": round(fallback / users, 6) if users else 0.0,
        "users": users,
        "users_source_model": users - fallback,
        "users_source_fallback": fallback,
        "catalogue_items": int(catalogue.num_rows),
        "unavailable_items": int(unavailable),
        "users_model_profile_only": stats.profile_only,
        "rows_with_reason_item": stats.rows_with_reason_item,
    }


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
