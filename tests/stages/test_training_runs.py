"""Training behaviour with real torchrun processes and a real MLflow registry."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recsys_core.config import Settings
from recsys_core.stages.train import dataset_path, workspace
from recsys_core.training.loop import LAST, RESULT

pytestmark = [pytest.mark.torchrun, pytest.mark.slow]

JOB = Path(__file__).resolve().parents[2] / "jobs" / "train.py"


def with_train(settings: Settings, **changes) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=changes)})


def torchrun(settings: Settings, dataset: Path, out: Path, nproc: int) -> list[str]:
    settings_file = out.parent / f"{out.name}-settings.json"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(settings.model_dump_json())
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}",
        str(JOB), "--dataset", str(dataset), "--out", str(out), "--settings", str(settings_file),
    ]  # fmt: skip


def run(command: list[str], log: Path) -> subprocess.CompletedProcess:
    with open(log, "w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=600)


def test_one_and_two_processes_reach_the_same_quality(pipeline, tmp_path):
    settings = with_train(pipeline.settings, epochs=8, early_stopping_patience=100)
    dataset = dataset_path(workspace(pipeline.settings, pipeline.run_date), "loo")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        assert run(torchrun(settings, dataset, out, nproc), tmp_path / f"nproc{nproc}.log").returncode == 0
        results[nproc] = json.loads((out / RESULT).read_text())
    assert results[1]["world_size"] == 1 and results[2]["world_size"] == 2
    # Same global batch whatever the world size, so the optimisation is the same up to noise.
    assert results[1]["effective_batch_size"] == results[2]["effective_batch_size"]
    one, two = results[1]["best_val_ndcg@10"], results[2]["best_val_ndcg@10"]
    assert one > 0.05 and two > 0.05, "both runs learned something"
    assert abs(one - two) < 0.05, f"1 process: {one:.4f}, 2 processes: {two:.4f}"


def test_killed_training_resumes_from_the_last_checkpoint(pipeline, tmp_path):
    epochs = 14
    settings = with_train(pipeline.settings, epochs=epochs, early_stopping_patience=100)
    dataset = dataset_path(workspace(pipeline.settings, pipeline.run_date), "loo")
    out = tmp_path / "ckpt"
    command = torchrun(settings, dataset, out, 2)
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        killed_after = None
        while time.monotonic() < deadline and process.poll() is None:
            if (out / LAST).exists():
                epoch = torch.load(out / LAST, weights_only=True)["epoch"]
                if epoch >= 3:
                    os.killpg(process.pid, signal.SIGKILL)
                    killed_after = epoch
                    break
            time.sleep(0.2)
        process.wait(timeout=60)
    assert killed_after is not None and killed_after < epochs, "the run was killed mid-way"
    assert not (out / RESULT).exists()

    second = run(command, tmp_path / "second.log")
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert "resuming from" in (tmp_path / "second.log").read_text()
    result = json.loads((out / RESULT).read_text())
    assert result["epochs_run"] == epochs
    assert [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))


def test_weakened_candidate_is_not_promoted(pipeline, tmp_path):
    """A fresh registry gets a champion; a deliberately weakened candidate then stays challenger."""
    import mlflow

    from recsys_core.stages.train import launch_training

    root = tmp_path / "data"
    shutil.copytree(Path(pipeline.settings.lake), root / "lake")
    settings = pipeline.settings.model_copy(update={"data_root": root})
    name = settings.train.model_name
    first = launch_training(settings, pipeline.run_date)
    assert first["promoted"]
    weak = with_train(settings, epochs=1, lr=1e-6, eval_every=1)
    second = launch_training(weak, pipeline.run_date)
    assert not second["promoted"]
    assert "does not beat champion" in second["gate"]
    client = mlflow.MlflowClient(settings.tracking_uri)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first["model_version"]
    weak_version = client.get_model_version(name, second["model_version"])
    assert weak_version.tags["role"] == "challenger"
    assert "does not beat" in weak_version.tags["gate_reason"]
