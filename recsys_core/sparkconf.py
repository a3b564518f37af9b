"""Spark SQL settings a step holds while it runs, then gives back (imports nothing of Spark)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Spark's file splitting: with the open cost of a file as large as a partition, every non-empty
# file gets a partition of its own and is never split (the ingest numbers each file's lines from
# the row index; the nightly digests each written file whole).
WHOLE_FILES = {"spark.sql.files.maxPartitionBytes": str(1 << 40), "spark.sql.files.openCostInBytes": str(1 << 40)}


@contextmanager
def spark_conf(spark, conf: Mapping[str, str | None]) -> Iterator[dict[str, str | None]]:
    """Set ``conf`` on the session for the block (None: unset); the previous values (or none) come back
    after it. Yields them, so that a block inside can give them back for a while."""
    previous = {key: spark.conf.get(key, None) for key in conf}
    _apply(spark, conf)
    try:
        yield previous
    finally:
        _apply(spark, previous)


def _apply(spark, conf: Mapping[str, str | None]) -> None:
    for key, value in conf.items():
        if value is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, value)


# The ingest's one cached copy of the checked rows is read a few times within minutes, then
# dropped: compressing its columns cost more (2-3 s per 1M lines on 2 cores) than it saves.
UNCOMPRESSED_CACHE = {"spark.sql.inMemoryColumnarStorage.compressed": "false"}
