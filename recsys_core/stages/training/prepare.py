"""Step 1: the data of every feasible protocol, its dataset files, and the MLflow runs to fill."""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import date

from recsys_core.config import Settings
from recsys_core.io.provenance import code_version, config_digest, flat_params
from recsys_core.stages.forget import forget_lineage
from recsys_core.stages.training.handoff import save_prepared
from recsys_core.stages.training.protocols import feasible_protocols, input_lineage, load_inputs, prepared_protocols
from recsys_core.stages.training.runs import log_inputs, reported_protocols, run_params, start_model_run
from recsys_core.stages.training.workspace import RUNS, SETTINGS, dataset_path, prepared_path, workspace
from recsys_core.training.dataset import build_dataset, model_config

log = logging.getLogger(__name__)


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
        save_prepared(prepared_path(ws, protocol), prepared)
        fingerprints[protocol] = dataset.fingerprint
        windows[protocol] = len(dataset.train.targets)
    (ws / SETTINGS).write_text(settings.model_dump_json(indent=2))

    configure_tracking(settings)
    lineage = input_lineage(settings, as_of)
    data_version = fingerprints["loo"]
    pending = f"Training as of {as_of}: evaluation and champion decision pending."
    with mlflow.start_run(run_name=f"train-{as_of}", description=pending) as parent:
        digest = config_digest(settings)
        mlflow.set_tags({"as_of": as_of.isoformat(), "stage": "train", **code_version(), "config_digest": digest})
        # The forget requests done before this training: its data is cut after them (the lineage of the cut).
        forgotten = forget_lineage(settings)
        mlflow.set_tags(forgotten)
        mlflow.log_params(flat_params("", settings.model_dump(mode="json", include={"train", "eval", "features"})))
        users, items_count, events = len(data.sequences.user_ids), data.prep.n_items, interactions.num_rows
        sizes = {"data.users": users, "data.items": items_count, "data.interactions": events}
        mlflow.log_params({**sizes, **run_params(settings, as_of, protocols, data_version)})
        mlflow.log_dict(json.loads(settings.model_dump_json()), "config.json")
        mlflow.log_dict(lineage, "lineage.json")
        log_inputs(settings, as_of, interactions, profiles, items)
        runs = {"parent": parent.info.run_id, "as_of": as_of.isoformat(), "protocols": protocols, "data_version": data_version}
        for protocol in protocols:
            name = "seqrec" if protocol == "loo" else f"seqrec-{protocol}"
            with start_model_run(settings, as_of, "seqrec", reported_protocols(protocol, protocols), data_version, name) as child:
                mlflow.set_tags({"protocol": protocol, **forgotten})
                mlflow.log_params(flat_params("model", config.to_dict()))
            runs[protocol] = child.info.run_id
    (ws / RUNS).write_text(json.dumps(runs))
    log.info(
        "prepared training data as of %s: %d users, %d items, %d interactions (%d training windows) in %.1fs",
        as_of,
        len(data.sequences.user_ids),
        data.prep.n_items,
        interactions.num_rows,
        windows["loo"],
        time.monotonic() - started,
    )
    return runs
