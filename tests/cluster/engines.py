"""Real engines on loopback for the cluster tests (fixtures, started once per test session and stopped after).

- a Spark standalone master and one worker, from the pip pyspark (``spark-class``);
- PostgreSQL from Debian's package: a throwaway cluster (``initdb``, trust auth on 127.0.0.1 and a
  private socket folder), as the ``postgres`` user when the tests run as root (initdb refuses root);
- an S3 API: moto's server mode, the one stand-in (no S3-compatible server installs from PyPI or
  Debian here; the lake and MLflow talk to it through the same S3 protocol they would use on MinIO/S3);
- an ``mlflow server`` on that PostgreSQL, its artifacts proxied to a bucket of that S3 API.

Every server binds 127.0.0.1 on a port picked at run time and runs in its own process group, which
the finalizer terminates (then kills) whatever the tests did. The pipeline reaches them only through
configuration: ``RECSYS_*`` variables (``cluster_env``) and the standard ``AWS_*`` ones for the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAKE_BUCKET = "recsys-lake"
ARTIFACT_BUCKET = "mlflow"
DB_USER = "recsys"
# Throwaway credentials of the S3 stand-in (moto accepts any); never a real store's.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "cluster-tests", "AWS_SECRET_ACCESS_KEY": "cluster-tests", "AWS_REGION": "us-east-1"}
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Service:
    """A server process in a session (process group) of its own, logging to a file."""

    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- last lines of {self.log} ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 20) -> None:
        stop_group(self.process, sig, grace_s)


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 20) -> None:
    """``sig`` to the process's whole group, SIGKILL to the group after ``grace_s``; children included."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):  # the leader may be gone while children (a JVM, a backend) are not
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def start(name: str, command: list[str], logs: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Service:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL
        )
    return Service(name, process, log)


def wait_until(service: Service, ready: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode} before {what}\n{service.tail()}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{service.name}: no {what} after {timeout_s:.0f} s\n{service.tail()}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500


# Spark standalone ---------------------------------------------------------------------------------
@dataclass
class SparkCluster:
    url: str  # spark://127.0.0.1:<port>
    webui: str  # http://127.0.0.1:<port>

    def status(self) -> dict:
        return get_json(f"{self.webui}/json/")

    def completed_apps(self) -> list[dict]:
        return self.status()["completedapps"]


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> Iterator[SparkCluster]:
    import pyspark

    root = tmp_path_factory.mktemp("spark-cluster")
    spark_home = Path(pyspark.__file__).parent
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",  # the RPC and web UI listeners of master, worker and executors
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_WORKER_DIR": str(root / "work"),
        # No REST submission server: nothing here submits through it.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        # Executors on the worker run the tests' interpreter (the venv) with this tree importable.
        "PYSPARK_PYTHON": sys.executable,
    }
    port, webui_port, worker_ui = free_port(), free_port(), free_port()
    spark_class = str(spark_home / "bin" / "spark-class")
    master = start(
        "spark-master",
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(webui_port),
        ],
        root,
        env,
    )
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{webui_port}")
    services = [master]
    try:
        wait_until(master, lambda: cluster.status()["status"] == "ALIVE", "master status ALIVE")
        worker = start(
            "spark-worker",
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                cluster.url,
                "--host",
                "127.0.0.1",
                "--cores",
                "2",
                "--memory",
                "4g",
                "--webui-port",
                str(worker_ui),
                "--work-dir",
                str(root / "work"),
            ],
            root,
            env,
        )
        services.append(worker)
        wait_until(worker, lambda: any(w["state"] == "ALIVE" for w in cluster.status()["workers"]), "worker registered")
        yield cluster
    finally:
        for service in reversed(services):
            service.stop()


