"""Seeded synthetic raw logs, written to the landing zone like a product's export.

``generate_logs`` writes gzipped JSON Lines under ``raw/events/dt=<arrival day>/``
plus user and item snapshots, with the skew of real traffic: Zipf item
popularity, heavy-tailed user activity, sessions of several events minutes
apart that stay within a genre, genre tastes that drift over the days, a daily
cycle, a funnel of event types and (optionally) late arrivals.

A share of the lines is deliberately broken, one kind per reason code of the
ingest (``recsys_core.features.ingest.REASONS``); the summary says how many
lines of each reason the ingest must quarantine, per arrival day and in total,
so a test can compare the ingest's report with it exactly.

Everything is a function of the spec: the same spec gives byte-identical files.
The good events are simulated with numpy and formatted with Arrow's string
kernels, one arrival day at a time and in chunks, so ten million events take
well under a minute and memory stays bounded by one day's events.
"""

from __future__ import annotations

import gzip
import logging
import math
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from recsys_core.config import IngestSettings
from recsys_core.contracts import RAW_EVENTS, RAW_ITEMS, RAW_USERS, conform
from recsys_core.errors import ConfigError
from recsys_core.io.lake import Lake
from recsys_core.timeutil import SECONDS_PER_DAY

log = logging.getLogger(__name__)

GZIP_LEVEL = 1  # level 1 compresses ~7x at several hundred MB/s; 6 is 3x slower for ~20% smaller files
CHUNK_ROWS = 500_000  # good lines formatted at once (bounds the memory of one arrival day)
EPOCH = date(1970, 1, 1)

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
EVENT_TYPE_P = (0.62, 0.20, 0.07, 0.03, 0.08)
# An event on the item of the previous event of its session moves down the funnel.
FUNNEL_P = (0.0, 0.40, 0.30, 0.15, 0.15)
MEAN_SESSION_EVENTS = 5.0
MEAN_GAP_SECONDS = 90.0  # between events of a session, plus a floor of 5 s
P_SESSION_GENRE = 0.75  # share of a session's events drawn from the session's genre
P_REPEAT_ITEM = 0.25  # share of events on the previous event's item
TASTE_SPREAD = 2.0  # std of a user's genre logits
TASTE_KEPT = 0.2  # correlation of a user's genre logits on the first and the last day
# Relative activity per UTC hour (night low, evening peak).
HOUR_WEIGHTS = np.array([3, 2, 1.5, 1, 1, 1.5, 2.5, 4, 5, 5, 5, 5.5, 6, 5.5, 5, 5, 5.5, 6.5, 8, 9, 9.5, 8.5, 6.5, 4.5])
P_EXTRA_FIELD = 0.05  # good lines with unknown fields (must be accepted and kept in `extra`)
P_NUMERIC_USER = 0.002  # good lines whose user_id is a JSON number (coerced to a string)
EXTRA_TOKENS = (
    "",
    ',"app_version":"4.2.0"',
    ',"app_version":"4.3.1"',
    ',"app_version":"4.3.1","platform":"android"',
    ',"platform":"ios","app_version":"5.0.0-beta"',
)

GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "Action": ("explosion", "chase", "fight", "hero", "mission", "escape", "weapon", "stunt", "agent", "showdown"),
    "Adventure": ("journey", "quest", "treasure", "island", "expedition", "map", "jungle", "voyage", "explorer", "discovery"),
    "Animation": ("cartoon", "animated", "colorful", "talking", "puppet", "whimsical", "creature", "sketch", "toon", "doodle"),
    "Comedy": ("funny", "hilarious", "prank", "awkward", "joke", "laughter", "silly", "wedding", "roommate", "mishap"),
    "Crime": ("heist", "detective", "gangster", "robbery", "police", "murder", "mob", "smuggler", "corrupt", "alibi"),
    "Documentary": (
        "real",
        "archive",
        "interview",
        "nature",
        "investigation",
        "footage",
        "true",
        "society",
        "portrait",
        "witness",
    ),
    "Drama": ("family", "loss", "struggle", "betrayal", "redemption", "grief", "relationship", "secret", "dignity", "choice"),
    "Fantasy": ("dragon", "wizard", "kingdom", "spell", "elf", "prophecy", "sword", "enchanted", "realm", "sorcery"),
    "Horror": ("haunted", "ghost", "demon", "blood", "terror", "curse", "zombie", "scream", "nightmare", "possessed"),
    "Mystery": ("clue", "puzzle", "disappearance", "suspect", "riddle", "hidden", "inspector", "enigma", "mansion", "whodunit"),
    "Romance": ("love", "kiss", "heart", "passion", "romance", "affair", "soulmate", "date", "longing", "couple"),
    "Sci-Fi": ("space", "alien", "robot", "future", "galaxy", "spaceship", "android", "planet", "timeline", "cyborg"),
    "Thriller": ("suspense", "conspiracy", "spy", "hostage", "paranoia", "assassin", "ticking", "pursuit", "traitor", "danger"),
    "War": ("soldier", "battlefield", "army", "trench", "invasion", "platoon", "general", "resistance", "bomb", "frontline"),
    "Western": ("cowboy", "sheriff", "outlaw", "frontier", "saloon", "ranch", "horse", "desert", "gunslinger", "bounty"),
    "Musical": ("song", "dance", "stage", "singer", "chorus", "melody", "broadway", "performance", "rhythm", "ballad"),
    "Family": ("kids", "parents", "holiday", "dog", "friendship", "school", "grandma", "siblings", "summer", "puppy"),
    "History": ("empire", "king", "revolution", "ancient", "dynasty", "queen", "medieval", "century", "monarch", "rebellion"),
    "Sport": ("team", "coach", "championship", "match", "underdog", "race", "boxing", "stadium", "league", "training"),
    "Music": ("concert", "guitar", "tour", "album", "rockstar", "jazz", "drummer", "festival", "record", "composer"),
}
DESCRIPTION_OPENERS = ("A", "An unforgettable", "A gripping", "A quiet", "A bold", "A sprawling", "A tender", "A dark")
DESCRIPTION_NOUNS = ("story", "tale", "film", "saga", "picture", "chronicle")
OCCUPATIONS = (
    "student",
    "engineer",
    "educator",
    "artist",
    "administrator",
    "programmer",
    "writer",
    "scientist",
    "healthcare",
    "marketing",
    "technician",
    "librarian",
    "lawyer",
    "entertainment",
    "retired",
    "other",
)

