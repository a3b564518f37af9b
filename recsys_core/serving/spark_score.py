"""The Spark scoring engine: user batches scored by Spark tasks with the same torch kernel as the local engine.

The driver computes the user vectors (one cheap pass of the model) and ships
them as an Arrow column (``list<float>``) next to each user's seen item
columns (``list<int>``). The item matrix, the item ids and (for MMR) the
category matrix are broadcast as plain numpy arrays: no pickled torch module
or other code object ever travels. Each task runs
``recsys_core.serving.score.recommend_top_k`` (GEMM, seen-item masking, exact
top-k, optional MMR) on its Arrow batches and returns one row per
(user_id, rank, item_id, score).

Every task uses ``spark.task.cpus`` torch threads, so local[*] runs one
single-threaded task per core instead of oversubscribing the cores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

OUTPUT_SCHEMA = "user_id string, rank int, item_id string, score float"
_ARROW_OUTPUT = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())])


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


def spark_top_k(
    spark,
    user_ids: list[str],
    user_vectors: np.ndarray,
    item_ids: list[str],
    item_matrix: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    *,
    batch_users: int = 1024,
    mmr_lambda: float | None = None,
    categories: np.ndarray | None = None,
    pool_factor: int = 3,
    users_per_task: int | None = None,
) -> pa.Table:
    """Top-k rows (user_id, rank, item_id, score) for every user, scored by Spark tasks, sorted by user and rank."""
    if k > len(item_ids):
        raise ValueError(f"K={k} is larger than the catalogue ({len(item_ids)} items)")
    if len(user_ids) == 0:
        return _ARROW_OUTPUT.empty_table()
    sc = spark.sparkContext
    threads = int(sc.getConf().get("spark.task.cpus", "1"))
    users_per_task = users_per_task or max(1, -(-len(user_ids) // (2 * sc.defaultParallelism)))
    users_per_task = min(users_per_task, 50_000)
    matrix = np.ascontiguousarray(item_matrix, dtype=np.float32)
    b_items = sc.broadcast(matrix)
    b_ids = sc.broadcast(np.asarray(item_ids, dtype=object))
    b_cats = sc.broadcast(np.asarray(categories, dtype=bool)) if categories is not None else None
    options: dict[str, Any] = {"batch_users": batch_users, "mmr_lambda": mmr_lambda, "pool_factor": pool_factor}

    def score_partition(batches):
        import torch

        torch.set_num_threads(threads)
        ids = pa.array(b_ids.value, pa.string())
        cats = b_cats.value if b_cats is not None else None
        for batch in batches:
            yield score_arrow_batch(batch, b_items.value, ids, k, categories=cats, **options)

    inputs = user_batch_table(user_ids, user_vectors, exclude)
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    # createDataFrame(arrow) makes one partition per batch of this size: that sets the task size.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(users_per_task))
    try:
        frame = spark.createDataFrame(inputs)
        rows = frame.mapInArrow(score_partition, OUTPUT_SCHEMA).toArrow()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
        for broadcast in (b_items, b_ids, b_cats):
            if broadcast is not None:
                broadcast.unpersist()
    rows = rows.cast(_ARROW_OUTPUT)
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


# Executors write the night ---------------------------------------------------------------------
#
# The driver writes the scoring inputs (one Parquet file per digest bucket of
# users) to the shared file system; every Spark task reads one whole file, scores
# its users and writes their rows to one output file, so each user's K rows sit
# in one file and no row comes back to the driver. A second pass reads each
# output file whole and returns only its bucket, row count and digest.

_SCORED = "user_id string, rank int, item_id string, score float, source string"
_ARROW_SCORED = pa.schema([*_ARROW_OUTPUT, ("source", pa.string())])
# Every non-empty file a partition of its own, never split (see recsys_core.features.ingest).
WHOLE_FILES = {"spark.sql.files.maxPartitionBytes": str(1 << 40), "spark.sql.files.openCostInBytes": str(1 << 40)}


def write_score_inputs(
    fs, folder: str, user_ids: list[str], user_vectors: np.ndarray, use_model: np.ndarray, exclude: sp.csr_matrix
) -> int:
    """One Parquet file per digest bucket under ``folder``: user_id, vector (null: fallback user), seen; returns files written."""
    import pyarrow.parquet as pq

    from recsys_core.serving.output import digest_buckets

    n = len(user_ids)
    dim = user_vectors.shape[1]
    full = np.zeros((n, dim), dtype=np.float32)
    full[use_model] = user_vectors
    table = user_batch_table(user_ids, full, exclude)
    vectors = table["vector"].combine_chunks()
    vectors = pa.ListArray.from_arrays(vectors.offsets, vectors.values, mask=pa.array(~np.asarray(use_model, bool)))
    table = table.set_column(1, "vector", vectors)
    buckets = digest_buckets(table["user_id"])
    fs.create_dir(folder, recursive=True)
    written = 0
    for b in np.unique(buckets):
        rows = np.flatnonzero(buckets == b)
        with fs.open_output_stream(f"{folder}/bucket-{int(b):02d}.parquet") as out:
            pq.write_table(table.take(pa.array(rows)), out)
        written += 1
    return written


def score_mixed_batch(
    batch: pa.RecordBatch, item_matrix: np.ndarray, item_ids: pa.Array, k: int, trending: np.ndarray, **options
) -> pa.RecordBatch:
    """Score a batch of ``write_score_inputs`` rows: users with a vector by the model, the others by ``trending``."""
    import torch

    from recsys_core.serving.score import score_top_k
    from recsys_core.sparse import exclusion_from_lists

    model = pc.is_valid(batch.column("vector"))
    out = []
    modelled = batch.filter(model)
    if modelled.num_rows:
        scored = score_arrow_batch(modelled, item_matrix, item_ids, k, **options)
        out.append(scored.append_column("source", pa.array(["model"] * scored.num_rows, pa.string())))
    fallback = batch.filter(pc.invert(model))
    n = fallback.num_rows
    if n:
        seen = fallback.column("seen")
        exclude = exclusion_from_lists(
            seen.offsets.to_numpy(),
            seen.values.to_numpy(zero_copy_only=False)[seen.offsets[0].as_py() : seen.offsets[-1].as_py()],
            item_matrix.shape[0],
        )
        items, scores = score_top_k(torch.ones(n, 1), torch.as_tensor(trending).unsqueeze(1), k, exclude=exclude)
        out.append(
            pa.RecordBatch.from_arrays(
                [
                    pc.take(fallback.column("user_id"), pa.array(np.repeat(np.arange(n), k))),
                    pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
                    pc.take(item_ids, pa.array(np.asarray(items).ravel())),
                    pa.array(np.asarray(scores, dtype=np.float32).ravel()),
                    pa.array(["fallback"] * (n * k), pa.string()),
                ],
                schema=_ARROW_SCORED,
            )
        )
    if not out:
        return pa.RecordBatch.from_pylist([], schema=_ARROW_SCORED)
    return pa.concat_batches(out) if len(out) > 1 else out[0]


def spark_write_top_k(
    spark,
    inputs_uri: str,
    output_uri: str,
    item_ids: list[str],
    item_matrix: np.ndarray,
    k: int,
    trending: np.ndarray,
    contract,
    constants: dict[str, Any],
    *,
    batch_users: int = 1024,
    mmr_lambda: float | None = None,
    categories: np.ndarray | None = None,
    pool_factor: int = 3,
) -> dict[int, tuple[int, str]]:
    """Score the users of ``inputs_uri`` in Spark tasks and write the night to ``output_uri``.

    Returns each digest bucket's (rows, bucket_digest), read back from the written files.

    The rows take ``contract``'s columns in order: the scored ones, ``constants``
    (model name, version, generated_at), and null for any other (nullable) column.
    The item matrix, ids, trending scores and categories are broadcast variables.
    """
    from pyspark.sql import functions as F

    from recsys_core.contracts import conform, spark_schema
    from recsys_core.serving.output import bucket_digest, digest_buckets

    if k > len(item_ids):
        raise ValueError(f"K={k} is larger than the catalogue ({len(item_ids)} items)")
    sc = spark.sparkContext
    threads = int(sc.getConf().get("spark.task.cpus", "1"))
    b_items = sc.broadcast(np.ascontiguousarray(item_matrix, dtype=np.float32))
    b_ids = sc.broadcast(np.asarray(item_ids, dtype=object))
    b_trending = sc.broadcast(np.asarray(trending, dtype=np.float32))
    b_cats = sc.broadcast(np.asarray(categories, dtype=bool)) if categories is not None else None
    options: dict[str, Any] = {"batch_users": batch_users, "mmr_lambda": mmr_lambda, "pool_factor": pool_factor}

    def score_partition(batches):
        import torch

        torch.set_num_threads(threads)
        ids = pa.array(b_ids.value, pa.string())
        cats = b_cats.value if b_cats is not None else None
        for batch in batches:
            yield score_mixed_batch(batch, b_items.value, ids, k, b_trending.value, categories=cats, **options)

    def digest_partition(batches):
        batches = list(batches)
        if not batches or not sum(b.num_rows for b in batches):
            return
        table = conform(pa.Table.from_batches(batches), contract)  # the contract's Arrow types, as the local engine's
        buckets = np.unique(digest_buckets(table["user_id"]))
        if len(buckets) != 1:
            raise ValueError(f"an output file holds users of digest buckets {buckets.tolist()}; expected one")
        yield pa.RecordBatch.from_pylist(
            [{"bucket": int(buckets[0]), "rows": table.num_rows, "digest": bucket_digest(table)}],
            schema=pa.schema([("bucket", pa.int32()), ("rows", pa.int64()), ("digest", pa.string())]),
        )

    schema = spark_schema(contract)
    previous = {key: spark.conf.get(key, None) for key in WHOLE_FILES}
    for key, value in WHOLE_FILES.items():
        spark.conf.set(key, value)
    try:
        scored = spark.read.parquet(inputs_uri).mapInArrow(score_partition, _SCORED)
        columns = []
        for field in schema.fields:
            if field.name in scored.columns:
                column = F.col(field.name)
            elif field.name in constants:
                column = F.lit(constants[field.name])
            elif field.nullable:
                column = F.lit(None)
            else:
                raise ValueError(f"{contract.name}: no value for the required column {field.name}")
            columns.append(column.cast(field.dataType).alias(field.name))
        scored.select(*columns).sortWithinPartitions("user_id", "rank").write.mode("overwrite").parquet(output_uri)
        digests = (
            spark.read.parquet(output_uri)
            .select(*contract.columns)
            .mapInArrow(digest_partition, "bucket int, rows long, digest string")
            .collect()
        )
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
        for broadcast in (b_items, b_ids, b_trending, b_cats):
            if broadcast is not None:
                broadcast.unpersist()
    parts: dict[int, tuple[int, str]] = {}
    for row in digests:
        if row["bucket"] in parts:
            raise ValueError(f"digest bucket {row['bucket']} is spread over several output files")
        parts[row["bucket"]] = (row["rows"], row["digest"])
    return parts
