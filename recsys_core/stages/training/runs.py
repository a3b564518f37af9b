"""The layout of a training in MLflow: a parent run, one nested run per model, the same keys on every run."""

from __future__ import annotations

from datetime import date

from recsys_core.config import Settings
from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, USER_PROFILES
from recsys_core.evaluation.gate import GateDecision
from recsys_core.evaluation.protocols import EvalResult
from recsys_core.io.lake import Lake
from recsys_core.io.provenance import code_version
from recsys_core.stages.training.workspace import EVALUATED, train_cutoff


def log_inputs(settings: Settings, as_of: date, interactions, profiles, items) -> None:
    import mlflow

    lake = Lake(settings.lake)
    for name, table, source in (
        ("interactions", interactions, lake.table_path(INTERACTIONS)),
        ("user_profiles", profiles, lake.partition_path(USER_PROFILES, as_of)),
        ("item_features", items, lake.partition_path(ITEM_FEATURES, as_of)),
    ):
        frame = table.slice(0, 1000).drop_columns([c for c in table.column_names if c in ("text_embedding",)]).to_pandas()
        dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]  # mlflow.data loads it lazily
            frame, source=source, name=f"{name}@{as_of}"
        )
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
    run = {"run_date": as_of.isoformat(), "protocols": ",".join(protocols), "train_cutoff": own, "data.version": data_version}
    return {**run, **cutoffs}


def model_run_description(settings: Settings, as_of: date, family: str, protocols: list[str]) -> str:
    """A model run's description (MLflow's run note): what was fitted, on which events, reported how."""
    cutoffs = ", ".join(f"{p} before {train_cutoff(settings, as_of, p).isoformat()}" for p in protocols)
    keys = ", ".join(f"`{p}/...`" for p in protocols)
    heading = f"**{family}**, run date {as_of}, protocols {', '.join(protocols)}."
    return f"{heading}\n\nFitted per protocol on the events {cutoffs}; metrics {keys}."


def start_model_run(
    settings: Settings, as_of: date, family: str, protocols: list[str], data_version: str, name: str | None = None
):
    """A nested run of one model (``protocols``: ``reported_protocols``), with the tags, params and
    description every model's run carries; use it as a context manager."""
    import mlflow

    description = model_run_description(settings, as_of, family, protocols)
    run = mlflow.start_run(run_name=name or family, nested=True, description=description)
    mlflow.set_tags({"model": family, "as_of": as_of.isoformat(), **code_version()})
    mlflow.log_params({"model.family": family, **run_params(settings, as_of, protocols, data_version)})
    return run


def training_run_description(settings: Settings, as_of: date, version: str, decision: GateDecision, plots: dict[str, str]) -> str:
    """The parent run's description: the run date, the champion decision, and links to its plots
    (``plots``: artifact path to the run's page on it in the MLflow UI)."""
    name, alias = settings.train.model_name, settings.registry.champion_alias
    verdict = f"promoted to @{alias}" if decision.promote else "not promoted: stays challenger"
    return "\n".join(
        [
            f"Training as of {as_of}: the served model saw the events before {train_cutoff(settings, as_of, 'loo').isoformat()}.",
            "",
            f"**Champion decision**: {name} v{version} {verdict} ({decision.reason}).",
            "",
            "Plots:",
            *(f"- [{path}]({link})" for path, link in plots.items()),
        ]
    )


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
    page = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts"
    return {a.path: f"{page}/{a.path}" for a in client.list_artifacts(run_id, "plots")}
