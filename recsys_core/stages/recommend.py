"""Stage 3: the nightly job. Score every known user with the champion and publish the top-K.

Publishing is atomic: the table is written to staging, validated, then
swapped into ``recommendations/dt=D/`` with its manifest, and the ``latest``
pointer moves last. A failed run leaves every earlier night untouched.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import torch

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES, conform
from recsys_core.evaluation import metrics as M
from recsys_core.io.lake import Lake
from recsys_core.io.tables import ingests_as_of, read_interactions
from recsys_core.models.bundle import ModelBundle
from recsys_core.serving.score import score_top_k, seen_matrix
from recsys_core.serving.validate import validate_recommendations

log = logging.getLogger(__name__)

from recsys_core.serving.reader import LATEST


def run_recommend(settings: Settings, run_date: date) -> dict:
    from recsys_core.io.registry import champion

    started = time.monotonic()
    lake = Lake(settings.lake)
    k = settings.serve.top_k
    current = champion(settings, settings.work_dir / "registry")
    if current is None:
        raise RuntimeError(
            f"no model holds @{settings.registry.champion_alias} for {settings.train.model_name}; "
            "train one first (`recsys train --date D` or the recsys_train DAG)"
        )
    bundle = ModelBundle.load(current.bundle_dir)
    interactions = read_interactions(lake, run_date, settings.ingest.lateness_days, columns=["user_id", "item_id", "event_ts", "source_file", "line_no"])
    profiles = lake.read_partition(USER_PROFILES, run_date).sort_by("user_id")
    items = lake.read_partition(ITEM_FEATURES, run_date)
    unavailable = set(settings.serve.unavailable_items)
    catalogue = items.filter(pa.compute.invert(pa.compute.is_in(items["item_id"], pa.array(sorted(unavailable), pa.string())))) if unavailable else items
    catalogue = catalogue.sort_by("item_id")
    catalogue_ids = catalogue["item_id"].to_pylist()

    user_ids, sequences, inputs = bundle.user_inputs(interactions, profiles)
    _, item_matrix = bundle.catalogue_matrix(catalogue)
    seen = seen_matrix(user_ids, catalogue_ids, interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist())
    has_history = np.asarray(seen.sum(axis=1)).ravel() > 0
    has_profile = (inputs["user_feats"] > 0).any(dim=1).numpy()
    use_model = has_history | has_profile
    log.info(
        "scoring %d users (%d with history, %d profile only, %d fallback) over %d items with %s v%s",
        len(user_ids), int(has_history.sum()), int((~has_history & has_profile).sum()), int((~use_model).sum()),
        len(catalogue_ids), current.name, current.version,
    )  # fmt: skip

    top_items = np.empty((len(user_ids), k), dtype=np.int64)
    top_scores = np.empty((len(user_ids), k), dtype=np.float32)
    model_rows = np.flatnonzero(use_model)
    if len(model_rows):
        part = {name: tensor[torch.as_tensor(model_rows)] for name, tensor in inputs.items()}
        vectors = bundle.user_vectors(part, batch=settings.serve.score_batch_users)
        top_items[model_rows], top_scores[model_rows] = score_top_k(
            vectors, item_matrix, k, exclude=seen[model_rows], batch_users=settings.serve.score_batch_users
        )
    fallback_rows = np.flatnonzero(~use_model)
    if len(fallback_rows):
        trending = catalogue[f"pop_{settings.train.trending_window_days}d"].to_numpy().astype(np.float32)
        trending = trending + catalogue["pop_all"].to_numpy().astype(np.float32) * 1e-6  # all-time breaks ties
        top_items[fallback_rows], top_scores[fallback_rows] = score_top_k(
            torch.ones(len(fallback_rows), 1), torch.as_tensor(trending).unsqueeze(1), k, exclude=seen[fallback_rows]
        )

    generated_at = datetime.now(timezone.utc).replace(microsecond=0)
    ids = np.array(catalogue_ids, dtype=object)
    table = pa.table(
        {
            "user_id": np.repeat(np.array(user_ids, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
            "item_id": ids[top_items.ravel()],
            "score": top_scores.ravel(),
            "model_name": [current.name] * (len(user_ids) * k),
            "model_version": [current.version] * (len(user_ids) * k),
            "generated_at": pa.array([generated_at] * (len(user_ids) * k), RECOMMENDATIONS.schema.field("generated_at").type),
            "source": np.repeat(np.where(use_model, "model", "fallback").astype(object), k),
        }
    )
    table = conform(table, RECOMMENDATIONS)
    seen_sets = _seen_sets(interactions)
    validate_recommendations(table, k=k, users=user_ids, catalogue=set(catalogue_ids), seen=seen_sets)

    report = nightly_report(top_items, use_model, catalogue, settings)
    staged = lake.new_staging_path(RECOMMENDATIONS, f"dt={run_date}")
    lake.write_parquet(table, staged)
    manifest = {
        "users": len(user_ids),
        "k": k,
        "model_name": current.name,
        "model_version": current.version,
        "mlflow_run_id": current.run_id,
        "input_partitions": {
            "interactions_ingests": [d.isoformat() for d in ingests_as_of(lake, run_date, settings.ingest.lateness_days)],
            "user_profiles": lake.partition_path(USER_PROFILES, run_date),
            "item_features": lake.partition_path(ITEM_FEATURES, run_date),
        },
        "report": report,
    }
    target = lake.publish(RECOMMENDATIONS, run_date, staged, manifest)
    lake.write_json(lake.path(RECOMMENDATIONS.name, LATEST), {"dt": run_date.isoformat(), "path": target, "updated_at": datetime.now(timezone.utc).isoformat()})
    dropped = lake.drop_partitions_older_than(RECOMMENDATIONS, settings.serve.keep_days)
    seconds = round(time.monotonic() - started, 1)
    _log_nightly(settings, run_date, report, top_items, catalogue, current, seconds)
    summary = {
        "dt": run_date.isoformat(),
        "path": target,
        "rows": table.num_rows,
        "users": len(user_ids),
        "k": k,
        "model": f"{current.name} v{current.version}",
        **report,
        "dropped_partitions": dropped,
        "seconds": seconds,
    }
    log.info(
        "published %d rows for %d users to %s (catalogue coverage %.1f%%, fallback users %d) in %.1fs",
        table.num_rows, len(user_ids), target, 100 * report["catalogue_coverage"], report["fallback_users"], seconds,
    )  # fmt: skip
    return summary


def _seen_sets(interactions: pa.Table) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for user, item in zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()):
        seen.setdefault(user, set()).add(item)
    return seen


def nightly_report(top_items: np.ndarray, use_model: np.ndarray, catalogue: pa.Table, settings: Settings) -> dict:
    popularity = catalogue["pop_all"].to_numpy().astype(np.float64)
    k = top_items.shape[1]
    bias = M.popularity_bias(top_items, popularity, k)
    return {
        "catalogue_coverage": round(M.catalog_coverage(top_items, len(popularity), k), 6),
        "gini": round(float(bias["gini"]), 6),
        "head_share": round(float(bias["head_share"]), 6),
        "fallback_users": int((~use_model).sum()),
        "fallback_share": round(float((~use_model).mean()) if len(use_model) else 0.0, 6),
    }


def _log_nightly(settings: Settings, run_date: date, report: dict, top_items, catalogue, current, seconds: float) -> None:
    import mlflow

    from recsys_core.evaluation.report import popularity_bias_figure
    from recsys_core.io.registry import configure_tracking, log_metrics

    configure_tracking(settings)
    with mlflow.start_run(run_name=f"nightly-{run_date}"):
        mlflow.set_tags({"stage": "nightly", "dt": run_date.isoformat(), "model_name": current.name, "model_version": current.version})
        log_metrics({**report, "seconds": seconds, "users": len(top_items)})
        popularity = catalogue["pop_all"].to_numpy().astype(np.float64)
        mlflow.log_figure(
            popularity_bias_figure({f"{current.name} v{current.version}": top_items}, popularity, k=top_items.shape[1]),
            "plots/nightly_popularity.png",
        )

