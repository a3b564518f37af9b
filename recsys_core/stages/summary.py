"""What a run of the chain did for a date, in numbers (read back from manifests and reports)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, QUARANTINE, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.io.recommendations import RecommendationReader
from recsys_core.stages.train import workspace


def chain_summary(settings: Settings, run_date: date) -> dict:
    lake = Lake(settings.lake)
    ingest: dict[str, Any] = {"days": 0, "rows_in": 0, "rows_accepted": 0, "rows_quarantined": 0, "reasons": {}}
    for value in lake.partitions(QUARANTINE):
        if value > run_date.isoformat():
            continue
        report = lake.read_manifest(lake.partition_path(QUARANTINE, value))["report"]
        ingest["days"] += 1
        for key in ("rows_in", "rows_accepted", "rows_quarantined"):
            ingest[key] += report[key]
        for reason, count in report["reasons"].items():
            ingest["reasons"][reason] = ingest["reasons"].get(reason, 0) + count
    features = {
        table.name: lake.read_manifest(lake.partition_path(table, run_date))["rows"]
        for table in (USER_PROFILES, ITEM_FEATURES)
        if lake.is_complete(table, run_date)
    }
    summary_file = workspace(settings, run_date) / "summary.json"
    training = json.loads(summary_file.read_text()) if summary_file.exists() else None
    recs_path = lake.partition_path(RECOMMENDATIONS, run_date)
    recs = lake.read_manifest(recs_path) if lake.is_complete(RECOMMENDATIONS, run_date) else None
    return {"ingest": ingest, "features": features, "training": training, "recommendations": recs, "recs_path": recs_path}


def print_summary(settings: Settings, run_date: date, console: Console | None = None) -> dict:
    console = console or Console(width=120)
    s = chain_summary(settings, run_date)
    ingest = s["ingest"]
    console.rule(f"[bold]Summary for run date {run_date}")
    stages = Table(title="Rows per stage", show_lines=False)
    for column in ("stage", "in", "out", "rejected / note"):
        stages.add_column(column)
    stages.add_row(
        "ingest (raw → interactions)",
        f"{ingest['rows_in']:,}",
        f"{ingest['rows_accepted']:,}",
        f"{ingest['rows_quarantined']:,} quarantined {ingest['reasons'] or ''} over {ingest['days']} days",
    )
    for name, rows in s["features"].items():
        stages.add_row(f"features: {name}", "", f"{rows:,}", f"as of {run_date}")
    recs = s["recommendations"]
    if recs:
        stages.add_row(
            "nightly: recommendations",
            f"{recs['users']:,} users",
            f"{recs['rows']:,}",
            f"K={recs['k']}, {recs['model_name']} v{recs['model_version']}",
        )
    console.print(stages)

    training = s["training"]
    if training:
        console.print(
            _metrics_table(
                f"Leave-last-out, full ranking (model v{training['model_version']}; promoted: {training['promoted']})",
                training["metrics"],
            )
        )
        if training["backtest"]:
            console.print(
                _metrics_table("Temporal backtest: trained up to the cut, new items of the following days", training["backtest"])
            )
        item_item = training.get("item_item")
        if item_item:
            console.print(item_item_line(item_item))
        calibration = training.get("calibration")
        if calibration:
            offsets = ", ".join(f"{group} users +{offset:g}" for group, offset in calibration["offsets"].items())
            console.print(
                f"trend prior calibrated on an earlier window: {offsets}; "
                f"backtest ndcg@10 of seqrec before calibration {calibration['backtest_uncalibrated_ndcg@10']:.4f}"
            )
        new_users = training.get("new_users")
        if new_users:
            console.print(new_users_line(new_users))
        margin = training.get("backtest_margin")
        if margin:
            console.print(backtest_margin_line(margin))
        point = training.get("operating_point")
        if point and point["served"]:
            console.print(operating_point_line(point))
        console.print(f"gate: {training['gate']}")
    if recs:
        console.print(
            f"recommendations: {s['recs_path']}  (catalogue coverage {recs['report']['catalogue_coverage']:.1%}, "
            f"fallback users {recs['report']['fallback_users']})"
        )
        served = recs["report"]
        measured = {key.removeprefix("served_backtest_"): v for key, v in served.items() if key.startswith("served_backtest_")}
        if measured:
            figures = ", ".join(f"{name} {value:.4f}" for name, value in measured.items())
            console.print(
                "served operating point: "
                + knobs_text(
                    served["served_trend_scale"],
                    served["served_mmr_lambda"],
                    served.get("served_item_centering", 0.0),
                    served.get("served_item_scaling", 0.0),
                )
                + f"; on the backtest {figures}"
            )
        reader = RecommendationReader(settings)
        # The first user in id order; one column read, nothing sorted.
        user = pc.min(reader.lake.read_partition(RECOMMENDATIONS, run_date, columns=["user_id"])["user_id"]).as_py()
        _, rows = reader.for_user(user, run_date)
        table = Table(title=f"Top 10 for user {user} on {run_date}")
        for column in ("rank", "item", "title", "reason", "score", "source"):
            table.add_column(column)
        for row in rows[:10]:
            table.add_row(
                str(row["rank"]),
                row["item_id"],
                row["title"] or "",
                row.get("reason") or "",
                f"{row['score']:.3f}",
                row["source"],
            )
        console.print(table)
    console.print(f"MLflow UI: make mlflow  (store {settings.tracking_uri}); Airflow UI: make airflow")
    return s


def item_item_line(fit: dict) -> str:
    """The served model's item-item term: its parts' weights and decay, and what it did on the validation split."""
    transitions = f", transitions {fit['transition_weight']:g}" if "transition_weight" in fit else ""
    return (
        f"item-item term: weight EASE {fit['weight']:g}{transitions}, history decay {fit['decay']:g}, "
        f"chosen on the validation split (ndcg@10 {fit['valid_ndcg@10']:.4f}, without it {fit['valid_ndcg@10_without']:.4f})"
    )


def new_users_line(new_users: dict) -> str:
    """New users (profile only) on the backtest against the best of every trending window."""
    verdict = "at least as well as" if new_users["at_least_best_trending"] else "worse than"
    windows = ", ".join(f"{name} {value:.4f}" for name, value in new_users["trending"].items())
    line = (
        f"new users (profile only, {new_users['users']:.0f} on the backtest) are served {verdict} the best trending "
        f"window: seqrec {new_users['metric']} {new_users['seqrec']:.4f} vs {windows}"
    )
    if "difference" in new_users:  # summaries written before it have none
        line += (
            f"; against {new_users['best_trending']} user by user {new_users['difference']:+.4f} "
            f"(standard error {new_users['difference_se']:.4f})"
        )
    return line


def backtest_margin_line(margin: dict) -> str:
    """Seqrec against trending popularity on the backtest: relative, and user by user with its error."""
    return (
        f"backtest margin of seqrec over {margin['baseline']}: {margin['relative']:+.1%} {margin['metric']}; "
        f"user by user {margin['difference']:+.4f} (standard error {margin['difference_se']:.4f}, {margin['users']} users)"
    )


def operating_point_line(point: dict) -> str:
    """Where the served point sits on the backtest's accuracy/coverage frontier, beside the most
    accurate point and the most accurate one of the reference coverage, chosen on the calibration
    window, and the same two chosen on the backtest itself."""
    k = point["k"]

    def describe(p: dict | None) -> str:
        if p is None:
            return "none on the grid"
        knobs = knobs_text(p["trend_scale"], p["mmr_lambda"], p.get("centering", 0.0), p.get("scaling", 0.0))
        return f"ndcg@{k} {p['ndcg']:.4f}, coverage@{k} {p['coverage']:.1%} ({knobs})"

    best = point.get("backtest_best")
    after_the_fact = (
        f"; chosen on the backtest itself (after the fact), most accurate: {describe(best['most_accurate'])}; most accurate "
        f"with coverage >= {point['reference_coverage']:.0%}: {describe(best['most_accurate_with_reference_coverage'])}"
        if best
        else ""
    )
    return (
        f"served point on the backtest frontier (serve.min_coverage {point['min_coverage']}): {describe(point['served'])}; "
        f"chosen on the calibration window, most accurate: {describe(point['most_accurate'])}; most accurate with "
        f"coverage >= {point['reference_coverage']:.0%} there: {describe(point['most_accurate_with_reference_coverage'])}"
        + after_the_fact
    )


def knobs_text(trend_scale: float, mmr_lambda: float | None, centering: float, scaling: float) -> str:
    """An operating point's knobs in words (``evaluation.frontier``)."""
    mmr = "no MMR" if mmr_lambda is None else f"MMR lambda {mmr_lambda:g}"
    items = "items as scored" if centering == 0 and scaling == 0 else f"items centred {centering:g}, scaled {scaling:g}"
    return f"trend x{trend_scale:g}, {mmr}, {items}"


def _metrics_table(title: str, by_model: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    keys = list(next(iter(by_model.values())).keys())
    table.add_column("model")
    for key in keys:
        table.add_column(key)
    for model, values in by_model.items():
        table.add_row(model, *[f"{values[k]:.0f}" if k == "users" else f"{values[k]:.4f}" for k in keys])
    return table
