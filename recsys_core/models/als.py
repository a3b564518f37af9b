"""Implicit-feedback ALS baseline, trained by Spark MLlib (the same engine scales it out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys_core.config import Settings


@dataclass
class ALSFactors:
    user_factors: np.ndarray  # [n_users, rank]
    item_factors: np.ndarray  # [n_items, rank]

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.user_factors[rows] @ self.item_factors.T


def fit_als(settings: Settings, history: sp.csr_matrix, spark) -> ALSFactors:
    """Fit ALS (implicit preferences) on a binary users x items matrix; users/items without factors score 0.

    ``spark`` is the caller's session: the model starts no Spark of its own.
    """
    import pandas as pd
    from pyspark.ml.recommendation import ALS

    coo = history.tocoo()
    # Through Arrow from pandas: no Python worker processes, one batch to the JVM.
    pairs = pd.DataFrame(
        {"user": coo.row.astype("int32"), "item": coo.col.astype("int32"), "rating": np.ones(coo.nnz, dtype="float32")}
    )
    frame = spark.createDataFrame(pairs)
    train = settings.train
    model = ALS(
        rank=train.als_rank,
        maxIter=train.als_iterations,
        regParam=train.als_reg,
        alpha=train.als_alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        seed=train.seed,
        coldStartStrategy="drop",
    ).fit(frame)
    users = np.zeros((history.shape[0], train.als_rank), dtype=np.float32)
    items = np.zeros((history.shape[1], train.als_rank), dtype=np.float32)
    for row in model.userFactors.collect():
        users[row["id"]] = row["features"]
    for row in model.itemFactors.collect():
        items[row["id"]] = row["features"]
    return ALSFactors(users, items)
