"""The Spark scoring engine.

The nightly job's engine (``spark_score_night``): Spark tasks, one group of users each (whole digest buckets),
run the local engine's per-user function (``serving.nightly.score_and_explain``: encoding,
top-K, reasons) with the champion loaded on the executor, and write the rows; see the section
"Executors score and write the night" below.

``write_top_k`` is the scoring kernel alone over user vectors computed elsewhere: Spark tasks
read their users from a staged Arrow file, score them against the item matrix (a broadcast)
and write their own Parquet files; ``benchmarks/bench_scoring.py`` measures it against the
local kernel; ``spark_top_k`` reads the rows back.

Every task uses ``spark.task.cpus`` torch threads, so local[*] runs one
single-threaded task per core instead of oversubscribing the cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import scipy.sparse as sp

from recsys_core.serving.nightly import INTERACTION_COLUMNS, PROFILE_COLUMNS
from recsys_core.sparkconf import WHOLE_FILES, spark_conf

if TYPE_CHECKING:
    from recsys_core.config import ServeSettings
    from recsys_core.serving.nightly import NightCatalogue
    from recsys_core.serving.precision import PrecisionSetting

_ARROW_OUTPUT = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())])
_WRITTEN = pa.schema([("task", pa.int64()), ("rows", pa.int64())])
MAX_USERS_PER_TASK = 50_000  # bounds a task's memory: its users' vectors, exclusions and [batch x items] scores


def user_batch_table(user_ids: list[str], user_vectors: np.ndarray, exclude: sp.csr_matrix | None) -> pa.Table:
    """The scoring input: user_id, vector (list<float>), seen (list<int>: catalogue columns to exclude)."""
    n, dim = user_vectors.shape
    flat = pa.array(np.ascontiguousarray(user_vectors, dtype=np.float32).ravel())
    vectors = pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), flat)
    if exclude is None:
        exclude = sp.csr_matrix((n, 0), dtype=np.float32)
    exclude = exclude.tocsr()
    seen = pa.ListArray.from_arrays(pa.array(exclude.indptr.astype(np.int32)), pa.array(exclude.indices.astype(np.int32)))
    return pa.table({"user_id": pa.array(user_ids, pa.string()), "vector": vectors, "seen": seen})


def score_arrow_batch(
    batch: pa.RecordBatch,
    item_matrix: np.ndarray,
    item_ids: pa.Array,
    k: int,
    *,
    batch_users: int = 1024,
    mmr_lambda: float | None = None,
    categories: np.ndarray | None = None,
    pool_factor: int = 3,
    precision: PrecisionSetting = "fp32",
) -> pa.RecordBatch:
    """Score one Arrow batch of users (see ``user_batch_table``) → (user_id, rank, item_id, score) rows."""
    import torch

    from recsys_core.serving.score import recommend_top_k
    from recsys_core.sparse import exclusion_from_lists

    n = batch.num_rows
    if n == 0:
        return pa.RecordBatch.from_pylist([], schema=_ARROW_OUTPUT)
    vectors_col = batch.column("vector")
    offsets = vectors_col.offsets.to_numpy()
    dim = item_matrix.shape[1]
    if not np.array_equal(np.diff(offsets), np.full(n, dim)):
        raise ValueError(f"every user vector must have {dim} values")
    vectors = vectors_col.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].reshape(n, dim)
    seen_col = batch.column("seen")
    exclude = exclusion_from_lists(
        seen_col.offsets.to_numpy(),
        seen_col.values.to_numpy(zero_copy_only=False)[seen_col.offsets[0].as_py() : seen_col.offsets[-1].as_py()],
        item_matrix.shape[0],
    )
    items, scores = recommend_top_k(
        torch.tensor(vectors, dtype=torch.float32),  # a copy: Arrow memory is read-only
        torch.from_numpy(np.require(item_matrix, np.float32, ["C", "W"])),
        k,
        exclude=exclude,
        batch_users=batch_users,
        mmr_lambda=mmr_lambda,
        categories=categories,
        pool_factor=pool_factor,
        precision=precision,
    )
    return pa.RecordBatch.from_arrays(
        [
            pc.take(batch.column("user_id"), pa.array(np.repeat(np.arange(n), k))),
            pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
            pc.take(item_ids, pa.array(items.ravel())),
            pa.array(scores.ravel()),
        ],
        schema=_ARROW_OUTPUT,
    )


def write_top_k(
    spark,
    user_ids: list[str],
    user_vectors: np.ndarray,
    item_ids: list[str],
    item_matrix: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    *,
    folder: str,
    fs: pafs.FileSystem | None = None,
    batch_users: int = 1024,
    mmr_lambda: float | None = None,
    categories: np.ndarray | None = None,
    pool_factor: int = 3,
    users_per_task: int | None = None,
    precision: PrecisionSetting = "fp32",
) -> int:
    """Score every user in Spark tasks, each writing its own ``part-NNNNN.parquet`` of (user_id,
    rank, item_id, score) rows, users in input order, into ``folder`` of ``fs`` (a file system
    every executor sees: local, NFS, S3), whose previous contents it replaces, as Spark's overwrite
    mode does; returns the number of rows written.

    Neither the users nor the rows pass through the JVM: the driver stages the users as an Arrow
    IPC file in ``folder`` (one record batch per task, removed at the end), the tasks are just
    their indices (``spark.range``), and each task reads its batch, scores it against the item
    matrix (a broadcast) and writes its file under a temporary name, then renames it, so a retried
    task replaces its file whole. Going through Spark rows instead (``createDataFrame``, then the
    JVM's Parquet writer) cost about 3x the scoring itself on 2 cores.
    """
    if k > len(item_ids):
        raise ValueError(f"K={k} is larger than the catalogue ({len(item_ids)} items)")
    fs = fs or pafs.LocalFileSystem()
    fs.create_dir(folder, recursive=True)
    fs.delete_dir_contents(folder)  # the previous run's parts: this run may write fewer
    if not user_ids:
        return 0
    sc = spark.sparkContext
    threads = int(sc.getConf().get("spark.task.cpus", "1"))
    # One task per core: each scores single-threaded, so more tasks only add their fixed costs.
    users_per_task = min(users_per_task or -(-len(user_ids) // sc.defaultParallelism), MAX_USERS_PER_TASK)
    staged = f"{folder}/_users.arrow"
    inputs = user_batch_table(user_ids, user_vectors, exclude).combine_chunks()
    batches = inputs.to_batches(max_chunksize=users_per_task)
    with fs.open_output_stream(staged) as stream, pa.ipc.new_file(stream, inputs.schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    b_items = sc.broadcast(np.ascontiguousarray(item_matrix, dtype=np.float32))
    b_ids = sc.broadcast(pa.array(item_ids, pa.string()))  # converted once here, not in every task
    b_cats = sc.broadcast(np.asarray(categories, dtype=bool)) if categories is not None else None
    options: dict[str, Any] = {
        "batch_users": batch_users,
        "mmr_lambda": mmr_lambda,
        "pool_factor": pool_factor,
        "precision": precision,
    }

    def score_and_write(tasks):
        import pyarrow.parquet as pq
        import torch

        torch.set_num_threads(threads)
        cats = b_cats.value if b_cats is not None else None
        for task in (i for part in tasks for i in part.column(0).to_pylist()):
            with fs.open_input_file(staged) as source:
                batch = pa.ipc.open_file(source).get_batch(task)
                rows = score_arrow_batch(batch, b_items.value, b_ids.value, k, categories=cats, **options)
            path = f"{folder}/part-{task:05d}.parquet"
            pq.write_table(pa.Table.from_batches([rows]), f"{path}.tmp", filesystem=fs)
            fs.move(f"{path}.tmp", path)
            yield pa.RecordBatch.from_pydict({"task": [task], "rows": [rows.num_rows]}, schema=_WRITTEN)

    try:
        written = spark.range(0, len(batches), numPartitions=len(batches)).mapInArrow(score_and_write, "task long, rows long")
        counts = {row["task"]: row["rows"] for row in written.collect()}
    finally:
        fs.delete_file(staged)
        for broadcast in (b_items, b_ids, b_cats):
            if broadcast is not None:
                broadcast.unpersist()
    if sorted(counts) != list(range(len(batches))) or sum(counts.values()) != len(user_ids) * k:
        raise ValueError(
            f"the Spark tasks wrote {sum(counts.values())} rows in {len(counts)} files, expected "
            f"{len(user_ids) * k} in {len(batches)}"
        )
    return len(user_ids) * k


def spark_top_k(spark, user_ids: list[str], *args, **options) -> pa.Table:
    """``write_top_k``'s rows, read back, sorted by user and rank (a local temporary folder: for
    local[*] and single-machine clusters)."""
    import tempfile

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="spark-top-k-") as folder:
        write_top_k(spark, user_ids, *args, folder=folder, **options)
        rows = pq.read_table(folder, schema=_ARROW_OUTPUT) if user_ids else _ARROW_OUTPUT.empty_table()
    return rows.sort_by([("user_id", "ascending"), ("rank", "ascending")])


def rows_to_matrices(rows: pa.Table, user_ids: list[str], item_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(user_id, rank, item_id, score) rows → ([users, k] item columns, [users, k] scores) in ``user_ids`` order."""
    user_pos = pc.index_in(rows["user_id"], value_set=pa.array(user_ids, pa.string()))
    item_pos = pc.index_in(rows["item_id"], value_set=pa.array(item_ids, pa.string()))
    if rows.num_rows != len(user_ids) * k or user_pos.null_count or item_pos.null_count:
        raise ValueError("the Spark engine returned rows that do not cover every user exactly K times")
    u = user_pos.to_numpy().astype(np.int64)
    r = rows["rank"].to_numpy().astype(np.int64) - 1
    if (r < 0).any() or (r >= k).any():
        raise ValueError(f"the Spark engine returned ranks outside 1..{k}")
    items = np.full((len(user_ids), k), -1, dtype=np.int64)
    scores = np.zeros((len(user_ids), k), dtype=np.float32)
    items[u, r] = item_pos.to_numpy().astype(np.int64)
    scores[u, r] = rows["score"].to_numpy()
    if (items < 0).any():
        raise ValueError("the Spark engine returned duplicate (user, rank) rows")
    return items, scores


