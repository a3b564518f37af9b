"""Stage 2: training as of a date, in three steps that Airflow can run as separate tasks.

1. ``prepare``: read interactions and features as of the date, fit the
   preprocessing, build the dataset file, open the MLflow parent run.
2. ``run_torchrun``: train the sequence model with DDP (``torchrun``); rank 0
   logs per-epoch metrics into a nested run.
3. ``evaluate_and_register``: evaluate the model and the baselines on the same
   leave-last-out split, log metrics and plots, register the model and move
   the champion alias only through the gate.

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
from datetime import date
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.config import Settings
from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, USER_PROFILES
from recsys_core.evaluation.gate import gate_decision
from recsys_core.evaluation.protocols import EvalCase, EvalResult, evaluate
from recsys_core.io.lake import Lake
from recsys_core.io.provenance import code_version, config_digest, flat_params
from recsys_core.io.tables import ingests_as_of, read_interactions
from recsys_core.models.baselines import EASE, Popularity, history_matrix
from recsys_core.models.bundle import ModelBundle
from recsys_core.models.transformer import SeqRec, SeqRecConfig
from recsys_core.training.checkpoint import load_checkpoint
from recsys_core.training.data import Sequences
from recsys_core.training.dataset import PreparedData, build_tensors, model_config, prepare, save_dataset
from recsys_core.training.loop import BEST, RESULT

log = logging.getLogger(__name__)

DATASET = "dataset.pt"
RUNS = "runs.json"
SETTINGS = "settings.json"  # the exact settings the ranks train with
JOB = Path(__file__).resolve().parents[2] / "jobs" / "train.py"


def workspace(settings: Settings, as_of: date) -> Path:
    return settings.work_dir / "train" / as_of.isoformat()


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
    data = prepare(interactions, profiles, items)
    config = model_config(data, settings.train.model)
    tensors = build_tensors(data, config)
    save_dataset(tensors, ws / DATASET)
    (ws / SETTINGS).write_text(settings.model_dump_json(indent=2))

    configure_tracking(settings)
    lineage = input_lineage(settings, as_of)
    with mlflow.start_run(run_name=f"train-{as_of}") as parent:
        mlflow.set_tags({"as_of": as_of.isoformat(), "stage": "train", **code_version(), "config_digest": config_digest(settings)})
        mlflow.log_params(flat_params("", settings.model_dump(mode="json", include={"train", "eval", "features"})))
        mlflow.log_params({"data.users": len(data.sequences.user_ids), "data.items": data.prep.n_items,
                           "data.interactions": interactions.num_rows, "data.fingerprint": tensors["dataset_fingerprint"]})  # fmt: skip
        mlflow.log_dict(json.loads(settings.model_dump_json()), "config.json")
        mlflow.log_dict(lineage, "lineage.json")
        _log_inputs(settings, as_of, interactions, profiles, items)
        with mlflow.start_run(run_name="seqrec", nested=True) as child:
            mlflow.set_tags({"model": "seqrec", "as_of": as_of.isoformat(), **code_version()})
            mlflow.log_params(flat_params("model", config.to_dict()))
    runs = {"parent": parent.info.run_id, "seqrec": child.info.run_id, "as_of": as_of.isoformat()}
    (ws / RUNS).write_text(json.dumps(runs))
    log.info(
        "prepared training data as of %s: %d users, %d items, %d interactions (%d training windows) in %.1fs",
        as_of, len(data.sequences.user_ids), data.prep.n_items, interactions.num_rows,
        len(tensors["train_targets"]), time.monotonic() - started,
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


# Step 2 ----------------------------------------------------------------------------
def torchrun_command(settings: Settings, as_of: date, nproc: int | None = None) -> list[str]:
    ws = workspace(settings, as_of)
    runs = json.loads((ws / RUNS).read_text())
    nproc = nproc or settings.train.nproc_per_node
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if settings.train.nnodes > 1:
        if not settings.train.rdzv_endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint (host:port of the rendezvous)")
        launcher += [f"--nnodes={settings.train.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={settings.train.rdzv_endpoint}",
                     f"--rdzv-id=recsys-{as_of}"]  # fmt: skip
    else:
        launcher += ["--standalone", "--nnodes=1"]
    return [
        *launcher,
        f"--nproc-per-node={nproc}",
        str(JOB),
        "--dataset", str(ws / DATASET),
        "--out", str(ws / "checkpoints"),
        "--run-id", runs["seqrec"],
        "--settings", str(ws / SETTINGS),
    ]  # fmt: skip


def run_torchrun(settings: Settings, as_of: date, nproc: int | None = None) -> dict:
    command = torchrun_command(settings, as_of, nproc)
    log.info("launching: %s", " ".join(command))
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "OMP_NUM_THREADS": str(settings.train.torch_threads)}
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with {result.returncode}; its log is above. Rerunning the same command resumes "
            f"from the last checkpoint in {workspace(settings, as_of) / 'checkpoints'}"
        )
    return json.loads((workspace(settings, as_of) / "checkpoints" / RESULT).read_text())


# Step 3 ----------------------------------------------------------------------------
def load_trained(settings: Settings, as_of: date, data: PreparedData) -> ModelBundle:
    ws = workspace(settings, as_of)
    tensors = torch.load(ws / DATASET, map_location="cpu", weights_only=True)
    config = SeqRecConfig.from_dict(json.loads(tensors["config_json"]))
    model = SeqRec(config, tensors["item_content"])
    best = load_checkpoint(ws / "checkpoints" / BEST)
    if best is None:
        raise FileNotFoundError(f"no trained model at {ws / 'checkpoints' / BEST}; run the torchrun step first")
    model.load_state_dict(best["model"])
    model.eval()
    return ModelBundle(config, data.prep, model)


def leave_last_out_case(data: PreparedData) -> EvalCase:
    split = data.split
    rows = np.flatnonzero(split.test_target > 0)
    seen = history_matrix([split.test_input[r] for r in rows], data.prep.n_items)
    return EvalCase(
        rows=rows,
        seen=seen,
        relevant=[np.array([split.test_target[r] - 1]) for r in rows],
        history_lengths=np.array([len(split.test_input[r]) for r in rows]),
    )


def bundle_scorer(bundle: ModelBundle, sequences: Sequences, user_feats: np.ndarray, catalogue_ids: list[str], items_table):
    """Scores of ``bundle`` for rows of ``sequences`` over the current catalogue, by item id."""
    inputs = bundle.encode_inputs(sequences, user_feats)
    ids, matrix = bundle.catalogue_matrix(items_table)
    order = {item: j for j, item in enumerate(ids)}
    columns = np.array([order.get(i, -1) for i in catalogue_ids])

    def score(rows: np.ndarray) -> np.ndarray:
        part = {k: v[torch.as_tensor(rows)] for k, v in inputs.items()}
        scores = (bundle.user_vectors(part) @ matrix.T).numpy()
        out = np.full((len(rows), len(catalogue_ids)), -1e9, dtype=np.float32)
        out[:, columns >= 0] = scores[:, columns[columns >= 0]]
        return out

    return score


def evaluate_and_register(settings: Settings, as_of: date) -> dict:
    import mlflow

    from recsys_core.evaluation import report
    from recsys_core.io.registry import apply_gate, champion, configure_tracking, log_bundle, log_metrics

    started = time.monotonic()
    ws = workspace(settings, as_of)
    runs = json.loads((ws / RUNS).read_text())
    train_result = json.loads((ws / "checkpoints" / RESULT).read_text())
    interactions, profiles, items = load_inputs(settings, as_of)
    data = prepare(interactions, profiles, items)
    case = leave_last_out_case(data)
    ks = tuple(settings.eval.ks)
    n_items = data.prep.n_items
    split = data.split
    test_sequences = Sequences(
        data.sequences.user_ids,
        [np.asarray(s) for s in split.test_input],
        [np.asarray(t) for t in split.test_times],
    )
    popularity_all = np.bincount(np.concatenate(split.test_input) - 1, minlength=n_items).astype(np.float64)
    categories = sp.csr_matrix((data.item_content[1:, : len(data.prep.genres)] > 0).astype(np.float32))
    common = dict(ks=ks, item_popularity=popularity_all, item_categories=categories,
                  cold_user_max_events=settings.eval.cold_user_max_events)  # fmt: skip
    catalogue_ids = data.prep.item_ids

    bundle = load_trained(settings, as_of, data)
    results: dict[str, EvalResult] = {}
    results["seqrec"] = evaluate(bundle_scorer(bundle, test_sequences, data.user_feats, catalogue_ids, items), case, **common)

    history = history_matrix(split.test_input, n_items)
    for name in settings.train.baselines:
        baseline_started = time.monotonic()
        if name == "popularity":
            all_items = np.concatenate(split.test_input)
            all_times = np.concatenate(split.test_times)
            model = Popularity(settings.train.trending_window_days).fit(all_items, all_times, n_items, int(all_times.max()))
            results[name] = evaluate(lambda rows, m=model: m.score(history[rows]), case, **common)
        elif name == "ease":
            model = EASE(settings.train.ease_lambda).fit(history)
            results[name] = evaluate(lambda rows, m=model: m.score(history[rows]), case, **common)
        elif name == "als":
            from recsys_core.models.als import fit_als

            model = fit_als(settings, history)
            results[name] = evaluate(lambda rows, m=model: m.score(rows), case, **common)
        log.info("baseline %s: ndcg@10 %.4f (%.1fs)", name, results[name].metrics["ndcg@10"], time.monotonic() - baseline_started)

    configure_tracking(settings)
    bundle_dir = bundle.save(ws / "bundle", extra={"as_of": as_of.isoformat(), **code_version()})
    metric = settings.registry.gate_metric
    with mlflow.start_run(run_id=runs["parent"]):
        with mlflow.start_run(run_id=runs["seqrec"], nested=True):
            log_metrics(results["seqrec"].metrics, prefix="test/")
            log_metrics(train_result)
            mlflow.log_figure(report.training_curves_figure(train_result["history"]), "plots/training_curves.png")
            example = _input_example(data, profiles)
            info = log_bundle(bundle_dir, "model", example, registered_model_name=settings.train.model_name)
            version = str(info.registered_model_version)
        for name, result in results.items():
            if name == "seqrec":
                continue
            with mlflow.start_run(run_name=name, nested=True):
                mlflow.set_tags({"model": name, "as_of": as_of.isoformat(), **code_version()})
                log_metrics(result.metrics, prefix="test/")
        summary = {name: {k: round(v, 5) for k, v in r.metrics.items()} for name, r in results.items()}
        best_baseline = max((n for n in results if n != "seqrec"), key=lambda n: results[n].metrics[metric], default=None)
        if best_baseline:
            lift = results["seqrec"].metrics[metric] / max(1e-12, results[best_baseline].metrics[metric])
            log_metrics({f"lift_over_best_baseline/{metric}": lift})
        for name, result in results.items():
            log_metrics({k: v for k, v in result.metrics.items() if "/" not in k}, prefix=f"{name}/")
        mlflow.log_dict(summary, "evaluation/leave_last_out.json")
        mlflow.log_figure(report.metric_at_k_figure({n: r.metrics for n, r in results.items()}, ks=ks), "plots/metrics_at_k.png")
        mlflow.log_figure(
            report.popularity_bias_figure({n: r.recommended for n, r in results.items()}, popularity_all, k=10),
            "plots/popularity_bias.png",
        )

        # The gate: the current champion, scored by the same code on the same users.
        current = champion(settings, settings.work_dir / "registry")
        champion_metric = None
        if current is not None and current.version != version:
            champ = ModelBundle.load(current.bundle_dir)
            champ_sequences = _resequence(test_sequences, data.prep.item_ids, champ)
            _, champ_feats = champ.prep.user_features(profiles.sort_by("user_id"))
            champ_result = evaluate(bundle_scorer(champ, champ_sequences, champ_feats, catalogue_ids, items), case, **common)
            champion_metric = champ_result.metrics[metric]
            log_metrics({metric: champion_metric}, prefix="champion/")
        decision = gate_decision(metric, results["seqrec"].metrics[metric], champion_metric,
                                 settings.registry.gate_min_relative_improvement)  # fmt: skip
        apply_gate(settings, version, decision)
        mlflow.set_tags({"gate.promoted": str(decision.promote), "gate.reason": decision.reason, "model_version": version})
    out = {
        "as_of": as_of.isoformat(),
        "model_name": settings.train.model_name,
        "model_version": version,
        "promoted": decision.promote,
        "gate": decision.reason,
        "metrics": {n: {k: summary[n][k] for k in ("ndcg@10", "hitrate@10", "recall@50", "mrr", "coverage@10")} for n in summary},
        "train": {k: v for k, v in train_result.items() if k != "history"},
        "parent_run_id": runs["parent"],
        "seconds": round(time.monotonic() - started, 1),
    }
    (ws / "summary.json").write_text(json.dumps(out, indent=2))
    log.info("evaluation as of %s: %s", as_of, json.dumps(out["metrics"]))
    return out


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

