"""A SASRec-style transformer sequence recommender with content, user and time features.

- Causal self-attention over the user's item history; every position predicts
  the next item, so one pass trains on all positions of a sequence.
- Item representations = id embedding + projection of content (genres and the
  text embedding). The same matrix scores the output, so an item with no
  interactions still has a meaningful score through its content.
- User features (demographics) are added to every position; a user with no
  history is a sequence of padding plus their features, scored at the last slot.
- Time context: the gap before each event, log-bucketed, is embedded.
- Loss: full softmax cross-entropy over the catalogue (SASRec+/gSASRec show it
  beats one sampled negative per position), or sampled softmax with logQ
  correction for catalogues too large for a full softmax.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

GAP_BUCKETS = 24


@dataclass(frozen=True)
class SeqRecConfig:
    n_items: int  # catalogue size; index 0 is padding
    max_len: int = 200
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    content_dim: int = 0  # width of the item content matrix (0 = no content)
    user_cardinalities: tuple[int, ...] = ()  # one categorical user feature per entry
    use_time: bool = True
    loss: str = "full"  # "full" or "sampled"
    n_negatives: int = 256
    trend_windows: tuple[int, ...] = ()  # popularity windows (days) of the learned trend prior; () = off

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SeqRecConfig":
        data = dict(data)
        data["user_cardinalities"] = tuple(data.get("user_cardinalities", ()))
        data["trend_windows"] = tuple(data.get("trend_windows", ()))
        return cls(**data)


def gap_buckets(gaps_seconds: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
    """Log2-bucketed gaps in minutes (1..GAP_BUCKETS-1); bucket 0 marks padding positions of ``items``."""
    minutes = gaps_seconds.clamp(min=0).float() / 60.0
    buckets = (1 + torch.log2(1 + minutes).floor().long()).clamp(max=GAP_BUCKETS - 1)
    return buckets if items is None else buckets * (items > 0)


class SeqRec(nn.Module):
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
        layer = nn.TransformerEncoderLayer(
            d, config.n_heads, dim_feedforward=d * 4, dropout=config.dropout, batch_first=True, norm_first=True,
            activation="gelu",
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.input_dropout = nn.Dropout(config.dropout)
        self.final_norm = nn.LayerNorm(d)
        self.register_buffer("causal_mask", torch.triu(torch.ones(config.max_len, config.max_len, dtype=torch.bool), 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        for emb in self.user_embeddings:
            nn.init.normal_(emb.weight, std=0.02)
        if self.gap_embedding is not None:
            nn.init.normal_(self.gap_embedding.weight, std=0.02)

    def item_matrix(self) -> torch.Tensor:
        """[n_items + 1, d] representations used both as inputs and as output weights."""
        weights = self.item_embedding.weight
        if self.content_projection is not None:
            weights = weights + self.content_projection(self.item_content)
        return weights

    def encode(self, items: torch.Tensor, gaps: torch.Tensor | None, user_feats: torch.Tensor | None) -> torch.Tensor:
        """items [B, L] (left-padded with 0) → hidden states [B, L, d]."""
        _, length = items.shape
        table = self.item_matrix()
        x = table[items] * math.sqrt(self.config.d_model)
        x = x + self.position_embedding.weight[-length:].unsqueeze(0)
        if self.gap_embedding is not None and gaps is not None:
            x = x + self.gap_embedding(gaps)
        if user_feats is not None and len(self.user_embeddings):
            user = sum(emb(user_feats[:, i]) for i, emb in enumerate(self.user_embeddings))
            x = x + user.unsqueeze(1)
        x = self.input_dropout(x)
        # No key-padding mask: with left padding and a causal mask, a padded
        # query could otherwise see no key at all (NaN rows). Padded keys hold
        # only position/user signal and sit before every real event.
        mask = self.causal_mask[:length, :length]
        h = self.encoder(x, mask=mask, is_causal=True)
        return self.final_norm(h)

    def scores(self, hidden: torch.Tensor, trend: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., d] → scores over the catalogue [..., n_items + 1] (index 0 is padding).

        ``trend`` [..., n_items + 1, len(trend_windows)]: the items' log1p recent popularity at
        the time of each prediction (see training.data.TrendTable).
        """
        return hidden @ self.item_matrix().T + self.trend_bias(trend)

    def trend_bias(self, trend: torch.Tensor | None) -> torch.Tensor | float:
        if self.trend_weights is None or trend is None:
            return 0.0
        return trend @ self.trend_weights

    def forward(
        self,
        items: torch.Tensor,
        gaps: torch.Tensor | None,
        user_feats: torch.Tensor | None,
        targets: torch.Tensor,
        trend_table: torch.Tensor | None = None,
        trend_rows: torch.Tensor | None = None,
        item_log_prob: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item loss over every non-padded position (targets 0 are ignored).

        ``trend_table`` [days, n_items + 1, k] and ``trend_rows`` [B, L] give each position
        the items' recent popularity at its time.
        """
        hidden = self.encode(items, gaps, user_feats)
        valid = targets > 0
        h = hidden[valid]
        y = targets[valid]
        trend = trend_table[trend_rows[valid]] if trend_table is not None and trend_rows is not None else None
        if self.config.loss == "full":
            logits = self.scores(h, trend)
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits, y)
        return self._sampled_softmax(h, y, item_log_prob, trend)

    def _sampled_softmax(
        self, h: torch.Tensor, y: torch.Tensor, item_log_prob: torch.Tensor | None, trend: torch.Tensor | None
    ) -> torch.Tensor:
        """Sampled softmax with logQ correction (negatives drawn by popularity)."""
        table = self.item_matrix()
        if item_log_prob is None:
            item_log_prob = torch.full((self.config.n_items + 1,), -math.log(self.config.n_items), device=h.device)
            item_log_prob[0] = float("-inf")
        negatives = torch.multinomial(item_log_prob.exp(), self.config.n_negatives, replacement=True)
        pos_logit = (h * table[y]).sum(-1, keepdim=True) - item_log_prob[y].unsqueeze(-1)
        neg_logits = h @ table[negatives].T - item_log_prob[negatives].unsqueeze(0)
        if trend is not None and self.trend_weights is not None:
            bias = self.trend_bias(trend)  # [n, n_items + 1]
            pos_logit = pos_logit + bias.gather(1, y.unsqueeze(1))
            neg_logits = neg_logits + bias[:, negatives]
        neg_logits = neg_logits.masked_fill(negatives.unsqueeze(0) == y.unsqueeze(1), float("-inf"))
        logits = torch.cat([pos_logit, neg_logits], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=h.device))

    @torch.no_grad()
    def last_hidden(self, items: torch.Tensor, gaps: torch.Tensor | None, user_feats: torch.Tensor | None) -> torch.Tensor:
        """The representation used to score the next item: the last position's hidden state."""
        return self.encode(items, gaps, user_feats)[:, -1]