# Executors score and write the night --------------------------------------------------------------
#
# Every Spark task takes the users of one scoring group (crc32(user_id) mod a power of two, so
# whole digest buckets; the user table's rows cogrouped with their interactions), loads the
# champion once per Python worker (``load_bundle``: the bundle's files on the shared file system
# or lake, checked against their digest, tensors read with ``weights_only=True``), runs
# ``serving.nightly.score_and_explain`` (the local engine's function: encoding, scoring, reasons)
# and returns its rows; the write follows in the same task. No row and no user encoding passes
# through the driver: it gets back one digest per bucket, read back from the written files, and
# the aggregates of the publishing checks.

HISTORY = "_history"  # a scored row's user has a history (for the report; not written)


@dataclass(frozen=True)
class BundleSource:
    """Where the executors read the champion: a folder of ``fs`` holding the bundle's files, and
    the digest of those files (``models.bundle.files_digest``), checked on every load."""

    fs: Any  # pyarrow.fs.FileSystem (picklable: local, S3, ...)
    folder: str
    digest: str


_LOADED: dict[tuple[str, str], Any] = {}


def load_bundle(source: BundleSource):
    """The champion of ``source``, loaded once per Python worker (Spark reuses workers across tasks)."""
    from recsys_core.errors import ModelError
    from recsys_core.models.bundle import FILES, ModelBundle, files_digest

    key = (source.folder, source.digest)
    if key not in _LOADED:
        files = {}
        for name in FILES:
            path = f"{source.folder}/{name}"
            if source.fs.get_file_info(path).type == pafs.FileType.File:
                with source.fs.open_input_stream(path) as stream:
                    files[name] = stream.read()
        if files_digest(files) != source.digest:
            raise ModelError(
                f"the model bundle under {source.folder} does not match its digest {source.digest[:12]}",
                hint="rerun the nightly job: it copies the champion again",
            )
        _LOADED.clear()  # one champion per worker: a new night's replaces the last
        _LOADED[key] = ModelBundle.from_files(files)
    return _LOADED[key]


