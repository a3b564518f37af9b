"""The class-data archive of Spark's driver JVM: which options a session gets, and a real JVM that writes
an archive and another that starts on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recsys_core.config import settings_for
from recsys_core.io import spark_cds
from recsys_core.io.spark_cds import DRIVER_OPTIONS, archive_path, build_archive, driver_conf

WORKLOAD = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
assert spark.range(10).selectExpr("sum(id) AS s").collect()[0].s == 45
spark.stop()
"""


def test_no_options_when_switched_off_or_not_built(tmp_path):
    assert driver_conf(settings_for(data_root=tmp_path), folder=tmp_path) == {}, "no archive built in the folder"
    archive_path(tmp_path).write_bytes(b"built")
    off = settings_for(data_root=tmp_path, spark={"class_data_sharing": False})
    assert driver_conf(off, folder=tmp_path) == {}


def test_a_built_archive_is_mapped_after_the_configured_options(tmp_path):
    archive = archive_path(tmp_path)
    archive.write_bytes(b"built")
    settings = settings_for(data_root=tmp_path, spark={"conf": {DRIVER_OPTIONS: "-XX:+UseParallelGC"}})
    options = driver_conf(settings, folder=tmp_path)[DRIVER_OPTIONS].split()
    assert options[0] == "-XX:+UseParallelGC"
    assert f"-XX:SharedArchiveFile={archive}" in options
    assert "-Xshare:auto" in options, "a JVM that cannot map the archive must still run"


def test_the_key_names_the_jvm_and_the_jars(monkeypatch, tmp_path):
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "spark-core.jar").write_bytes(b"x" * 10)
    monkeypatch.setattr(spark_cds, "_spark_home", lambda: tmp_path)
    before = spark_cds.archive_key()
    (jars / "spark-core.jar").write_bytes(b"x" * 11)
    assert spark_cds.archive_key() != before, "a changed jar must give another archive"


@pytest.mark.spark
@pytest.mark.slow
def test_a_jvm_writes_the_archive_and_the_next_one_starts_on_it(tmp_path):
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD)
    folder = tmp_path / "share"
    folder.mkdir()
    stale = folder / "spark-cds-000000000000.jsa"
    stale.write_bytes(b"an archive of another Spark")

    archive = build_archive(workload, folder=folder)

    assert archive == archive_path(folder) and archive.stat().st_size > 1 << 20
    assert sorted(p.name for p in folder.iterdir()) == [archive.name], "the stale archive and no partial file remain"
    # -Xshare:on: the JVM refuses to start unless it maps the archive.
    submit = spark_cds._spark_home() / "bin" / "spark-submit"
    options = f"-Xshare:on -XX:SharedArchiveFile={archive}"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    result = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", f"{DRIVER_OPTIONS}={options}", str(workload)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.spark
def test_a_failed_workload_leaves_no_archive(tmp_path):
    workload = tmp_path / "workload.py"
    workload.write_text("raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match="exit 3"):
        build_archive(workload, folder=tmp_path)
    assert list(tmp_path.glob("*.jsa")) == [] and list(tmp_path.glob(".*partial")) == []
