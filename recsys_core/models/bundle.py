"""A trained sequence model with its preprocessing: what is registered, and what the nightly job loads.

Files of a bundle directory:
- ``weights.pt``: the state dict (tensors only; loaded with ``weights_only=True``),
- ``bundle.json``: model config and the fitted preprocessing (vocabularies, scales).

Scoring works on raw ids: histories of item-id strings and raw user
attributes go in, scores over a given catalogue come out. Items of that
catalogue the model never saw in training are scored through their content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from recsys_core.errors import ModelError
from recsys_core.models.transformer import SeqRec, SeqRecConfig, gap_buckets
from recsys_core.training.data import Preprocessing, Sequences, build_sequences, gaps_of, left_pad, query_gaps_of
from recsys_core.windows import popularity_column

WEIGHTS = "weights.pt"
META = "bundle.json"


@dataclass
class ModelBundle:
    config: SeqRecConfig
    prep: Preprocessing
    model: SeqRec

    def save(self, directory: Path, extra: dict | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / WEIGHTS)
        meta = {"config": self.config.to_dict(), "preprocessing": self.prep.to_dict(), **(extra or {})}
        (directory / META).write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: Path) -> "ModelBundle":
        meta = bundle_metadata(directory)
        config = SeqRecConfig.from_dict(meta["config"])
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        model = SeqRec(config, state["item_content"])
        model.load_state_dict(state)
        model.eval()
        return cls(config, Preprocessing.from_dict(meta["preprocessing"]), model)

    # Scoring ------------------------------------------------------------------
    def catalogue_matrix(self, item_features: pa.Table) -> tuple[list[str], torch.Tensor]:
        """Output representations of today's catalogue, new items included: [m, d + k].

        The last k columns are each item's recent popularity (log1p of item_features
        ``pop_<w>d``, one per trend window); ``user_vectors`` end with each user's
        weights of those windows, so a plain matrix product gives the model's full score.
        """
        ids = item_features["item_id"].to_pylist()
        index = torch.as_tensor([self.prep.item_index.get(i, 0) for i in ids])
        with torch.no_grad():
            matrix = self.model.item_embedding.weight[index]
            if self.model.content_projection is not None:
                matrix = matrix + self.model.content_projection(_content_rows(self.prep, item_features))
            trend = self.catalogue_trend(item_features)
        return ids, matrix if trend is None else torch.cat([matrix, trend], dim=1)

    def catalogue_trend(self, item_features: pa.Table) -> torch.Tensor | None:
        """[m, len(trend_windows)] log1p of each item's events in each window, as of the features' date."""
        if not self.config.trend_windows:
            return None
        columns = []
        for window in self.config.trend_windows:
            name = popularity_column(window)
            if name not in item_features.column_names:
                raise ModelError(
                    f"the model's trend prior reads item feature {name!r}, which these item features lack",
                    hint="retrain the model on the current features.trend_short_days / trend_long_days windows",
                )
            columns.append(torch.log1p(torch.as_tensor(item_features[name].to_numpy(zero_copy_only=False).astype(np.float32))))
        return torch.stack(columns, dim=1)

    def encode_inputs(
        self, sequences: Sequences, user_feats: np.ndarray, now: int | np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs of users predicted at ``now`` (epoch seconds; default: right after each one's last event)."""
        length = self.config.max_len
        items = torch.as_tensor(left_pad(sequences.items, length))
        gaps = gap_buckets(torch.as_tensor(gaps_of(sequences.times, length)), items)
        query_gaps = gap_buckets(torch.as_tensor(query_gaps_of(sequences.times, length, now)), items)
        if not self.config.use_time:
            gaps, query_gaps = torch.zeros_like(gaps), torch.zeros_like(query_gaps)
        return {
            "items": items,
            "gaps": gaps,
            "query_gaps": query_gaps,
            "user_feats": torch.as_tensor(user_feats),
        }

    def user_inputs(
        self, interactions: pa.Table, user_profiles: pa.Table, now: int | None = None
    ) -> tuple[list[str], Sequences, dict]:
        user_ids, feats = self.prep.user_features(user_profiles)
        sequences = build_sequences(interactions, self.prep, user_ids)
        return user_ids, sequences, self.encode_inputs(sequences, feats, now)

    @torch.no_grad()
    def user_vectors(self, inputs: dict[str, torch.Tensor], batch: int = 1024) -> torch.Tensor:
        """[n, d + k]: the users' representations, then their weights of the k trend columns."""
        out = []
        for start in range(0, len(inputs["items"]), batch):
            part = {k: v[start : start + batch] for k, v in inputs.items()}
            hidden = self.model.last_hidden(part["items"], part["gaps"], part["user_feats"], part["query_gaps"])
            weight = self.model.trend_weight(part["query_gaps"][:, -1])
            if weight is not None:
                hidden = torch.cat([hidden, weight.expand(len(hidden), -1)], dim=1)
            out.append(hidden)
        width = self.config.d_model + len(self.config.trend_windows)
        return torch.cat(out) if out else torch.zeros(0, width)


def bundle_metadata(directory: Path) -> dict:
    """What ``save`` recorded beside the weights: config, preprocessing and the caller's extras (e.g. ``as_of``)."""
    return json.loads((directory / META).read_text())


def _content_rows(prep: Preprocessing, item_features: pa.Table) -> torch.Tensor:
    """Content vectors in the order of ``item_features`` rows, known and new items alike."""
    shadow = Preprocessing(
        item_ids=item_features["item_id"].to_pylist(),
        genres=prep.genres,
        gender_vocab=prep.gender_vocab,
        occupation_vocab=prep.occupation_vocab,
        text_dim=prep.text_dim,
        release_year_mean=prep.release_year_mean,
        release_year_std=prep.release_year_std,
    )
    return torch.as_tensor(shadow.content_matrix(item_features)[1:])