# Kinds of broken lines, and the reason code the ingest must give each.
BAD_KINDS: dict[str, str] = {
    "malformed_json": "malformed_json",
    "missing_id": "missing_field",
    "structured_id": "bad_type",
    "unknown_event_type": "unknown_event_type",
    "unparseable_ts": "bad_timestamp",
    "ts_before_min": "ts_out_of_range",
    "ts_after_arrival": "ts_in_future",
    "ts_too_late": "late_event",
    "negative_value": "negative_value",
    "non_numeric_value": "bad_value",
    "oversized_id": "oversized_field",
    "invalid_utf8": "invalid_utf8",
    "oversized_line": "oversized_line",
    "duplicate_in_file": "duplicate_event_id",
    "duplicate_across_files": "duplicate_event_id",
    "duplicate_across_days": "duplicate_event_id",
    "blank_line": "empty_line",
}
# The bad lines are spread equally over these slots (one per reason code);
# the duplicate slot is split over its three kinds.
_SLOTS = (
    "malformed_json",
    "missing_id",
    "structured_id",
    "unknown_event_type",
    "unparseable_ts",
    "ts_before_min",
    "ts_after_arrival",
    "ts_too_late",
    "negative_value",
    "non_numeric_value",
    "oversized_id",
    "invalid_utf8",
    "oversized_line",
    "duplicate",
    "blank_line",
)
_DUPLICATE_KINDS = ("duplicate_in_file", "duplicate_across_files", "duplicate_across_days")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every output byte is a function of these fields.

    ``events`` is the number of lines written (good plus bad); ``bad_fraction``
    of them are broken. ``late_fraction`` of the good events land in the folder
    of a later day (1..lateness_days after their event date, within the window).
    """

    events: int
    users: int
    items: int
    days: int
    seed: int = 0
    bad_fraction: float = 0.0
    start: date = date(2024, 1, 1)
    files_per_day: int = 1
    zipf_exponent: float = 1.1
    n_genres: int = 12
    late_fraction: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("users", "items", "days", "files_per_day", "n_genres"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("events", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bad_fraction", "late_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.zipf_exponent <= 0:
            problems.append(f"zipf_exponent must be > 0, got {self.zipf_exponent}")
        if self.n_genres > len(GENRE_WORDS):
            problems.append(f"n_genres must be <= {len(GENRE_WORDS)}, got {self.n_genres}")
        if problems:
            raise ConfigError("invalid SyntheticSpec: " + "; ".join(problems), hint="check the generate-logs options")

    @property
    def n_bad(self) -> int:
        return round(self.events * self.bad_fraction)

    @property
    def n_good(self) -> int:
        return self.events - self.n_bad

    def day(self, index: int) -> date:
        return self.start + timedelta(days=index)


# Catalogue ------------------------------------------------------------------------------


@dataclass
class _World:
    """Users, items and their tastes: everything the daily simulation draws from."""

    genres: list[str]
    item_primary: np.ndarray  # (items,) primary genre
    pop_cdf: np.ndarray  # (items,) cumulative popularity
    genre_items: list[np.ndarray]  # per genre: items carrying it
    genre_cdf: list[np.ndarray]  # per genre: cumulative popularity of those items
    activity_cdf: np.ndarray  # (users,) cumulative activity
    taste_start: np.ndarray  # (users, genres) genre logits on the first day
    taste_new: np.ndarray  # (users, genres) independent logits the tastes drift towards


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights, dtype=np.float64)
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _str(values) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _build_world(spec: SyntheticSpec) -> tuple[_World, pa.Table, pa.Table]:
    rng = np.random.default_rng([spec.seed, 0])
    n_items, n_users, n_genres = spec.items, spec.users, spec.n_genres
    genres = list(GENRE_WORDS)[:n_genres]

    # Items: a primary genre (some genres are more common), up to two more.
    genre_weights = 1.0 / np.sqrt(np.arange(1, n_genres + 1))
    primary = rng.choice(n_genres, size=n_items, p=genre_weights / genre_weights.sum())
    n_item_genres = np.minimum(rng.choice(3, size=n_items, p=(0.5, 0.35, 0.15)) + 1, n_genres)
    r1 = rng.integers(0, max(n_genres - 1, 1), size=n_items)
    r2 = rng.integers(0, max(n_genres - 2, 1), size=n_items)
    r2 = r2 + (r2 >= r1)
    second = (primary + 1 + r1) % n_genres
    third = (primary + 1 + r2) % n_genres
    genre_matrix = np.stack([primary, second, third], axis=1)

    # Zipf popularity over a random permutation of the items.
    rank = np.empty(n_items, dtype=np.int64)
    rank[rng.permutation(n_items)] = np.arange(1, n_items + 1)
    popularity = rank.astype(np.float64) ** -spec.zipf_exponent
    genre_items, genre_cdf = [], []
    flat_genres = np.concatenate([genre_matrix[:, k][n_item_genres > k] for k in range(3)])
    flat_items = np.concatenate([np.arange(n_items)[n_item_genres > k] for k in range(3)])
    flat_is_primary = np.concatenate([np.full(int((n_item_genres > k).sum()), k == 0) for k in range(3)])
    for g in range(n_genres):
        mask = flat_genres == g
        members = flat_items[mask]
        genre_items.append(members)
        weight = popularity[members] * np.where(flat_is_primary[mask], 1.0, 0.5)
        genre_cdf.append(_cdf(weight) if len(members) else np.array([]))

    # Users: heavy-tailed activity, genre tastes that drift over the days.
    activity = rng.lognormal(0.0, 1.2, size=n_users)
    taste_start = (rng.normal(0.0, TASTE_SPREAD, size=(n_users, n_genres))).astype(np.float32)
    taste_new = rng.normal(0.0, TASTE_SPREAD, size=(n_users, n_genres)).astype(np.float32)

    world = _World(
        genres=genres,
        item_primary=primary,
        pop_cdf=_cdf(popularity),
        genre_items=genre_items,
        genre_cdf=genre_cdf,
        activity_cdf=_cdf(activity),
        taste_start=taste_start,
        taste_new=taste_new,
    )
    items = _items_table(spec, rng, genres, genre_matrix, n_item_genres)
    users = _users_table(spec, rng)
    return world, users, items


def _items_table(spec, rng, genres, genre_matrix, n_item_genres) -> pa.Table:
    n_items = spec.items
    words = [np.array(GENRE_WORDS[g], dtype=object) for g in genres]
    vocab = pa.array(np.concatenate(words).tolist())
    vocab_title = pa.array([w.replace("-", " ").title() for w in vocab.to_pylist()])
    per_genre = len(words[0])

    def genre_word(k_words: int, p_primary: float) -> list[pa.Array]:
        # Each word comes from one of the item's genres (the primary one most often).
        out = []
        for _ in range(k_words):
            which = np.where(rng.random(n_items) < p_primary, 0, rng.integers(0, np.maximum(n_item_genres, 1)))
            genre = genre_matrix[np.arange(n_items), which]
            out.append(genre * per_genre + rng.integers(0, per_genre, size=n_items))
        return out

    title_words = genre_word(2, 0.7)
    year = rng.integers(1950, min(spec.start.year, 2100) + 1, size=n_items)
    title = pc.binary_join_element_wise(
        vocab_title.take(pa.array(title_words[0])),
        " ",
        vocab_title.take(pa.array(title_words[1])),
        " (",
        _str(year),
        ")",
        "",
    )
    desc_words = [vocab.take(pa.array(w)) for w in genre_word(6, 0.6)]
    openers = pa.array(DESCRIPTION_OPENERS).take(pa.array(rng.integers(0, len(DESCRIPTION_OPENERS), n_items)))
    nouns = pa.array(DESCRIPTION_NOUNS).take(pa.array(rng.integers(0, len(DESCRIPTION_NOUNS), n_items)))
    description = pc.binary_join_element_wise(
        openers,
        " ",
        nouns,
        " of ",
        desc_words[0],
        ", ",
        desc_words[1],
        " and ",
        desc_words[2],
        ", with ",
        desc_words[3],
        " ",
        desc_words[4],
        " and ",
        desc_words[5],
        ".",
        "",
    )
    month = rng.integers(1, 13, size=n_items)
    day_of_month = rng.integers(1, 29, size=n_items)
    release = pc.binary_join_element_wise(
        _str(year), "-", pc.utf8_lpad(_str(month), 2, "0"), "-", pc.utf8_lpad(_str(day_of_month), 2, "0"), ""
    )
    offsets = np.concatenate([[0], np.cumsum(n_item_genres)]).astype(np.int32)
    flat = genre_matrix[np.arange(3) < n_item_genres[:, None]]  # row-major: each item's genres, primary first
    genre_lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(genres, pa.string()).take(pa.array(flat, pa.int64())))
    table = pa.table(
        {
            "item_id": pc.binary_join_element_wise("i", _str(np.arange(1, n_items + 1)), ""),
            "title": title,
            "description": description,
            "release_date": release,
            "genres": genre_lists,
        }
    )
    return conform(table, RAW_ITEMS, where="synthetic items")


def _users_table(spec, rng) -> pa.Table:
    n = spec.users
    age = np.clip(np.rint(rng.gamma(6.0, 6.0, size=n) + 12), 13, 90).astype(np.int32)
    gender = pa.array(["M", "F", "X"]).take(pa.array(rng.choice(3, size=n, p=(0.49, 0.49, 0.02))))
    occupation = pa.array(OCCUPATIONS).take(pa.array(rng.integers(0, len(OCCUPATIONS), size=n)))
    zip_code = pc.utf8_lpad(_str(rng.integers(0, 100_000, size=n)), 5, "0")
    table = pa.table(
        {
            "user_id": pc.binary_join_element_wise("u", _str(np.arange(1, n + 1)), ""),
            "age": pa.array(age),
            "gender": gender,
            "occupation": occupation,
            "zip_code": zip_code,
        }
    )
    return conform(table, RAW_USERS, where="synthetic users")


def _line_tokens(spec: SyntheticSpec) -> dict:
    users = _str(np.arange(1, spec.users + 1))
    seconds = np.arange(SECONDS_PER_DAY)
    hh, mm, ss = (pc.utf8_lpad(_str(v), 2, "0") for v in (seconds // 3600, seconds // 60 % 60, seconds % 60))
    return {
        "user_quoted": pc.binary_join_element_wise('"u', users, '"', ""),
        "user_number": users,
        "item": pc.binary_join_element_wise("i", _str(np.arange(1, spec.items + 1)), ""),
        "event_type": pa.array(EVENT_TYPES),
        "day": pa.array([f"{spec.day(d).isoformat()}T" for d in range(spec.days)]),
        "time": pc.binary_join_element_wise(hh, ":", mm, ":", ss, "Z", ""),
        "extra": pa.array(EXTRA_TOKENS),
    }


# Daily simulation -------------------------------------------------------------------------

_ROW_FIELDS = ("eid", "user", "item", "etype", "day", "sec", "value", "extra", "numeric_user", "arrival")


def _split_count(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``weights`` (largest remainder), deterministically."""
    share = total * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    rest = total - counts.sum()
    counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    return counts


