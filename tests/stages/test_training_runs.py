"""Training behaviour with real torchrun processes and a real MLflow registry."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_core.config import Settings
from recsys_core.stages.train import dataset_path, workspace
from recsys_core.stages.training.launch import torchrun_launcher
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
        *torchrun_launcher(settings, f"test-{out.name}", nproc),
        str(JOB),
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--settings",
        str(settings_file),
    ]


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
    # Barely trained, and without the item-item term, which is fitted after training and would carry it.
    no_term = settings.train.model.model_copy(update={"item_item_rank": 0, "item_item_transitions": False})
    weak = with_train(settings, epochs=1, lr=1e-6, eval_every=1, model=no_term)
    second = launch_training(weak, pipeline.run_date)
    assert not second["promoted"]
    assert "does not beat champion" in second["gate"]
    client = mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first["model_version"]
    weak_version = client.get_model_version(name, second["model_version"])
    assert weak_version.tags["role"] == "challenger"
    assert "does not beat" in weak_version.tags["gate_reason"]


@pytest.mark.spark
def test_a_backfill_after_a_later_run_leaves_the_newer_champion_unscored(pipeline, spark, tmp_path):
    """Training as of an earlier day after a later one: the champion trained on the held-out events
    of the earlier run, so the gate must not score it there (a leaked figure) nor replace it."""
    import mlflow

    from recsys_core.stages.features import run_features
    from recsys_core.stages.train import launch_training

    root = tmp_path / "data"
    shutil.copytree(Path(pipeline.settings.lake), root / "lake")
    # One epoch: what the gate decides here does not depend on how good either model is.
    settings = with_train(pipeline.settings.model_copy(update={"data_root": root}), epochs=1)
    later = launch_training(settings, pipeline.run_date)
    assert later["promoted"]
    earlier_day = pipeline.run_date - timedelta(days=1)
    run_features(settings, earlier_day, spark=spark)
    earlier = launch_training(settings, earlier_day)

    assert not earlier["promoted"]
    assert f"trained on events up to {pipeline.run_date}, after this run's {earlier_day}" in earlier["gate"]
    client = mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    name = settings.train.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == later["model_version"]
    assert client.get_model_version(name, earlier["model_version"]).tags["role"] == "challenger"
    logged = client.get_run(earlier["parent_run_id"]).data.metrics
    assert logged and not [key for key in logged if key.startswith("champion")], "no champion figure on leaked events"


def test_runs_line_up_in_mlflow_compare_view(pipeline):
    """Every model's run logs the same metric keys and key params (the compare view aligns them by
    name), every run is a training run with a description, and every artifact root is the project's."""
    import mlflow

    from recsys_core.io.registry import EXPERIMENT_KIND, MODEL_DEVELOPMENT
    from recsys_core.stages.train import train_cutoff
    from recsys_core.timeutil import end_of_day

    settings, run_date, training = pipeline.settings, pipeline.run_date, pipeline.training
    client = mlflow.MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    parent = client.get_run(training["parent_run_id"])
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    children = {run.info.run_name: run for run in nested}
    assert set(children) >= {"seqrec", "seqrec-backtest", "popularity", "ease", "als"}

    def keys(run, protocol: str) -> set[str]:
        return {k for k in run.data.metrics if k.startswith(f"{protocol}/")}

    # The served model's run and the baselines' report every evaluated protocol, under the same keys.
    reporting = [children[name] for name in ("seqrec", "popularity", "ease", "als")]
    for protocol in ("loo", "backtest"):
        expected = keys(children["seqrec"], protocol)
        assert {f"{protocol}/ndcg_at_10", f"{protocol}/hitrate_at_10"} <= expected
        assert all(keys(run, protocol) == expected for run in reporting), protocol
    # The backtest model's run carries the same backtest keys and figures as the served model's.
    backtest = children["seqrec-backtest"]
    assert keys(backtest, "backtest") == keys(children["seqrec"], "backtest") and not keys(backtest, "loo")
    assert backtest.data.metrics["backtest/ndcg_at_10"] == children["seqrec"].data.metrics["backtest/ndcg_at_10"]
    assert not any(k.startswith("test/") for run in children.values() for k in run.data.metrics)

    end_of_run_date = end_of_day(run_date).isoformat()
    backtest_cut = train_cutoff(settings, run_date, "backtest").isoformat()
    for name, run in children.items():
        params = run.data.params
        assert params["model.family"] == name.split("-")[0]
        assert params["run_date"] == parent.data.params["run_date"] == run_date.isoformat()
        assert params["data.version"] == parent.data.params["data.version"]
        assert params["train_cutoff"] == train_cutoff(settings, run_date, params["protocols"].split(",")[0]).isoformat()
        if "backtest" in params["protocols"]:
            assert params["backtest.train_cutoff"] == backtest_cut
        description = run.data.tags["mlflow.note.content"]
        assert params["model.family"] in description and run_date.isoformat() in description
    for run in reporting:
        assert run.data.params["protocols"] == "loo,backtest" and run.data.params["train_cutoff"] == end_of_run_date
    assert backtest.data.params["train_cutoff"] == backtest_cut

    # MLflow 3's UI lists a run without a logged-model output under "Evaluation runs".
    assert client.get_experiment(parent.info.experiment_id).tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT
    for run in (parent, *children.values()):
        assert run.outputs.model_outputs, f"{run.info.run_name} has no logged model"
    served = {o.model_id for o in children["seqrec"].outputs.model_outputs}
    assert served == {o.model_id for o in parent.outputs.model_outputs}, "the parent produced the served model"

    note = parent.data.tags["mlflow.note.content"]
    verdict = "promoted to @champion" if training["promoted"] else "not promoted"
    assert f"v{training['model_version']} {verdict}" in note and training["gate"] in note
    assert "plots/loo_metrics_at_k.png" in note and "plots/coverage.png" in note

    for experiment in client.search_experiments(view_type=mlflow.entities.ViewType.ALL):
        assert experiment.artifact_location.startswith(settings.artifact_location), (
            experiment.name,
            experiment.artifact_location,
        )


