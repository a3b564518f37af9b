"""recsys_core.io.spark_progress: a long Spark job reports its task counts in the driver's log."""

from __future__ import annotations

import logging
import re
import time

import pytest

from recsys_core.io.spark_progress import spark_progress

pytestmark = pytest.mark.spark


def test_a_running_job_logs_its_tasks_and_stops_when_the_block_ends(spark, caplog):
    def slow(rows):
        time.sleep(0.6)
        yield sum(1 for _ in rows)

    with caplog.at_level(logging.INFO, logger="recsys_core.io.spark_progress"):
        with spark_progress(spark, "slow job", every=0.2):
            counted = spark.sparkContext.parallelize(range(40), 6).mapPartitions(slow).collect()
        lines = [r.getMessage() for r in caplog.records]
        time.sleep(0.5)
        assert [r.getMessage() for r in caplog.records] == lines, "nothing is logged after the block"
    assert sum(counted) == 40
    found = [re.search(r"slow job: stage \d+: (\d+)/6 tasks done, (\d+) running", line) for line in lines]
    done = [int(m.group(1)) for m in found if m]
    assert done, lines
    assert done == sorted(done) and done[0] < 6, "counts go up while the job runs"
