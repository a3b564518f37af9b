"""Step 3a: the trained models scored offline, calibrated out of sample, next to the baselines."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import torch

from recsys_core.config import Settings
from recsys_core.errors import MissingInput
from recsys_core.evaluation.calibration import TrendCalibration, fit_trend_offsets
from recsys_core.evaluation.protocols import EvalResult, evaluate
from recsys_core.models.bundle import ModelBundle
from recsys_core.models.data import Sequences
from recsys_core.models.inputs import ModelInputs
from recsys_core.models.transformer import GAP_BUCKETS, SeqRec, gap_buckets
from recsys_core.stages.training.baselines import evaluate_baselines
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
    return ModelBundle(config, data.prep, model)


def returning_bucket(settings: Settings) -> int:
    """The first recency bucket that counts as "coming back" for the calibration."""
    return int(gap_buckets(torch.tensor([int(settings.train.calibration.returning_after_hours * 3600)]))[0])


def calibrate_trend(settings: Settings, as_of: date, datasets: dict[str, PreparedData], items_table) -> TrendCalibration:
    """Fit the trend prior's out-of-sample offsets with the calibration model, on the horizon after its cut."""
    scored = backtest_scored(settings, datasets["backtest"], datasets["calibration"])
    bundle = load_trained(settings, as_of, scored.data, "calibration")
    encoded = bundle.encode_inputs(scored.inputs, scored.data.user_feats, now=scored.now)
    scores = _scorer(bundle, encoded, scored, items_table)(scored.case.rows)
    query = encoded.query_gaps[torch.as_tensor(scored.case.rows), -1].numpy()
    trend = scored.data.trend
    popularity = trend.values[trend.row(scored.data.until_day)][1:, -1]  # log1p events in the longest window
    calibration = fit_trend_offsets(
        scores,
        popularity,
        query,
        scored.case.seen,
        scored.case.relevant,
        grid=tuple(settings.train.calibration.grid),
        returning_bucket=returning_bucket(settings),
        min_users=settings.train.calibration.min_users,
    )
    cut = train_cutoff(settings, as_of, "calibration").date()
    offsets = calibration.offsets
    users, groups = len(scored.case.rows), calibration.users
    log.info("trend calibration on %d users after %s: offsets %s (users per group %s)", users, cut, offsets, groups)
    return calibration


def apply_calibration(bundle: ModelBundle, calibration: TrendCalibration, settings: Settings) -> None:
    """Add the fitted offsets to the model's trend weight of new and returning users' predictions."""
    if not any(calibration.offsets.values()):
        return
    start = returning_bucket(settings)
    bundle.model.shift_trend_weight(torch.tensor([0]), calibration.offsets["new"])
    bundle.model.shift_trend_weight(torch.arange(start, GAP_BUCKETS), calibration.offsets["returning"])


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


def _seqrec_scorer(bundle: ModelBundle, scored: ScoredCase, items_table):
    return _scorer(bundle, bundle.encode_inputs(scored.inputs, scored.data.user_feats, now=scored.now), scored, items_table)


@dataclass
class EvaluationReport:
    """Step 3a's result: every model on every evaluated protocol, and the calibrated served model."""

    protocols: list[str]  # the protocols trained (runs.json)
    evaluations: dict[str, dict[str, EvalResult]]  # protocol → model name ("seqrec", baselines) → result
    calibration: TrendCalibration
    uncalibrated_backtest: dict[str, float] | None  # the backtest model before the offsets, when calibrated
    bundle: ModelBundle  # the served model, calibrated
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
    calibration = calibrate_trend(settings, as_of, datasets, items) if "calibration" in protocols else TrendCalibration.none()
    bundle = load_trained(settings, as_of, data, "loo")
    apply_calibration(bundle, calibration, settings)
    loo = leave_last_out_scored(settings, data)
    loo_seqrec = evaluate(_seqrec_scorer(bundle, loo, items), loo.case, **loo.context)
    evaluations = {"loo": {"seqrec": loo_seqrec, **evaluate_baselines(settings, loo)}}
    uncalibrated = None
    if "backtest" in protocols:
        backtest = backtest_scored(settings, data, datasets["backtest"])
        bt_bundle = load_trained(settings, as_of, backtest.data, "backtest")
        scorer = _seqrec_scorer(bt_bundle, backtest, items)
        if "calibration" in protocols:  # the model before calibration, for the record: what the offsets add
            uncalibrated = evaluate(scorer, backtest.case, **backtest.context).metrics
        apply_calibration(bt_bundle, calibration, settings)
        bt_seqrec = evaluate(scorer, backtest.case, **backtest.context)
        evaluations["backtest"] = {"seqrec": bt_seqrec, **evaluate_baselines(settings, backtest)}
    return EvaluationReport(protocols, evaluations, calibration, uncalibrated, bundle, loo, profiles, items)


def champion_metric(report: EvaluationReport, champion: ModelBundle, metric: str) -> float:
    """The current champion's ``metric``, scored by the same code on the same leave-last-out users."""
    loo = report.leave_last_out
    inputs = _resequence(loo.inputs, loo.data.prep.item_ids, champion)
    _, feats = champion.prep.user_features(report.profiles.sort_by("user_id"))
    scorer = _scorer(champion, champion.encode_inputs(inputs, feats), loo, report.items)
    return evaluate(scorer, loo.case, **loo.context).metrics[metric]
