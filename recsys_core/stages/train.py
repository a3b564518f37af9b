"""Stage 2: training as of a date, in three steps that Airflow can run as separate tasks.

1. ``prepare``: read interactions and features as of the date, fit the
   preprocessing, build the dataset file, open the MLflow parent run.
2. ``run_torchrun``: train the sequence model with DDP (``torchrun``); rank 0
   logs per-epoch metrics into a nested run.
3. ``evaluate_and_register``: calibrate the trend prior out of sample,
   evaluate the model and the baselines on the same splits, log metrics and
   plots, register the model and move the champion alias only through the gate.

Up to three models are trained per run, one per protocol: ``loo`` (all data;
the served model, evaluated leave-last-out), ``backtest`` (data up to one
horizon before the run date, evaluated on that horizon as the nightly job
would) and ``calibration`` (up to two horizons before, scored on the horizon
that follows it, to fit the trend prior's out-of-sample weight).

In MLflow, a date's training is a parent run with one nested run per model: the
sequence model of each protocol (``seqrec``, ``seqrec-backtest``,
``seqrec-calibration``) and each baseline. So that runs line up in MLflow's
compare view, every model's run logs its metrics as ``<protocol>/<metric>``
(``loo/ndcg_at_10``, ``backtest/ndcg_at_10``, ...) and the same key params
(``model.family`` and ``run_params``: run date, protocols, cut-offs, data
version). The served model's run and the baselines' report both evaluated
protocols, each from a model fitted on that protocol's data.

The workspace ``<data_root>/work/train/<date>/`` carries state between steps;
a rerun of a date starts it afresh.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from recsys_core.config import Settings
from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, USER_PROFILES
from recsys_core.errors import MissingInput, ModelError
from recsys_core.evaluation.calibration import TrendCalibration, fit_trend_offsets
from recsys_core.evaluation.gate import GateDecision, gate_decision
from recsys_core.evaluation.protocols import EvalCase, EvalResult, evaluate
from recsys_core.features.ingest import end_of_day
from recsys_core.io.lake import Lake
from recsys_core.io.provenance import code_version, config_digest, flat_params
from recsys_core.io.tables import ingests_as_of, read_interactions
from recsys_core.models.baselines import EASE, Popularity, history_matrix
from recsys_core.models.bundle import ModelBundle
from recsys_core.models.transformer import GAP_BUCKETS, SeqRec, SeqRecConfig, gap_buckets
from recsys_core.training.checkpoint import load_checkpoint
from recsys_core.training.data import SECONDS_PER_DAY, Sequences, last_event_days
from recsys_core.training.dataset import PreparedData, TrainingDataset, build_dataset, model_config, prepare
from recsys_core.training.loop import BEST, RESULT

log = logging.getLogger(__name__)

PROTOCOLS = ("loo", "backtest", "calibration")
# Horizons (eval.backtest_horizon_days) between the end of the run date and each protocol's cut.
HORIZONS_BEFORE = {"loo": 0, "backtest": 1, "calibration": 2}
# The protocols every model is scored on (the calibration model only fits the trend prior's offsets).
EVALUATED = ("loo", "backtest")
RUNS = "runs.json"
SETTINGS = "settings.json"  # the exact settings the ranks train with
JOB = Path(__file__).resolve().parents[2] / "jobs" / "train.py"


def workspace(settings: Settings, as_of: date) -> Path:
    return settings.work_dir / "train" / as_of.isoformat()


def dataset_path(ws: Path, protocol: str) -> Path:
    return ws / f"dataset-{protocol}.pt"


def checkpoint_dir(ws: Path, protocol: str) -> Path:
    return ws / "checkpoints" / protocol


def backtest_cut(settings: Settings, as_of: date, horizons: int = 1) -> datetime:
    """Events before this instant train the backtest model (``horizons`` = 2: the calibration model);
    new items after it, up to one horizon later, are its targets."""
    return end_of_day(as_of - timedelta(days=horizons * settings.eval.backtest_horizon_days))


def train_cutoff(settings: Settings, as_of: date, protocol: str) -> datetime:
    """The exclusive upper bound of the events a protocol's models are fitted on: the end of the
    run date for leave-last-out, ``backtest_cut`` for the temporal protocols."""
    return backtest_cut(settings, as_of, HORIZONS_BEFORE[protocol])


def prepared_protocols(settings: Settings, as_of: date, interactions, profiles, items) -> dict[str, PreparedData]:
    """Every protocol's data, with the same preprocessing (fitted once, on the as-of features)."""
    windows = settings.features.trend_windows
    out = {"loo": prepare(interactions, profiles, items, epoch_day(end_of_day(as_of)), windows)}
    for protocol in ("backtest", "calibration"):
        if protocol == "calibration" and not settings.train.calibration.enabled:
            continue
        cut = train_cutoff(settings, as_of, protocol)
        before = interactions.filter(pc.less(interactions["event_ts"], pa.scalar(cut, interactions.schema.field("event_ts").type)))
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
            protocol, len(case.rows), sum(len(s) for s in before.sequences.items),
        )  # fmt: skip
    return protocols