# PostgreSQL -----------------------------------------------------------------------------------------
@dataclass
class Postgres:
    port: int
    databases: list[str] = field(default_factory=list)

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname=database) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("Debian's postgresql is not installed (apt-get install postgresql; .ci/run does it)")
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Postgres]:
    import psycopg2

    pg = postgres_bin()
    logs = tmp_path_factory.mktemp("postgres-logs")
    # Not under pytest's tmp folder: that one is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    as_postgres = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    if as_postgres:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    server = None
    try:
        initdb = subprocess.run(
            [*run_as, str(pg / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", DB_USER, "--no-sync"],
            capture_output=True,
            text=True,
        )
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
        server = start(
            "postgres",
            [
                *run_as,
                str(pg / "postgres"),
                "-D",
                str(data / "db"),
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(data),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=60",
            ],
            logs,
        )
        cluster = Postgres(port)

        def accepts() -> bool:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres").close()
                return True
            except psycopg2.OperationalError:
                return False

        wait_until(server, accepts, "connections accepted")
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for database in ("mlflow", "airflow"):
                cur.execute(f"CREATE DATABASE {database}")
                cluster.databases.append(database)
        conn.close()
        yield cluster
    finally:
        if server is not None:
            server.stop(signal.SIGINT)  # fast shutdown
        shutil.rmtree(data, ignore_errors=True)


# S3 API (moto's server mode: the one stand-in) ----------------------------------------------------------
@dataclass
class S3:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The standard variables every S3 client here reads: pyarrow, boto3 (MLflow), the AWS CLI."""
        return {**S3_KEYS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_KEYS["AWS_REGION"],
            aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[S3]:
    port = free_port()
    server = start(
        "s3-moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], tmp_path_factory.mktemp("s3")
    )
    try:
        store = S3(f"http://127.0.0.1:{port}")
        wait_until(server, lambda: http_ok(f"{store.endpoint}/moto-api/"), "S3 API answering")
        for bucket in (LAKE_BUCKET, ARTIFACT_BUCKET):
            store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        server.stop()


# MLflow tracking server -------------------------------------------------------------------------------------
@dataclass
class MlflowServer:
    url: str
    artifacts: str


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, postgres, s3) -> Iterator[MlflowServer]:
    port = free_port()
    artifacts = f"s3://{ARTIFACT_BUCKET}/artifacts"
    env = {**os.environ, **s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = start(
        "mlflow-server",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            postgres.url("mlflow"),
            "--artifacts-destination",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        tmp_path_factory.mktemp("mlflow-server"),
        env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(server, lambda: http_ok(f"{url}/health"), "HTTP health answering")
        yield MlflowServer(url, artifacts)
    finally:
        server.stop()


# What the tests check ---------------------------------------------------------------------------------------
def cluster_env(data_root: Path, spark: SparkCluster, mlflow: MlflowServer, **extra: str) -> dict[str, str]:
    """The process environment plus the only switches: RECSYS_* variables naming the servers, and a tiny
    training so the chain stays short on 2 cores (the model's defaults train for minutes)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECSYS_")}
    return {
        **env,
        "RECSYS_CONFIG": str(PROJECT / "tests" / "recsys-test.yaml"),  # the model's defaults
        "RECSYS_DATA_ROOT": str(data_root),
        "RECSYS_SPARK__MASTER": spark.url,
        "RECSYS_SPARK__DRIVER_MEMORY": "1g",
        "RECSYS_SPARK__SHUFFLE_PARTITIONS": "2",
        "RECSYS_REGISTRY__TRACKING_URI": mlflow.url,
        "RECSYS_SERVE__ENGINE": "spark",
        "RECSYS_SERVE__TOP_K": "10",
        "RECSYS_FEATURES__TEXT_EMBEDDINGS": "false",
        "RECSYS_EVAL__BACKTEST_HORIZON_DAYS": "3",
        "RECSYS_TRAIN__EPOCHS": "2",
        "RECSYS_TRAIN__EVAL_EVERY": "1",
        "RECSYS_TRAIN__BATCH_SIZE": "64",
        "RECSYS_TRAIN__BASELINES": '["popularity"]',
        "RECSYS_TRAIN__CALIBRATION__ENABLED": "false",
        "RECSYS_TRAIN__MODEL__D_MODEL": "32",
        "RECSYS_TRAIN__MODEL__MAX_LEN": "20",
        "RECSYS_TRAIN__MODEL__N_LAYERS": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **extra,
    }


def run_logged(command: list[str], env: dict[str, str], log: Path, timeout_s: float = 600) -> str:
    """Run a command in a process group of its own (killed whole on timeout); its output in ``log``."""
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=timeout_s)
        finally:
            stop_group(process, grace_s=5)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, f"{' '.join(command)} exited with {process.returncode}:\n" + "\n".join(
        text.splitlines()[-60:]
    )
    return text


def assert_keeps_the_contract(settings, dt: date | str) -> pa.Table:
    """The published night of ``dt`` as a reader sees it, checked against the recommendations contract:
    exact schema, K rows per known user ranked 1..K, scores non-increasing, no seen item, only catalogue items."""
    from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
    from recsys_core.io.lake import Lake
    from recsys_core.io.recommendations import RecommendationReader
    from recsys_core.io.tables import read_interactions

    lake, k = Lake(settings.lake), settings.serve.top_k
    for path in lake.data_files(lake.partition_path(RECOMMENDATIONS, dt)):
        schema = pq.read_schema(path, filesystem=lake.fs)
        assert schema.equals(RECOMMENDATIONS.schema), f"{path}: {schema}"
    table = RecommendationReader(settings).table(dt).select(RECOMMENDATIONS.columns)  # the reader adds the folder's dt
    users = set(lake.read_partition(USER_PROFILES, dt, columns=["user_id"])["user_id"].to_pylist())
    assert set(table["user_id"].to_pylist()) == users and table.num_rows == len(users) * k
    frame = table.to_pandas()
    for _, rows in frame.groupby("user_id"):
        assert rows["rank"].tolist() == list(range(1, k + 1))
        assert rows["score"].is_monotonic_decreasing
    catalogue = set(lake.read_partition(ITEM_FEATURES, dt, columns=["item_id"])["item_id"].to_pylist())
    assert set(frame["item_id"]) <= catalogue
    seen = read_interactions(lake, date.fromisoformat(str(dt)), settings.ingest.lateness_days, columns=["user_id", "item_id"])
    pairs = set(zip(seen["user_id"].to_pylist(), seen["item_id"].to_pylist()))
    assert not pairs & set(zip(frame["user_id"], frame["item_id"])), "a seen item was recommended"
    assert pc.all(pc.is_in(table["source"], pa.array(["model", "fallback"]))).as_py()
    return table
