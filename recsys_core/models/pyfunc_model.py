"""MLflow "model from code" for the sequence recommender.

MLflow stores this file instead of a pickle. Loading it builds the model from
the bundle artifact (weights loaded with ``weights_only=True``).

Input: a DataFrame with ``history`` (list of item ids, oldest first) and
optional ``age``, ``gender``, ``occupation``. Output: ``item_ids`` and
``scores``, the top 10 items of the training catalogue not in the history,
scored by the bundle's scorer (the trend prior reads the popularity of the
training date, which the bundle keeps).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa


class SeqRecPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]  # mlflow loads pyfunc lazily
    top_k = 10

    def load_context(self, context):
        from recsys_core.models.bundle import ModelBundle

        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from recsys_core.models.data import Sequences

        prep = self.bundle.prep
        n = len(model_input)
        histories = [
            np.array([prep.item_index[i] for i in (h if h is not None else []) if i in prep.item_index], dtype=np.int64)
            for h in model_input["history"]
        ]
        # Without event times, every gap reads as zero.
        sequences = Sequences([str(i) for i in range(n)], histories, [np.zeros(len(h), dtype=np.int64) for h in histories])
        profiles = pa.table(
            {
                "age": pa.array(model_input.get("age", pd.Series([None] * n)).tolist(), pa.int32()),
                "gender": pa.array(model_input.get("gender", pd.Series([None] * n)).tolist(), pa.string()),
                "occupation": pa.array(model_input.get("occupation", pd.Series([None] * n)).tolist(), pa.string()),
                "user_id": pa.array([str(i) for i in range(n)]),
            }
        )
        _, feats = prep.user_features(profiles)
        # The training catalogue, with the trend prior as of the training date where the bundle kept it.
        scorer = self.bundle.scorer(self.bundle.encode_inputs(sequences, feats))
        scores = scorer(np.arange(n))
        for row, h in enumerate(histories):
            scores[row, h - 1] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.top_k]
        return pd.DataFrame(
            {
                "item_ids": [[prep.item_ids[j] for j in row] for row in top],
                "scores": [scores[r, row].astype(float).tolist() for r, row in enumerate(top)],
            }
        )


mlflow.models.set_model(SeqRecPyfunc())