def epoch_day(moment: datetime) -> int:
    return int(moment.timestamp()) // SECONDS_PER_DAY


def load_inputs(settings: Settings, as_of: date):
    lake = Lake(settings.lake)
    interactions = read_interactions(lake, as_of, settings.ingest.lateness_days)
    profiles = lake.read_partition(USER_PROFILES, as_of)
    items = lake.read_partition(ITEM_FEATURES, as_of)
    return interactions, profiles, items


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


# Step 1 ----------------------------------------------------------------------------
def prepare_training(settings: Settings, as_of: date) -> dict:
    import mlflow

    from recsys_core.io.registry import configure_tracking

    started = time.monotonic()
    ws = workspace(settings, as_of)
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    interactions, profiles, items = load_inputs(settings, as_of)
    datasets = prepared_protocols(settings, as_of, interactions, profiles, items)
    data = datasets["loo"]
    config = model_config(data, settings.train.model)
    protocols = feasible_protocols(datasets, config)
    fingerprints, windows = {}, {}
    for protocol in protocols:
        prepared = datasets[protocol]
        dataset = build_dataset(prepared, config, settings.train.seed)
        dataset.save(dataset_path(ws, protocol))
        fingerprints[protocol] = dataset.fingerprint
        windows[protocol] = len(dataset.train.targets)
    (ws / SETTINGS).write_text(settings.model_dump_json(indent=2))

    configure_tracking(settings)
    lineage = input_lineage(settings, as_of)
    data_version = fingerprints["loo"]
    pending = f"Training as of {as_of}: evaluation and champion decision pending."
    with mlflow.start_run(run_name=f"train-{as_of}", description=pending) as parent:
        mlflow.set_tags({"as_of": as_of.isoformat(), "stage": "train", **code_version(), "config_digest": config_digest(settings)})
        mlflow.log_params(flat_params("", settings.model_dump(mode="json", include={"train", "eval", "features"})))
        sizes = {"data.users": len(data.sequences.user_ids), "data.items": data.prep.n_items, "data.interactions": interactions.num_rows}
        mlflow.log_params({**sizes, **run_params(settings, as_of, protocols, data_version)})
        mlflow.log_dict(json.loads(settings.model_dump_json()), "config.json")
        mlflow.log_dict(lineage, "lineage.json")
        _log_inputs(settings, as_of, interactions, profiles, items)
        runs = {"parent": parent.info.run_id, "as_of": as_of.isoformat(), "protocols": protocols, "data_version": data_version}
        for protocol in protocols:
            name = "seqrec" if protocol == "loo" else f"seqrec-{protocol}"
            with start_model_run(settings, as_of, "seqrec", reported_protocols(protocol, protocols), data_version, name) as child:
                mlflow.set_tag("protocol", protocol)
                mlflow.log_params(flat_params("model", config.to_dict()))
            runs[protocol] = child.info.run_id
    (ws / RUNS).write_text(json.dumps(runs))
    log.info(
        "prepared training data as of %s: %d users, %d items, %d interactions (%d training windows) in %.1fs",
        as_of, len(data.sequences.user_ids), data.prep.n_items, interactions.num_rows,
        windows["loo"], time.monotonic() - started,
    )  # fmt: skip
    return runs


def _log_inputs(settings: Settings, as_of: date, interactions, profiles, items) -> None:
    import mlflow

    lake = Lake(settings.lake)
    for name, table, source in (
        ("interactions", interactions, lake.table_path(INTERACTIONS)),
        ("user_profiles", profiles, lake.partition_path(USER_PROFILES, as_of)),
        ("item_features", items, lake.partition_path(ITEM_FEATURES, as_of)),
    ):
        frame = table.slice(0, 1000).drop_columns([c for c in table.column_names if c in ("text_embedding",)]).to_pandas()
        dataset = mlflow.data.from_pandas(frame, source=source, name=f"{name}@{as_of}")
        mlflow.log_input(dataset, context="training", tags={"rows": str(table.num_rows)})


