"""Step 3a: the trained models scored offline, calibrated out of sample, next to the baselines."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from recsys_core.config import Settings
from recsys_core.errors import MissingInput
from recsys_core.evaluation.calibration import TrendCalibration, fit_trend_offsets
from recsys_core.evaluation.frontier import Knobs, OperatingPoint, choose, point_at, sweep
from recsys_core.evaluation.protocols import EVAL_BATCH, EvalResult, ScoreFn, evaluate
from recsys_core.models.adjustment import ItemAdjustment, ScoreMoments, adjust
from recsys_core.models.bundle import ModelBundle
from recsys_core.models.data import Sequences
from recsys_core.models.inputs import ModelInputs
from recsys_core.models.transformer import GAP_BUCKETS, SeqRec, gap_buckets
from recsys_core.serving.rerank import mmr_rerank
from recsys_core.stages.training.baselines import evaluate_baselines, trending_windows
from recsys_core.stages.training.handoff import load_prepared
from recsys_core.stages.training.protocols import (
    ScoredCase,
    backtest_scored,
    leave_last_out_scored,
    load_tables,
)
from recsys_core.stages.training.workspace import checkpoint_dir, dataset_path, prepared_path, train_cutoff, workspace
from recsys_core.training.checkpoint import load_checkpoint
from recsys_core.training.dataset import PreparedData, TrainingDataset
from recsys_core.training.item_item import fit_item_item
from recsys_core.training.loop import BEST

log = logging.getLogger(__name__)


def load_trained(settings: Settings, as_of: date, data: PreparedData, protocol: str = "loo") -> ModelBundle:
    ws = workspace(settings, as_of)
    # Memory-mapped: only the config and the content matrix are read, not the training tensors.
    dataset = TrainingDataset.load(dataset_path(ws, protocol), mmap=True)
    config = dataset.config
    model = SeqRec(config, dataset.item_content)
    best = load_checkpoint(checkpoint_dir(ws, protocol) / BEST)
    if best is None:
        raise MissingInput(f"no trained model at {checkpoint_dir(ws, protocol) / BEST}", hint="run the torchrun step first")
    model.load_state_dict(best["model"])
    model.eval()
    fitted = fit_item_item(
        model, data.split.train, dataset.valid, dataset.trend_table, settings.train, refit_on=known_before_targets(data, protocol)
    )
    return ModelBundle(config, data.prep, model, item_item_fit=fitted)


def known_before_targets(data: PreparedData, protocol: str) -> list[np.ndarray]:
    """The histories the item-item term is fitted on once its weights are chosen: every event before
    the protocol's scored targets. Leave-last-out scores each user's last event, so all but it; a
    temporal protocol scores the events after its cut, so all of its data."""
    return list(data.split.test_input) if protocol == "loo" else list(data.sequences.items)


def returning_bucket(settings: Settings) -> int:
    """The first recency bucket that counts as "coming back" for the calibration."""
    return int(gap_buckets(torch.tensor([int(settings.train.calibration.returning_after_hours * 3600)]))[0])


@dataclass
class ScoredWindow:
    """A temporal window's users scored by a model before the calibration offsets: what the
    calibration and the accuracy/coverage frontier (``evaluation.frontier``) read."""

    rows: np.ndarray  # the case's user rows, in the order of ``scores``
    scores: np.ndarray  # [users, items]
    popularity: np.ndarray  # [items] log1p events in the longest trend window, as of the cut
    query: np.ndarray  # [users] recency bucket at prediction time
    seen: sp.csr_matrix
    relevant: list[np.ndarray]
    categories: np.ndarray  # [items, genres] bool

    def score_fn(self) -> ScoreFn:
        """These scores as ``evaluate`` reads them (by user row), so the window is not scored twice."""
        position = np.empty(int(self.rows.max(initial=-1)) + 1, dtype=np.int64)
        position[self.rows] = np.arange(len(self.rows))
        return lambda rows: self.scores[position[rows]]

    def sweep(self, settings: Settings, offsets: dict[str, float]) -> list[OperatingPoint]:
        frontier = settings.train.calibration
        return sweep(
            self.scores,
            self.popularity,
            self.query,
            self.seen,
            self.relevant,
            offsets=offsets,
            returning_bucket=returning_bucket(settings),
            trend_scales=tuple(frontier.frontier_trend_scales),
            mmr_lambdas=tuple(dict.fromkeys([*frontier.frontier_mmr_lambdas, settings.serve.mmr_lambda])),
            centerings=tuple(frontier.frontier_item_centerings),
            scalings=tuple(frontier.frontier_item_scalings),
            categories=self.categories,
            pool_factor=settings.serve.mmr_pool_factor,
            rerank=mmr_rerank,
            adjust=adjust,
            k=min(settings.eval.ks),
        )


def scored_window(bundle: ModelBundle, scored: ScoredCase, items_table) -> ScoredWindow:
    encoded = bundle.encode_inputs(scored.inputs, scored.data.user_feats, now=scored.now)
    scores = _scorer(bundle, encoded, scored, items_table)(scored.case.rows)
    query = encoded.query_gaps[torch.as_tensor(scored.case.rows), -1].numpy()
    trend = scored.data.trend
    popularity = trend.values[trend.row(scored.data.until_day)][1:, -1]  # log1p events in the longest window
    categories = scored.context["item_categories"].toarray() > 0
    return ScoredWindow(scored.case.rows, scores, popularity, query, scored.case.seen, scored.case.relevant, categories)


def calibrate_trend(
    settings: Settings, as_of: date, datasets: dict[str, PreparedData], items_table
) -> tuple[TrendCalibration, ScoredWindow]:
    """Fit the trend prior's out-of-sample offsets with the calibration model, on the horizon after
    its cut; and that scored window, where the served operating point is chosen."""
    scored = backtest_scored(settings, datasets["backtest"], datasets["calibration"])
    bundle = load_trained(settings, as_of, scored.data, "calibration")
    window = scored_window(bundle, scored, items_table)
    calibration = fit_trend_offsets(
        window.scores,
        window.popularity,
        window.query,
        window.seen,
        window.relevant,
        grid=tuple(settings.train.calibration.grid),
        returning_bucket=returning_bucket(settings),
        min_users=settings.train.calibration.min_users,
        tolerance_se=settings.train.calibration.tolerance_se,
    )
    cut = train_cutoff(settings, as_of, "calibration").date()
    offsets = calibration.offsets
    users, groups = len(scored.case.rows), calibration.users
    log.info("trend calibration on %d users after %s: offsets %s (users per group %s)", users, cut, offsets, groups)
    return calibration, window


def apply_calibration(bundle: ModelBundle, calibration: TrendCalibration, settings: Settings, scale: float = 1.0) -> None:
    """Add the fitted offsets (times ``scale``, the served operating point's) to the model's trend
    weight of new and returning users' predictions."""
    if not any(calibration.offsets.values()) or scale == 0:
        return
    start = returning_bucket(settings)
    bundle.model.shift_trend_weight(torch.tensor([0]), scale * calibration.offsets["new"])
    bundle.model.shift_trend_weight(torch.arange(start, GAP_BUCKETS), scale * calibration.offsets["returning"])


def adjust_items(bundle: ModelBundle, scored: ScoredCase, items_table, knobs: Knobs, moments: ScoreMoments | None = None) -> None:
    """Give ``bundle`` the item adjustment of the served ``knobs`` (``models.adjustment``; none when
    both are 0), with the statistics of its own scores of the case's users (the case of the data
    the bundle was trained on: its catalogue is the bundle's vocabulary). ``moments``: those
    statistics, when a pass over the case already gathered them; else the users are scored in batches."""
    bundle.adjustment = None  # the statistics are of the scores before any adjustment
    centering, scaling = knobs[2], knobs[3]
    if centering == 0 and scaling == 0:
        return
    if scored.data.prep.item_ids != bundle.prep.item_ids:
        raise ValueError("the item adjustment's statistics must come from the data the model was trained on")
    if moments is None:
        moments, scorer, rows = ScoreMoments(), seqrec_scorer(bundle, scored, items_table), scored.case.rows
        for start in range(0, len(rows), EVAL_BATCH):
            moments.add(scorer(rows[start : start + EVAL_BATCH]))
    bundle.adjustment = ItemAdjustment(centering, scaling, *moments.stats())


def _resequence(sequences: Sequences, item_ids: list[str], bundle: ModelBundle) -> Sequences:
    """The same histories in another model's item vocabulary (unknown items dropped)."""
    items, times = [], []
    for seq, t in zip(sequences.items, sequences.times):
        mapped = np.array([bundle.prep.item_index.get(item_ids[i - 1], 0) for i in seq], dtype=np.int64)
        keep = mapped > 0
        items.append(mapped[keep])
        times.append(np.asarray(t)[keep])
    return Sequences(sequences.user_ids, items, times)


def _scorer(bundle: ModelBundle, encoded: ModelInputs, scored: ScoredCase, items_table):
    """The bundle's scorer of a case's users over the protocol's catalogue, each user's trend prior
    read at their own prediction day."""
    data = scored.data
    return bundle.scorer(encoded, items_table, catalogue=data.prep.item_ids, trend=data.trend, trend_days=scored.trend_days)


def seqrec_scorer(bundle: ModelBundle, scored: ScoredCase, items_table):
    return _scorer(bundle, bundle.encode_inputs(scored.inputs, scored.data.user_feats, now=scored.now), scored, items_table)


@dataclass
class EvaluationReport:
    """Step 3a's result: every model on every evaluated protocol, and the calibrated served model."""

    protocols: list[str]  # the protocols trained (runs.json)
    evaluations: dict[str, dict[str, EvalResult]]  # protocol → model name ("seqrec", baselines) → result
    calibration: TrendCalibration
    uncalibrated_backtest: dict[str, float] | None  # the backtest model before the offsets, when calibrated
    knobs: Knobs  # the served (trend scale, MMR lambda, item centering, item scaling)
    served_point: OperatingPoint | None  # on the backtest: the knobs chosen on the calibration window
    frontier: list[OperatingPoint]  # on the backtest, every point of the sweep
    chosen_on: list[OperatingPoint]  # on the calibration window, where the served point was chosen
    trending: dict[str, EvalResult]  # on the backtest, trending popularity over each popularity window
    bundle: ModelBundle  # the served model, calibrated
    # The served model's leave-last-out metrics without its item adjustment, which is what the gate
    # compares: a wider operating point is a choice of policy and must not lose the model its place.
    gate_metrics: dict[str, float]
    leave_last_out: ScoredCase
    profiles: pa.Table
    items: pa.Table


def evaluate_models(settings: Settings, as_of: date, protocols: list[str]) -> EvaluationReport:
    """Calibrate the trend prior out of sample, then score the sequence model of each evaluated
    protocol and the baselines fitted on that protocol's data, on the same users and targets."""
    profiles, items = load_tables(settings, as_of)
    ws = workspace(settings, as_of)
    datasets = {protocol: load_prepared(prepared_path(ws, protocol)) for protocol in protocols}  # the prepare task's
    data = datasets["loo"]
    bundle = load_trained(settings, as_of, data, "loo")
    calibration, chosen_on = TrendCalibration.none(), []
    knobs: Knobs = (1.0, settings.serve.mmr_lambda, 0.0, 0.0)
    if "calibration" in protocols:
        calibration, window = calibrate_trend(settings, as_of, datasets, items)
        chosen_on = window.sweep(settings, calibration.offsets)
        # Without a minimum coverage the calibration is served as fitted. A configured
        # serve.mmr_lambda is served as is: the choice is among its points.
        lam, min_coverage = settings.serve.mmr_lambda, settings.serve.min_coverage
        if min_coverage is not None:
            point = choose([p for p in chosen_on if lam is None or p.mmr_lambda == lam], min_coverage)
            knobs = point.knobs
            if point.coverage < min_coverage:
                log.warning(
                    "no operating point reaches serve.min_coverage %.2f on the calibration window: serving the widest, "
                    "coverage@k %.3f; widen train.calibration.frontier_* or lower serve.min_coverage",
                    min_coverage,
                    point.coverage,
                )
        log.info(
            "operating point chosen on the calibration window (min coverage %s): trend scale %g, mmr lambda %s, "
            "item centering %g, item scaling %g",
            min_coverage,
            *knobs,
        )
    apply_calibration(bundle, calibration, settings, knobs[0])
    loo = leave_last_out_scored(settings, data)
    moments, scorer = ScoreMoments(), seqrec_scorer(bundle, loo, items)
    # The gate's pass gathers the item adjustment's statistics: the users are scored once for both.
    loo_seqrec = evaluate(lambda rows: moments.add(scorer(rows)), loo.case, **loo.context)
    gate_metrics = loo_seqrec.metrics
    adjust_items(bundle, loo, items, knobs, moments)
    if bundle.adjustment is not None:
        loo_seqrec = evaluate(seqrec_scorer(bundle, loo, items), loo.case, **loo.context)
    evaluations = {"loo": {"seqrec": loo_seqrec, **evaluate_baselines(settings, loo)}}
    uncalibrated, served, frontier, trending = None, None, [], {}
    if "backtest" in protocols:
        backtest = backtest_scored(settings, data, datasets["backtest"])
        bt_bundle = load_trained(settings, as_of, backtest.data, "backtest")
        if "calibration" in protocols:  # the model before calibration, for the record: what the offsets add
            window = scored_window(bt_bundle, backtest, items)
            uncalibrated = evaluate(window.score_fn(), backtest.case, **backtest.context).metrics
            frontier = window.sweep(settings, calibration.offsets)
            served = point_at(frontier, knobs)
        apply_calibration(bt_bundle, calibration, settings, knobs[0])
        adjust_items(bt_bundle, backtest, items, knobs)
        bt_seqrec = evaluate(seqrec_scorer(bt_bundle, backtest, items), backtest.case, **backtest.context)
        evaluations["backtest"] = {"seqrec": bt_seqrec, **evaluate_baselines(settings, backtest)}
        trending = trending_windows(settings, backtest)
    return EvaluationReport(
        protocols,
        evaluations,
        calibration,
        uncalibrated,
        knobs,
        served,
        frontier,
        chosen_on,
        trending,
        bundle,
        gate_metrics,
        loo,
        profiles,
        items,
    )


def champion_metric(report: EvaluationReport, champion: ModelBundle, metric: str) -> float:
    """The current champion's ``metric``, scored by the same code on the same leave-last-out users,
    without its item adjustment: the gate compares models, not operating points (``gate_metrics``)."""
    champion.adjustment = None
    loo = report.leave_last_out
    inputs = _resequence(loo.inputs, loo.data.prep.item_ids, champion)
    _, feats = champion.prep.user_features(report.profiles.sort_by("user_id"))
    scorer = _scorer(champion, champion.encode_inputs(inputs, feats), loo, report.items)
    return evaluate(scorer, loo.case, **loo.context).metrics[metric]
