"""A SASRec-style transformer sequence recommender with content, user and time features.

- Causal self-attention over the user's item history; every position predicts
  the next item, so one pass trains on all positions of a sequence.
- Item representations = id embedding + projection of content (genres and the
  text embedding). The same matrix scores the output, so an item with no
  interactions still has a meaningful score through its content.
- User features (demographics) are added to every position; a user with no
  history is a sequence of padding plus their features, scored at the last slot.
- Time context: the gap before each event, log-bucketed, is embedded; so is
  recency, the time from each event to the prediction made there (the next
  event in training, "now" in serving).
- A trend prior: learned weights of the items' log recent popularity, per
  recency bucket, added to every score (calibrated out of sample afterwards,
  see evaluation.calibration).
- Loss: full softmax cross-entropy over the catalogue (SASRec+/gSASRec show it
  beats one sampled negative per position), or sampled softmax with logQ
  correction for catalogues too large for a full softmax.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.config import ModelSettings

GAP_BUCKETS = 24


@dataclass(frozen=True)
class SeqRecConfig:
    """The model's shape. Built by ``from_settings`` (the hyper-parameters of ``ModelSettings``, the one
    set of defaults, and what the data dictates), or read back by ``from_dict``: no defaults of its own."""

    n_items: int  # catalogue size; index 0 is padding
    max_len: int
    d_model: int
    n_heads: int
    n_layers: int
    dropout: float
    content_dim: int  # width of the item content matrix (0 = no content)
    user_cardinalities: tuple[int, ...]  # one categorical user feature per entry
    use_time: bool
    loss: str  # "full" or "sampled"
    n_negatives: int
    trend_windows: tuple[int, ...]  # popularity windows (days) of the learned trend prior; () = off
    # The time since the user's last event at prediction time (recency), embedded, and scaling the
    # trend prior: a user back after weeks away follows what is trending more than one mid-session.
    use_query_gap: bool
    future_horizon_days: float  # > 0: also learn items taken up within this horizon (see forward)
    future_samples: int
    future_weight: float
    # Rank of the item-item term's EASE part (see SeqRec.with_item_item): 0 = none.
    item_item_rank: int = 0
    # Whether the term also has a transition part (models.item_item.transition_factors): n_items columns.
    item_item_transitions: bool = False

    @classmethod
    def from_settings(
        cls,
        settings: ModelSettings,
        n_items: int,
        content_dim: int = 0,
        user_cardinalities: tuple[int, ...] = (),
        trend_windows: tuple[int, ...] = (),
    ) -> SeqRecConfig:
        """The config of a model of ``settings`` on data with this catalogue, content width, user
        features and popularity windows (each left out where the settings turn it off)."""
        return cls(
            n_items=n_items,
            max_len=settings.max_len,
            d_model=settings.d_model,
            n_heads=settings.n_heads,
            n_layers=settings.n_layers,
            dropout=settings.dropout,
            content_dim=content_dim if settings.use_content else 0,
            user_cardinalities=tuple(user_cardinalities) if settings.use_user_features else (),
            use_time=settings.use_time,
            loss=settings.loss,
            n_negatives=settings.n_negatives,
            trend_windows=tuple(trend_windows) if settings.use_trend else (),
            use_query_gap=settings.use_query_gap and settings.use_time,
            future_horizon_days=settings.future_horizon_days,
            future_samples=settings.future_samples,
            future_weight=settings.future_weight,
            item_item_rank=min(settings.item_item_rank, n_items) if n_items <= settings.item_item_max_items else 0,
            item_item_transitions=settings.item_item_transitions and n_items <= settings.item_item_max_items,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SeqRecConfig:
        data = dict(data)
        data["user_cardinalities"] = tuple(data.get("user_cardinalities", ()))
        data["trend_windows"] = tuple(data.get("trend_windows", ()))
        data.setdefault("item_item_rank", 0)  # bundles saved before the item-item term
        data.setdefault("item_item_transitions", False)  # or before its transition part
        return cls(**data)

    @property
    def item_item_width(self) -> int:
        """Columns the item-item term adds to a user's state and an item's output vector."""
        return self.item_item_rank + (self.n_items if self.item_item_transitions else 0)


def gap_buckets(gaps_seconds: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
    """Log2-bucketed gaps in minutes (1..GAP_BUCKETS-1); bucket 0 marks padding positions of ``items``."""
    minutes = gaps_seconds.clamp(min=0).float() / 60.0
    buckets = (1 + torch.log2(1 + minutes).floor().long()).clamp(max=GAP_BUCKETS - 1)
    return buckets if items is None else buckets * (items > 0)


class SeqRec(nn.Module):
    causal_mask: torch.Tensor  # buffers, registered in __init__
    item_content: torch.Tensor
    item_item_in: torch.Tensor | None
    item_item_out: torch.Tensor | None
    item_item_weight: torch.Tensor | None
    item_item_decay: torch.Tensor | None

    def __init__(self, config: SeqRecConfig, item_content: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        d = config.d_model
        self.item_embedding = nn.Embedding(config.n_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, d)
        # Content is data, not a parameter: it is saved with the model but not trained.
        content = item_content if item_content is not None else torch.zeros(config.n_items + 1, config.content_dim)
        self.register_buffer("item_content", content.float(), persistent=True)
        self.content_projection = nn.Linear(config.content_dim, d, bias=False) if config.content_dim else None
        self.user_embeddings = nn.ModuleList(nn.Embedding(c, d) for c in config.user_cardinalities)
        self.gap_embedding = nn.Embedding(GAP_BUCKETS, d) if config.use_time else None
        # Weights of log1p(recent popularity) per window, added to every item's score.
        self.trend_weights = nn.Parameter(torch.zeros(len(config.trend_windows))) if config.trend_windows else None
        self.query_gap_embedding = nn.Embedding(GAP_BUCKETS, d) if config.use_query_gap else None
        # The item-item term: data fitted after training (models.item_item), not trained. Its weight
        # is 0 until then, so training and its validation see the transformer alone.
        width = config.item_item_width
        self.register_buffer("item_item_in", torch.zeros(config.n_items + 1, width) if width else None)
        # Only EASE's item side is stored: the transitions' is the identity (item_item_side).
        self.register_buffer("item_item_out", torch.zeros(config.n_items + 1, config.item_item_rank) if width else None)
        self.register_buffer("item_item_weight", torch.zeros(()) if width else None)
        self.register_buffer("item_item_decay", torch.ones(()) if width else None)
        # Per recency bucket, an offset to the trend weights (bucket 0: no event yet).
        self.trend_by_gap = (
            nn.Parameter(torch.zeros(GAP_BUCKETS, len(config.trend_windows)))
            if config.use_query_gap and config.trend_windows
            else None
        )
        layer = nn.TransformerEncoderLayer(
            d,
            config.n_heads,
            dim_feedforward=d * 4,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.input_dropout = nn.Dropout(config.dropout)
        self.final_norm = nn.LayerNorm(d)
        self.register_buffer(
            "causal_mask", torch.triu(torch.ones(config.max_len, config.max_len, dtype=torch.bool), 1), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        for user_emb in self.user_embeddings:
            nn.init.normal_(cast(nn.Embedding, user_emb).weight, std=0.02)
        for emb in (self.gap_embedding, self.query_gap_embedding):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)

    def item_matrix(self) -> torch.Tensor:
        """[n_items + 1, d] representations used both as inputs and as output weights.

        Without gradients the sum is kept until a tensor it reads changes (their version counters
        move on every in-place update: optimizer steps, load_state_dict): inference embeds many
        small batches, and re-projecting the whole catalogue's content for each one took a tenth of
        a large night's reasons."""
        if self.content_projection is None:
            return self.item_embedding.weight
        if torch.is_grad_enabled():
            return self.item_embedding.weight + self.content_projection(self.item_content)
        sources = (self.item_embedding.weight, self.content_projection.weight, self.item_content)
        key = tuple((id(t), t._version, t.device) for t in sources)  # noqa: SLF001  # torch has no public version counter
        cached = self.__dict__.get("_item_matrix_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.item_embedding.weight + self.content_projection(self.item_content))
            self.__dict__["_item_matrix_cache"] = cached
        return cached[1]

    @property
    def state_width(self) -> int:
        """Width of a user's state (``last_hidden``) and of an item's ``output_vectors`` row."""
        return self.config.d_model + self.config.item_item_width

    def output_vectors(self) -> torch.Tensor:
        """[n_items + 1, state_width]: ``item_matrix`` with the item-item term's item side, what a
        user's ``last_hidden`` state scores against."""
        if self.item_item_out is None:
            return self.item_matrix()
        everything = torch.arange(self.config.n_items + 1, device=self.item_item_out.device)
        return torch.cat([self.item_matrix(), self.item_item_side(everything)], dim=1)

    def item_item_side(self, index: torch.Tensor) -> torch.Tensor:
        """[len(index), item_item_width]: the item-item term's item side of the 1-based items ``index``
        (0, the padding item: zero): EASE's factors, then, with the transition part, the item's one-hot
        row (that part is kept whole, so its item side is the identity)."""
        assert self.item_item_out is not None, "this model has no item-item term"
        ease = self.item_item_out[index]
        if not self.config.item_item_transitions:
            return ease
        one_hot = F.one_hot(index, self.config.n_items + 1)[:, 1:].to(ease.dtype)
        return torch.cat([ease, one_hot], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "item_item_out"
        saved = state_dict.get(key)
        if (
            saved is not None
            and self.item_item_out is not None
            and saved.shape[1] == self.config.item_item_width != self.item_item_out.shape[1]
        ):
            # Saved when the transitions' identity item side was stored beside EASE's: it is built now.
            state_dict[key] = saved[:, : self.item_item_out.shape[1]]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def with_item_item(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The transformer's last hidden states [B, d] of histories ``items`` [B, L] (left-padded, the
        newest last) followed by the user side of the item-item term: the sum of the history's
        ``item_item_in`` rows, the k-th newest counted ``item_item_decay^k`` (padding's row is zero),
        so that ``state · output_vectors`` adds ``weight · Σ_j decay^k_j · P_j · Q_i``."""
        if self.item_item_in is None or self.item_item_weight is None or self.item_item_decay is None:
            return hidden
        age = torch.arange(items.shape[1] - 1, -1, -1, device=items.device, dtype=self.item_item_in.dtype)
        decay = torch.pow(self.item_item_decay, age).expand(items.shape)
        # The decayed history as a [B, n_items + 1] row times the factors: gathering the factors' rows
        # instead would hold [B, L, width] at once, and the transition part is n_items wide.
        decayed = torch.zeros(items.shape[0], self.item_item_in.shape[0], dtype=decay.dtype, device=items.device)
        history = decayed.scatter_add_(1, items, decay) @ self.item_item_in * self.item_item_weight
        return torch.cat([hidden, history.to(hidden.dtype)], dim=1)

    @torch.no_grad()
    def set_item_item(self, item_in: torch.Tensor, item_out: torch.Tensor, weight: float, decay: float = 1.0) -> None:
        """Install the fitted item-item term: the history side ``item_in`` [n_items + 1, item_item_width] and EASE's
        item side ``item_out`` [n_items + 1, item_item_rank] (row 0 zero in each), its weight and the decay of
        the history's events."""
        if (
            self.item_item_in is None
            or self.item_item_out is None
            or self.item_item_weight is None
            or self.item_item_decay is None
        ):
            raise ValueError("this model has no item-item term (train.model.item_item_rank is 0 and item_item_transitions off)")
        self.item_item_in.copy_(item_in)
        self.item_item_out.copy_(item_out)
        self.item_item_weight.fill_(weight)
        self.item_item_decay.fill_(decay)

    def embed(
        self,
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        query_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """items [B, L] (left-padded with 0) → the encoder's input [B, L, d]: item, position, time and
        user embeddings summed (``encode`` explains the inputs)."""
        _, length = items.shape
        table = self.item_matrix()
        x = table[items] * math.sqrt(self.config.d_model)
        x = x + self.position_embedding.weight[-length:].unsqueeze(0)
        if self.gap_embedding is not None and gaps is not None:
            x = x + self.gap_embedding(gaps)
        if self.query_gap_embedding is not None and query_gaps is not None:
            x = x + self.query_gap_embedding(query_gaps)
        if user_feats is not None and len(self.user_embeddings):
            user = sum(emb(user_feats[:, i]) for i, emb in enumerate(self.user_embeddings))
            x = x + user.unsqueeze(1)
        return self.input_dropout(x)

    def encode(
        self,
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        query_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """items [B, L] (left-padded with 0) → hidden states [B, L, d].

        ``query_gaps`` [B, L]: at each position, the bucketed time from that event to the
        moment of the prediction made there (models.data.query_gaps_of, bucketed; 0 = no event).
        """
        x = self.embed(items, gaps, user_feats, query_gaps)
        length = x.shape[1]
        # No key-padding mask: with left padding and a causal mask, a padded
        # query could otherwise see no key at all (NaN rows). Padded keys hold
        # only position/user signal and sit before every real event.
        mask = self.causal_mask[:length, :length]
        h = self.encoder(x, mask=mask, is_causal=True)
        return self.final_norm(h)

    # A pass over the changed end of a sequence whose beginning was encoded before -----------------
    # Causal attention makes position i depend only on positions <= i, so sequences that share their
    # first s positions (items and every per-position input) share every layer's keys and values
    # there: a pass over the other L - s positions, attending to the saved ones, gives the same last
    # hidden state as encoding the whole sequence. Leave-one-out attribution (models.attribution)
    # uses it. Inference only (no dropout).
    @torch.no_grad()
    def layer_states(
        self,
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        query_gaps: torch.Tensor | None = None,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Every layer's attention keys and values [B, L, d] (one pair per layer), and ``last_hidden`` [B, state_width]."""
        x, saved = self.embed(items, gaps, user_feats, query_gaps), []
        for layer in self.encoder.layers:
            x, keys_values = self._layer_after(cast(nn.TransformerEncoderLayer, layer), x, None)
            saved.append(keys_values)
        return saved, self.with_item_item(self.final_norm(x[:, -1]), items)

    @torch.no_grad()
    def last_hidden_after(
        self,
        prefix: list[tuple[torch.Tensor, torch.Tensor]],
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        query_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``last_hidden`` of sequences [B, L] whose first s positions have the layers' keys and values
        ``prefix`` (``layer_states``' pairs cut to [B, s, d]), encoding only positions s..L-1."""
        start = prefix[0][0].shape[1]
        # Right-aligned positions: the last L - s inputs alone embed as they do in the whole sequence.
        x = self.embed(
            items[:, start:],
            None if gaps is None else gaps[:, start:],
            user_feats,
            None if query_gaps is None else query_gaps[:, start:],
        )
        for layer, saved in zip(self.encoder.layers, prefix):
            x, _ = self._layer_after(cast(nn.TransformerEncoderLayer, layer), x, saved)
        return self.with_item_item(self.final_norm(x[:, -1]), items)

    def _layer_after(
        self, layer: nn.TransformerEncoderLayer, x: torch.Tensor, saved: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One pre-norm encoder layer (``nn.TransformerEncoderLayer``, norm_first) over positions ``x``
        [B, q, d] that follow the positions of the ``saved`` keys and values; returns the layer's
        output and the keys and values of all positions."""
        attention = layer.self_attn
        batch, queries, width = x.shape
        query, key, value = F.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        if saved is not None:
            key, value = torch.cat([saved[0], key], dim=1), torch.cat([saved[1], value], dim=1)
        length, heads = key.shape[1], attention.num_heads

        def by_head(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2)

        allowed = ~self.causal_mask[length - queries : length, :length]
        attended = F.scaled_dot_product_attention(by_head(query), by_head(key), by_head(value), attn_mask=allowed)
        x = x + layer.dropout1(attention.out_proj(attended.transpose(1, 2).reshape(batch, queries, width)))
        feed = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
        return x + layer.dropout2(feed), (key, value)

    def scores(
        self, hidden: torch.Tensor, trend: torch.Tensor | None = None, query_gaps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``last_hidden`` states [..., state_width] → scores over the catalogue [..., n_items + 1]
        (index 0 is padding).

        ``trend`` [..., n_items + 1, len(trend_windows)]: the items' log1p recent popularity at
        the time of each prediction (see models.data.TrendTable); ``query_gaps`` [...]: the
        recency bucket of each prediction.
        """
        return self.score_items(hidden, self.output_vectors(), trend, query_gaps)

    def score_items(
        self, hidden: torch.Tensor, item_vectors: torch.Tensor, trend: torch.Tensor | None, query_gaps: torch.Tensor | None
    ) -> torch.Tensor:
        """The model's score (models.scorer explains it): hidden [..., d] against ``item_vectors`` [m, d],
        plus the trend prior of ``trend`` [..., m, k] (or [m, k] shared by every prediction)."""
        return hidden @ item_vectors.T + self.trend_bias(trend, query_gaps)

    def trend_weight(self, query_gaps: torch.Tensor | None = None) -> torch.Tensor | None:
        """Weights of the trend windows: [k], or [..., k] per prediction when recency is used."""
        if self.trend_weights is None:
            return None
        if self.trend_by_gap is None or query_gaps is None:
            return self.trend_weights
        return self.trend_weights + self.trend_by_gap[query_gaps]

    @torch.no_grad()
    def shift_trend_weight(self, buckets: torch.Tensor, delta: float, window: int = -1) -> None:
        """Add ``delta`` to the weight of trend window ``window`` for predictions in recency ``buckets``
        (the out-of-sample calibration, see evaluation.calibration)."""
        if self.trend_by_gap is None:
            raise ValueError("shifting the trend weight per recency bucket needs trend_windows and use_query_gap")
        self.trend_by_gap[buckets, window] += delta

    def trend_bias(self, trend: torch.Tensor | None, query_gaps: torch.Tensor | None = None) -> torch.Tensor | float:
        weight = self.trend_weight(query_gaps)
        if weight is None or trend is None:
            return 0.0
        if weight.dim() == 1:
            return trend @ weight
        # One weight vector per prediction; a sum over the few windows is cheaper than a batched matmul.
        return sum(trend[..., j] * weight[..., j, None] for j in range(weight.shape[-1]))

    def forward(
        self,
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        targets: torch.Tensor,
        trend_table: torch.Tensor | None = None,
        trend_rows: torch.Tensor | None = None,
        item_log_prob: torch.Tensor | None = None,
        future: torch.Tensor | None = None,
        query_gaps: torch.Tensor | None = None,
        step_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item loss over every non-padded position (targets 0 are ignored).

        ``trend_table`` [days, n_items + 1, k] and ``trend_rows`` [B, L] give each position
        the items' recent popularity at its time. ``future`` [B, L, S] holds items the user
        takes up within the horizon after each position; their mean loss is added with
        weight ``future_weight`` (a dense "what next, over the coming days" objective, as
        in PinnerFormer), which suits a list that is read for a day or more. ``step_weights``
        [B, L] weigh the positions (e.g. by recency); by default all count the same.
        """
        hidden = self.encode(items, gaps, user_feats, query_gaps)
        valid = targets > 0
        h = hidden[valid]
        query = query_gaps[valid] if query_gaps is not None else None
        labels = targets[valid].unsqueeze(1)
        weights = torch.ones(1, device=h.device)
        if future is not None and self.config.future_weight > 0:
            labels = torch.cat([labels, future[valid]], dim=1)
            share = self.config.future_weight / future.shape[-1]
            weights = torch.cat([weights, torch.full((future.shape[-1],), share, device=h.device)])
        weights = weights / weights.sum()
        rows = trend_rows[valid] if trend_table is not None and trend_rows is not None else None
        if self.config.loss == "full":
            trend = trend_table[rows] if trend_table is not None and rows is not None else None
            # The item-item term's weight is 0 while training: the transformer alone is trained.
            logits = self.score_items(h, self.item_matrix(), trend, query).float()
            logits[:, 0] = float("-inf")
            nll = -torch.log_softmax(logits, dim=-1).gather(1, labels)
        else:
            table = self.item_matrix()
            if item_log_prob is None:
                item_log_prob = torch.full((self.config.n_items + 1,), -math.log(self.config.n_items), device=h.device)
                item_log_prob[0] = float("-inf")
            nll = torch.stack(
                [
                    self._sampled_nll(h, labels[:, j], table, item_log_prob, trend_table, rows, query)
                    for j in range(labels.shape[1])
                ],
                1,
            )
        per_step = (nll * weights).sum(1)
        if step_weights is None:
            return per_step.mean()
        w = step_weights[valid].to(per_step.dtype)
        return (per_step * w).sum() / w.sum().clamp(min=1e-12)

    def _sampled_nll(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        table: torch.Tensor,
        item_log_prob: torch.Tensor,
        trend_table: torch.Tensor | None,
        trend_rows: torch.Tensor | None,
        query_gaps: torch.Tensor | None,
    ) -> torch.Tensor:
        """Per-row sampled softmax loss with logQ correction: ``n_negatives`` items drawn from
        ``exp(item_log_prob)``, shared by the rows; every candidate's logit (the positive's too) minus
        its log sampling probability, so the softmax over the sample estimates the full one without
        the bias towards popular items. ``table`` is ``item_matrix()``. The trend prior is gathered for
        the candidates only: the full [rows, catalogue, windows] tensor would not fit for large catalogues."""
        negatives = torch.multinomial(item_log_prob.exp(), self.config.n_negatives, replacement=True)
        candidates = torch.cat([y.unsqueeze(1), negatives.unsqueeze(0).expand(len(y), -1)], dim=1)  # [n, 1 + S]
        logits = torch.cat([(h * table[y]).sum(-1, keepdim=True), h @ table[negatives].T], dim=1)
        logits = logits - item_log_prob[candidates]
        if trend_table is not None and trend_rows is not None:
            logits = logits + self.trend_bias(trend_table[trend_rows.unsqueeze(1), candidates], query_gaps)
        # A draw of the row's own positive is not a negative.
        logits[:, 1:] = logits[:, 1:].masked_fill(negatives.unsqueeze(0) == y.unsqueeze(1), float("-inf"))
        return F.cross_entropy(logits.float(), torch.zeros(len(y), dtype=torch.long, device=h.device), reduction="none")

    @staticmethod
    def sampling_log_prob(targets: torch.Tensor, n_items: int) -> torch.Tensor:
        """log Q of the sampled softmax: items drawn by their frequency as training targets, plus one
        (an item never seen as a target is still drawn now and then); the padding item never."""
        counts = torch.bincount(targets[targets > 0].flatten(), minlength=n_items + 1).double() + 1.0
        counts[0] = 0.0
        return torch.log(counts / counts.sum()).float()

    @torch.no_grad()
    def last_hidden(
        self,
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        query_gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The state [B, state_width] that scores the next item against ``output_vectors``: the last
        position's hidden state, then the item-item term's user side."""
        return self.with_item_item(self.encode(items, gaps, user_feats, query_gaps)[:, -1], items)