# What MLflow's compare view lines up: the same params and metric keys on every run of a kind.
def reported_protocols(model_protocol: str, protocols: list[str]) -> list[str]:
    """The protocols a model's run reports, its own first. The served model's run (protocol "loo")
    reports every evaluated protocol, as a baseline's run does: each protocol's figures come from
    a model fitted on that protocol's data (the backtest model; the baseline refit before the cut).
    A temporal protocol's model reports its own."""
    if model_protocol != "loo":
        return [model_protocol]
    return [p for p in protocols if p in EVALUATED]


def run_params(settings: Settings, as_of: date, protocols: list[str], data_version: str) -> dict[str, str]:
    """The params every training run logs, the parent's and each model's.

    ``train_cutoff`` is the exclusive upper bound (UTC) of the events the run's own model was
    fitted on (its first protocol's cut: the end of the run date for the served model, the
    parent and the baselines); ``<protocol>.train_cutoff`` is that of each temporal protocol
    the run reports.
    ``data.version`` is the run date's dataset fingerprint: every protocol's data is cut from it.
    """
    cutoffs = {f"{p}.train_cutoff": train_cutoff(settings, as_of, p).isoformat() for p in protocols if p != "loo"}
    own = train_cutoff(settings, as_of, protocols[0]).isoformat()
    return {"run_date": as_of.isoformat(), "protocols": ",".join(protocols), "train_cutoff": own, "data.version": data_version, **cutoffs}


def model_run_description(settings: Settings, as_of: date, family: str, protocols: list[str]) -> str:
    """A model run's description (MLflow's run note): what was fitted, on which events, reported how."""
    cutoffs = ", ".join(f"{p} before {train_cutoff(settings, as_of, p).isoformat()}" for p in protocols)
    keys = ", ".join(f"`{p}/...`" for p in protocols)
    heading = f"**{family}**, run date {as_of}, protocols {', '.join(protocols)}."
    return f"{heading}\n\nFitted per protocol on the events {cutoffs}; metrics {keys}."


def start_model_run(settings: Settings, as_of: date, family: str, protocols: list[str], data_version: str, name: str | None = None):
    """A nested run of one model (``protocols``: ``reported_protocols``), with the tags, params and
    description every model's run carries; use it as a context manager."""
    import mlflow

    run = mlflow.start_run(run_name=name or family, nested=True, description=model_run_description(settings, as_of, family, protocols))
    mlflow.set_tags({"model": family, "as_of": as_of.isoformat(), **code_version()})
    mlflow.log_params({"model.family": family, **run_params(settings, as_of, protocols, data_version)})
    return run


def training_run_description(settings: Settings, as_of: date, version: str, decision: GateDecision, plots: dict[str, str]) -> str:
    """The parent run's description: the run date, the champion decision, and links to its plots
    (``plots``: artifact path to the run's page on it in the MLflow UI)."""
    name, alias = settings.train.model_name, settings.registry.champion_alias
    verdict = f"promoted to @{alias}" if decision.promote else "not promoted: stays challenger"
    return "\n".join([
        f"Training as of {as_of}: the served model saw the events before {train_cutoff(settings, as_of, 'loo').isoformat()}.",
        "",
        f"**Champion decision**: {name} v{version} {verdict} ({decision.reason}).",
        "",
        "Plots:",
        *(f"- [{path}]({link})" for path, link in plots.items()),
    ])


# Step 2 ----------------------------------------------------------------------------
_FROM_WORKSPACE = object()