def test_bounded_epochs_and_validation_do_what_they_say(pipeline, tmp_path):
    """train.max_steps_per_epoch and train.max_validation_users (how a large catalogue is timed)."""
    settings = with_train(
        pipeline.settings, epochs=2, eval_every=1, batch_size=16, max_steps_per_epoch=2, max_validation_users=40
    )
    dataset = dataset_path(workspace(pipeline.settings, pipeline.run_date), "loo")
    out = tmp_path / "bounded"
    assert run(torchrun(settings, dataset, out, 2), tmp_path / "bounded.log").returncode == 0
    history = json.loads((out / RESULT).read_text())["history"]
    assert [h["train_steps"] for h in history] == [2, 2]  # of about 10 per epoch at this batch size
    assert [h["validation_users"] for h in history] == [40, 40]


def test_eval_max_users_evaluates_a_seeded_sample_of_every_protocol(pipeline):
    from recsys_core.stages.training.protocols import (
        backtest_scored,
        leave_last_out_scored,
        load_inputs,
        prepared_protocols,
    )

    full = prepared_protocols(pipeline.settings, pipeline.run_date, *load_inputs(pipeline.settings, pipeline.run_date))
    bounded = pipeline.settings.model_copy(update={"eval": pipeline.settings.eval.model_copy(update={"max_users": 30})})
    cases = {
        "loo": lambda settings: leave_last_out_scored(settings, full["loo"]).case,
        "backtest": lambda settings: backtest_scored(settings, full["loo"], full["backtest"]).case,
    }
    for protocol, case_of in cases.items():
        every, sample = case_of(pipeline.settings), case_of(bounded)
        assert len(every.rows) > 30 and len(sample.rows) == 30, protocol
        assert np.isin(sample.rows, every.rows).all()
        kept = np.searchsorted(every.rows, sample.rows)
        assert [r.tolist() for r in sample.relevant] == [every.relevant[i].tolist() for i in kept]
        assert np.array_equal(sample.seen.toarray(), every.seen[kept].toarray())
        assert np.array_equal(sample.history_lengths, every.history_lengths[kept])
