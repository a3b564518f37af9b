"""MLflow: tracking setup, model logging and registration, and the champion alias."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from recsys_core.config import Settings
from recsys_core.evaluation.gate import GateDecision

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).resolve().parents[1] / "models" / "pyfunc_model.py"


def configure_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if settings.tracking_uri.startswith("sqlite:///"):
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.registry.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(settings.registry.experiment, artifact_location=settings.artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def metric_key(name: str) -> str:
    """MLflow metric names allow no '@': ``ndcg@10`` is logged as ``ndcg_at_10``."""
    return name.replace("@", "_at_")


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    import math

    import mlflow

    clean = {metric_key(prefix + k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    mlflow.log_metrics(clean, step=step)


def log_bundle(bundle_dir: Path, name: str, input_example, registered_model_name: str | None = None):
    """Log a model bundle as an MLflow pyfunc "model from code": no pickled objects are stored."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_CODE),
        artifacts={"bundle": str(bundle_dir)},
        input_example=input_example,
        registered_model_name=registered_model_name,
        pip_requirements=[f"torch=={_version('torch')}", f"pyarrow=={_version('pyarrow')}", f"mlflow=={_version('mlflow')}"],
        code_paths=[str(Path(__file__).resolve().parents[1])],
    )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package).split("+")[0]


@dataclass(frozen=True)
class Champion:
    name: str
    version: str
    run_id: str
    bundle_dir: Path


def champion(settings: Settings, download_to: Path) -> Champion | None:
    """The registered model holding the champion alias, downloaded, or None if there is none yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure_tracking(settings)
    client = mlflow.MlflowClient()
    name, alias = settings.train.model_name, settings.registry.champion_alias
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    target = download_to / f"{name}-v{version.version}"
    if not (target / "artifacts" / "bundle").exists():
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{alias}", dst_path=str(target))
    return Champion(name, str(version.version), version.run_id, target / "artifacts" / "bundle")


def apply_gate(settings: Settings, version: str, decision: GateDecision) -> None:
    """Move the champion alias to ``version`` if the gate says so; otherwise tag it challenger."""
    import mlflow

    client = mlflow.MlflowClient()
    name = settings.train.model_name
    client.set_model_version_tag(name, version, "gate_reason", decision.reason)
    client.set_model_version_tag(name, version, metric_key(f"gate_{settings.registry.gate_metric}"), f"{decision.candidate:.6f}")
    if decision.promote:
        client.set_registered_model_alias(name, settings.registry.champion_alias, version)
        client.set_model_version_tag(name, version, "role", settings.registry.champion_alias)
        log.info("%s v%s is now @%s: %s", name, version, settings.registry.champion_alias, decision.reason)
    else:
        client.set_model_version_tag(name, version, "role", "challenger")
        log.info("%s v%s stays challenger: %s", name, version, decision.reason)


def mlflow_server_command(settings: Settings, host: str, port: int) -> list[str]:
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.tracking_uri,
        "--default-artifact-root", settings.artifact_location,
        "--host", host, "--port", str(port),
    ]  # fmt: skip