def torchrun_command(
    settings: Settings,
    as_of: date,
    protocol: str = "loo",
    nproc: int | None = None,
    *,
    out: Path | None = None,
    settings_file: Path | None = None,
    run_id: str | None = _FROM_WORKSPACE,  # type: ignore[assignment]
) -> list[str]:
    """The torchrun command of one protocol's training; ``out``, ``settings_file`` and ``run_id``
    (None: no MLflow logging) replace the workspace's own."""
    ws = workspace(settings, as_of)
    if run_id is _FROM_WORKSPACE:
        run_id = json.loads((ws / RUNS).read_text())[protocol]
    nproc = nproc or settings.train.nproc_per_node
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if settings.train.nnodes > 1:
        launcher += [f"--nnodes={settings.train.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={settings.train.rdzv_endpoint}",
                     f"--rdzv-id=recsys-{as_of}-{protocol}"]  # fmt: skip
    else:
        launcher += ["--standalone", "--nnodes=1"]
    return [
        *launcher,
        f"--nproc-per-node={nproc}",
        str(JOB),
        "--dataset", str(dataset_path(ws, protocol)),
        "--out", str(out or checkpoint_dir(ws, protocol)),
        *(["--run-id", run_id] if run_id else []),
        "--settings", str(settings_file or ws / SETTINGS),
    ]  # fmt: skip


def torchrun_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "OMP_NUM_THREADS": str(settings.train.torch_threads)}


def run_torchrun(settings: Settings, as_of: date, nproc: int | None = None) -> dict:
    """Train one model per protocol with torchrun; returns the leave-last-out model's training result."""
    env = torchrun_env(settings)
    results = {}
    runs = json.loads((workspace(settings, as_of) / RUNS).read_text())
    for protocol in runs["protocols"]:
        command = torchrun_command(settings, as_of, protocol, nproc)
        log.info("launching (%s): %s", protocol, " ".join(command))
        completed = subprocess.run(command, env=env)
        if completed.returncode != 0:
            raise ModelError(
                f"torchrun ({protocol}) exited with {completed.returncode}; its log is above",
                hint=f"rerunning the same command resumes from the last checkpoint in {checkpoint_dir(workspace(settings, as_of), protocol)}",
            )
        results[protocol] = json.loads((checkpoint_dir(workspace(settings, as_of), protocol) / RESULT).read_text())
    return results


# Step 3 ----------------------------------------------------------------------------
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


def leave_last_out_case(data: PreparedData) -> tuple[EvalCase, Sequences]:
    """Each user's last new item is the target; the model sees everything before it."""
    split = data.split
    rows = np.flatnonzero(split.test_target > 0)
    case = EvalCase(
        rows=rows,
        seen=history_matrix([split.test_input[r] for r in rows], data.prep.n_items),
        relevant=[np.array([split.test_target[r] - 1]) for r in rows],
        history_lengths=np.array([len(split.test_input[r]) for r in rows]),
    )
    inputs = Sequences(data.sequences.user_ids, list(split.test_input), list(split.test_times))
    return case, inputs


def backtest_case(full: PreparedData, before_cut: PreparedData) -> tuple[EvalCase, Sequences]:
    """Targets are the items each user met for the first time after the cut; the model sees everything before it."""
    rows, relevant = [], []
    for user, (items, earlier) in enumerate(zip(full.sequences.items, before_cut.sequences.items)):
        # Sequences hold first interactions only, so what follows the earlier prefix is new.
        future = items[len(earlier) :]
        if len(future):
            rows.append(user)
            relevant.append(np.unique(future) - 1)
    rows_array = np.array(rows, dtype=np.int64)
    case = EvalCase(
        rows=rows_array,
        seen=history_matrix([before_cut.sequences.items[r] for r in rows], full.prep.n_items),
        relevant=relevant,
        history_lengths=np.array([len(before_cut.sequences.items[r]) for r in rows]),
    )
    return case, before_cut.sequences


def evaluation_context(settings: Settings, data: PreparedData, inputs: Sequences) -> dict:
    """What every model's evaluation shares: cut-offs, the items' popularity in the inputs, their categories."""
    popularity = np.bincount(np.concatenate(inputs.items) - 1, minlength=data.prep.n_items).astype(np.float64)
    return {
        "ks": tuple(settings.eval.ks),
        "item_popularity": popularity,
        "item_categories": sp.csr_matrix((data.item_content[1:, : len(data.prep.genres)] > 0).astype(np.float32)),
        "cold_user_max_events": settings.eval.cold_user_max_events,
    }


