"""recsys_core.sparkconf: a step's Spark settings hold for its block, and nested blocks give them back for a while."""

from __future__ import annotations

import pytest

from recsys_core.sparkconf import WHOLE_FILES, spark_conf

pytestmark = pytest.mark.spark

SPLIT = "spark.sql.files.maxPartitionBytes"
OPEN_COST = "spark.sql.files.openCostInBytes"


def test_settings_hold_in_the_block_and_the_previous_ones_come_back(spark):
    spark.conf.set(SPLIT, "64MB")
    spark.conf.unset(OPEN_COST)
    default_open_cost = spark.conf.get(OPEN_COST)
    try:
        with spark_conf(spark, WHOLE_FILES) as before:
            assert before == {SPLIT: "64MB", OPEN_COST: None}
            assert spark.conf.get(SPLIT) == WHOLE_FILES[SPLIT]
            # Inside, a block gives the previous values back: set again, or unset where none was.
            with spark_conf(spark, before):
                assert spark.conf.get(SPLIT) == "64MB"
                assert spark.conf.get(OPEN_COST) == default_open_cost
            assert spark.conf.get(OPEN_COST) == WHOLE_FILES[OPEN_COST]
        assert spark.conf.get(SPLIT) == "64MB"
        assert spark.conf.get(OPEN_COST) == default_open_cost
    finally:
        spark.conf.unset(SPLIT)