def _simulate_day(spec: SyntheticSpec, world: _World, d: int, n: int, first_eid: int) -> dict[str, np.ndarray]:
    """The good events of event day ``d``: sessions of users with drifting genre tastes."""
    rng = np.random.default_rng([spec.seed, 1, d])
    # Sessions until n events.
    p = 1.0 / MEAN_SESSION_EVENTS
    lengths = rng.geometric(p, size=int(n * p * 1.2) + 16)
    while lengths.sum() < n:
        lengths = np.concatenate([lengths, rng.geometric(p, size=len(lengths))])
    ends = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(ends, n)) + 1
    lengths = lengths[:n_sessions].copy()
    lengths[-1] -= ends[n_sessions - 1] - n
    starts_at = np.cumsum(lengths) - lengths  # index of each session's first event
    session = np.repeat(np.arange(n_sessions), lengths)

    # Who, and which genre the session is about (tastes drift linearly over the window).
    users = _draw(world.activity_cdf, rng.random(n_sessions)).astype(np.int32)
    # Correlation with the first day's tastes falls linearly to TASTE_KEPT; the spread stays.
    kept = 1.0 - (1.0 - TASTE_KEPT) * d / max(spec.days - 1, 1)
    logits = kept * world.taste_start[users] + math.sqrt(1.0 - kept**2) * world.taste_new[users]
    gumbel = -np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + np.float32(1e-12)) + np.float32(1e-12))
    session_genre = np.argmax(logits + gumbel, axis=1)
    event_genre = session_genre[session]

    # Items: mostly from the session's genre, by popularity; some repeat the previous one.
    items = _draw(world.pop_cdf, rng.random(n)).astype(np.int32)
    in_genre = rng.random(n) < P_SESSION_GENRE
    for g in range(spec.n_genres):
        if not len(world.genre_items[g]):
            continue
        idx = np.flatnonzero(in_genre & (event_genre == g))
        items[idx] = world.genre_items[g][_draw(world.genre_cdf[g], rng.random(len(idx)))]
    first = np.zeros(n, dtype=bool)
    first[starts_at] = True
    repeat = (rng.random(n) < P_REPEAT_ITEM) & ~first
    repeat_idx = np.flatnonzero(repeat)
    items[repeat_idx] = items[repeat_idx - 1]

    # Event types: views most; repeats of an item move down the funnel.
    etype = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_P).astype(np.int8)
    etype[repeat_idx] = rng.choice(len(EVENT_TYPES), size=len(repeat_idx), p=FUNNEL_P)

    # Values: 1.0 or dwell seconds for views, quantities, prices, ratings 1..5.
    value = np.ones(n, dtype=np.float64)
    kind = etype
    views = np.flatnonzero((kind == 0) & (rng.random(n) < 0.5))
    value[views] = np.maximum(np.round(rng.lognormal(3.0, 0.9, size=len(views)), 1), 0.1)
    carts = np.flatnonzero(kind == 2)
    value[carts] = rng.choice(3, size=len(carts), p=(0.8, 0.15, 0.05)) + 1
    buys = np.flatnonzero(kind == 3)
    value[buys] = np.maximum(np.round(rng.lognormal(2.8, 0.7, size=len(buys)), 2), 0.99)
    rates = np.flatnonzero(kind == 4)
    liked = world.item_primary[items[rates]] == event_genre[rates]
    value[rates] = np.clip(np.rint(3.0 + 1.2 * liked + rng.normal(0.0, 1.0, size=len(rates))), 1, 5)

    # Times: sessions start by the daily cycle; events follow minutes apart.
    hours = rng.choice(24, size=n_sessions, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    start = hours * 3600 + rng.integers(0, 3600, size=n_sessions)
    gaps = (rng.exponential(MEAN_GAP_SECONDS, size=n) + 5).astype(np.int64)
    gaps[starts_at] = 0
    cum = np.cumsum(gaps)
    offset = cum - np.repeat(cum[starts_at], lengths)
    duration = offset[starts_at + lengths - 1]
    start = np.clip(np.minimum(start, SECONDS_PER_DAY - 1 - duration), 0, None)
    sec = np.minimum(np.repeat(start, lengths) + offset, SECONDS_PER_DAY - 1).astype(np.int32)

    extra = np.where(rng.random(n) < P_EXTRA_FIELD, rng.integers(1, len(EXTRA_TOKENS), size=n), 0).astype(np.int8)
    return {
        "eid": np.arange(first_eid, first_eid + n, dtype=np.int64),
        "user": users[session],
        "item": items,
        "etype": etype,
        "day": np.full(n, d, dtype=np.int16),
        "sec": sec,
        "value": value,
        "extra": extra,
        "numeric_user": rng.random(n) < P_NUMERIC_USER,
        "arrival": sec.copy(),  # seconds into the arrival day; late events get their own below
    }


def _take(rows: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in rows.items()}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in _ROW_FIELDS}