def evaluate_protocol(
    settings: Settings,
    data: PreparedData,
    case: EvalCase,
    inputs: Sequences,
    scorer,
    common: dict,
) -> dict[str, EvalResult]:
    """The sequence model (``scorer``) and every baseline, on the same users, histories and targets;
    ``common`` is the protocol's ``evaluation_context``."""
    n_items = data.prep.n_items
    histories = [np.asarray(s) for s in inputs.items]
    all_items, all_times = np.concatenate(histories), np.concatenate([np.asarray(t) for t in inputs.times])
    results = {"seqrec": evaluate(scorer, case, **common)}
    history = history_matrix(histories, n_items)
    for name in settings.train.baselines:
        started = time.monotonic()
        if name == "popularity":
            model = Popularity(settings.train.trending_window_days).fit(all_items, all_times, n_items, int(all_times.max()))
            results[name] = evaluate(lambda rows, m=model: m.score(history[rows]), case, **common)
        elif name == "ease":
            model = EASE(settings.train.ease_lambda).fit(history)
            results[name] = evaluate(lambda rows, m=model: m.score(history[rows]), case, **common)
        elif name == "als":
            from recsys_core.models.als import fit_als

            factors = fit_als(settings, history)
            results[name] = evaluate(factors.score, case, **common)
        log.info("baseline %s: ndcg@10 %.4f (%.1fs)", name, results[name].metrics["ndcg@10"], time.monotonic() - started)
    return results


def returning_bucket(settings: Settings) -> int:
    """The first recency bucket that counts as "coming back" for the calibration."""
    return int(gap_buckets(torch.tensor([int(settings.train.calibration.returning_after_hours * 3600)]))[0])


def calibrate_trend(settings: Settings, as_of: date, datasets: dict[str, PreparedData], items_table) -> TrendCalibration:
    """Fit the trend prior's out-of-sample offsets with the calibration model, on the horizon after its cut."""
    data = datasets["calibration"]
    bundle = load_trained(settings, as_of, data, "calibration")
    case, inputs = backtest_case(datasets["backtest"], data)
    encoded = bundle.encode_inputs(inputs, data.user_feats, now=data.until_day * SECONDS_PER_DAY)
    days = np.full(len(inputs.items), data.until_day, dtype=np.int64)
    scores = bundle.scorer(encoded, items_table, catalogue=data.prep.item_ids, trend=data.trend, trend_days=days)(case.rows)
    query = encoded.query_gaps[torch.as_tensor(case.rows), -1].numpy()
    popularity = data.trend.values[data.trend.row(data.until_day)][1:, -1]  # log1p events in the longest window
    calibration = fit_trend_offsets(
        scores, popularity, query, case.seen, case.relevant,
        grid=tuple(settings.train.calibration.grid), returning_bucket=returning_bucket(settings),
        min_users=settings.train.calibration.min_users,
    )  # fmt: skip
    log.info(
        "trend calibration on %d users after %s: offsets %s (users per group %s)",
        len(case.rows), train_cutoff(settings, as_of, "calibration").date(), calibration.offsets, calibration.users,
    )  # fmt: skip
    return calibration


def apply_calibration(bundle: ModelBundle, calibration: TrendCalibration, settings: Settings) -> None:
    """Add the fitted offsets to the model's trend weight of new and returning users' predictions."""
    if not any(calibration.offsets.values()):
        return
    start = returning_bucket(settings)
    bundle.model.shift_trend_weight(torch.tensor([0]), calibration.offsets["new"])
    bundle.model.shift_trend_weight(torch.arange(start, GAP_BUCKETS), calibration.offsets["returning"])


