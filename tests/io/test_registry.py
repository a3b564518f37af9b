"""MLflow tracking setup on a SQLite store that does not exist yet."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.mlflow]

OPEN_STORE = """
import sys
from pathlib import Path

from recsys_core.config import Settings
from recsys_core.io.registry import configure_tracking

settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())
if len(sys.argv) > 2:  # a start gate: wait until the test opens it, so that the processes race
    import os
    import time

    Path(f"{sys.argv[2]}.ready.{os.getpid()}").touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.005)
configure_tracking(settings)
"""


def test_a_new_store_keeps_every_artifact_under_the_artifact_location(settings, tmp_path):
    """The first process to open the store runs elsewhere (an Airflow task's temporary folder):
    the Default experiment must not get an artifact root under that folder."""
    import mlflow

    from recsys_core.io.registry import EXPERIMENT_KIND, MODEL_DEVELOPMENT

    settings_file = tmp_path / "settings.json"
    settings_file.write_text(settings.model_dump_json())
    task_dir = tmp_path / "task-cwd"
    task_dir.mkdir()
    subprocess.run([sys.executable, "-c", OPEN_STORE, str(settings_file)], cwd=task_dir, check=True, timeout=300)

    client = mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    default = client.get_experiment("0")
    recsys = client.get_experiment_by_name(settings.registry.experiment)
    for experiment in (default, recsys):
        assert experiment.artifact_location.startswith(settings.artifact_location), experiment
    assert recsys.tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT
    assert not any(task_dir.iterdir()), "nothing is written under the opening process's working directory"


def test_tasks_that_open_a_new_store_at_the_same_moment_all_succeed(settings, tmp_path):
    """Two DAGs triggered by one asset start their first tasks in the same second; each opens
    the store, and MLflow's schema migrations must not run twice on one new file."""
    import mlflow

    settings_file = tmp_path / "settings.json"
    settings_file.write_text(settings.model_dump_json())
    gate = tmp_path / "go"
    tasks = [
        subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(settings_file), str(gate)], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("go.ready.*"))) < len(tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    gate.touch()
    failures = [error for task in tasks for _, error in [task.communicate(timeout=300)] if task.returncode != 0]
    assert not failures, failures[0]

    client = mlflow.MlflowClient(settings.tracking_uri)
    assert [e.name for e in client.search_experiments()].count(settings.registry.experiment) == 1


def test_the_champion_download_is_keyed_by_what_the_version_holds(settings, tmp_path):
    """Two tracking stores each with a v1: the same download folder serves each store its own."""
    import mlflow

    from recsys_core.io.registry import champion, configure_tracking, log_bundle

    downloads = tmp_path / "downloads"
    served = []
    for store in ("first", "second"):
        store_settings = settings.model_copy(update={"data_root": tmp_path / store})
        configure_tracking(store_settings)
        bundle = tmp_path / f"{store}-model" / "bundle"  # logged under artifacts/bundle, as the training logs it
        bundle.mkdir(parents=True)
        (bundle / "store.txt").write_text(store)
        with mlflow.start_run():
            logged = log_bundle(bundle, "model", None, registered_model_name=store_settings.train.model_name)
        mlflow.MlflowClient().set_registered_model_alias(
            store_settings.train.model_name, store_settings.registry.champion_alias, logged.registered_model_version
        )
        current = champion(store_settings, downloads)
        served.append((current.version, (current.bundle_dir / "store.txt").read_text()))
        assert champion(store_settings, downloads).bundle_dir == current.bundle_dir  # downloaded once
    assert served == [("1", "first"), ("1", "second")]
    assert sorted(p.name.startswith(".") for p in downloads.iterdir()) == [False, False]  # no partial download left