def _format_good(spec: SyntheticSpec, tokens: dict, rows: dict[str, np.ndarray]) -> pa.Array:
    """One JSON line per row, each ending in a newline, as one Arrow string array."""
    user = pc.if_else(
        pa.array(rows["numeric_user"]),
        tokens["user_number"].take(pa.array(rows["user"])),
        tokens["user_quoted"].take(pa.array(rows["user"])),
    )
    return pc.binary_join_element_wise(
        f'{{"event_id":"e{spec.seed}-',
        _str(rows["eid"]),
        '","user_id":',
        user,
        ',"item_id":"',
        tokens["item"].take(pa.array(rows["item"])),
        '","event_type":"',
        tokens["event_type"].take(pa.array(rows["etype"])),
        '","ts":"',
        tokens["day"].take(pa.array(rows["day"])),
        tokens["time"].take(pa.array(rows["sec"])),
        '","value":',
        _str(rows["value"]),
        tokens["extra"].take(pa.array(rows["extra"])),
        "}\n",
        "",
    )


def _lines_bytes(lines: pa.Array) -> list[bytes]:
    return [s.encode()[:-1] for s in lines.to_pylist()]


# Broken lines --------------------------------------------------------------------------------


def _allocate_bad(spec: SyntheticSpec) -> list[list[str]]:
    """The kinds of the bad lines of each arrival day, spread equally over reasons and days."""
    per_day: list[list[str]] = [[] for _ in range(spec.days)]
    duplicates_seen = [0] * spec.days
    for j in range(spec.n_bad):
        slot, cycle = j % len(_SLOTS), j // len(_SLOTS)
        d = (cycle + slot) % spec.days
        kind = _SLOTS[slot]
        if kind == "duplicate":
            options = ["duplicate_in_file"]
            if spec.files_per_day > 1:
                options.append("duplicate_across_files")
            if d > 0:
                options.append("duplicate_across_days")
            kind = options[duplicates_seen[d] % len(options)]
            duplicates_seen[d] += 1
        per_day[d].append(kind)
    return per_day


