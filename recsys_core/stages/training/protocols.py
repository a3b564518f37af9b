"""The data of each protocol, and the cases (users, histories, targets) every model is scored on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys_core.config import Settings
from recsys_core.contracts import ITEM_FEATURES, USER_PROFILES
from recsys_core.evaluation.protocols import EvalCase
from recsys_core.evaluation.sampling import sample_rows
from recsys_core.io.lake import Lake
from recsys_core.io.tables import ingests_as_of, read_interactions
from recsys_core.models.baselines import history_matrix
from recsys_core.models.data import Sequences, last_event_days
from recsys_core.models.transformer import SeqRecConfig
from recsys_core.stages.training.workspace import train_cutoff
from recsys_core.timeutil import SECONDS_PER_DAY, end_of_day, epoch_day
from recsys_core.training.dataset import PreparedData, prepare

log = logging.getLogger(__name__)


def load_inputs(settings: Settings, as_of: date):
    lake = Lake(settings.lake)
    interactions = read_interactions(lake, as_of, settings.ingest.lateness_days)
    return (interactions, *load_tables(settings, as_of))


def load_tables(settings: Settings, as_of: date) -> tuple[pa.Table, pa.Table]:
    """The as-of user profiles and item features."""
    lake = Lake(settings.lake)
    return lake.read_partition(USER_PROFILES, as_of), lake.read_partition(ITEM_FEATURES, as_of)


def input_lineage(settings: Settings, as_of: date) -> dict:
    lake = Lake(settings.lake)
    return {
        "interactions_ingests": [d.isoformat() for d in ingests_as_of(lake, as_of, settings.ingest.lateness_days)],
        "user_profiles": {
            "path": lake.partition_path(USER_PROFILES, as_of),
            "checksum": lake.read_manifest(lake.partition_path(USER_PROFILES, as_of))["checksum_sha256"],
        },
        "item_features": {
            "path": lake.partition_path(ITEM_FEATURES, as_of),
            "checksum": lake.read_manifest(lake.partition_path(ITEM_FEATURES, as_of))["checksum_sha256"],
        },
    }


def prepared_protocols(settings: Settings, as_of: date, interactions, profiles, items) -> dict[str, PreparedData]:
    """Every protocol's data, with the same preprocessing (fitted once, on the as-of features)."""
    windows = settings.features.trend_windows
    out = {"loo": prepare(interactions, profiles, items, epoch_day(end_of_day(as_of)), windows)}
    for protocol in ("backtest", "calibration"):
        if protocol == "calibration" and not settings.train.calibration.enabled:
            continue
        cut = train_cutoff(settings, as_of, protocol)
        cut_scalar = pa.scalar(cut, interactions.schema.field("event_ts").type)
        before = interactions.filter(pc.less(interactions["event_ts"], cut_scalar))
        out[protocol] = prepare(before, profiles, items, epoch_day(cut), windows, fitted=out["loo"])
    return out


# The data each temporal protocol is scored against: the next-later protocol's.
TARGETS_OF = {"backtest": "loo", "calibration": "backtest"}


def feasible_protocols(datasets: dict[str, PreparedData], config: SeqRecConfig) -> list[str]:
    """Leave-last-out always; a temporal protocol only when there is history before its cut and
    activity after it (and, for the calibration, a trend prior with recency to calibrate)."""
    protocols = ["loo"]
    for protocol in ("backtest", "calibration"):
        if protocol not in datasets:
            continue
        if protocol == "calibration" and not (config.trend_windows and config.use_query_gap):
            log.warning("trend calibration skipped: the model has no trend prior with recency (model.use_trend, use_query_gap)")
            continue
        before = datasets[protocol]
        case, _ = backtest_case(datasets[TARGETS_OF[protocol]], before)
        if len(case.rows) and any(len(s) for s in before.split.train) and TARGETS_OF[protocol] in protocols:
            protocols.append(protocol)
            continue
        log.warning(
            "%s skipped: %d users active after its cut, %d events before it; "
            "lower eval.backtest_horizon_days for data this short",
            protocol,
            len(case.rows),
            sum(len(s) for s in before.sequences.items),
        )
    return protocols


