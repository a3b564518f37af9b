"""Spark session factory: the one place that knows how sessions are configured."""

from __future__ import annotations

import os
import sys

from recsys_core.config import Settings
from recsys_core.io.spark_cds import driver_conf


def spark_session(settings: Settings, app: str):
    """A SparkSession for ``app``, configured from settings.

    Under spark-submit the master and resources come from the submit command
    (set by Airflow's connection); standalone runs use ``settings.spark.master``.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # Workers must run the driver's interpreter (the venv), not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(f"{settings.spark.app_name_prefix}-{app}")
    if not launched_by_spark_submit():
        builder = builder.master(settings.spark.master).config("spark.driver.memory", settings.spark.driver_memory)
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # Readers outside Spark (pyarrow, DuckDB) then see timestamp[us, UTC], as the contracts say.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.showConsoleProgress": "false",
        **settings.spark.conf,
    }
    if not launched_by_spark_submit():  # spark-submit started the JVM already, with its command line's options
        conf.update(driver_conf(settings))
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def launched_by_spark_submit() -> bool:
    # spark-submit starts the Python driver with a JVM gateway already running.
    return "PYSPARK_GATEWAY_PORT" in os.environ