class _Padded(NamedTuple):
    """A line too long to hold in memory by the thousand: head + ``size`` x's + tail."""

    head: bytes
    size: int
    tail: bytes


def _render(fields: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields) + "}"


def _iso(day: date, sec: int) -> str:
    return f"{day.isoformat()}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}Z"


def _bad_line(kind: str, variant: int, r: int, base: dict, arrival: date, rules: IngestSettings) -> tuple[bytes | _Padded, str]:
    """One broken line of ``kind`` (without newline), and the kind it really is.

    ``variant`` cycles through the forms of a kind; ``r`` is a random integer
    for sizes and offsets.
    """
    fields = [
        ("event_id", f'"{base["eid"]}"'),
        ("user_id", f'"{base["user"]}"'),
        ("item_id", f'"{base["item"]}"'),
        ("event_type", f'"{base["etype"]}"'),
        ("ts", f'"{_iso(arrival, base["sec"])}"'),
        ("value", "1.0"),
    ]

    def replace(name: str, token: str) -> list[tuple[str, str]]:
        return [(k, token if k == name else v) for k, v in fields]

    def without(name: str) -> list[tuple[str, str]]:
        return [(k, v) for k, v in fields if k != name]

    if kind == "malformed_json":
        text = _render(fields)
        line = (
            text[: -1 - variant % 20],  # truncated: no closing brace
            f"event {base['eid']} user {base['user']} item {base['item']}",  # not JSON at all
            text.replace('"event_id":', '"event_id" ', 1),  # missing colon
            text[:-1] + ",}",  # trailing comma
            "[" + ",".join(v for _, v in fields) + "]",  # an array, not an object
        )[variant % 5]
    elif kind == "missing_id":
        line = _render(
            (
                without("user_id"),
                replace("item_id", '""'),
                replace("event_id", "null"),
                replace("user_id", '"   "'),
                without("ts"),
                replace("event_type", "null"),
            )[variant % 6]
        )
    elif kind == "structured_id":
        line = _render(
            (
                replace("user_id", f'{{"id":"{base["user"]}"}}'),
                replace("item_id", f'["{base["item"]}","i1"]'),
                replace("event_id", f'{{"v":"{base["eid"]}"}}'),
                replace("user_id", "[]"),
            )[variant % 4]
        )
    elif kind == "unknown_event_type":
        line = _render(replace("event_type", f'"{("like", "share", "wishlist", "refund")[variant % 4]}"'))
    elif kind == "unparseable_ts":
        year = arrival.year
        ts = ("not-a-timestamp", f"{year}-13-45T25:61:00Z", "yesterday", f"31/12/{year} 10:00", f"{year}-02-30T10:00:00Z")
        line = _render(replace("ts", f'"{ts[variant % 5]}"'))
    elif kind == "ts_before_min":
        floor = rules.min_event_time
        if variant % 3 == 0:
            token = "0"  # epoch seconds: 1970-01-01
        else:
            span = max((floor - date(1970, 1, 2)).days, 1)
            token = f'"{_iso(floor - timedelta(days=1 + r % span), base["sec"])}"'
        line = _render(replace("ts", token))
    elif kind == "ts_after_arrival":
        day = arrival + timedelta(days=2 + r % 7)
        line = _render(replace("ts", f'"{_iso(day, base["sec"])}"'))
    elif kind == "ts_too_late":
        day = arrival - timedelta(days=rules.lateness_days + 1 + r % 10)
        if day < rules.min_event_time:
            return _bad_line("ts_before_min", variant, r, base, arrival, rules)
        line = _render(replace("ts", f'"{_iso(day, base["sec"])}"'))
    elif kind == "negative_value":
        line = _render(replace("value", ("-1.0", "-0.5", f"-{1 + r % 500}.25")[variant % 3]))
    elif kind == "non_numeric_value":
        line = _render(replace("value", ('"NaN"', '"abc"', '"Infinity"', '"-Infinity"')[variant % 4]))
    elif kind == "oversized_id":
        name = ("user_id", "item_id")[variant % 2]
        long_id = f"{base['user' if name == 'user_id' else 'item']}-" + "x" * (rules.max_field_chars + r % 200)
        line = _render(replace(name, f'"{long_id}"'))
    elif kind == "invalid_utf8":
        bad = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xfe\xfe", b"\xe2\x82")[variant % 5]
        text = _render(replace("user_id", f'"{base["user"]}@@BAD@@"'))
        return text.encode().replace(b"@@BAD@@", bad), kind
    elif kind == "oversized_line":
        # Valid JSON with a huge unknown field; padded only when written, to keep memory small.
        head, tail = _render([*fields, ("payload", '"@@PAD@@"')]).encode().split(b"@@PAD@@")
        return _Padded(head, rules.max_line_bytes + r % 1000, tail), kind
    elif kind == "blank_line":
        line = ("", "   ")[variant % 2]
    else:
        raise ValueError(f"unknown bad kind {kind!r}")
    return line.encode(), kind


