"""torchrun across two nodes on loopback: two torchrun processes (one per node, one rank each) meet at a
c10d rendezvous and train the model to the quality that one node with two processes reaches."""

from __future__ import annotations

import json
import subprocess

import pytest

from recsys_core.config import Settings
from recsys_core.stages.training.launch import torchrun_command, torchrun_env
from recsys_core.stages.training.workspace import SETTINGS, checkpoint_dir, workspace
from recsys_core.training.loop import RESULT

from .engines import free_port, stop_group

pytestmark = [pytest.mark.cluster, pytest.mark.torchrun, pytest.mark.slow]

# Both runs have world size 2, the same seed, the same shards and the same global batch, so they do
# the same arithmetic; only the order of gloo's all-reduce sums may differ, which can swap a few
# near-tied items in a ranking. One user's NDCG@10 changes the mean over the pipeline's ~150
# validation users by at most 1/150; 0.02 allows three such users.
NDCG_TOLERANCE = 0.02


def test_two_nodes_reach_the_quality_of_one(pipeline, tmp_path):
    ws = workspace(pipeline.settings, pipeline.run_date)
    one_node = json.loads((checkpoint_dir(ws, "loo") / RESULT).read_text())
    frozen = Settings.model_validate_json((ws / SETTINGS).read_text())  # what the one-node ranks trained with
    # Only the launch keys change, through the configuration (validated like any other).
    launch = {"nnodes": 2, "nproc_per_node": 1, "rdzv_endpoint": f"127.0.0.1:{free_port()}"}
    nodes = Settings.model_validate({**frozen.model_dump(), "train": {**frozen.train.model_dump(), **launch}})
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(nodes.model_dump_json())
    out = tmp_path / "checkpoints"
    command = torchrun_command(nodes, pipeline.run_date, "loo", out=out, settings_file=settings_file, run_id=None)
    assert "--nnodes=2" in command and "--rdzv-backend=c10d-bound" in command
    env = torchrun_env(nodes)

    processes = []
    try:
        for node in (0, 1):
            with open(tmp_path / f"node{node}.log", "w") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for process in processes:
            process.wait(timeout=600)
    finally:
        for process in processes:
            stop_group(process, grace_s=5)
    logs = [(tmp_path / f"node{node}.log").read_text(errors="replace") for node in (0, 1)]
    for process, text in zip(processes, logs):
        assert process.returncode == 0, text[-3000:]

    two_nodes = json.loads((out / RESULT).read_text())
    assert two_nodes["world_size"] == one_node["world_size"] == 2
    assert two_nodes["effective_batch_size"] == one_node["effective_batch_size"]
    assert two_nodes["epochs_run"] == one_node["epochs_run"]
    one, two = one_node["best_val_ndcg@10"], two_nodes["best_val_ndcg@10"]
    assert two > 0.05, f"two nodes learned nothing: NDCG@10 {two:.4f}"
    assert abs(one - two) <= NDCG_TOLERANCE, f"one node: {one:.4f}, two nodes: {two:.4f}"
    print(f"NDCG@10 one node {one:.4f}, two nodes {two:.4f}")
