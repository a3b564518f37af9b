"""Step 2: one torchrun per protocol (``jobs/train.py`` on every rank)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from recsys_core.config import Settings
from recsys_core.errors import ModelError
from recsys_core.io.network import LOOPBACK, RENDEZVOUS_BACKEND, is_loopback
from recsys_core.stages.training.workspace import RUNS, SETTINGS, checkpoint_dir, dataset_path, workspace
from recsys_core.training.loop import RESULT

log = logging.getLogger(__name__)

JOB = Path(__file__).resolve().parents[3] / "jobs" / "train.py"
_FROM_WORKSPACE = object()  # torchrun_command's default run id: the one prepare_training recorded


def torchrun_command(
    settings: Settings,
    as_of: date,
    protocol: str = "loo",
    nproc: int | None = None,
    *,
    out: Path | None = None,
    settings_file: Path | None = None,
    run_id: str | None = _FROM_WORKSPACE,  # type: ignore[assignment]
) -> list[str]:
    """The torchrun command of one protocol's training; ``out``, ``settings_file`` and ``run_id``
    (None: no MLflow logging) replace the workspace's own."""
    ws = workspace(settings, as_of)
    if run_id is _FROM_WORKSPACE:
        run_id = json.loads((ws / RUNS).read_text())[protocol]
    return [
        *torchrun_launcher(settings, f"recsys-{as_of}-{protocol}", nproc),
        str(JOB),
        *("--dataset", str(dataset_path(ws, protocol))),
        *("--out", str(out or checkpoint_dir(ws, protocol))),
        *(("--run-id", run_id) if run_id else ()),
        *("--settings", str(settings_file or ws / SETTINGS)),
    ]


def torchrun_launcher(settings: Settings, rdzv_id: str, nproc: int | None = None) -> list[str]:
    """torchrun up to the script: the rendezvous of ``settings.train`` and its processes per node."""
    endpoint = rendezvous_endpoint(settings)
    return [
        *(sys.executable, "-m", "torch.distributed.run"),
        f"--nnodes={settings.train.nnodes}",
        f"--rdzv-backend={RENDEZVOUS_BACKEND}",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={rdzv_id}",
        # On loopback the node advertises (and its workers' store binds) 127.0.0.1, not its hostname.
        *((f"--local-addr={LOOPBACK}",) if _on_loopback(endpoint) else ()),
        f"--nproc-per-node={nproc or settings.train.nproc_per_node}",
    ]


def rendezvous_endpoint(settings: Settings) -> str:
    """One node meets itself on loopback, on a port the system picks (what ``--standalone`` does,
    but bound to 127.0.0.1); several meet at the configured endpoint."""
    return settings.train.rdzv_endpoint if settings.train.nnodes > 1 else f"{LOOPBACK}:0"  # type: ignore[return-value]


def _on_loopback(endpoint: str) -> bool:
    return is_loopback(endpoint.rsplit(":", 1)[0].strip("[]"))


def torchrun_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "OMP_NUM_THREADS": str(settings.train.torch_threads)}
    if _on_loopback(rendezvous_endpoint(settings)):
        # gloo's and NCCL's own sockets bind the hostname's address unless told the interface.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    return env


def run_torchrun(settings: Settings, as_of: date, nproc: int | None = None) -> dict:
    """Train one model per protocol with torchrun; returns the leave-last-out model's training result."""
    env = torchrun_env(settings)
    results = {}
    runs = json.loads((workspace(settings, as_of) / RUNS).read_text())
    for protocol in runs["protocols"]:
        checkpoints = checkpoint_dir(workspace(settings, as_of), protocol)
        command = torchrun_command(settings, as_of, protocol, nproc)
        log.info("launching (%s): %s", protocol, " ".join(command))
        completed = subprocess.run(command, env=env)
        if completed.returncode != 0:
            raise ModelError(
                f"torchrun ({protocol}) exited with {completed.returncode}; its log is above",
                hint=f"rerunning the same command resumes from the last checkpoint in {checkpoints}",
            )
        results[protocol] = json.loads((checkpoints / RESULT).read_text())
    return results
