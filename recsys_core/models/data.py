"""Training data: vocabularies, feature preprocessing and per-user sequences.

The preprocessing (item and user vocabularies, content matrix, user feature
encodings) is fitted once here, saved with the model, and reused by the
nightly job, so training and serving see the same features.

Event order: event time, then source file, then line number — the order the
events arrived in. For MovieLens-100K (many ratings of one user share a
second) this is the original file order, so the leave-last-out target is
stable across runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_core.timeutil import SECONDS_PER_DAY

AGE_BUCKETS = (0, 18, 25, 35, 45, 50, 56)
USER_FEATURES = ("age_bucket", "gender", "occupation")


@dataclass
class Preprocessing:
    """Everything needed to turn raw ids and features into model inputs."""

    item_ids: list[str]  # index i+1 ↔ item_ids[i]; 0 is padding
    genres: list[str]
    gender_vocab: list[str]
    occupation_vocab: list[str]
    text_dim: int
    release_year_mean: float = 0.0
    release_year_std: float = 1.0
    item_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_index = {item: i + 1 for i, item in enumerate(self.item_ids)}

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def user_cardinalities(self) -> tuple[int, ...]:
        # +1 everywhere: index 0 means unknown.
        return (len(AGE_BUCKETS) + 1, len(self.gender_vocab) + 1, len(self.occupation_vocab) + 1)

    @property
    def content_dim(self) -> int:
        return len(self.genres) + self.text_dim + 1

    def to_dict(self) -> dict:
        return {
            "item_ids": self.item_ids,
            "genres": self.genres,
            "gender_vocab": self.gender_vocab,
            "occupation_vocab": self.occupation_vocab,
            "text_dim": self.text_dim,
            "release_year_mean": self.release_year_mean,
            "release_year_std": self.release_year_std,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(**data)

    @classmethod
    def fit(cls, item_features: pa.Table, user_profiles: pa.Table) -> Preprocessing:
        items = item_features.sort_by("item_id")
        genres = sorted({g for gs in items["genres"].to_pylist() for g in (gs or [])})
        embeddings = [e for e in items["text_embedding"].to_pylist() if e]
        years = np.array([y for y in items["release_year"].to_pylist() if y is not None], dtype=np.float64)
        return cls(
            item_ids=items["item_id"].to_pylist(),
            genres=genres,
            gender_vocab=sorted({g for g in user_profiles["gender"].to_pylist() if g}),
            occupation_vocab=sorted({o for o in user_profiles["occupation"].to_pylist() if o}),
            text_dim=len(embeddings[0]) if embeddings else 0,
            release_year_mean=float(years.mean()) if len(years) else 0.0,
            release_year_std=float(years.std() or 1.0) if len(years) else 1.0,
        )

    # Transforms ---------------------------------------------------------------
    def content_matrix(self, item_features: pa.Table) -> np.ndarray:
        """[n_items + 1, content_dim] float32: genre multi-hot, text embedding, scaled release year."""
        matrix = np.zeros((self.n_items + 1, self.content_dim), dtype=np.float32)
        genre_index = {g: j for j, g in enumerate(self.genres)}
        rows = item_features.select(["item_id", "genres", "text_embedding", "release_year"]).to_pylist()
        for row in rows:
            i = self.item_index.get(row["item_id"])
            if i is None:
                continue
            for g in row["genres"] or []:
                if g in genre_index:
                    matrix[i, genre_index[g]] = 1.0
            if row["text_embedding"] and self.text_dim:
                matrix[i, len(self.genres) : len(self.genres) + self.text_dim] = row["text_embedding"]
            if row["release_year"] is not None:
                matrix[i, -1] = (row["release_year"] - self.release_year_mean) / self.release_year_std
        return matrix

    def user_features(self, user_profiles: pa.Table) -> tuple[list[str], np.ndarray]:
        """User ids and their [n_users, 3] int64 categorical features (0 = unknown)."""
        genders = {g: i + 1 for i, g in enumerate(self.gender_vocab)}
        occupations = {o: i + 1 for i, o in enumerate(self.occupation_vocab)}
        ages = user_profiles["age"].to_numpy(zero_copy_only=False)
        age_bucket = np.where(
            np.isnan(ages.astype(np.float64)), 0, 1 + np.searchsorted(AGE_BUCKETS, np.nan_to_num(ages), side="right") - 1
        )
        feats = np.stack(
            [
                age_bucket.astype(np.int64),
                np.array([genders.get(g, 0) for g in user_profiles["gender"].to_pylist()], dtype=np.int64),
                np.array([occupations.get(o, 0) for o in user_profiles["occupation"].to_pylist()], dtype=np.int64),
            ],
            axis=1,
        )
        return user_profiles["user_id"].to_pylist(), feats


@dataclass
class TrendTable:
    """Each item's recent popularity as of the start of every day: the model's time-aware prior.

    ``values[d, i, j]`` = log1p(events of item i in the ``windows[j]`` days before
    the start of day ``first_day + d``), days counted in UTC since the epoch.
    The same quantities as item_features' ``pop_<w>d`` as of the day before.
    """

    first_day: int
    windows: tuple[int, ...]
    values: np.ndarray  # [n_days, n_items + 1, len(windows)] float32

    def row(self, day: int | np.ndarray) -> np.ndarray:
        """Row index for "as of the start of ``day``", clipped to the table."""
        return np.clip(np.asarray(day) - self.first_day, 0, len(self.values) - 1)

    @classmethod
    def build(cls, interactions: pa.Table, prep: Preprocessing, windows: tuple[int, ...], until_day: int) -> TrendTable:
        """From every event (repeats included, like item_features) up to the start of ``until_day``."""
        items = np.array([prep.item_index.get(i, 0) for i in interactions["item_id"].to_pylist()], dtype=np.int64)
        days = pc.cast(interactions["event_ts"], pa.int64()).to_numpy() // (1_000_000 * SECONDS_PER_DAY)
        first = int(days.min()) if len(days) else until_day
        n_days = max(1, until_day - first + 1)
        counts = np.zeros((n_days, prep.n_items + 1), dtype=np.float64)
        keep = (items > 0) & (days < until_day)
        np.add.at(counts, (days[keep] - first, items[keep]), 1.0)
        # before[d] = events strictly before day first + d
        before = np.concatenate([np.zeros((1, prep.n_items + 1)), np.cumsum(counts, axis=0)])[:n_days]
        values = np.stack(
            [
                np.log1p(before - before[np.maximum(np.arange(n_days) - w, 0)] * (np.arange(n_days) >= w)[:, None])
                for w in windows
            ],
            axis=-1,
        ).astype(np.float32)
        return cls(first, tuple(windows), values)


@dataclass
class Sequences:
    """Per-user event histories as item indices and times, oldest first."""

    user_ids: list[str]
    items: list[np.ndarray]  # int64 item indices (1-based)
    times: list[np.ndarray]  # int64 epoch seconds


def build_sequences(interactions: pa.Table, prep: Preprocessing, user_ids: list[str]) -> Sequences:
    """Group interactions (any order) into per-user sequences, for the given users in that order.

    Events on items outside the catalogue are skipped; users with no events get empty arrays.
    Only the first interaction of a user with an item is kept: the product recommends items
    the user has not interacted with yet, so a repeat is never a valid next item to predict.
    """
    # Ties in time fall back to the order the events were logged in. The file names are sorted as
    # ranks: sorting moves every column, and the names of tens of millions of rows overflow a
    # string column's 2 GB of offsets.
    files = interactions["source_file"]
    file_rank = pc.index_in(files, value_set=pc.unique(files).sort())
    table = pa.table(
        {
            "user_id": interactions["user_id"],
            "item_id": interactions["item_id"],
            "event_ts": interactions["event_ts"],
            "file_rank": file_rank,
            "line_no": interactions["line_no"],
        }
    ).sort_by([("user_id", "ascending"), ("event_ts", "ascending"), ("file_rank", "ascending"), ("line_no", "ascending")])
    item_idx = np.array([prep.item_index.get(i, 0) for i in table["item_id"].to_pylist()], dtype=np.int64)
    times = pc.cast(table["event_ts"], pa.int64()).to_numpy() // 1_000_000
    users = table["user_id"].to_numpy(zero_copy_only=False)
    user_codes = pc.dictionary_encode(table["user_id"]).combine_chunks().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    _, first = np.unique(user_codes * (prep.n_items + 1) + item_idx, return_index=True)
    keep = np.zeros(len(item_idx), dtype=bool)
    keep[first] = True
    keep &= item_idx > 0
    item_idx, times, users = item_idx[keep], times[keep], users[keep]
    boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1 if len(users) else np.array([], dtype=np.int64)
    starts = np.concatenate([[0], boundaries]) if len(users) else np.array([], dtype=np.int64)
    ends = np.concatenate([boundaries, [len(users)]]) if len(users) else np.array([], dtype=np.int64)
    by_user = {users[s]: (s, e) for s, e in zip(starts, ends)}
    empty = np.zeros(0, dtype=np.int64)
    seq_items, seq_times = [], []
    for user in user_ids:
        s, e = by_user.get(user, (0, 0))
        seq_items.append(item_idx[s:e] if e > s else empty)
        seq_times.append(times[s:e] if e > s else empty)
    return Sequences(user_ids=list(user_ids), items=seq_items, times=seq_times)


def last_event_days(times: list[np.ndarray], default_day: int) -> np.ndarray:
    """The UTC day (epoch days) of each sequence's last event; ``default_day`` for an empty one."""
    return np.array([t[-1] // SECONDS_PER_DAY if len(t) else default_day for t in times], dtype=np.int64)


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """The last ``length`` entries of each sequence, left-padded with 0, as [n, length] int64
    (or [n, length, ...] when the entries are rows)."""
    tail_shape = next((np.shape(s)[1:] for s in sequences if len(s)), ())
    out = np.zeros((len(sequences), length, *tail_shape), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


def event_gaps(times: np.ndarray) -> np.ndarray:
    """Seconds since the previous event at each position (0 for the first)."""
    return np.diff(times, prepend=times[:1]) if len(times) else times


def gaps_of(times: list[np.ndarray], length: int) -> np.ndarray:
    """``event_gaps`` of each sequence, left-padded like the items."""
    return left_pad([event_gaps(t) for t in times], length)


def query_gaps_of(times: list[np.ndarray], length: int, now: int | np.ndarray | None = None) -> np.ndarray:
    """Seconds from each event to the prediction made at it, left-padded like the items: the next
    event for all but the last, and ``now`` (epoch seconds, one for all or one per sequence;
    default: the moment of the last event) for the last."""
    moments = None if now is None else np.broadcast_to(np.asarray(now, dtype=np.int64), (len(times),))
    out = []
    for i, t in enumerate(times):
        t = np.asarray(t, dtype=np.int64)
        if len(t):
            last = 0 if moments is None else max(int(moments[i]) - int(t[-1]), 0)
            t = np.append(np.diff(t), last)
        out.append(t)
    return left_pad(out, length)


@dataclass
class LeaveLastOut:
    """Train on all but the last two events, validate on the second last, test on the last."""

    train: list[np.ndarray]
    train_times: list[np.ndarray]
    valid_input: list[np.ndarray]
    valid_times: list[np.ndarray]
    valid_target: np.ndarray  # 0 = user not evaluated
    test_input: list[np.ndarray]
    test_times: list[np.ndarray]
    test_target: np.ndarray

    @classmethod
    def split(cls, seqs: Sequences, min_events: int = 3) -> LeaveLastOut:
        n = len(seqs.items)
        valid_target = np.zeros(n, dtype=np.int64)
        test_target = np.zeros(n, dtype=np.int64)
        train, train_t, v_in, v_t, t_in, t_t = [], [], [], [], [], []
        for u, (items, times) in enumerate(zip(seqs.items, seqs.times)):
            if len(items) >= min_events:
                train.append(items[:-2])
                train_t.append(times[:-2])
                v_in.append(items[:-2])
                v_t.append(times[:-2])
                valid_target[u] = items[-2]
                t_in.append(items[:-1])
                t_t.append(times[:-1])
                test_target[u] = items[-1]
            else:
                train.append(items)
                train_t.append(times)
                v_in.append(items)
                v_t.append(times)
                t_in.append(items)
                t_t.append(times)
        return cls(train, train_t, v_in, v_t, valid_target, t_in, t_t, test_target)
