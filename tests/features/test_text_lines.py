"""Spark's text reader cuts JSON Lines exactly as the Python reference ``split_lines`` does, line numbers included;
the features stage writes with every task."""

from __future__ import annotations

import gzip
import random
from datetime import date

import pytest

from recsys_core.errors import PublishError
from recsys_core.features.ingest import split_lines, text_lines
from recsys_core.sparkconf import WHOLE_FILES, spark_conf

pytestmark = pytest.mark.spark

MAX = 200


def lines_of(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.05:
            out.append(b"")
        elif kind < 0.1:
            out.append(b'{"event_id":"x%d"}\r' % i)  # CRLF
        elif kind < 0.13:
            out.append(b'{"user_id":"u\xff\xfe%d"}' % i)  # not UTF-8
        elif kind < 0.16:
            out.append(b'{"pad":"' + b"x" * (MAX + rng.randrange(50)) + b'"}')  # oversized
        elif kind < 0.18:
            out.append('{"title":"caf\u00e9 \u2603 %d"}'.encode() % i)  # multi-byte UTF-8
        else:
            out.append(b'{"event_id":"e%d","n":%d}' % (i, rng.randrange(10**6)))
    return b"\n".join(out) + (b"\n" if seed % 2 else b"")  # with and without a final newline


def test_spark_lines_equal_the_python_reference(spark, tmp_path):
    files = {}
    for seed, n in enumerate([1, 7, 2500, 40, 9000]):
        data = lines_of(seed, n)
        name = tmp_path / "dt=2024-05-01" / f"f{seed}.jsonl{'.gz' if seed % 2 else ''}"
        name.parent.mkdir(exist_ok=True)
        name.write_bytes(gzip.compress(data) if seed % 2 else data)
        files[f"file:{name}"] = name.read_bytes()  # as landed: split_lines un-gzips by the name, as Spark does
    with spark_conf(spark, WHOLE_FILES):
        got = sorted(tuple(r) for r in text_lines(spark, sorted(files), MAX).collect())
    want = sorted(row for path, data in files.items() for row in split_lines(path, data, MAX))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:2] == w[:2] and g[3] == w[3], (g, w)  # file, line, reason
        if w[3] is None:
            assert g[2] == w[2]
        elif w[3] == "invalid_utf8":  # the bad bytes show as U+FFFD
            assert "\ufffd" in g[2] and g[2].split("\ufffd")[0] == w[2].split("\\x")[0]
        else:  # oversized: the first 1024 characters
            assert g[2] == w[2][:1024]


def test_a_file_not_numbered_one_to_n_stops_the_run(spark):
    from recsys_core.stages.ingest import _rows_per_file

    rows = spark.createDataFrame([("a", 1), ("a", 2), ("b", 1), ("b", 1)], "source_file string, line_no long")
    with pytest.raises(PublishError, match=r"b: 2 lines numbered 1\.\.1"):
        _rows_per_file(rows)
    assert _rows_per_file(rows.where("source_file = 'a'")) == {"a": 2}


def test_features_are_staged_by_every_task_in_key_order(spark, tmp_path):
    """No single-task stage: a features table is written by as many tasks as it has partitions, files in key order."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from recsys_core.config import settings_for
    from recsys_core.contracts import ITEM_FEATURES
    from recsys_core.io.lake import Lake
    from recsys_core.stages.features import _stage

    lake = Lake(settings_for(data_root=tmp_path).lake)
    rows = [(f"item-{i:04d}", [], 1, 1, 1, 1, 1.0) for i in range(400)]
    df = spark.createDataFrame(
        rows, "item_id string, genres array<string>, pop_1d long, pop_7d long, pop_30d long, pop_all long, trend double"
    )
    for name in ("title", "release_year", "first_seen_ts", "days_since_first_seen", "text_embedding"):
        df = df.withColumn(name, F.lit(None))
    # 400 rows are far below AQE's advisory partition size: it would coalesce them into one task.
    with spark_conf(spark, {"spark.sql.adaptive.coalescePartitions.enabled": "false"}):
        staged = _stage(lake, ITEM_FEATURES, date(2024, 5, 1), df.repartition(4))
    files = lake.data_files(staged)
    assert len(files) > 1
    ids = [pq.read_table(f)["item_id"].to_pylist() for f in files]
    flat = [i for part in ids for i in part]
    assert sorted(flat) == flat and len(flat) == 400