def evaluate_and_register(settings: Settings, as_of: date) -> dict:
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from recsys_core.evaluation import report
    from recsys_core.io.registry import (
        apply_gate,
        champion,
        configure_tracking,
        log_bundle,
        log_external_model,
        log_metrics,
        record_model_output,
    )

    started = time.monotonic()
    ws = workspace(settings, as_of)
    runs = json.loads((ws / RUNS).read_text())
    protocols = runs["protocols"]
    train_results = {p: json.loads((checkpoint_dir(ws, p) / RESULT).read_text()) for p in protocols}
    interactions, profiles, items = load_inputs(settings, as_of)
    datasets = prepared_protocols(settings, as_of, interactions, profiles, items)
    data = datasets["loo"]
    calibration = calibrate_trend(settings, as_of, datasets, items) if "calibration" in protocols else TrendCalibration.none()
    bundle = load_trained(settings, as_of, data, "loo")
    apply_calibration(bundle, calibration, settings)
    loo_case, loo_inputs = leave_last_out_case(data)
    # Leave-last-out predicts at each user's last input event; the backtest at the cut, as the nightly job would.
    loo_days = last_event_days(loo_inputs.times, data.until_day)
    loo_encoded = bundle.encode_inputs(loo_inputs, data.user_feats)
    loo_scorer = bundle.scorer(loo_encoded, items, catalogue=data.prep.item_ids, trend=data.trend, trend_days=loo_days)
    loo_context = evaluation_context(settings, data, loo_inputs)
    evaluations = {"loo": evaluate_protocol(settings, data, loo_case, loo_inputs, loo_scorer, loo_context)}
    if "backtest" in protocols:
        bt_data = datasets["backtest"]
        bt_case, bt_inputs = backtest_case(data, bt_data)
        bt_days = np.full(len(bt_inputs.items), bt_data.until_day, dtype=np.int64)
        bt_bundle = load_trained(settings, as_of, bt_data, "backtest")
        bt_encoded = bt_bundle.encode_inputs(bt_inputs, bt_data.user_feats, now=bt_data.until_day * SECONDS_PER_DAY)
        bt_scorer = bt_bundle.scorer(bt_encoded, items, catalogue=bt_data.prep.item_ids, trend=bt_data.trend, trend_days=bt_days)
        bt_context = evaluation_context(settings, bt_data, bt_inputs)
        # The model before calibration, for the record: what the offsets add.
        uncalibrated = evaluate(bt_scorer, bt_case, **bt_context).metrics
        apply_calibration(bt_bundle, calibration, settings)
        evaluations["backtest"] = evaluate_protocol(settings, bt_data, bt_case, bt_inputs, bt_scorer, bt_context)
    ks = tuple(settings.eval.ks)
    metric = settings.registry.gate_metric

    configure_tracking(settings)
    bundle.remember_popularity(items)  # the MLflow model's trend prior
    bundle_dir = bundle.save(ws / "bundle", extra={"as_of": as_of.isoformat(), "trend_calibration": calibration.offsets, **code_version()})
    with mlflow.start_run(run_id=runs["parent"]):
        for protocol in protocols:
            with mlflow.start_run(run_id=runs[protocol], nested=True):
                # The served model is logged below (log_bundle links the metrics to it); the other
                # protocols' models stay in the workspace and are recorded as external models.
                model_id = None if protocol == "loo" else log_external_model(f"seqrec-{protocol}", "seqrec")
                log_evaluation(evaluations, "seqrec", reported_protocols(protocol, protocols), model_id)
                if protocol == "calibration":  # what the calibration model fitted
                    offsets = {f"offset/{group}": offset for group, offset in calibration.offsets.items()}
                    log_metrics(offsets, prefix="calibration/", model_id=model_id)
                log_metrics(train_results[protocol], model_id=model_id)
                mlflow.log_figure(report.training_curves_figure(train_results[protocol]["history"]), "plots/training_curves.png")
                if protocol == "loo":
                    info = log_bundle(bundle_dir, "model", _input_example(data, profiles), registered_model_name=settings.train.model_name)
                    version = str(info.registered_model_version)
        for name in evaluations["loo"]:
            if name == "seqrec":
                continue
            reported = reported_protocols("loo", protocols)
            with start_model_run(settings, as_of, name, reported, runs["data_version"]):
                log_evaluation(evaluations, name, reported, log_external_model(name, name))
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
            mlflow.log_figure(report.metric_at_k_figure({n: r.metrics for n, r in results.items()}, ks=ks), f"plots/{protocol}_metrics_at_k.png")
        if "calibration" in protocols:
            mlflow.log_params({f"calibration.offset_{group}": offset for group, offset in calibration.offsets.items()})
            log_metrics({"backtest/seqrec_uncalibrated/ndcg@10": uncalibrated["ndcg@10"]})
            mlflow.log_dict(calibration.to_dict(), "evaluation/calibration.json")
            mlflow.log_figure(report.calibration_figure(calibration.curves, calibration.offsets), "plots/trend_calibration.png")
        loo = evaluations["loo"]
        popularity = loo_context["item_popularity"]
        mlflow.log_figure(report.popularity_bias_figure({n: r.recommended for n, r in loo.items()}, popularity, k=10), "plots/popularity_bias.png")
        mlflow.log_figure(report.coverage_figure({n: r.recommended for n, r in loo.items()}, data.prep.n_items, ks), "plots/coverage.png")

        # The gate: the current champion, scored by the same code on the same users.
        current = champion(settings, settings.work_dir / "registry")
        champion_metric = None
        if current is not None and current.version != version:
            champ = ModelBundle.load(current.bundle_dir)
            champ_inputs = _resequence(loo_inputs, data.prep.item_ids, champ)
            _, champ_feats = champ.prep.user_features(profiles.sort_by("user_id"))
            champ_encoded = champ.encode_inputs(champ_inputs, champ_feats)
            scorer = champ.scorer(champ_encoded, items, catalogue=data.prep.item_ids, trend=data.trend, trend_days=loo_days)
            champion_metric = evaluate(scorer, loo_case, **loo_context).metrics[metric]
            log_metrics({metric: champion_metric}, prefix="champion/")
        decision = gate_decision(metric, loo["seqrec"].metrics[metric], champion_metric,
                                 settings.registry.gate_min_relative_improvement)  # fmt: skip
        apply_gate(settings, version, decision)
        mlflow.set_tags({"gate.promoted": str(decision.promote), "gate.reason": decision.reason, "model_version": version})
        # Last: from here on, metrics logged to this run would be linked to the served model too.
        record_model_output(info.model_id)
        mlflow.set_tag(MLFLOW_RUN_NOTE, training_run_description(settings, as_of, version, decision, plot_links(runs["parent"])))
    headline = ("ndcg@10", "hitrate@10", "recall@50", "mrr", "coverage@10")
    out = {
        "as_of": as_of.isoformat(),
        "model_name": settings.train.model_name,
        "model_version": version,
        "promoted": decision.promote,
        "gate": decision.reason,
        "metrics": {n: {k: summary["loo"][n][k] for k in headline} for n in summary["loo"]},
        "backtest": {
            n: {k: summary["backtest"][n][k] for k in ("ndcg@10", "recall@10", "hitrate@10", "users")} for n in summary.get("backtest", {})
        },
        "calibration": {**calibration.to_dict(), "backtest_uncalibrated_ndcg@10": round(uncalibrated["ndcg@10"], 5)}
        if "calibration" in protocols
        else None,
        "train": {p: {k: v for k, v in r.items() if k != "history"} for p, r in train_results.items()},
        "parent_run_id": runs["parent"],
        "seconds": round(time.monotonic() - started, 1),
    }
    (ws / "summary.json").write_text(json.dumps(out, indent=2))
    log.info("evaluation as of %s: leave-last-out %s; backtest %s", as_of, json.dumps(out["metrics"]), json.dumps(out["backtest"]))
    return out


