"""Step 3b: the evaluation logged to MLflow, the model registered, the champion moved only through the gate."""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import date

from recsys_core.config import Settings
from recsys_core.evaluation.frontier import Knobs, choose, pareto, point_at
from recsys_core.evaluation.gate import gate_decision, newer_champion_decision
from recsys_core.evaluation.metric_names import metric_name
from recsys_core.io.provenance import code_version
from recsys_core.io.registry import (
    apply_gate,
    champion,
    configure_tracking,
    log_bundle,
    log_external_model,
    log_metrics,
    record_model_output,
)
from recsys_core.models.bundle import ModelBundle, bundle_trained_as_of
from recsys_core.stages.training.evaluation import EvaluationReport, champion_metric, evaluate_models
from recsys_core.stages.training.runs import (
    log_evaluation,
    plot_links,
    reported_protocols,
    start_model_run,
    training_run_description,
)
from recsys_core.stages.training.workspace import RUNS, checkpoint_dir, workspace
from recsys_core.training.dataset import PreparedData
from recsys_core.training.loop import RESULT

log = logging.getLogger(__name__)


def evaluate_and_register(settings: Settings, as_of: date) -> dict:
    """Step 3: evaluate (``evaluation.evaluate_models``), then log, register and apply the gate."""
    started = time.monotonic()
    ws = workspace(settings, as_of)
    runs = json.loads((ws / RUNS).read_text())
    train_results = {p: json.loads((checkpoint_dir(ws, p) / RESULT).read_text()) for p in runs["protocols"]}
    evaluation = evaluate_models(settings, as_of, runs["protocols"])
    out = register(settings, as_of, runs, train_results, evaluation)
    out["seconds"] = round(time.monotonic() - started, 1)
    (ws / "summary.json").write_text(json.dumps(out, indent=2))
    loo, backtest = json.dumps(out["metrics"]), json.dumps(out["backtest"])
    log.info("evaluation as of %s: leave-last-out %s; backtest %s", as_of, loo, backtest)
    return out


