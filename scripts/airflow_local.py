"""The embedded Airflow on 127.0.0.1: `start` (foreground; Ctrl-C stops everything) and `stop`.

start
  1. lands MovieLens-100K when the landing zone is empty (skip with --no-import),
  2. migrates the metadata database and creates the login password file once
     (random, mode 0600; never a default),
  3. starts scheduler, dag-processor, triggerer and api-server as children in one
     new process group, every listener on 127.0.0.1, each logging to
     $AIRFLOW_HOME/logs/<component>.log, and records them in $AIRFLOW_HOME/airflow-local.json,
  4. waits until /api/v2/monitor/health reports every component healthy, prints the
     URL, the users and their passwords, then "ready: <url>".

stop (also what Ctrl-C, SIGTERM or SIGHUP of `start` do)
  Ends the process group and every descendant of its processes (task processes may
  start sessions of their own: spark-submit JVMs, torchrun workers): SIGTERM, a grace
  period, then SIGKILL, and checks that none is left.

Airflow's environment comes from scripts/airflow_env.sh, the one place that defines it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parents[1]
ENV_SCRIPT = PROJECT / "scripts" / "airflow_env.sh"
STATE_FILE_NAME = "airflow-local.json"
HOST = "127.0.0.1"
DEFAULT_GRACE_S = 20.0
DEFAULT_READY_TIMEOUT_S = 300.0
HEALTH_PATH = "/api/v2/monitor/health"
# Set by airflow_env.sh; the end-to-end tests read the generated password from that file too.
PASSWORDS_FILE_VAR = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"


def airflow_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """base (default: os.environ) with scripts/airflow_env.sh applied; the venv's bin first on PATH."""
    base = dict(os.environ if base is None else base)
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    out = subprocess.run(["bash", "-c", 'source "$0" && env -0', str(ENV_SCRIPT)], capture_output=True, check=True, env=base)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def component_commands(port: int) -> dict[str, list[str]]:
    airflow = str(Path(sys.executable).parent / "airflow")
    return {
        # Their log servers would listen on 0.0.0.0:8793/8794 (host hard-coded in Airflow). With
        # LocalExecutor the api-server reads the task logs from disk, so they are not needed.
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        "api-server": [airflow, "api-server", "--host", HOST, "--port", str(port)],
    }


# State file ------------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    """A process as recorded at start: the pid with its creation time, so a reused pid is not mistaken for it."""

    name: str
    pid: int
    create_time: float

    def process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            return proc if abs(proc.create_time() - self.create_time) < 0.01 else None
        except psutil.Error:
            return None


@dataclass
class State:
    path: Path
    pgid: int
    port: int
    started_at: float
    components: list[Recorded]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def write(self, stopping: bool = False) -> None:
        payload = {
            "pgid": self.pgid,
            "port": self.port,
            "url": self.url,
            "started_at": self.started_at,
            "started_at_iso": datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds"),
            "stopping": stopping,
            "components": [vars(c) for c in self.components],
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=2) + "\n")
        temporary.replace(self.path)  # readers never see half a file

    @classmethod
    def read(cls, path: Path) -> State | None:
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        components = [Recorded(**c) for c in payload["components"]]
        return cls(path, payload["pgid"], payload["port"], payload["started_at"], components)


def state_path(env: dict[str, str]) -> Path:
    return Path(env["AIRFLOW_HOME"]) / STATE_FILE_NAME


def stopped_by_command(path: Path) -> bool:
    """True once `stop` has marked the state file (or, done, removed it): the components' exit is then expected."""
    try:
        return bool(json.loads(path.read_text()).get("stopping"))
    except (FileNotFoundError, json.JSONDecodeError):
        return True


# Processes ---------------------------------------------------------------------
def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_processes(state: State, known: dict[int, psutil.Process] | None = None) -> dict[int, psutil.Process]:
    """Every live process of the session: the recorded components, the members of their process group,
    and every descendant of any of these (some task processes start their own session, e.g. torchrun's workers)."""
    found = dict(known or {})
    for recorded in state.components:
        if (proc := recorded.process()) is not None:
            found[proc.pid] = proc
    for proc in psutil.process_iter(["create_time"]):
        try:
            # A pgid can be reused only after the whole group has gone; its new members are younger than the start.
            if os.getpgid(proc.pid) == state.pgid and proc.info["create_time"] >= state.started_at - 1:
                found[proc.pid] = proc
        except (ProcessLookupError, psutil.Error):
            continue
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return {pid: proc for pid, proc in found.items() if is_alive(proc)}


def describe(proc: psutil.Process, names: dict[int, str]) -> str:
    try:
        command = " ".join(proc.cmdline()).strip() or proc.name()
    except psutil.Error:
        command = "?"
    label = names.get(proc.pid, "child")
    return f"{proc.pid:>7} {label:<13} {command[:110]}"


