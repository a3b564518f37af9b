"""Class-data sharing for Spark's driver JVM: an archive of the classes a Spark job loads.

A fresh Spark JVM spends seconds loading, verifying and linking the classes of Spark SQL,
Parquet and Hadoop before its first row; every spark-submit of the chain pays it again. With
the archive, the JVM maps those classes from one file instead. It is built once per
environment (``recsys spark-cds``; ``make install`` runs it) by a JVM that runs a small
ingest, feature build and ALS fit (``stages.spark_warm_up``) and writes what it loaded as it exits. It lives in the
virtual environment, beside the jars it was built from, and its name carries a key of those
jars and the JVM, so a changed environment builds a new one. The JVM checks the archive
against its class path again and runs without it when they differ (``-Xshare:auto``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from recsys_core.config import Settings

DRIVER_OPTIONS = "spark.driver.defaultJavaOptions"
SUFFIX = ".jsa"


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java") or "java"
    return os.path.realpath(java)


def archive_key() -> str:
    """Changes with the JVM, the Spark version and every jar on Spark's class path."""
    digest = hashlib.sha1(_java().encode())
    jars = _spark_home() / "jars"
    for jar in sorted(jars.glob("*.jar")) if jars.is_dir() else []:
        digest.update(f"{jar.name}:{jar.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def archive_folder() -> Path:
    return Path(sys.prefix) / "share" / "recsys"


def archive_path(folder: Path | None = None) -> Path:
    return (folder or archive_folder()) / f"spark-cds-{archive_key()}{SUFFIX}"


def driver_conf(settings: Settings, folder: Path | None = None) -> dict[str, str]:
    """The Spark conf that makes a driver JVM map the archive; empty when off or not built.

    Set before the JVM starts: by ``spark_session`` when it launches one, or on spark-submit's command line.
    """
    archive = archive_path(folder)
    if not settings.spark.class_data_sharing or not archive.is_file():
        return {}
    # -Xlog:cds=off: a JVM that cannot use the archive says so in a warning each start; it then runs as without.
    options = f"-Xshare:auto -XX:SharedArchiveFile={archive} -Xlog:cds=off"
    configured = settings.spark.conf.get(DRIVER_OPTIONS, "").strip()
    return {DRIVER_OPTIONS: f"{configured} {options}".strip()}


def build_archive(workload: Path, folder: Path | None = None, timeout_s: int = 900) -> Path:
    """Run ``workload`` (a PySpark script) in a JVM that writes the archive as it exits; returns the archive.

    Written under a temporary name and renamed into place, so a JVM never maps a half-written
    archive; archives of other keys in the folder (another Spark or JVM) are removed.
    """
    target = archive_path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    submit = _spark_home() / "bin" / "spark-submit"
    command = [
        str(submit),
        "--master",
        "local[2]",
        "--driver-memory",
        "1g",
        "--conf",
        f"{DRIVER_OPTIONS}=-XX:ArchiveClassesAtExit={partial} -Xlog:cds=off",
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        str(workload),
    ]
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"), "PYSPARK_PYTHON": sys.executable}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"the warm-up JVM did not write a class-data archive (exit {result.returncode}):\n{tail}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    for stale in target.parent.glob(f"spark-cds-*{SUFFIX}"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target