def register(settings: Settings, as_of: date, runs: dict, train_results: dict[str, dict], evaluation: EvaluationReport) -> dict:
    """Log every model's evaluation into the runs ``prepare_training`` opened, register the served
    model, and move the champion alias only through the gate; returns the training's summary."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    protocols = runs["protocols"]
    calibration, bundle = evaluation.calibration, evaluation.bundle
    metric = settings.registry.gate_metric
    configure_tracking(settings)
    bundle.remember_popularity(evaluation.items)  # the MLflow model's trend prior
    served = evaluation.served_point
    operating = {
        "trend_scale": evaluation.knobs[0],
        "mmr_lambda": evaluation.knobs[1],
        "item_centering": evaluation.knobs[2],
        "item_scaling": evaluation.knobs[3],
        "min_coverage": settings.serve.min_coverage,
        "k": min(settings.eval.ks),
        "backtest": served.to_dict() if served else None,  # its NDCG@k and coverage@k on the backtest
    }
    extra = {"as_of": as_of.isoformat(), "trend_calibration": calibration.offsets, "operating_point": operating, **code_version()}
    bundle_dir = bundle.save(workspace(settings, as_of) / "bundle", extra=extra)
    with mlflow.start_run(run_id=runs["parent"]):
        info = _log_seqrec_runs(settings, runs, train_results, evaluation, bundle_dir)
        version = str(info.registered_model_version)
        _log_baseline_runs(settings, as_of, runs, evaluation)
        comparisons = {
            "operating_point": operating_summary(settings, evaluation),
            "new_users": new_users_summary(settings, evaluation),
            "backtest_margin": backtest_margin(settings, evaluation),
        }
        summary = _log_comparison(settings, evaluation, comparisons)

        # The gate: the current champion, scored by the same code on the same users.
        current = champion(settings, settings.work_dir / "registry")
        if current is not None and current.version == version:
            current = None  # this run's own version (a retried step): there is nothing to compare with
        candidate = evaluation.gate_metrics[metric]
        margin = settings.registry.gate_min_relative_improvement
        champion_as_of = bundle_trained_as_of(current.bundle_dir) if current is not None else None
        if current is None:
            decision = gate_decision(metric, candidate, None, margin)
        elif champion_as_of is not None and champion_as_of > as_of:
            decision = newer_champion_decision(metric, candidate, as_of, champion_as_of)
        else:
            champion_value = champion_metric(evaluation, ModelBundle.load(current.bundle_dir), metric)
            log_metrics({metric: champion_value}, prefix="champion/")
            decision = gate_decision(metric, candidate, champion_value, margin)
        apply_gate(settings, version, decision)
        mlflow.set_tags({"gate.promoted": str(decision.promote), "gate.reason": decision.reason, "model_version": version})
        # Last: from here on, metrics logged to this run would be linked to the served model too.
        record_model_output(info.model_id)
        mlflow.set_tag(MLFLOW_RUN_NOTE, training_run_description(settings, as_of, version, decision, plot_links(runs["parent"])))
    headline = ("ndcg@10", "hitrate@10", "recall@50", "mrr", "coverage@10")
    backtest_headline = ("ndcg@10", "recall@10", "hitrate@10", "users")
    calibrated = None
    if "calibration" in protocols:
        assert evaluation.uncalibrated_backtest is not None  # set whenever calibration ran
        uncalibrated = round(evaluation.uncalibrated_backtest["ndcg@10"], 5)
        calibrated = {**calibration.to_dict(), "backtest_uncalibrated_ndcg@10": uncalibrated}
    return {
        "as_of": as_of.isoformat(),
        "model_name": settings.train.model_name,
        "model_version": version,
        "promoted": decision.promote,
        "gate": decision.reason,
        "metrics": {n: {k: summary["loo"][n][k] for k in headline} for n in summary["loo"]},
        "backtest": {n: {k: summary["backtest"][n][k] for k in backtest_headline} for n in summary.get("backtest", {})},
        "calibration": calibrated,
        "item_item": bundle.item_item_fit,
        **comparisons,
        "train": {p: {k: v for k, v in r.items() if k != "history"} for p, r in train_results.items()},
        "parent_run_id": runs["parent"],
    }


def _log_seqrec_runs(settings: Settings, runs: dict, train_results: dict[str, dict], evaluation: EvaluationReport, bundle_dir):
    """Each protocol's sequence model into its nested run; returns the served model's logged model."""
    import mlflow

    from recsys_core.evaluation import report

    protocols, calibration = runs["protocols"], evaluation.calibration
    for protocol in protocols:
        with mlflow.start_run(run_id=runs[protocol], nested=True):
            # The served model is logged below (log_bundle links the metrics to it); the other
            # protocols' models stay in the workspace and are recorded as external models.
            model_id = None if protocol == "loo" else log_external_model(f"seqrec-{protocol}", "seqrec")
            log_evaluation(evaluation.evaluations, "seqrec", reported_protocols(protocol, protocols), model_id)
            if protocol == "calibration":  # what the calibration model fitted
                offsets = {f"offset/{group}": offset for group, offset in calibration.offsets.items()}
                log_metrics(offsets, prefix="calibration/", model_id=model_id)
            log_metrics(train_results[protocol], model_id=model_id)
            mlflow.log_figure(report.training_curves_figure(train_results[protocol]["history"]), "plots/training_curves.png")
            if protocol == "loo":
                if evaluation.bundle.item_item_fit:
                    log_metrics(evaluation.bundle.item_item_fit, prefix="item_item/", model_id=model_id)
                example = _input_example(evaluation.leave_last_out.data)
                info = log_bundle(bundle_dir, "model", example, registered_model_name=settings.train.model_name)
    return info


def _log_baseline_runs(settings: Settings, as_of: date, runs: dict, evaluation: EvaluationReport) -> None:
    reported = reported_protocols("loo", runs["protocols"])
    for name in evaluation.evaluations["loo"]:
        if name != "seqrec":
            with start_model_run(settings, as_of, name, reported, runs["data_version"]):
                log_evaluation(evaluation.evaluations, name, reported, log_external_model(name, name))


def _log_comparison(
    settings: Settings, evaluation: EvaluationReport, comparisons: dict
) -> dict[str, dict[str, dict[str, float]]]:
    """Into the parent run: every model's metrics, the lift over the best baseline, the comparison
    plots, the calibration and the backtest's ``comparisons`` (the summary's operating_point,
    new_users and backtest_margin); returns the rounded metrics per protocol and model."""
    import mlflow

    from recsys_core.evaluation import report

    ks, metric = tuple(settings.eval.ks), settings.registry.gate_metric
    evaluations, calibration = evaluation.evaluations, evaluation.calibration
    summary = {
        protocol: {name: {k: round(v, 5) for k, v in r.metrics.items()} for name, r in results.items()}
        for protocol, results in evaluations.items()
    }
    for protocol, results in evaluations.items():
        for name, result in results.items():
            log_metrics({k: v for k, v in result.metrics.items() if "/" not in k}, prefix=f"{protocol}/{name}/")
        baselines = [n for n in results if n != "seqrec"]
        if baselines:
            best = max(baselines, key=lambda n: results[n].metrics[metric])
            lift = results["seqrec"].metrics[metric] / max(1e-12, results[best].metrics[metric])
            log_metrics({f"{protocol}/lift_over_best_baseline/{metric}": lift})
        mlflow.log_dict(summary[protocol], f"evaluation/{protocol}.json")
        figure = report.metric_at_k_figure({n: r.metrics for n, r in results.items()}, ks=ks)
        mlflow.log_figure(figure, f"plots/{protocol}_metrics_at_k.png")
    if evaluation.uncalibrated_backtest is not None:
        mlflow.log_params({f"calibration.offset_{group}": offset for group, offset in calibration.offsets.items()})
        log_metrics({"backtest/seqrec_uncalibrated/ndcg@10": evaluation.uncalibrated_backtest["ndcg@10"]})
        mlflow.log_dict(calibration.to_dict(), "evaluation/calibration.json")
        mlflow.log_figure(report.calibration_figure(calibration.curves, calibration.offsets), "plots/trend_calibration.png")
    new_users, margin, frontier = (comparisons[key] for key in ("new_users", "backtest_margin", "operating_point"))
    if new_users is not None:
        seqrec = evaluations["backtest"]["seqrec"].metrics
        trending = {name: result.metrics for name, result in evaluation.trending.items()}
        for name, metrics in {"seqrec": seqrec, **trending}.items():
            log_metrics({k: v for k, v in metrics.items() if k.startswith("new_users/")}, prefix=f"backtest/{name}/")
        gap = {key: new_users[key] for key in ("difference", "difference_se")}
        log_metrics(gap, prefix=f"backtest/{new_users['metric']}_vs_best_trending/")
        mlflow.log_dict(new_users, "evaluation/new_users.json")
    if margin is not None:
        log_metrics(
            {f"{margin['metric']}_{key}": margin[key] for key in ("relative", "difference", "difference_se")},
            prefix="backtest/margin/",
        )
        mlflow.log_dict(margin, "evaluation/backtest_margin.json")
    if frontier is not None:
        k, served = min(ks), evaluation.served_point
        mlflow.log_params({"serve.min_coverage": settings.serve.min_coverage, "served.trend_scale": evaluation.knobs[0]})
        mlflow.log_params({"served.mmr_lambda": evaluation.knobs[1]})
        mlflow.log_params({"served.item_centering": evaluation.knobs[2], "served.item_scaling": evaluation.knobs[3]})
        mlflow.log_dict(frontier, "evaluation/frontier.json")
        mlflow.log_figure(report.frontier_figure(evaluation.frontier, served, k), "plots/accuracy_coverage_frontier.png")
        if served is not None:
            log_metrics({f"ndcg@{k}": served.ndcg, f"coverage@{k}": served.coverage}, prefix="backtest/served_point/")
    loo = evaluations["loo"]
    recommended = {n: r.recommended for n, r in loo.items()}
    popularity = evaluation.leave_last_out.context["item_popularity"]
    mlflow.log_figure(report.popularity_bias_figure(recommended, popularity, k=10), "plots/popularity_bias.png")
    n_items = evaluation.leave_last_out.data.prep.n_items
    mlflow.log_figure(report.coverage_figure(recommended, n_items, ks), "plots/coverage.png")
    return summary


def new_users_summary(settings: Settings, evaluation: EvaluationReport) -> dict | None:
    """On the backtest, users with only a profile (no history): the model against trending
    popularity over every popularity window, whether it does at least as well as the best one, and
    by how much user by user (the mean difference and its standard error: a few hundred new users
    cannot tell apart figures a hundredth apart)."""
    if not evaluation.trending:
        return None
    name = metric_name("ndcg", min(settings.eval.ks))
    key = f"new_users/{name}"
    seqrec_result = evaluation.evaluations["backtest"]["seqrec"]
    seqrec = seqrec_result.metrics
    trending = {window: result.metrics[key] for window, result in evaluation.trending.items()}
    best = max(trending, key=lambda window: -math.inf if math.isnan(trending[window]) else trending[window])
    gap = seqrec_result.difference_from(evaluation.trending[best], name, segment="new_users")
    return {
        "metric": key,
        "users": seqrec["new_users/users"],
        "seqrec": seqrec[key],
        "best_trending": best,
        "best_trending_value": trending[best],
        # False too when the backtest has no new user (both NaN): nothing shows they are served well.
        "at_least_best_trending": bool(seqrec[key] >= trending[best]),
        "difference": gap["difference"],
        "difference_se": gap["difference_se"],
        "trending": trending,
    }


def backtest_margin(settings: Settings, evaluation: EvaluationReport, baseline: str = "popularity") -> dict | None:
    """On the backtest, seqrec against trending popularity (``train.trending_window_days``): the
    relative margin, and the difference user by user with its standard error."""
    results = evaluation.evaluations.get("backtest", {})
    if "seqrec" not in results or baseline not in results:
        return None
    name = metric_name("ndcg", min(settings.eval.ks))
    seqrec, other = results["seqrec"], results[baseline]
    gap = seqrec.difference_from(other, name)
    relative = seqrec.metrics[name] / max(1e-12, other.metrics[name]) - 1.0
    return {"metric": name, "baseline": baseline, "relative": relative, **gap}


def operating_summary(settings: Settings, evaluation: EvaluationReport) -> dict | None:
    """Where the served point sits on the backtest frontier, beside two reference points: the most
    accurate, and the most accurate whose coverage reaches train.calibration.frontier_reference_coverage.
    Like the served point, both are chosen on the calibration window and reported on the backtest;
    the same two chosen on the backtest itself (after the fact: the best the grid could have done)
    are ``backtest_best``."""
    if not evaluation.frontier:
        return None
    share = settings.train.calibration.frontier_reference_coverage
    wide, best_wide = choose(evaluation.chosen_on, share), choose(evaluation.frontier, share)
    front = pareto(evaluation.frontier)

    def on_backtest(knobs: Knobs) -> dict:
        return point_at(evaluation.frontier, knobs).to_dict()

    served = evaluation.served_point
    return {
        "min_coverage": settings.serve.min_coverage,
        "k": min(settings.eval.ks),
        "served": served.to_dict() if served else None,
        "most_accurate": on_backtest(choose(evaluation.chosen_on, None).knobs),
        "reference_coverage": share,
        "most_accurate_with_reference_coverage": on_backtest(wide.knobs) if wide.coverage >= share else None,
        "backtest_best": {
            "most_accurate": choose(evaluation.frontier, None).to_dict(),
            "most_accurate_with_reference_coverage": best_wide.to_dict() if best_wide.coverage >= share else None,
        },
        "chosen_on_calibration_window": [p.to_dict() for p in evaluation.chosen_on],
        "backtest": [{**p.to_dict(), "pareto": p in front} for p in evaluation.frontier],
    }


def _input_example(data: PreparedData):
    """A synthetic request for MLflow's signature and example: the first catalogue items and the first
    known categories, never a real user's history or profile (MLflow stores the example as an artifact)."""
    import pandas as pd

    prep = data.prep
    history = prep.item_ids[:5]
    gender = prep.gender_vocab[0] if prep.gender_vocab else None
    occupation = prep.occupation_vocab[0] if prep.occupation_vocab else None
    return pd.DataFrame([{"history": history, "age": 30, "gender": gender, "occupation": occupation}])
