"""The real chain on a seeded synthetic log: Spark local, torchrun x2, MLflow on SQLite, nightly publish."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.io.tables import read_interactions
from recsys_core.timeutil import end_of_day

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]


def test_every_input_row_is_accepted_or_quarantined(pipeline):
    reports = pipeline.ingest_reports
    for report in reports:
        assert report.rows_accepted + report.rows_quarantined == report.rows_in
    assert sum(r.rows_in for r in reports) == pipeline.generated["events_written"]
    reasons: dict[str, int] = {}
    for report in reports:
        for reason, count in report.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert reasons == pipeline.generated["expected_quarantine"]


def test_features_are_point_in_time(pipeline):
    lake = Lake(pipeline.settings.lake)
    profiles = lake.read_partition(USER_PROFILES, pipeline.run_date)
    bound = end_of_day(pipeline.run_date)
    last = pc.max(profiles["last_event_ts"]).as_py()
    assert last is not None and last < bound
    interactions = read_interactions(lake, pipeline.run_date, pipeline.settings.ingest.lateness_days)
    assert pc.max(interactions["event_ts"]).as_py() < bound
    assert profiles.num_rows == pipeline.features["user_profiles"]
    # Every user with an event up to the run date has a profile with that many events.
    counts = interactions.group_by("user_id").aggregate([("event_id", "count")])
    by_user = dict(zip(counts["user_id"].to_pylist(), counts["event_id_count"].to_pylist()))
    profile_counts = dict(zip(profiles["user_id"].to_pylist(), profiles["n_events"].to_pylist()))
    assert all(profile_counts[u] == n for u, n in by_user.items())


def test_training_logged_and_registered(pipeline, tmp_path):
    import mlflow

    from recsys_core.evaluation.metric_names import metric_key

    summary = pipeline.training
    assert set(summary["metrics"]) == {"seqrec", "popularity", "ease", "als"}
    assert all(np.isfinite(v) for m in summary["metrics"].values() for v in m.values())
    assert summary["train"]["loo"]["world_size"] == 2
    assert set(summary["backtest"]) == {"seqrec", "popularity", "ease", "als"}
    client = mlflow.MlflowClient(pipeline.settings.tracking_uri, registry_uri=pipeline.settings.tracking_uri)
    version = client.get_model_version_by_alias(pipeline.settings.train.model_name, "champion")
    assert str(version.version) == summary["model_version"]
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["as_of"] == pipeline.run_date.isoformat()
    assert "git_commit" in parent.data.tags and "config_digest" in parent.data.tags
    assert parent.inputs.dataset_inputs, "input partitions are logged with mlflow.log_input"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags.get("model") for r in children} >= {"seqrec", "popularity", "ease", "als"}
    seqrec = next(r for r in children if r.data.tags.get("model") == "seqrec")
    history = client.get_metric_history(seqrec.info.run_id, "train_loss")
    assert len(history) == summary["train"]["loo"]["epochs_run"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "plots/loo_metrics_at_k.png",
        "plots/backtest_metrics_at_k.png",
        "plots/popularity_bias.png",
        "plots/coverage.png",
        "plots/trend_calibration.png",
        "plots/accuracy_coverage_frontier.png",
    } <= artifacts
    windows = pipeline.settings.features.popularity_windows_days
    assert set(summary["new_users"]["trending"]) == {f"trending_{days}d" for days in windows}
    # The served point is on the backtest sweep; without serve.min_coverage it is the calibration as fitted,
    # unre-ranked: the same lists, so the same NDCG, as the calibrated backtest evaluation.
    point, backtest = summary["operating_point"], summary["backtest"]["seqrec"]
    swept = [{key: value for key, value in p.items() if key != "pareto"} for p in point["backtest"]]
    assert point["served"] in swept and (point["served"]["trend_scale"], point["served"]["mmr_lambda"]) == (1.0, None)
    assert point["served"]["ndcg"] == pytest.approx(backtest["ndcg@10"], abs=1e-4)
    assert any(p["pareto"] for p in point["backtest"]) and point["most_accurate"] in swept
    best = point["backtest_best"]  # chosen on the backtest itself: the best the grid could have done there
    assert best["most_accurate"] == max(swept, key=lambda p: round(p["ndcg"], 9))
    wide = [p for p in swept if p["coverage"] >= point["reference_coverage"]]
    assert best["most_accurate_with_reference_coverage"] == (max(wide, key=lambda p: round(p["ndcg"], 9)) if wide else None)
    new_users = summary["new_users"]
    assert new_users["at_least_best_trending"] == (new_users["seqrec"] >= max(new_users["trending"].values()))
    # User by user on the same new users: the mean difference is the difference of the means.
    best_trending = new_users["trending"][new_users["best_trending"]]
    assert new_users["difference"] == pytest.approx(new_users["seqrec"] - best_trending, abs=1e-9)
    assert new_users["difference_se"] >= 0
    logged_gap = parent.data.metrics[metric_key("backtest/new_users/ndcg@10_vs_best_trending/difference")]
    assert logged_gap == pytest.approx(new_users["difference"])
    margin, backtest_figures = summary["backtest_margin"], summary["backtest"]
    seqrec_ndcg, popularity_ndcg = backtest_figures["seqrec"]["ndcg@10"], backtest_figures["popularity"]["ndcg@10"]
    assert margin["relative"] == pytest.approx(seqrec_ndcg / popularity_ndcg - 1, abs=1e-3)
    assert margin["difference"] == pytest.approx(seqrec_ndcg - popularity_ndcg, abs=1e-4)  # the summary's figures are rounded
    assert margin["users"] == backtest_figures["seqrec"]["users"] and margin["difference_se"] > 0
    assert parent.data.metrics[metric_key("backtest/margin/ndcg@10_difference_se")] == pytest.approx(margin["difference_se"])
    logged = client.download_artifacts(parent.info.run_id, "evaluation/frontier.json", str(tmp_path))
    assert json.loads(Path(logged).read_text()) == point
    assert parent.data.metrics[metric_key("backtest/served_point/ndcg@10")] == pytest.approx(point["served"]["ndcg"])
    assert metric_key("backtest/seqrec/new_users/ndcg@10") in parent.data.metrics
    assert set(summary["train"]) == {"loo", "backtest", "calibration"}


def test_trend_calibration_is_fitted_out_of_sample_and_served(pipeline):
    """The offsets are chosen on the grid on the calibration window, and the registered model carries them."""
    import torch

    from recsys_core.io.registry import champion
    from recsys_core.models.bundle import ModelBundle
    from recsys_core.stages.train import load_inputs, load_trained, prepared_protocols, returning_bucket

    settings = pipeline.settings
    calibration = pipeline.training["calibration"]
    assert set(calibration["offsets"]) == {"new", "returning"}
    assert calibration["curves"], "the synthetic log has enough new and returning users to calibrate"
    for group, curve in calibration["curves"].items():
        offsets, values = [o for o, _ in curve], [v for _, v in curve]
        assert offsets == sorted(settings.train.calibration.grid)
        # The one-standard-error rule (tested by hand-made cases in tests/evaluation/test_calibration.py):
        # the best offset, or a smaller one the window cannot tell from it.
        chosen, best = offsets.index(calibration["offsets"][group]), values.index(max(values))
        assert chosen <= best and values[chosen] <= max(values)
    interactions, profiles, items = load_inputs(settings, pipeline.run_date)
    data = prepared_protocols(settings, pipeline.run_date, interactions, profiles, items)["loo"]
    trained = load_trained(settings, pipeline.run_date, data)
    served = ModelBundle.load(champion(settings, settings.work_dir / "calibrated").bundle_dir)
    expected = torch.zeros_like(trained.model.trend_by_gap)
    expected[0, -1] = calibration["offsets"]["new"]
    expected[returning_bucket(settings) :, -1] = calibration["offsets"]["returning"]
    torch.testing.assert_close(served.model.trend_by_gap - trained.model.trend_by_gap, expected)
    torch.testing.assert_close(served.model.trend_weights, trained.model.trend_weights)


def test_a_minimum_coverage_serves_an_item_adjusted_point_that_the_backtest_measures(pipeline):
    """With only item-adjusted points on the grid, serve.min_coverage serves one: the served models
    carry its adjustment, and the backtest evaluation through the scorer equals the sweep's point
    (without MMR, which only the nightly job applies)."""
    from recsys_core.evaluation.frontier import choose
    from recsys_core.stages.train import champion_metric, evaluate_models

    base = pipeline.settings
    calibration = base.train.calibration.model_copy(
        update={"frontier_item_centerings": [1.0], "frontier_item_scalings": [0.5], "frontier_mmr_lambdas": [None]}
    )
    settings = base.model_copy(
        update={
            "train": base.train.model_copy(update={"calibration": calibration}),
            "serve": base.serve.model_copy(update={"min_coverage": 0.99}),
        }
    )
    report = evaluate_models(settings, pipeline.run_date, ["loo", "backtest", "calibration"])
    assert report.knobs == choose(report.chosen_on, 0.99).knobs and report.knobs[2:] == (1.0, 0.5)
    adjustment = report.bundle.adjustment
    assert adjustment is not None and (adjustment.centering, adjustment.scaling) == (1.0, 0.5)
    assert len(adjustment.mean) == len(report.bundle.prep.item_ids)
    assert report.served_point is not None and report.served_point.knobs == report.knobs
    backtest = report.evaluations["backtest"]["seqrec"].metrics
    assert backtest["ndcg@10"] == pytest.approx(report.served_point.ndcg, abs=1e-4)
    # The gate compares models, not operating points: the same model as champion scores the
    # candidate's gate figure, which is its leave-last-out figure without the adjustment.
    assert champion_metric(report, report.bundle, "ndcg@10") == pytest.approx(report.gate_metrics["ndcg@10"])
    assert report.bundle.adjustment is None  # champion_metric scored it without


def test_published_table_honours_the_contract(pipeline):
    lake = Lake(pipeline.settings.lake)
    k = pipeline.settings.serve.top_k
    table = lake.read_partition(RECOMMENDATIONS, pipeline.run_date)
    assert table.schema.names[:7] == ["user_id", "rank", "item_id", "score", "model_name", "model_version", "generated_at"]
    assert table.schema.equals(RECOMMENDATIONS.schema, check_metadata=False)
    profiles = lake.read_partition(USER_PROFILES, pipeline.run_date)
    users = set(profiles["user_id"].to_pylist())
    assert set(table["user_id"].to_pylist()) == users
    assert table.num_rows == len(users) * k
    catalogue = set(lake.read_partition(ITEM_FEATURES, pipeline.run_date)["item_id"].to_pylist())
    assert set(table["item_id"].to_pylist()) <= catalogue
    interactions = read_interactions(lake, pipeline.run_date, pipeline.settings.ingest.lateness_days)
    seen = set(zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()))
    assert not seen & set(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist()))
    ordered = table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
    ranks = ordered["rank"].to_numpy().reshape(-1, k)
    assert (ranks == np.arange(1, k + 1)).all()
    scores = ordered["score"].to_numpy().reshape(-1, k)
    assert (np.diff(scores, axis=1) <= 0).all()
    manifest = lake.read_manifest(lake.partition_path(RECOMMENDATIONS, pipeline.run_date))
    assert manifest["rows"] == table.num_rows and manifest["model_version"] == pipeline.training["model_version"]
    served = pipeline.training["operating_point"]["served"]  # the nightly report states the champion's operating point
    assert manifest["report"]["served_trend_scale"] == served["trend_scale"]
    assert manifest["report"]["served_backtest_ndcg@10"] == served["ndcg"]


def test_nightly_rerun_is_idempotent(pipeline):
    from recsys_core.stages.recommend import run_recommend

    lake = Lake(pipeline.settings.lake)
    before = lake.read_partition(RECOMMENDATIONS, pipeline.run_date).drop_columns(["generated_at"])
    run_recommend(pipeline.settings, pipeline.run_date)
    after = lake.read_partition(RECOMMENDATIONS, pipeline.run_date).drop_columns(["generated_at"])
    assert lake.partitions(RECOMMENDATIONS) == [pipeline.run_date.isoformat()]
    assert after.equals(before)


def test_nightly_scores_equal_training_scores(pipeline):
    """No train/serve skew: the registered bundle on the nightly path (its preprocessing, the run date's
    item features) scores like the trained model offline (the training-time trend table)."""
    from recsys_core.evaluation.calibration import TrendCalibration
    from recsys_core.io.registry import champion
    from recsys_core.models.bundle import ModelBundle
    from recsys_core.stages.train import apply_calibration, load_inputs, load_trained, prepared_protocols
    from recsys_core.timeutil import SECONDS_PER_DAY

    settings = pipeline.settings
    interactions, profiles, items = load_inputs(settings, pipeline.run_date)
    data = prepared_protocols(settings, pipeline.run_date, interactions, profiles, items)["loo"]
    trained = load_trained(settings, pipeline.run_date, data)
    apply_calibration(trained, TrendCalibration(pipeline.training["calibration"]["offsets"]), settings)
    served = ModelBundle.load(champion(settings, settings.work_dir / "parity").bundle_dir)
    now = data.until_day * SECONDS_PER_DAY  # the nightly list is made at the end of the run date
    _, _, inputs = served.user_inputs(interactions, profiles.sort_by("user_id"), now=now)
    assert (inputs.query_gaps[:, -1] > 1).any()  # some users come back after a while
    nightly = served.scorer(inputs, items, catalogue=data.prep.item_ids)
    rows = np.arange(len(data.sequences.user_ids))
    offline = trained.scorer(
        trained.encode_inputs(data.sequences, data.user_feats, now),
        items,
        catalogue=data.prep.item_ids,
        trend=data.trend,
        trend_days=np.full(len(rows), data.until_day),
    )
    nightly_scores = (nightly.user_vectors(rows) @ nightly.item_matrix().T).numpy()
    np.testing.assert_allclose(nightly_scores, offline(rows), rtol=1e-4, atol=1e-4)
