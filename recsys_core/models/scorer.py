"""The model's score of users over a catalogue: the one place it is computed from model outputs.

    score[u, i] = h_u · e_i + Σ_w weight_w(recency_u) · log1p(pop_w[i] at u's prediction time)

``h_u`` is user row u's state (``SeqRec.last_hidden``: the transformer's last hidden state, then
the item-item term's user side, see ``models.item_item``), ``e_i`` the item's output vector (id
embedding + projected content, then the item-item term's item side), and the trend prior's weights
depend on the user's recency when the model learned them per recency bucket (``SeqRec.trend_weight``).

Training validation, offline evaluation, calibration, champion re-scoring, the nightly job and
the MLflow model all score through a ``Scorer``. The nightly job ranks with one matrix product;
``user_vectors`` and ``item_matrix`` give the same score in that form ([h, w] · [e, trend]).

A served item adjustment (``models.adjustment``) turns every item's score into
``score * scale_i + offset_i``; in the matrix form the item side is scaled and the offset is one
more column, against a constant 1 on the user side ([h, w, 1] · [e·s, trend·s, offset]).
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
    ``item_affine``: the served item adjustment as (scale [m], offset [m]); None: the raw score.
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
        item_affine: tuple[torch.Tensor, torch.Tensor] | None = None,
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
        self.item_affine = item_affine

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
            empty = torch.zeros(0, self.model.state_width, device=self.device)
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
        return self._adjusted(self.model.score_items(hidden, self.item_vectors, self.user_trend(rows), recency))

    def _adjusted(self, scores: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` of the catalogue (or of its ``columns``) with the item adjustment applied."""
        if self.item_affine is None:
            return scores
        scale, offset = (part.to(scores.device) for part in self.item_affine)
        if columns is not None:
            scale, offset = scale[columns], offset[columns]
        return scores * scale + offset

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
        if trend is not None:
            if trend.dim() == 2:
                picked = trend[columns]
            else:
                picked = torch.gather(trend, 1, columns.unsqueeze(-1).expand(-1, -1, trend.shape[-1]))
            score = score + self.model.trend_bias(picked, recency)
        return self._adjusted(score, columns)

    def with_inputs(self, inputs: ModelInputs, trend_rows: torch.Tensor | None = None) -> Scorer:
        """The same model, catalogue and trend prior over other user rows (``trend_rows``: each new
        row's popularity snapshot, needed when the trend table holds several)."""
        return Scorer(
            self.model,
            inputs,
            self.item_vectors,
            self.trend,
            trend_rows,
            batch=self.batch,
            device=self.device,
            item_affine=self.item_affine,
        )

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """[n, m] float32 scores (``evaluation.protocols.ScoreFn``)."""
        return self.scores(rows).float().cpu().numpy()

    # The matrix-product form of the same score, for the nightly top-K engines ------------------
    @torch.no_grad()
    def user_vectors(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[n, d + k (+ 1)]: each user's hidden state, then their weights of the k trend windows
        (then a 1 for the item adjustment's offset)."""
        hidden, recency = self.hidden(rows)
        parts = [hidden]
        weight = self.model.trend_weight(recency)
        if weight is not None and self.trend is not None:
            parts.append(weight.expand(len(hidden), -1))
        if self.item_affine is not None:
            parts.append(torch.ones(len(hidden), 1, device=hidden.device))
        return torch.cat(parts, dim=1) if len(parts) > 1 else hidden

    def item_matrix(self) -> torch.Tensor:
        """[m, d + k (+ 1)]: each item's representation, then its log1p popularity in the k trend
        windows (scaled, then the offset, with an item adjustment), so that
        ``user_vectors(rows) @ item_matrix().T`` equals ``scores(rows)``."""
        matrix = self.item_vectors
        if self.trend is not None and self.model.trend_weights is not None:
            if self.trend.dim() != 2:
                raise ValueError("the matrix-product form needs one popularity snapshot for every user")
            matrix = torch.cat([matrix, self.trend.to(matrix.dtype)], dim=1)
        if self.item_affine is None:
            return matrix
        scale, offset = (part.to(matrix.device, matrix.dtype) for part in self.item_affine)
        return torch.cat([matrix * scale[:, None], offset[:, None]], dim=1)