def stop_session(state: State, grace_s: float) -> None:
    """SIGTERM every process of the session, SIGKILL what is left after grace_s, and check that none is left."""
    if state.path.exists():
        state.write(stopping=True)  # tells a running `start` that the components' exit is expected
    names = {c.pid: c.name for c in state.components}
    targets = session_processes(state)
    if not targets:
        print("nothing was running")
        return
    print(f"stopping {len(targets)} processes (SIGTERM, SIGKILL after {grace_s:.0f} s):")
    for proc in targets.values():
        print("  " + describe(proc, names))
    signalled: set[int] = set()
    deadline = time.monotonic() + grace_s
    while targets and time.monotonic() < deadline:
        for pid, proc in targets.items():
            if pid not in signalled:  # also processes forked while the others shut down
                _signal(proc, signal.SIGTERM)
                signalled.add(pid)
        time.sleep(0.5)
        targets = session_processes(state, targets)
    for _ in range(3):  # a child may fork between the walk and the kill
        if not targets:
            break
        print(f"still running after {grace_s:.0f} s, killing:")
        for proc in targets.values():
            print("  " + describe(proc, names))
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(list(targets.values()), timeout=5)
        targets = session_processes(state, targets)
    left = session_processes(state, targets)
    if left:
        raise SystemExit("could not stop: " + ", ".join(describe(p, names) for p in left.values()))
    print("stopped; no process of the session is left")


