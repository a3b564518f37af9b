"""A trained sequence model with its preprocessing: what is registered, and what the nightly job loads.

Files of a bundle directory:
- ``weights.pt``: the state dict (tensors only; loaded with ``weights_only=True``),
- ``bundle.json``: model config and the fitted preprocessing (vocabularies, scales),
- ``popularity.parquet`` (with a trend prior): the training catalogue's recent popularity,
- ``item_stats.parquet`` (with a served item adjustment, ``models.adjustment``): each item's
  score mean and spread, the adjustment's knobs in ``bundle.json``.

Scoring works on raw ids: histories of item-id strings and raw user
attributes go in, scores over a given catalogue come out. Items of that
catalogue the model never saw in training are scored through their content.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys_core.errors import ModelError
from recsys_core.models.adjustment import ItemAdjustment
from recsys_core.models.data import Preprocessing, Sequences, TrendTable, build_sequences
from recsys_core.models.inputs import ModelInputs, encode
from recsys_core.models.item_item import term_item_index
from recsys_core.models.scorer import Scorer
from recsys_core.models.transformer import SeqRec, SeqRecConfig
from recsys_core.windows import popularity_column

WEIGHTS = "weights.pt"
META = "bundle.json"
POPULARITY = "popularity.parquet"
ITEM_STATS = "item_stats.parquet"
FILES = (WEIGHTS, META, POPULARITY, ITEM_STATS)


@dataclass
class ModelBundle:
    config: SeqRecConfig
    prep: Preprocessing
    model: SeqRec
    # The training catalogue's recent popularity (item_id and the trend windows' ``pop_<w>d``, in
    # ``prep.item_ids`` order): the trend prior of a scorer given no item features (the MLflow model).
    popularity: pa.Table | None = None
    adjustment: ItemAdjustment | None = None  # the served item adjustment; None: raw scores
    # How the item-item term's weight was chosen (training.item_item.fit_item_item), for the record:
    # not saved with the bundle, whose weights hold the term itself.
    item_item_fit: dict[str, float] | None = None

    def remember_popularity(self, item_features: pa.Table) -> None:
        """Keep the trend windows' popularity of the training catalogue, as of ``item_features``."""
        if self.config.trend_windows:
            columns = ["item_id", *(popularity_column(w) for w in self.config.trend_windows)]
            self.popularity = _rows_in_order(item_features.select(columns), self.prep.item_ids)

    def save(self, directory: Path, extra: dict | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / WEIGHTS)
        if self.popularity is not None:
            pq.write_table(self.popularity, directory / POPULARITY)
        meta = {"config": self.config.to_dict(), "preprocessing": self.prep.to_dict(), **(extra or {})}
        if self.adjustment is not None:
            adjustment = self.adjustment
            stats = {"item_id": self.prep.item_ids, "mean": adjustment.mean, "spread": adjustment.spread}
            pq.write_table(pa.table(stats), directory / ITEM_STATS)
            meta["item_adjustment"] = {"centering": adjustment.centering, "scaling": adjustment.scaling}
        else:  # a retried step saves into the same folder: no earlier adjustment may linger
            (directory / ITEM_STATS).unlink(missing_ok=True)
        (directory / META).write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        return cls.from_files({name: (directory / name).read_bytes() for name in FILES if (directory / name).exists()})

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ModelBundle:
        """A bundle from the contents of its files (name -> bytes; ``POPULARITY`` optional), wherever
        they were read from: the tensors with ``weights_only=True``, nothing else unpickled."""
        meta = json.loads(files[META])
        config = SeqRecConfig.from_dict(meta["config"])
        state = torch.load(io.BytesIO(files[WEIGHTS]), map_location="cpu", weights_only=True)
        model = SeqRec(config, state["item_content"])
        model.load_state_dict(state)
        model.eval()
        popularity = pq.read_table(pa.BufferReader(files[POPULARITY])) if POPULARITY in files else None
        adjustment = None
        if ITEM_STATS in files:
            stats = pq.read_table(pa.BufferReader(files[ITEM_STATS]))
            knobs = meta["item_adjustment"]
            mean, spread = (stats[c].to_numpy().astype(np.float32) for c in ("mean", "spread"))
            adjustment = ItemAdjustment(knobs["centering"], knobs["scaling"], mean, spread)
        return cls(config, Preprocessing.from_dict(meta["preprocessing"]), model, popularity, adjustment)

    # Scoring ------------------------------------------------------------------
    def scorer(
        self,
        inputs: ModelInputs,
        item_features: pa.Table | None = None,
        *,
        catalogue: list[str] | None = None,
        trend: TrendTable | None = None,
        trend_days: np.ndarray | None = None,
        batch: int = 1024,
    ) -> Scorer:
        """The model's scorer of ``inputs`` (``encode_inputs``) over a catalogue.

        ``item_features``: today's catalogue, new items included, scored through their content,
        with the trend prior read from its ``pop_<w>d`` columns; None: the training catalogue,
        with the popularity saved beside the model (if any). ``catalogue``: item ids to score,
        in this order (default: the rows of ``item_features``). ``trend`` (indexed like
        ``catalogue``) and ``trend_days`` (one per input row): each user's trend prior is the
        items' popularity as of that user's own prediction day instead of the features' date.
        """
        item_ids: list[str] | None = catalogue
        if item_features is None:
            item_features = self.popularity
            with torch.no_grad():
                vectors = self.model.output_vectors()[1:]
            item_ids = self.prep.item_ids
        else:
            if catalogue is not None:
                item_features = _rows_in_order(item_features, catalogue)
            vectors = self.item_vectors(item_features)
        affine = None
        if self.adjustment is not None:  # only then the ids: a list of a million strings takes a while
            if item_ids is None:
                assert item_features is not None  # without a catalogue, item_features is given
                item_ids = item_features["item_id"].to_pylist()
            scale, offset = self.adjustment.affine_of(self._vocabulary_index(item_ids))
            affine = (torch.from_numpy(scale), torch.from_numpy(offset))
        if trend is not None:
            if catalogue is None or trend_days is None:
                raise ValueError("a per-user trend table needs the catalogue it is indexed by and each user's day")
            table = torch.as_tensor(trend.values[:, 1:]) if self.config.trend_windows else None
            rows = torch.as_tensor(trend.row(trend_days))
            return Scorer(self.model, inputs, vectors, table, rows, batch=batch, item_affine=affine)
        shared = self.catalogue_trend(item_features) if item_features is not None else None
        return Scorer(self.model, inputs, vectors, shared, batch=batch, item_affine=affine)

    def item_affine(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """The served item adjustment of these catalogue items as (scale, offset); None without one."""
        return None if self.adjustment is None else self.adjustment.affine_of(self._vocabulary_index(item_ids))

    def _vocabulary_index(self, item_ids: list[str]) -> np.ndarray:
        """1-based index of each item in the model's vocabulary; 0 for items it never saw."""
        return np.array([self.prep.item_index.get(i, 0) for i in item_ids], dtype=np.int64)

    def item_vectors(self, item_features: pa.Table) -> torch.Tensor:
        """[m, state_width] output representations of the rows of ``item_features``; items the model
        never saw in training have only their content, and the item-item term's item side of the
        model's item closest to them by content (``models.item_item.term_item_index``)."""
        index = torch.from_numpy(self._vocabulary_index(item_features["item_id"].to_pylist()))
        with torch.no_grad():
            vectors = self.model.item_embedding.weight[index]
            projection, content = self.model.content_projection, None
            if projection is not None:
                content = _content_rows(self.prep, item_features)
                vectors = vectors + projection(content)
            if self.model.item_item_out is not None:
                term_index = index
                if content is not None:
                    known = self.model.item_content[1:].double().numpy()
                    term_index = torch.from_numpy(term_item_index(index.numpy(), known, content.double().numpy()))
                vectors = torch.cat([vectors, self.model.item_item_side(term_index)], dim=1)
        return vectors

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

    def encode_inputs(self, sequences: Sequences, user_feats: np.ndarray, now: int | np.ndarray | None = None) -> ModelInputs:
        """Model inputs of users predicted at ``now`` (epoch seconds; default: right after each one's last event)."""
        return encode(self.config, sequences.items, sequences.times, user_feats, now)

    def user_inputs(
        self, interactions: pa.Table, user_profiles: pa.Table, now: int | None = None
    ) -> tuple[list[str], Sequences, ModelInputs]:
        user_ids, feats = self.prep.user_features(user_profiles)
        sequences = build_sequences(interactions, self.prep, user_ids)
        return user_ids, sequences, self.encode_inputs(sequences, feats, now)


def bundle_metadata(directory: Path) -> dict:
    """What ``save`` recorded beside the weights: config, preprocessing and the caller's extras (e.g. ``as_of``)."""
    return json.loads((directory / META).read_text())


def files_digest(files: dict[str, bytes]) -> str:
    """SHA-256 over a bundle's files (names and contents): the identity of a copy wherever it lies."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}:{len(files[name])}:".encode())
        digest.update(files[name])
    return digest.hexdigest()


def bundle_trained_as_of(directory: Path) -> date | None:
    """The run date whose events trained the bundle (its ``as_of`` extra), if it records one."""
    as_of = bundle_metadata(directory).get("as_of")
    return date.fromisoformat(as_of) if as_of else None


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


def _rows_in_order(item_features: pa.Table, item_ids: list[str]) -> pa.Table:
    """The rows of ``item_features`` for ``item_ids``, in that order."""
    position = {item: row for row, item in enumerate(item_features["item_id"].to_pylist())}
    missing = [item for item in item_ids if item not in position]
    if missing:
        raise ModelError(f"{len(missing)} catalogue items (e.g. {missing[0]!r}) have no item features to score them with")
    return item_features.take(pa.array([position[item] for item in item_ids], pa.int64()))
