"""torchrun, launched as the training stage launches it, listens on loopback only."""

from __future__ import annotations

import subprocess
import textwrap
import time

import psutil
import pytest

from recsys_core.io.network import is_loopback
from recsys_core.stages.training.launch import torchrun_env, torchrun_launcher

pytestmark = [pytest.mark.torchrun]

# Every rank joins the process group and all-reduces (so gloo's pairs are up), then waits for the
# test to have looked at the listeners.
PROBE = """
import pathlib, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.ones(1)
dist.all_reduce(total)
here = pathlib.Path(sys.argv[1])
(here / f"ready-{dist.get_rank()}").write_text(str(int(total.item())))
while not (here / "looked").exists():
    time.sleep(0.05)
dist.barrier()
dist.destroy_process_group()
"""


def listeners(root: psutil.Process) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``root`` and its children."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            sockets = process.net_connections(kind="tcp")
            name = process.name()
        except psutil.NoSuchProcess:
            continue
        found += [(s.laddr.ip, s.laddr.port, name) for s in sockets if s.status == psutil.CONN_LISTEN]
    return found


def test_one_node_torchrun_listens_on_loopback_only(settings, tmp_path):
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    command = [*torchrun_launcher(settings, "listeners", nproc=2), str(tmp_path / "probe.py"), str(tmp_path)]
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=torchrun_env(settings), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < 2:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the ranks never all-reduced: " + log.read_text()[-3000:]
            time.sleep(0.1)
        found = listeners(psutil.Process(process.pid))
        (tmp_path / "looked").touch()
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert {(tmp_path / f"ready-{rank}").read_text() for rank in (0, 1)} == {"2"}
    # The agent hosts the rendezvous store and its workers' store; each rank has gloo's listener.
    assert len(found) >= 3, found
    assert [f for f in found if not is_loopback(f[0])] == []
