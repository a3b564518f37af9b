"""MLflow: tracking setup, model logging and registration, and the champion alias."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from recsys_core.config import Settings
from recsys_core.evaluation.gate import GateDecision
from recsys_core.evaluation.metric_names import metric_key

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).resolve().parents[1] / "models" / "pyfunc_model.py"
SQLITE = "sqlite:///"
# MLflow's classification of an experiment (the tag its UI's experiment-kind selector writes):
# model development, not a GenAI app.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


def configure_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    create_sqlite_store(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment_id = _model_development_experiment(settings)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def create_sqlite_store(settings: Settings) -> None:
    """Create a SQLite store that does not exist yet, with the project's artifact root.

    MLflow creates the "Default" experiment (id 0) when it first opens an empty store, with the
    artifact root of the process that happens to open it: ``./mlruns`` under that process's
    working directory (an Airflow task's temporary folder). Opening it here first gives
    experiment 0 a root under ``settings.artifact_location`` instead.

    Two tasks started in the same second (two DAGs triggered by one asset) would otherwise both
    run MLflow's schema migrations on the new file, and both fail. A file lock lets one create
    the store while the other waits, and the store is built under a temporary name and renamed,
    so that a task that finds the file finds it complete.
    """
    if not settings.tracking_uri.startswith(SQLITE):
        return
    database = Path(settings.tracking_uri.removeprefix(SQLITE))
    if database.exists():
        return
    from filelock import FileLock
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(database.name + ".lock")):
        if database.exists():
            return
        building = database.with_name(database.name + ".creating")
        building.unlink(missing_ok=True)  # left by a task killed while building it
        SqlAlchemyStore(SQLITE + str(building), default_artifact_root=settings.artifact_location).engine.dispose()
        building.replace(database)


def _model_development_experiment(settings: Settings) -> str:
    """The configured experiment, created if missing and marked as model development (not GenAI)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.registry.experiment)
    kind = {EXPERIMENT_KIND: MODEL_DEVELOPMENT}
    if experiment is None:
        try:
            return client.create_experiment(settings.registry.experiment, artifact_location=settings.artifact_location, tags=kind)
        except MlflowException as error:  # another task created it since the lookup
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            return _model_development_experiment(settings)
    if EXPERIMENT_KIND not in experiment.tags:  # a store from before the tag; a kind chosen in the UI stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None, model_id: str | None = None) -> None:
    """Log the finite numbers of ``metrics`` to the active run (and to the logged model ``model_id``)."""
    import math

    import mlflow

    clean = {metric_key(prefix + k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    mlflow.log_metrics(clean, step=step, model_id=model_id)


def record_model_output(model_id: str) -> None:
    """Record the logged model ``model_id`` as an output of the active run.

    MLflow 3's UI opens in its GenAI view unless told otherwise, and that view sorts an
    experiment's runs by their outputs: a run that produced a logged model is a training run,
    any other run is listed under "Evaluation runs".
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    mlflow.log_outputs(models=[LoggedModelOutput(model_id, step=0)])


def log_external_model(name: str, family: str) -> str:
    """A fitted model that is not logged as an MLflow model (a baseline, a protocol's checkpoint),
    recorded as a logged model produced by the active run; returns its id."""
    import mlflow

    model = mlflow.create_external_model(name=name, model_type=family)
    record_model_output(model.model_id)
    return model.model_id


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
    run_id: str | None  # MLflow allows a model version without a run
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
    # Keyed by what the version holds, not only its number: another tracking store's v1 is another model.
    held = hashlib.sha256(f"{version.source}\n{version.run_id}".encode()).hexdigest()[:12]
    target = download_to / f"{name}-v{version.version}-{held}"
    if not target.exists():
        # Downloaded aside, then renamed: a download cut short is never taken for the model.
        partial = download_to / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=str(partial))
            partial.rename(target)
        except OSError:
            if not target.exists():  # not another process's finished download
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
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
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.tracking_uri,
        "--default-artifact-root",
        settings.artifact_location or (settings.mlflow_dir / "artifacts").as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]