# Writing --------------------------------------------------------------------------------------


def _write_file(
    lake: Lake,
    path: str,
    spec: SyntheticSpec,
    tokens: dict,
    rows: dict[str, np.ndarray],
    extras: list[tuple[int, bytes | _Padded]],
) -> int:
    """Write the good ``rows`` (in order) with ``extras`` (position, line) inserted; returns lines."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.tmp"
    extras = sorted(extras, key=lambda e: e[0])  # stable: equal positions keep their order
    n = len(rows["eid"])
    k = 0
    with (
        lake.fs.open_output_stream(tmp, compression=None) as stream,
        gzip.GzipFile(filename="", fileobj=stream, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as out,
    ):
        for c0 in range(0, max(n, 1), CHUNK_ROWS):
            c1 = min(c0 + CHUNK_ROWS, n)
            if c1 > c0:
                lines = _format_good(spec, tokens, _take(rows, slice(c0, c1)))
                offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=4 * lines.offset)
                data = memoryview(lines.buffers()[2])
            else:
                offsets, data = np.zeros(1, dtype=np.int32), memoryview(b"")
            prev = c0
            pieces: list = []  # joined before compressing: one zlib call per chunk, not per line
            while k < len(extras) and (extras[k][0] < c1 or c1 == n):
                pos = min(extras[k][0], c1)
                pieces.append(data[offsets[prev - c0] : offsets[pos - c0]])
                line = extras[k][1]
                if isinstance(line, _Padded):
                    out.write(b"".join(pieces))
                    out.write(b"".join((line.head, b"x" * line.size, line.tail, b"\n")))
                    pieces = []
                else:
                    pieces.extend((line, b"\n"))
                prev = pos
                k += 1
            pieces.append(data[offsets[prev - c0] : offsets[c1 - c0]])
            out.write(b"".join(pieces))
    lake.fs.move(tmp, path)
    return n + len(extras)


def generate_logs(spec: SyntheticSpec, lake: Lake, *, rules: IngestSettings | None = None) -> dict:
    """Write the synthetic landing zone of ``spec`` into ``lake``; returns a summary.

    ``rules`` are the ingest settings the broken lines are made against (lateness,
    field and line limits, the oldest valid time); the defaults match the
    platform's defaults. Existing event files of the generated days are
    replaced, so a rerun is idempotent.

    The summary counts lines as written: ``expected_quarantine`` maps each
    reason code to the number of lines the ingest must quarantine with it
    (``per_day`` has the same per arrival day). A duplicate that has no good
    line to repeat (a day without good events) is written as malformed JSON
    instead and counted as such. Cross-day duplicates are only detected when
    the earlier day is ingested in the same run or before.
    """
    started = time.monotonic()
    rules = rules or IngestSettings()
    lateness = rules.lateness_days
    world, users, items = _build_world(spec)
    tokens = _line_tokens(spec)
    for contract, table in ((RAW_USERS, users), (RAW_ITEMS, items)):
        folder = lake.partition_path(contract, spec.start)
        lake.write_parquet(table, folder, name=f"{contract.name.split('/')[-1]}.parquet")

    # Good events per event day (weekends busier), bad lines per arrival day.
    weekday = np.array([spec.day(d).weekday() for d in range(spec.days)])
    good_per_day = _split_count(spec.n_good, np.where(weekday >= 5, 1.15, 1.0))
    first_eid = np.concatenate([[0], np.cumsum(good_per_day)])
    bad_kinds = _allocate_bad(spec)
    next_bad_eid = spec.n_good

    late_rows: dict[int, list[dict[str, np.ndarray]]] = {d: [] for d in range(spec.days)}
    carried: list[bytes] = []  # originals of day d-1 for cross-day duplicates of day d
    per_day: dict[str, dict] = {}
    expected: dict[str, int] = {}
    kinds_written: dict[str, int] = {}
    totals = {"lines": 0, "good": 0, "bad": 0, "files": 0, "late": 0}

    for d in range(spec.days):
        arrival = spec.day(d)
        rng = np.random.default_rng([spec.seed, 2, d])
        rows = _simulate_day(spec, world, d, int(good_per_day[d]), int(first_eid[d])) if good_per_day[d] else None
        on_time = rows
        max_delay = min(lateness, spec.days - 1 - d)
        if rows is not None and spec.late_fraction > 0 and max_delay >= 1:
            n = len(rows["eid"])
            late = rng.random(n) < spec.late_fraction
            delay = rng.integers(1, max_delay + 1, size=n)
            for k in range(1, max_delay + 1):
                moved = _take(rows, np.flatnonzero(late & (delay == k)))
                moved["arrival"] = rng.integers(0, SECONDS_PER_DAY, size=len(moved["eid"])).astype(np.int32)
                late_rows[d + k].append(moved)
                totals["late"] += len(moved["eid"])
            on_time = _take(rows, np.flatnonzero(~late))
        parts = ([on_time] if on_time is not None else []) + late_rows.pop(d)
        folder_rows = _concat(parts) if parts else {k: np.zeros(0, dtype=np.int64) for k in _ROW_FIELDS}
        order = np.lexsort((folder_rows["eid"], folder_rows["arrival"]))
        folder_rows = _take(folder_rows, order)
        n_good = len(folder_rows["eid"])
        bounds = np.linspace(0, n_good, spec.files_per_day + 1).astype(np.int64)
        sizes = np.diff(bounds)

        # Bad lines of this arrival day, as (position in file, line) per file.
        extras: list[list[tuple[int, bytes | _Padded]]] = [[] for _ in range(spec.files_per_day)]
        day_kinds: dict[str, int] = {}
        wanted = bad_kinds[d]
        n_bad = len(wanted)
        draw = {
            "file": rng.integers(0, spec.files_per_day, size=n_bad),
            "user": rng.integers(1, spec.users + 1, size=n_bad),
            "item": rng.integers(1, spec.items + 1, size=n_bad),
            "etype": rng.integers(0, len(EVENT_TYPES), size=n_bad),
            "sec": rng.integers(0, SECONDS_PER_DAY, size=n_bad),
            "r": rng.integers(0, 1 << 30, size=n_bad),
            "src": rng.random(n_bad),
            "row": rng.random(n_bad),
            "pos": rng.random(n_bad),
        }
        has_rows = np.flatnonzero(sizes > 0)
        originals, carried = list(carried), []
        lines_of: list[bytes | _Padded | None] = [None] * n_bad
        files_of = draw["file"].copy()
        repeat_rows: dict[int, int] = {}  # bad line -> row of this day it repeats
        kinds_of: list[str] = []
        variants: dict[str, int] = {}
        for j, kind in enumerate(wanted):
            if kind == "duplicate_across_days":
                if originals:
                    lines_of[j] = originals.pop()
                else:
                    kind = "duplicate_in_file"
            if kind == "duplicate_across_files" and len(has_rows) < 2:
                kind = "duplicate_in_file"
            if kind in ("duplicate_in_file", "duplicate_across_files"):
                if len(has_rows):
                    src = int(has_rows[int(draw["src"][j] * len(has_rows))])
                    repeat_rows[j] = int(bounds[src] + int(draw["row"][j] * sizes[src]))
                    if kind == "duplicate_in_file":
                        files_of[j] = src
                    else:  # any other file
                        files_of[j] = (src + 1 + draw["r"][j] % (spec.files_per_day - 1)) % spec.files_per_day
                else:
                    kind = "malformed_json"  # no good line to repeat on this day
            if lines_of[j] is None and j not in repeat_rows:
                base = {
                    "eid": f"e{spec.seed}-{next_bad_eid}",
                    "user": f"u{draw['user'][j]}",
                    "item": f"i{draw['item'][j]}",
                    "etype": EVENT_TYPES[draw["etype"][j]],
                    "sec": int(draw["sec"][j]),
                }
                next_bad_eid += 1
                variant = variants.get(kind, 0)
                variants[kind] = variant + 1
                lines_of[j], kind = _bad_line(kind, variant, int(draw["r"][j]), base, arrival, rules)
            kinds_of.append(kind)
        if repeat_rows:
            copies = _lines_bytes(_format_good(spec, tokens, _take(folder_rows, list(repeat_rows.values()))))
            for j, line in zip(repeat_rows, copies):
                lines_of[j] = line
        for j, kind in enumerate(kinds_of):
            f = int(files_of[j])
            bad_line = lines_of[j]
            assert bad_line is not None  # every bad row got its line above
            extras[f].append((int(draw["pos"][j] * (sizes[f] + 1)), bad_line))
            day_kinds[kind] = day_kinds.get(kind, 0) + 1

        # Originals for tomorrow's cross-day duplicates: on-time events of today.
        if d + 1 < spec.days:
            n_next = sum(1 for k in bad_kinds[d + 1] if k == "duplicate_across_days")
            if n_next and on_time is not None and len(on_time["eid"]):
                pick = rng.integers(0, len(on_time["eid"]), size=n_next)
                carried = _lines_bytes(_format_good(spec, tokens, _take(on_time, pick)))

        folder = lake.partition_path(RAW_EVENTS, arrival)
        lake.fs.create_dir(folder, recursive=True)
        _remove_stale(lake, folder, spec.files_per_day)
        lines = 0
        for f in range(spec.files_per_day):
            path = f"{folder}/events-{f:03d}.jsonl.gz"
            lines += _write_file(lake, path, spec, tokens, _take(folder_rows, slice(bounds[f], bounds[f + 1])), extras[f])

        n_bad = sum(day_kinds.values())
        reasons: dict[str, int] = {}
        for kind, count in day_kinds.items():
            reasons[BAD_KINDS[kind]] = reasons.get(BAD_KINDS[kind], 0) + count
            kinds_written[kind] = kinds_written.get(kind, 0) + count
        for reason, count in reasons.items():
            expected[reason] = expected.get(reason, 0) + count
        per_day[arrival.isoformat()] = {
            "lines": lines,
            "good": n_good,
            "bad": n_bad,
            "files": spec.files_per_day,
            "expected_quarantine": dict(sorted(reasons.items())),
        }
        totals["lines"] += lines
        totals["good"] += n_good
        totals["bad"] += n_bad
        totals["files"] += spec.files_per_day

    summary = {
        "events_written": totals["lines"],
        "good_events": totals["good"],
        "bad_events": totals["bad"],
        "expected_quarantine": dict(sorted(expected.items())),
        "bad_kinds": dict(sorted(kinds_written.items())),
        "late_events": totals["late"],
        "days": spec.days,
        "first_day": spec.start.isoformat(),
        "last_day": spec.day(spec.days - 1).isoformat(),
        "files": totals["files"],
        "users": spec.users,
        "items": spec.items,
        "per_day": per_day,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "generated %d lines (%d good, %d bad) in %d files over %d days in %.1fs",
        summary["events_written"],
        summary["good_events"],
        summary["bad_events"],
        summary["files"],
        spec.days,
        summary["seconds"],
    )
    return summary


def _remove_stale(lake: Lake, folder: str, files_per_day: int) -> None:
    keep = {f"events-{f:03d}.jsonl.gz" for f in range(files_per_day)}
    for info in lake.fs.get_file_info(pafs.FileSelector(folder)):
        name = info.base_name
        if info.type == pafs.FileType.File and name.startswith("events-") and name.endswith(".jsonl.gz") and name not in keep:
            lake.fs.delete_file(info.path)


# File-level failures, for tests ------------------------------------------------------------------


def write_truncated_gzip(path: str | Path, lines: int = 200) -> Path:
    """A gzip file cut off in the middle (no end-of-stream marker): the ingest must fail naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = "".join(
        _render(
            [
                ("event_id", f'"trunc-{i}"'),
                ("user_id", '"u1"'),
                ("item_id", '"i1"'),
                ("event_type", '"view"'),
                ("ts", '"2024-01-01T00:00:00Z"'),
                ("value", "1.0"),
            ]
        )
        + "\n"
        for i in range(lines)
    )
    data = gzip.compress(content.encode(), compresslevel=GZIP_LEVEL, mtime=0)
    path.write_bytes(data[: max(len(data) // 2, 11)])
    return path


def write_empty_file(path: str | Path) -> Path:
    """A zero-byte file (an export that wrote nothing): it holds no lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


__all__ = [
    "BAD_KINDS",
    "SyntheticSpec",
    "generate_logs",
    "write_empty_file",
    "write_truncated_gzip",
]