def _signal(proc: psutil.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(signum)


# start --------------------------------------------------------------------------
class StopSignal(Exception):
    """Ctrl-C, SIGTERM or SIGHUP reached `start`."""


def raise_stop_signal(signum, _frame) -> None:
    raise StopSignal(signal.Signals(signum).name)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the api-server will: sockets of a finished run still in TIME_WAIT do not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def landing_zone_is_empty() -> bool:
    from recsys_core.config import get_settings
    from recsys_core.contracts import RAW_EVENTS
    from recsys_core.io.lake import Lake

    return not Lake(get_settings().lake).partitions(RAW_EVENTS, complete_only=False)


def run_logged(command: list[str], env: dict[str, str], log_file: Path) -> None:
    with open(log_file, "w") as handle:
        result = subprocess.run(command, env=env, cwd=PROJECT, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(tail(log_file, 40))
        raise SystemExit(f"`{' '.join(command)}` failed (exit {result.returncode}); log: {log_file}")


def tail(log_file: Path, lines: int) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def passwords_file(env: dict[str, str]) -> Path:
    return Path(env[PASSWORDS_FILE_VAR])


def ensure_passwords(env: dict[str, str]) -> Path:
    """The simple auth manager's password file: created once, random passwords, readable by the owner only."""
    path = passwords_file(env)
    if not path.exists():
        users = [entry.split(":")[0].strip() for entry in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
        passwords = {user: secrets.token_urlsafe(16) for user in users if user}
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            json.dump(passwords, handle)
    return path


def read_passwords(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


def health(url: str) -> dict[str, str | None]:
    """Each component's status from the health endpoint (it needs no login); empty when it does not answer yet."""
    try:
        with urllib.request.urlopen(url + HEALTH_PATH, timeout=5) as response:
            payload = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {name: (part or {}).get("status") for name, part in payload.items()}


def launch(env: dict[str, str], port: int, logs: Path) -> dict[str, subprocess.Popen]:
    """Every component as a child in one new process group, so that the group can be stopped as one.

    A group rather than a new session: later children can join a group (not a session), and the group stays in
    the terminal's session, so Ctrl-C reaches `start`, which stops everything in order, and not the components."""
    children: dict[str, subprocess.Popen] = {}
    pgid = 0  # the first child leads a new group; the others join it
    for name, command in component_commands(port).items():
        log = open(logs / f"{name}.log", "a")  # noqa: SIM115 - handed to the child, closed below
        log.write(f"\n=== {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(command)}\n")
        log.flush()
        children[name] = subprocess.Popen(
            command,
            env=env,
            cwd=PROJECT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=pgid,
        )
        log.close()  # the child holds its own descriptor
        pgid = pgid or children[name].pid
    return children


def wait_until_healthy(url: str, children: dict[str, subprocess.Popen], logs: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        exit_early(children, logs)
        statuses = health(url)
        if statuses and all(status == "healthy" for status in statuses.values()):
            return
        time.sleep(2)
    raise SystemExit(f"not healthy after {timeout_s:.0f} s: {statuses or 'no answer'}; logs in {logs}")


def exit_early(children: dict[str, subprocess.Popen], logs: Path) -> None:
    for name, child in children.items():
        if child.poll() is not None:
            print(tail(logs / f"{name}.log", 30))
            raise SystemExit(f"{name} exited with code {child.returncode}; log: {logs / f'{name}.log'}")


def print_credentials(url: str, path: Path) -> None:
    print(f"\nAirflow UI: {url}")
    for user, password in read_passwords(path).items():  # the api-server adds any user the file lacked
        print(f"  user: {user}   password: {password}")
    print(f"  (stored in {path}, mode 0600)")


def cmd_start(args) -> int:
    if args.port:
        os.environ["AIRFLOW__API__PORT"] = str(args.port)
    env = airflow_env()
    port = int(env["AIRFLOW__API__PORT"])
    path = state_path(env)
    previous = State.read(path)
    if previous is not None:
        running = session_processes(previous)
        if running:
            raise SystemExit(
                f"Airflow is already running ({len(running)} processes, {previous.url}, recorded in {path}); "
                "stop it first: make airflow-stop"
            )
        path.unlink()  # left by a start that was killed outright; nothing of it runs
    if port_in_use(port):
        raise SystemExit(f"port {port} on {HOST} is taken; free it or choose another with --port")

    os.environ.update(env)  # the landing-zone check reads RECSYS_CONFIG and RECSYS_DATA_ROOT
    logs = Path(env["AIRFLOW_HOME"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.no_import:
        print("landing zone: left as it is (--no-import)")
    elif landing_zone_is_empty():
        print("landing zone is empty: landing MovieLens-100K (recsys import-movielens)", flush=True)
        subprocess.run([sys.executable, "-m", "recsys_core.cli", "import-movielens"], env=env, cwd=PROJECT, check=True)
    else:
        print("landing zone: already has raw events")
    print(f"migrating the metadata database in {env['AIRFLOW_HOME']}", flush=True)
    run_logged([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env, logs / "db-migrate.log")
    credentials = ensure_passwords(env)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_stop_signal)
    children: dict[str, subprocess.Popen] = {}
    state: State | None = None
    stopped_elsewhere = False
    try:
        started_at = time.time()
        children = launch(env, port, logs)
        components = [Recorded(name, c.pid, psutil.Process(c.pid).create_time()) for name, c in children.items()]
        state = State(path, children["scheduler"].pid, port, started_at, components)
        state.write()
        print(
            f"started {', '.join(children)} on {HOST} (logs in {logs}); waiting for {state.url}{HEALTH_PATH}",
            flush=True,
        )
        wait_until_healthy(state.url, children, logs, args.timeout)
        print_credentials(state.url, credentials)
        print(f"ready: {state.url}\nCtrl-C here, or `make airflow-stop`, stops everything.", flush=True)
        stopped_elsewhere = supervise(state, children, logs)
        return 0 if stopped_elsewhere else 1
    except StopSignal as stop:
        print(f"\n{stop}: stopping Airflow", flush=True)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        if state is not None and not stopped_elsewhere:
            stop_session(state, args.grace)
            path.unlink(missing_ok=True)
        elif state is None:  # interrupted between launching and recording
            for child in children.values():
                child.kill()
        for child in children.values():
            child.wait()  # reap, so that no zombie outlives `start`


def supervise(state: State, children: dict[str, subprocess.Popen], logs: Path) -> bool:
    """Wait until a component exits. True: `stop` is ending them; False: it failed, and the rest must be stopped."""
    while True:
        for name, child in children.items():
            if child.poll() is None:
                continue
            if stopped_by_command(state.path):
                print("stopped by `airflow_local.py stop`")
                return True
            print(tail(logs / f"{name}.log", 30))
            print(f"{name} exited with code {child.returncode} (log: {logs / f'{name}.log'}); stopping the rest")
            return False
        time.sleep(1)


def cmd_stop(args) -> int:
    path = state_path(airflow_env())
    state = State.read(path)
    if state is None:
        print(f"nothing to stop: no Airflow started by this script ({path} does not exist)")
        return 0
    stop_session(state, args.grace)
    path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start Airflow in the foreground (Ctrl-C stops it)")
    start.add_argument("--port", type=int, help="api-server port (default: AIRFLOW__API__PORT, else 8080)")
    start.add_argument("--no-import", action="store_true", help="do not land MovieLens-100K")
    start.add_argument("--timeout", type=float, default=DEFAULT_READY_TIMEOUT_S, help="seconds to wait for health")
    stop = commands.add_parser("stop", help="stop what `start` started, with every descendant")
    for sub in (start, stop):
        sub.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, help="seconds from SIGTERM to SIGKILL")
        sub.set_defaults(handler=cmd_start if sub is start else cmd_stop)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