def spark_score_night(
    spark,
    profiles,
    interactions,
    output_uri: str,
    source: BundleSource,
    night: NightCatalogue,
    serve: ServeSettings,
) -> tuple[dict[int, tuple[int, str]], dict[str, int]]:
    """Score the users of ``profiles`` (a DataFrame of the user table) from their ``interactions``
    (a DataFrame: every event up to the run date) in Spark tasks, and write their rows to ``output_uri``.

    Returns each digest bucket's (rows, bucket_digest), read back from the written files, and the
    night's user figures (users, with history, profile only, fallback, rows with a reason item).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, StructField, StructType

    from recsys_core.contracts import RECOMMENDATIONS, spark_schema
    from recsys_core.serving.output import DIGEST_BUCKETS

    if serve.top_k > len(night.item_ids):
        raise ValueError(f"K={serve.top_k} is larger than the catalogue ({len(night.item_ids)} items)")
    sc = spark.sparkContext
    threads = int(sc.getConf().get("spark.task.cpus", "1"))
    b_night = sc.broadcast(night)
    k = serve.top_k
    out_schema = pa.schema([*RECOMMENDATIONS.schema, pa.field(HISTORY, pa.bool_())])

    def score_bucket(users: pa.Table, events: pa.Table) -> pa.Table:
        import torch

        from recsys_core.serving.nightly import score_and_explain

        if users.num_rows == 0:  # events of users outside the user table: nobody to score
            return out_schema.empty_table()
        torch.set_num_threads(threads)
        table, _, history = score_and_explain(load_bundle(source), b_night.value, serve, events, users.sort_by("user_id"))
        return table.append_column(HISTORY, pa.array(np.repeat(history, k)))

    # Scoring groups: crc32 mod a power of two, so that each digest bucket lies in one group. The
    # cogroup hashes the groups into its shuffle partitions (the tasks), so a partition holds however
    # many groups land in it: with about as many groups as partitions, some tasks got 3-4 groups and
    # ran them alone at the end of a 1M-user night. Many groups per core spread evenly over the tasks.
    groups = min(DIGEST_BUCKETS, 1 << max(0, 64 * sc.defaultParallelism - 1).bit_length())
    group = (F.crc32(F.col("user_id").cast("binary")) % groups).alias("_group")
    users = profiles.select(*PROFILE_COLUMNS, group)
    events = interactions.select(*INTERACTION_COLUMNS, group)
    schema = StructType([*spark_schema(RECOMMENDATIONS).fields, StructField(HISTORY, BooleanType())])
    scored = (users.groupBy("_group").cogroup(events.groupBy("_group")).applyInArrow(score_bucket, schema)).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        # Each task writes the buckets it scored: a user's K rows sit in one file, a bucket in one file.
        scored.select(*RECOMMENDATIONS.columns).sortWithinPartitions("user_id", "rank").write.mode("overwrite").parquet(
            output_uri
        )
        first = F.col("rank") == 1
        figures = scored.agg(
            F.count(F.when(first, 1)).alias("users"),
            F.count(F.when(first & F.col(HISTORY), 1)).alias("with_history"),
            F.count(F.when(first & ~F.col(HISTORY) & (F.col("source") == "model"), 1)).alias("profile_only"),
            F.count(F.when(first & (F.col("source") == "fallback"), 1)).alias("fallback"),
            F.count("reason_item_id").alias("rows_with_reason_item"),
        ).collect()[0]
        with spark_conf(spark, WHOLE_FILES):
            digests = (
                spark.read.parquet(output_uri)
                .select(*RECOMMENDATIONS.columns)
                .mapInArrow(_digest_file, "bucket int, rows long, digest string")
                .collect()
            )
    finally:
        scored.unpersist()
        b_night.unpersist()
    parts: dict[int, tuple[int, str]] = {}
    for row in digests:
        if row["bucket"] in parts:
            raise ValueError(f"digest bucket {row['bucket']} is spread over several output files")
        parts[row["bucket"]] = (row["rows"], row["digest"])
    return parts, {name: int(figures[name] or 0) for name in figures.asDict()}


def _digest_file(batches):
    """One written file (a whole partition under ``WHOLE_FILES``) → (bucket, rows, bucket_digest) per bucket in it."""
    from recsys_core.contracts import RECOMMENDATIONS, conform
    from recsys_core.serving.output import bucket_digest, digest_buckets

    batches = list(batches)
    if not batches or not sum(b.num_rows for b in batches):
        return
    table = conform(pa.Table.from_batches(batches), RECOMMENDATIONS)  # the contract's Arrow types, as the local engine's
    buckets = digest_buckets(table["user_id"])
    rows = []
    for b in np.unique(buckets):
        part = table.filter(pa.array(buckets == b))
        rows.append({"bucket": int(b), "rows": part.num_rows, "digest": bucket_digest(part)})
    yield pa.RecordBatch.from_pylist(
        rows, schema=pa.schema([("bucket", pa.int32()), ("rows", pa.int64()), ("digest", pa.string())])
    )
