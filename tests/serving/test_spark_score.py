"""recsys_core.serving.spark_score: the Arrow batch kernel (pure) and the Spark engine against the local one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from recsys_core.serving.score import recommend_top_k, score_top_k
from recsys_core.serving.spark_score import rows_to_matrices, score_arrow_batch, spark_top_k, user_batch_table, write_top_k

N_USERS, N_ITEMS, DIM, K = 23, 40, 6, 5


def case(seed=4, n_users=N_USERS, n_items=N_ITEMS):
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, DIM)).astype(np.float32)
    items = rng.standard_normal((n_items, DIM)).astype(np.float32)
    seen = sp.csr_matrix((rng.random((n_users, n_items)) < 0.3).astype(np.float32))
    user_ids = [f"u{i:03d}" for i in range(n_users)]
    item_ids = [f"i{j:03d}" for j in range(n_items)]
    return user_ids, users, item_ids, items, seen


def test_batch_table_round_trips():
    user_ids, users, _, _, seen = case()
    table = user_batch_table(user_ids, users, seen)
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    assert table.schema.field("seen").type == pa.list_(pa.int32())
    assert table["user_id"].to_pylist() == user_ids
    np.testing.assert_array_equal(np.array(table["vector"].to_pylist(), dtype=np.float32), users)
    assert table["seen"].to_pylist() == [sorted(seen[i].indices.tolist()) for i in range(len(user_ids))]


@pytest.mark.parametrize("mmr_lambda", [None, 0.4])
def test_arrow_batch_equals_the_local_engine(mmr_lambda):
    user_ids, users, item_ids, items, seen = case()
    cats = np.random.default_rng(0).random((N_ITEMS, 3)) < 0.5
    table = user_batch_table(user_ids, users, seen)
    rows = pa.Table.from_batches(
        [
            score_arrow_batch(b, items, pa.array(item_ids), K, mmr_lambda=mmr_lambda, categories=cats, batch_users=4)
            for b in table.to_batches(max_chunksize=7)  # sliced batches: offsets do not start at 0
        ]
    )
    assert rows.column_names == ["user_id", "rank", "item_id", "score"]
    top, scores = rows_to_matrices(rows, user_ids, item_ids, K)
    expected_top, expected_scores = recommend_top_k(
        torch.as_tensor(users), torch.as_tensor(items), K, exclude=seen, mmr_lambda=mmr_lambda, categories=cats
    )
    np.testing.assert_array_equal(top, expected_top)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)


def test_arrow_batch_rejects_wrong_vector_width():
    user_ids, users, item_ids, items, seen = case()
    table = user_batch_table(user_ids, users[:, :-1], seen)
    with pytest.raises(ValueError, match=f"must have {DIM} values"):
        score_arrow_batch(table.to_batches()[0], items, pa.array(item_ids), K)


def test_rows_to_matrices_rejects_incomplete_rows():
    rows = pa.table(
        {
            "user_id": ["a", "a"],
            "rank": pa.array([1, 1], pa.int32()),
            "item_id": ["x", "y"],
            "score": pa.array([1.0, 0.5], pa.float32()),
        }
    )
    with pytest.raises(ValueError, match="duplicate"):
        rows_to_matrices(rows, ["a"], ["x", "y"], 2)
    with pytest.raises(ValueError, match="exactly K"):
        rows_to_matrices(rows, ["a", "b"], ["x", "y"], 2)


@pytest.mark.spark
def test_spark_engine_equals_the_local_engine(spark):
    user_ids, users, item_ids, items, seen = case(seed=9, n_users=301, n_items=3000)  # two-stage selection
    rows = spark_top_k(spark, user_ids, users, item_ids, items, 20, seen, users_per_task=64, batch_users=50)
    assert rows.num_rows == 301 * 20
    top, scores = rows_to_matrices(rows, user_ids, item_ids, 20)
    expected_top, expected_scores = score_top_k(torch.as_tensor(users), torch.as_tensor(items), 20, exclude=seen)
    np.testing.assert_array_equal(top, expected_top)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert rows["user_id"].to_pylist() == sorted(rows["user_id"].to_pylist())


@pytest.mark.spark
def test_spark_engine_with_mmr_and_no_users(spark):
    user_ids, users, item_ids, items, seen = case(seed=1)
    cats = np.random.default_rng(1).random((N_ITEMS, 4)) < 0.3
    rows = spark_top_k(spark, user_ids, users, item_ids, items, K, seen, mmr_lambda=0.5, categories=cats)
    top, scores = rows_to_matrices(rows, user_ids, item_ids, K)
    expected = recommend_top_k(torch.as_tensor(users), torch.as_tensor(items), K, exclude=seen, mmr_lambda=0.5, categories=cats)
    np.testing.assert_array_equal(top, expected[0])
    np.testing.assert_allclose(scores, expected[1], rtol=1e-6, atol=1e-6)
    assert spark_top_k(spark, [], np.zeros((0, DIM), np.float32), item_ids, items, K).num_rows == 0


@pytest.mark.spark
def test_spark_tasks_write_their_own_files_and_a_rerun_replaces_them(spark, tmp_path):
    user_ids, users, item_ids, items, seen = case(seed=3, n_users=50)
    folder = tmp_path / "rows"
    assert write_top_k(spark, user_ids, users, item_ids, items, K, seen, folder=str(folder), users_per_task=16) == 50 * K
    assert sorted(p.name for p in folder.iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]  # staging gone
    first = pq.read_table(folder / "part-00000.parquet")
    assert first["user_id"].to_pylist() == [u for u in user_ids[:16] for _ in range(K)]  # input order, ranks 1..K
    assert first["rank"].to_pylist() == list(range(1, K + 1)) * 16

    write_top_k(spark, user_ids, users, item_ids, items, K, seen, folder=str(folder), users_per_task=30)
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    top, _ = rows_to_matrices(pq.read_table(folder), user_ids, item_ids, K)
    np.testing.assert_array_equal(top, score_top_k(torch.as_tensor(users), torch.as_tensor(items), K, exclude=seen)[0])
