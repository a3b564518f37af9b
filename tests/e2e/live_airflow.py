"""A live Airflow for end-to-end tests: `scripts/airflow_local.py start` as a subprocess, a small REST client,
and a teardown that runs `stop` and checks that no process of the session is left.

    with live_airflow(data_root=..., airflow_home=..., config_file=...) as airflow:
        airflow.client.trigger("recsys_features", {"run_date": "2024-03-06"})
        airflow.client.wait_for("recsys_features", lambda runs: runs and runs[0]["state"] == "success", 600)
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "scripts" / "airflow_local.py"
USER = "admin"


def _load_script():
    """scripts/airflow_local.py as a module: its state file and process walk are the ones `stop` uses."""
    spec = importlib.util.spec_from_file_location("airflow_local", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


airflow_local = _load_script()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # a JVM's IPv6 socket on 127.0.0.1 reads ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def listening_sockets(processes: Mapping[int, psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every TCP listening socket, IPv4 and IPv6, the processes own."""
    found = []
    for pid, proc in processes.items():
        try:
            name = proc.name()
            connections = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found += [(pid, name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


@dataclass
class AirflowClient:
    """The few calls of Airflow's REST API (v2) the end-to-end tests need."""

    base_url: str
    username: str
    password: str
    _token: str | None = field(default=None, repr=False)

    def token(self) -> str:
        if self._token is None:
            response = requests.post(
                f"{self.base_url}/auth/token", json={"username": self.username, "password": self.password}, timeout=30
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs) -> dict:
        headers = {"Authorization": f"Bearer {self.token()}"}
        response = requests.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)
        if not response.ok:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def health(self) -> dict:
        return requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=30).json()

    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/dags/{dag_id}")

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """The DAG once the dag processor has parsed it into the database."""
        return poll(lambda: self._dag_or_none(dag_id), f"DAG {dag_id} to be parsed", timeout)

    def _dag_or_none(self, dag_id: str) -> dict | None:
        try:
            return self.dag(dag_id)
        except AssertionError:
            return None

    def task_ids(self, dag_id: str) -> list[str]:
        return [task["task_id"] for task in self.request("GET", f"/dags/{dag_id}/tasks")["tasks"]]

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> dict:
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})

    def dag_runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs, newest first."""
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after"})["dag_runs"]

    def wait_for(self, dag_id: str, predicate: Callable[[list[dict]], bool], timeout: float, interval: float = 2):
        """The DAG's runs (newest first) once predicate(runs) holds; fails after timeout seconds."""
        return poll(lambda: runs if predicate(runs := self.dag_runs(dag_id)) else None, f"{dag_id} runs", timeout, interval)


def poll(probe: Callable[[], object], what: str, timeout: float, interval: float = 2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := probe()) is not None:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class LiveAirflow:
    url: str
    port: int
    env: dict[str, str]  # the environment the components run with (scripts/airflow_env.sh applied)
    state: airflow_local.State  # as recorded by `start`
    client: AirflowClient
    output: Path  # what `start` printed
    _start: subprocess.Popen = field(repr=False)
    _grace: float = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def processes(self) -> dict[int, psutil.Process]:
        """The live processes of the session: components, their process group and every descendant."""
        return airflow_local.session_processes(self.state)

    def stop(self) -> None:
        """`airflow_local.py stop`; then asserts that `start` ended and that nothing it started (or theirs) is left."""
        if self._stopped:
            return
        self._stopped = True
        seen = self.processes()
        run_stop(self.env, self._grace)
        wait_for_exit(self._start, self.output)
        assert not airflow_local.state_path(self.env).exists(), "stop left the state file"
        left = {pid: proc for pid, proc in seen.items() if airflow_local.is_alive(proc)} | self.processes()
        assert not left, "left running after stop: " + "; ".join(airflow_local.describe(p, {}) for p in left.values())


@contextmanager
def live_airflow(
    *,
    data_root: Path,
    airflow_home: Path,
    config_file: Path,
    port: int | None = None,
    ready_timeout: float = 240,
    grace: float = airflow_local.DEFAULT_GRACE_S,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[LiveAirflow]:
    """`airflow_local.py start --no-import` on a free port, in the caller's data root, AIRFLOW_HOME and config.

    On exit it stops it (see LiveAirflow.stop), unless the caller already has."""
    port = port or free_port()
    base = {
        **os.environ,
        "RECSYS_DATA_ROOT": str(data_root),
        "AIRFLOW_HOME": str(airflow_home),
        "RECSYS_CONFIG": str(config_file),
        "AIRFLOW__API__PORT": str(port),
        **(extra_env or {}),
    }
    env = airflow_local.airflow_env(base)
    airflow_home.mkdir(parents=True, exist_ok=True)
    output = airflow_home / "airflow-local.out"
    command = [sys.executable, str(SCRIPT), "start", "--no-import", "--port", str(port), "--grace", str(grace)]
    with open(output, "w") as sink:
        start = subprocess.Popen(command, env=base, cwd=PROJECT, stdout=sink, stderr=subprocess.STDOUT)
    airflow = None
    try:
        wait_until_ready(start, output, ready_timeout)
        state = airflow_local.State.read(airflow_local.state_path(env))
        passwords = airflow_local.read_passwords(airflow_local.passwords_file(env))
        client = AirflowClient(state.url, USER, passwords[USER])
        airflow = LiveAirflow(state.url, port, env, state, client, output, start, grace)
        yield airflow
    finally:
        if airflow is not None:
            airflow.stop()
        else:  # it never became ready: still stop whatever it started
            run_stop(env, grace)
            wait_for_exit(start, output)


def wait_until_ready(start: subprocess.Popen, output: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        printed = output.read_text()
        if any(line.startswith("ready: ") for line in printed.splitlines()):
            return
        if start.poll() is not None:
            raise AssertionError(f"airflow_local.py start exited with {start.returncode}:\n{printed[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"airflow_local.py start not ready after {timeout:.0f} s:\n{output.read_text()[-4000:]}")


def run_stop(env: dict[str, str], grace: float) -> None:
    command = [sys.executable, str(SCRIPT), "stop", "--grace", str(grace)]
    result = subprocess.run(command, env=env, cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, f"stop failed:\n{result.stdout}\n{result.stderr}"


def wait_for_exit(start: subprocess.Popen, output: Path, timeout: float = 60) -> None:
    try:
        start.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        start.kill()
        start.wait()
        raise AssertionError(f"`start` still ran {timeout:.0f} s after `stop`:\n{output.read_text()[-3000:]}") from None
