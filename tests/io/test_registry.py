"""MLflow tracking setup on a SQLite store that does not exist yet."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.mlflow]

OPEN_STORE = """
import sys
from pathlib import Path

from recsys_core.config import Settings
from recsys_core.io.registry import configure_tracking

configure_tracking(Settings.model_validate_json(Path(sys.argv[1]).read_text()))
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