def leave_last_out_case(data: PreparedData, max_users: int | None = None, seed: int = 0) -> tuple[EvalCase, Sequences]:
    """Each user's last new item is the target; the model sees everything before it.
    ``max_users``: a seeded sample of the users with a target (eval.max_users)."""
    split = data.split
    rows = sample_rows(np.flatnonzero(split.test_target > 0), max_users, seed)
    case = EvalCase(
        rows=rows,
        seen=history_matrix([split.test_input[r] for r in rows], data.prep.n_items),
        relevant=[np.array([split.test_target[r] - 1]) for r in rows],
        history_lengths=np.array([len(split.test_input[r]) for r in rows]),
    )
    inputs = Sequences(data.sequences.user_ids, list(split.test_input), list(split.test_times))
    return case, inputs


def backtest_case(
    full: PreparedData, before_cut: PreparedData, max_users: int | None = None, seed: int = 0
) -> tuple[EvalCase, Sequences]:
    """Targets are the items each user met for the first time after the cut; the model sees everything before it.
    ``max_users``: a seeded sample of the users with a target (eval.max_users)."""
    active, futures = [], []
    for user, (items, earlier) in enumerate(zip(full.sequences.items, before_cut.sequences.items)):
        # Sequences hold first interactions only, so what follows the earlier prefix is new.
        future = items[len(earlier) :]
        if len(future):
            active.append(user)
            futures.append(np.unique(future) - 1)
    kept = sample_rows(np.arange(len(active)), max_users, seed)
    rows = np.array(active, dtype=np.int64)[kept]
    relevant = [futures[i] for i in kept]
    case = EvalCase(
        rows=rows,
        seen=history_matrix([before_cut.sequences.items[r] for r in rows], full.prep.n_items),
        relevant=relevant,
        history_lengths=np.array([len(before_cut.sequences.items[r]) for r in rows]),
    )
    return case, before_cut.sequences


@dataclass(frozen=True)
class ScoredCase:
    """What every model of a protocol is scored on: the protocol's data, its users and targets
    (``case``), the histories the models see (``inputs``), when each user's prediction is made
    (``now``: epoch seconds, None = right after their last event; ``trend_days``: the day whose
    popularity their trend prior reads), and what every evaluation shares (``context``)."""

    data: PreparedData
    case: EvalCase
    inputs: Sequences
    now: int | None
    trend_days: np.ndarray
    context: dict


def leave_last_out_scored(settings: Settings, data: PreparedData) -> ScoredCase:
    """Leave-last-out predicts at each user's last input event."""
    case, inputs = leave_last_out_case(data, settings.eval.max_users, settings.train.seed)
    days = last_event_days(inputs.times, data.until_day)
    return ScoredCase(data, case, inputs, None, days, evaluation_context(settings, data, inputs))


def backtest_scored(settings: Settings, full: PreparedData, before_cut: PreparedData) -> ScoredCase:
    """A temporal protocol predicts at its cut, as the nightly job would."""
    case, inputs = backtest_case(full, before_cut, settings.eval.max_users, settings.train.seed)
    days = np.full(len(inputs.items), before_cut.until_day, dtype=np.int64)
    now = before_cut.until_day * SECONDS_PER_DAY
    return ScoredCase(before_cut, case, inputs, now, days, evaluation_context(settings, before_cut, inputs))


def evaluation_context(settings: Settings, data: PreparedData, inputs: Sequences) -> dict:
    """What every model's evaluation shares: cut-offs, the items' popularity in the inputs, their categories."""
    popularity = np.bincount(np.concatenate(inputs.items) - 1, minlength=data.prep.n_items).astype(np.float64)
    return {
        "ks": tuple(settings.eval.ks),
        "item_popularity": popularity,
        "item_categories": sp.csr_matrix((data.item_content[1:, : len(data.prep.genres)] > 0).astype(np.float32)),
        "cold_user_max_events": settings.eval.cold_user_max_events,
    }
