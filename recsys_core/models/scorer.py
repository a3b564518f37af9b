"""The model's score of users over a catalogue: the one place it is computed from model outputs.

    score[u, i] = h_u · e_i + Σ_w weight_w(recency_u) · log1p(pop_w[i] at u's prediction time)

``h_u`` is the last hidden state of user row u, ``e_i`` the item's output representation
(id embedding + projected content), and the trend prior's weights depend on the user's recency
when the model learned them per recency bucket (see ``SeqRec.trend_weight``).

Training validation, offline evaluation, calibration, champion re-scoring, the nightly job and
the MLflow model all score through a ``Scorer``. The nightly job ranks with one matrix product;
``user_vectors`` and ``item_matrix`` give the same score in that form ([h, w] · [e, trend]).
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_core.models.inputs import ModelInputs
from recsys_core.models.transformer import SeqRec


class Scorer:
    """User rows → scores over ``m`` catalogue items.

    ``inputs``: the users' model inputs (``models.inputs.encode``), indexed by row;
    ``item_vectors`` [m, d]: the catalogue's output representations;
    ``trend`` [m, k] (one popularity snapshot for every user) or [T, m, k] with ``trend_rows``
    [n_rows] (the snapshot of each user's prediction time); None without a trend prior.
    The model is read at call time, so a calibration applied after this is built counts.
    """

    def __init__(
        self,
        model: SeqRec,
        inputs: ModelInputs,
        item_vectors: torch.Tensor,
        trend: torch.Tensor | None = None,
        trend_rows: torch.Tensor | None = None,
        *,
        batch: int = 1024,
        device: torch.device | str = "cpu",
    ):
        if trend is not None and trend.dim() == 3 and trend_rows is None:
            raise ValueError("a trend table of several snapshots needs trend_rows: the snapshot of each user row")
        self.model = model
        self.inputs = inputs
        self.item_vectors = item_vectors
        self.trend = trend
        self.trend_rows = trend_rows
        self.batch = batch
        self.device = torch.device(device)

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    @torch.no_grad()
    def hidden(self, rows: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The users' last hidden states [n, d] and the recency bucket of their prediction [n]."""
        index = torch.as_tensor(rows)
        states, recency = [], []
        for start in range(0, len(index), self.batch):
            part = self.inputs.rows(index[start : start + self.batch]).to(self.device)
            states.append(self.model.last_hidden(part.items, part.gaps, part.user_feats, part.query_gaps))
            recency.append(part.query_gaps[:, -1])
        if not states:
            empty = torch.zeros(0, self.model.config.d_model, device=self.device)
            return empty, torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.cat(states), torch.cat(recency)

    def user_trend(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """The popularity each user's prediction sees: [m, k] shared, or [n, m, k] per user."""
        if self.trend is None or self.trend.dim() == 2:
            return self.trend
        assert self.trend_rows is not None  # the constructor requires it for a table of several snapshots
        return self.trend[self.trend_rows[torch.as_tensor(rows)].to(self.trend.device)]

    @torch.no_grad()
    def scores(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[n, m] scores of the given user rows, on the scorer's device."""
        hidden, recency = self.hidden(rows)
        return self.model.score_items(hidden, self.item_vectors, self.user_trend(rows), recency)

    @torch.no_grad()
    def scores_of(self, rows: np.ndarray | torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """[n, c] scores of user row i on its own catalogue columns ``columns[i]`` ([n, c]): the same
        score as ``scores(rows)[i, columns[i]]``, without scoring the rest of the catalogue."""
        hidden, recency = self.hidden(rows)
        return self.scores_of_hidden(hidden, recency, rows, columns)

    @torch.no_grad()
    def scores_of_hidden(
        self, hidden: torch.Tensor, recency: torch.Tensor, rows: np.ndarray | torch.Tensor, columns: torch.Tensor
    ) -> torch.Tensor:
        """``scores_of`` for last hidden states [n, d] and recency buckets [n] computed elsewhere (a
        changed history of user row ``rows[i]``, whose popularity snapshot the score takes)."""
        columns = torch.as_tensor(columns, device=hidden.device)
        score = torch.einsum("nd,ncd->nc", hidden, self.item_vectors[columns])
        trend = self.user_trend(rows)
        if trend is None:
            return score
        if trend.dim() == 2:
            picked = trend[columns]
        else:
            picked = torch.gather(trend, 1, columns.unsqueeze(-1).expand(-1, -1, trend.shape[-1]))
        return score + self.model.trend_bias(picked, recency)

    def with_inputs(self, inputs: ModelInputs, trend_rows: torch.Tensor | None = None) -> Scorer:
        """The same model, catalogue and trend prior over other user rows (``trend_rows``: each new
        row's popularity snapshot, needed when the trend table holds several)."""
        return Scorer(self.model, inputs, self.item_vectors, self.trend, trend_rows, batch=self.batch, device=self.device)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """[n, m] float32 scores (``evaluation.protocols.ScoreFn``)."""
        return self.scores(rows).float().cpu().numpy()

    # The matrix-product form of the same score, for the nightly top-K engines ------------------
    @torch.no_grad()
    def user_vectors(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[n, d + k]: each user's hidden state, then their weights of the k trend windows."""
        hidden, recency = self.hidden(rows)
        weight = self.model.trend_weight(recency)
        if weight is None or self.trend is None:
            return hidden
        return torch.cat([hidden, weight.expand(len(hidden), -1)], dim=1)

    def item_matrix(self) -> torch.Tensor:
        """[m, d + k]: each item's representation, then its log1p popularity in the k trend windows,
        so that ``user_vectors(rows) @ item_matrix().T`` equals ``scores(rows)``."""
        if self.trend is None or self.model.trend_weights is None:
            return self.item_vectors
        if self.trend.dim() != 2:
            raise ValueError("the matrix-product form needs one popularity snapshot for every user")
        return torch.cat([self.item_vectors, self.trend], dim=1)