def log_evaluation(evaluations: dict[str, dict[str, EvalResult]], model: str, protocols: list[str], model_id: str | None) -> None:
    """One model's metrics under each evaluated protocol it reports, as ``<protocol>/<metric>``:
    the same keys on every model's run."""
    from recsys_core.io.registry import log_metrics

    for protocol in protocols:
        if protocol in evaluations:
            log_metrics(evaluations[protocol][model].metrics, prefix=f"{protocol}/", model_id=model_id)


def plot_links(run_id: str) -> dict[str, str]:
    """The run's plots: artifact path to its page in the MLflow UI (a link relative to the UI's address)."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    return {a.path: f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{a.path}" for a in client.list_artifacts(run_id, "plots")}


def _resequence(sequences: Sequences, item_ids: list[str], bundle: ModelBundle) -> Sequences:
    """The same histories in another model's item vocabulary (unknown items dropped)."""
    items, times = [], []
    for seq, t in zip(sequences.items, sequences.times):
        mapped = np.array([bundle.prep.item_index.get(item_ids[i - 1], 0) for i in seq], dtype=np.int64)
        keep = mapped > 0
        items.append(mapped[keep])
        times.append(np.asarray(t)[keep])
    return Sequences(sequences.user_ids, items, times)


def _input_example(data: PreparedData, profiles):
    import pandas as pd

    first = next(i for i, s in enumerate(data.sequences.items) if len(s))
    history = [data.prep.item_ids[i - 1] for i in data.sequences.items[first][-5:]]
    row = profiles.sort_by("user_id").slice(first, 1).to_pylist()[0]
    return pd.DataFrame([{"history": history, "age": row["age"], "gender": row["gender"], "occupation": row["occupation"]}])


def launch_training(settings: Settings, as_of: date, nproc: int | None = None) -> dict:
    """All three steps in one call (the CLI's ``recsys train``)."""
    prepare_training(settings, as_of)
    run_torchrun(settings, as_of, nproc)
    return evaluate_and_register(settings, as_of)

