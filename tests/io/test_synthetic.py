"""The synthetic log generator: determinism, counts, realism, and agreement with the real ingest."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recsys_core.config import IngestSettings, settings_for
from recsys_core.contracts import INTERACTIONS, RAW_ITEMS, RAW_USERS
from recsys_core.features.ingest import REASONS, UnreadableInput, decompress, split_lines
from recsys_core.io.datasets.synthetic import (
    BAD_KINDS,
    GENRE_WORDS,
    SyntheticSpec,
    generate_logs,
    write_empty_file,
    write_truncated_gzip,
)
from recsys_core.io.lake import Lake

RULES = IngestSettings()
SMALL = SyntheticSpec(events=3000, users=100, items=50, days=3, bad_fraction=0.1, files_per_day=2, late_fraction=0.1)


def event_files(lake_root: Path) -> list[Path]:
    return sorted((lake_root / "raw" / "events").glob("dt=*/events-*.jsonl.gz"))


def file_lines(path: Path) -> list[bytes]:
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    assert lines[-1] == b"", f"{path} does not end with a newline"
    return lines[:-1]


def folder_day(path: Path) -> date:
    return date.fromisoformat(path.parent.name.split("=", 1)[1])


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# Fast tests ---------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = generate_logs(SMALL, Lake(str(tmp_path / "a")))
    b = generate_logs(SMALL, Lake(str(tmp_path / "b")))
    files_a, files_b = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert any(name.endswith(".jsonl.gz") for name in files_a)
    assert any(name.endswith("items.parquet") for name in files_a)
    for name in files_a:
        assert files_a[name] == files_b[name], f"{name} differs between two runs with the same seed"
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}

    other = SyntheticSpec(**{**SMALL.__dict__, "seed": 1})
    generate_logs(other, Lake(str(tmp_path / "c")))
    files_c = all_bytes(tmp_path / "c")
    events = [n for n in files_a if n.endswith(".jsonl.gz")]
    assert all(files_a[n] != files_c[n] for n in events)

    # Not just the ids: the simulated behaviour differs too.
    def users_of(root: Path) -> list[bytes]:
        return re.findall(rb'"user_id":"(u\d+)"', b"\n".join(file_lines(event_files(root)[0])[:100]))

    assert users_of(tmp_path / "a") != users_of(tmp_path / "c")


def test_gzip_header_has_no_time_or_name(tmp_path):
    generate_logs(SyntheticSpec(events=100, users=10, items=10, days=1), Lake(str(tmp_path)))
    header = event_files(tmp_path)[0].read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] == 0, "no FNAME/FEXTRA flags"
    assert header[4:8] == b"\x00\x00\x00\x00", "mtime must be 0"


def test_counts_add_up(tmp_path):
    summary = generate_logs(SMALL, Lake(str(tmp_path)))
    files = event_files(tmp_path)
    assert len(files) == summary["files"] == SMALL.days * SMALL.files_per_day
    lines_per_day = Counter()
    for path in files:
        lines_per_day[folder_day(path).isoformat()] += len(file_lines(path))
    assert sum(lines_per_day.values()) == summary["events_written"] == SMALL.events
    assert summary["good_events"] + summary["bad_events"] == SMALL.events
    assert summary["bad_events"] == round(SMALL.events * SMALL.bad_fraction)
    assert sum(summary["expected_quarantine"].values()) == summary["bad_events"]
    assert sum(summary["bad_kinds"].values()) == summary["bad_events"]
    assert summary["days"] == SMALL.days and summary["users"] == SMALL.users and summary["items"] == SMALL.items
    assert summary["late_events"] > 0
    for day, stats in summary["per_day"].items():
        assert stats["lines"] == lines_per_day[day] == stats["good"] + stats["bad"]
        assert sum(stats["expected_quarantine"].values()) == stats["bad"]
    for reason in ("expected_quarantine",):
        total = Counter()
        for stats in summary["per_day"].values():
            total.update(stats[reason])
        assert dict(total) == summary["expected_quarantine"]
    # One kind of broken line per reason code of the ingest, spread equally.
    assert set(summary["expected_quarantine"]) == set(REASONS)
    assert set(BAD_KINDS.values()) == set(REASONS)
    counts = summary["expected_quarantine"].values()
    assert max(counts) - min(counts) <= 1
    for day in summary["per_day"].values():
        assert day["bad"] == pytest.approx(summary["bad_events"] / SMALL.days, abs=2)
    kinds = summary["bad_kinds"]
    assert kinds["duplicate_in_file"] and kinds["duplicate_across_files"] and kinds["duplicate_across_days"]


def test_every_good_line_is_valid(tmp_path):
    spec = SyntheticSpec(events=6000, users=300, items=200, days=5, files_per_day=2, late_fraction=0.2, seed=3)
    summary = generate_logs(spec, Lake(str(tmp_path)))
    users = set(pq.read_table(tmp_path / "raw/users" / f"snapshot_dt={spec.start}" / "users.parquet")["user_id"].to_pylist())
    items = set(pq.read_table(tmp_path / "raw/items" / f"snapshot_dt={spec.start}" / "items.parquet")["item_id"].to_pylist())
    ids, extras, numeric_users, late, types = set(), 0, 0, 0, Counter()
    for path in event_files(tmp_path):
        arrival = folder_day(path)
        for raw in file_lines(path):
            record = json.loads(raw.decode("utf-8"))
            assert len(raw) <= RULES.max_line_bytes
            assert set(record) >= {"event_id", "user_id", "item_id", "event_type", "ts", "value"}, record
            assert isinstance(record["event_id"], str) and re.fullmatch(r"e3-\d+", record["event_id"])
            assert record["event_id"] not in ids, "event ids are unique"
            ids.add(record["event_id"])
            if isinstance(record["user_id"], int):
                numeric_users += 1
                assert f"u{record['user_id']}" in users
            else:
                assert record["user_id"] in users
            assert record["item_id"] in items
            assert record["event_type"] in RULES.event_types
            types[record["event_type"]] += 1
            assert record["ts"].endswith("Z")
            ts = datetime.fromisoformat(record["ts"])
            assert ts.tzinfo == UTC
            assert arrival - timedelta(days=RULES.lateness_days) <= ts.date() <= arrival
            late += ts.date() < arrival
            value = record["value"]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
            if record["event_type"] == "rating":
                assert value in (1, 2, 3, 4, 5)
            extras += bool(set(record) - {"event_id", "user_id", "item_id", "event_type", "ts", "value"})
    assert len(ids) == summary["good_events"] == spec.events
    assert late == summary["late_events"] > 0
    assert extras > 0, "some good lines carry unknown fields such as app_version"
    assert numeric_users > 0, "some good lines carry a numeric user_id"
    # Views most, then clicks; every type occurs.
    assert types["view"] > types["click"] > max(types["purchase"], types["add_to_cart"])
    assert set(types) == set(RULES.event_types)


def test_popularity_and_activity_are_skewed(tmp_path):
    spec = SyntheticSpec(events=40_000, users=2000, items=1000, days=4, seed=7)
    generate_logs(spec, Lake(str(tmp_path)))
    records = [json.loads(line) for f in event_files(tmp_path) for line in file_lines(f)]
    items = Counter(r["item_id"] for r in records)
    users = Counter(str(r["user_id"]) for r in records)
    top_items = sum(c for _, c in items.most_common(spec.items // 10))
    assert top_items / len(records) > 0.5, "top 10% of items take most events (Zipf)"
    top_users = sum(c for _, c in users.most_common(spec.users // 10))
    assert top_users / len(records) > 0.3, "top 10% of users are far more active than average"


def test_sessions_are_bursts_within_genres(tmp_path):
    spec = SyntheticSpec(events=20_000, users=500, items=800, days=2, seed=5)
    generate_logs(spec, Lake(str(tmp_path)))
    catalogue = pq.read_table(tmp_path / "raw/items" / f"snapshot_dt={spec.start}" / "items.parquet").to_pylist()
    genres = {row["item_id"]: set(row["genres"]) for row in catalogue}
    records = sorted(
        (json.loads(line) for f in event_files(tmp_path) for line in file_lines(f)),
        key=lambda r: (str(r["user_id"]), r["ts"], r["event_id"]),
    )
    gaps, same_genre, pairs = [], 0, 0
    for a, b in itertools.pairwise(records):
        if str(a["user_id"]) != str(b["user_id"]):
            continue
        gap = (datetime.fromisoformat(b["ts"]) - datetime.fromisoformat(a["ts"])).total_seconds()
        gaps.append(gap)
        if gap <= 600:
            pairs += 1
            same_genre += bool(genres[a["item_id"]] & genres[b["item_id"]])
    gaps.sort()
    assert gaps[len(gaps) // 2] < 600, "most consecutive events of a user are minutes apart"
    # Random pairs of items share a genre far less often than items within a session.
    assert same_genre / pairs > 0.6
    items = [r["item_id"] for r in records]
    shuffled = random.Random(0).sample(items, len(items))
    random_pairs = sum(bool(genres[a] & genres[b]) for a, b in zip(items, shuffled)) / len(items)
    assert same_genre / pairs > 1.8 * random_pairs


def test_tastes_drift_over_the_days(tmp_path):
    spec = SyntheticSpec(events=60_000, users=300, items=500, days=10, seed=11)
    generate_logs(spec, Lake(str(tmp_path)))
    catalogue = pq.read_table(tmp_path / "raw/items" / f"snapshot_dt={spec.start}" / "items.parquet").to_pylist()
    primary = {row["item_id"]: row["genres"][0] for row in catalogue}
    by_user: dict[str, list[Counter]] = {}
    for path in event_files(tmp_path):
        for raw in file_lines(path):
            record = json.loads(raw)
            day = (date.fromisoformat(record["ts"][:10]) - spec.start).days
            by_user.setdefault(str(record["user_id"]), [Counter() for _ in range(spec.days)])[day][
                primary[record["item_id"]]
            ] += 1

    def cosine(a: Counter, b: Counter) -> float:
        dot = sum(a[k] * b[k] for k in a)
        return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))

    heavy = sorted(by_user.values(), key=lambda days: -sum(sum(c.values()) for c in days))[:60]
    first = [days[0] + days[1] for days in heavy]
    near = sum(cosine(f, days[2] + days[3]) for f, days in zip(first, heavy)) / len(heavy)
    far = sum(cosine(f, days[8] + days[9]) for f, days in zip(first, heavy)) / len(heavy)
    assert near - far > 0.05, (near, far)


def test_snapshots_follow_contracts_and_text_follows_genre(tmp_path):
    spec = SyntheticSpec(events=100, users=50, items=300, days=1, n_genres=12)
    generate_logs(spec, Lake(str(tmp_path)))
    users = pq.read_table(tmp_path / "raw/users" / f"snapshot_dt={spec.start}" / "users.parquet")
    items = pq.read_table(tmp_path / "raw/items" / f"snapshot_dt={spec.start}" / "items.parquet")
    assert users.schema.equals(RAW_USERS.schema)
    assert items.schema.equals(RAW_ITEMS.schema)
    assert users.num_rows == spec.users and items.num_rows == spec.items
    assert users["user_id"].to_pylist()[:2] == ["u1", "u2"]
    known = list(GENRE_WORDS)[: spec.n_genres]
    word_genre = {w: g for g, words in GENRE_WORDS.items() for w in words}
    for row in items.to_pylist():
        assert 1 <= len(row["genres"]) <= 3 and set(row["genres"]) <= set(known)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["release_date"])
        assert row["title"] and row["description"].endswith(".")
        words = [w.strip(",.") for w in row["description"].split()]
        tied = [word_genre[w] for w in words if w in word_genre]
        assert len(tied) >= 6 and all(g in row["genres"] for g in tied), row


def test_rerun_replaces_the_files_of_a_day(tmp_path):
    lake = Lake(str(tmp_path))
    generate_logs(SyntheticSpec(events=300, users=20, items=20, days=2, files_per_day=3), lake)
    generate_logs(SyntheticSpec(events=300, users=20, items=20, days=2, files_per_day=1), lake)
    assert [p.name for p in event_files(tmp_path)] == ["events-000.jsonl.gz"] * 2


def test_invalid_specs_are_rejected():
    with pytest.raises(ValueError, match="bad_fraction"):
        SyntheticSpec(events=10, users=1, items=1, days=1, bad_fraction=1.5)
    with pytest.raises(ValueError, match="days"):
        SyntheticSpec(events=10, users=1, items=1, days=0)


def test_file_failure_helpers(tmp_path):
    truncated = write_truncated_gzip(tmp_path / "dt=2024-01-01" / "events-001.jsonl.gz")
    with pytest.raises(UnreadableInput, match=r"events-001\.jsonl\.gz"):
        decompress(str(truncated), truncated.read_bytes())
    empty = write_empty_file(tmp_path / "dt=2024-01-01" / "events-002.jsonl.gz")
    assert empty.stat().st_size == 0
    assert list(split_lines(str(empty), empty.read_bytes(), RULES.max_line_bytes)) == []


def test_broken_lines_are_flagged_in_python_where_the_ingest_splits_lines(tmp_path):
    # The two reasons decided before Spark sees a line: invalid UTF-8 and oversized lines.
    summary = generate_logs(SMALL, Lake(str(tmp_path)))
    flagged = Counter()
    for path in event_files(tmp_path):
        for row in split_lines(str(path), path.read_bytes(), RULES.max_line_bytes):
            if row[3]:
                flagged[row[3]] += 1
    assert flagged == {
        "invalid_utf8": summary["expected_quarantine"]["invalid_utf8"],
        "oversized_line": summary["expected_quarantine"]["oversized_line"],
    }


# Against the real ingest --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_core.io.spark import spark_session

    settings = settings_for(data_root=tmp_path_factory.mktemp("spark"), spark={"master": "local[2]", "shuffle_partitions": 2})
    session = spark_session(settings, "test")
    yield session
    session.stop()


def ingest_settings(root: Path):
    return settings_for(data_root=root, spark={"master": "local[2]", "shuffle_partitions": 2}, ingest={"max_reject_rate": 1.0})


def check_reports(reports, summary) -> None:
    total = Counter()
    assert [r.run_date.isoformat() for r in reports] == list(summary["per_day"])
    for report in reports:
        expected = summary["per_day"][report.run_date.isoformat()]
        assert report.rows_in == expected["lines"], report.to_dict()
        assert report.rows_accepted + report.rows_quarantined == report.rows_in
        assert report.rows_accepted == expected["good"], report.to_dict()
        assert report.reasons == expected["expected_quarantine"], report.to_dict()
        total.update(report.reasons)
    assert dict(total) == summary["expected_quarantine"]


@pytest.mark.spark
def test_ingest_quarantines_exactly_the_broken_lines(tmp_path, spark):
    from recsys_core.stages.ingest import run_ingest

    settings = ingest_settings(tmp_path)
    lake = Lake(settings.lake)
    summary = generate_logs(SMALL, lake)
    dates = [SMALL.day(d) for d in range(SMALL.days)]
    reports = run_ingest(settings, dates, spark=spark)
    check_reports(reports, summary)

    # Unknown fields are kept, numeric user ids become strings.
    accepted = (
        ds.dataset(lake.table_path(INTERACTIONS), format="parquet", partitioning="hive")
        .to_table(columns=["event_id", "user_id", "extra"])
        .to_pylist()
    )
    assert len(accepted) == summary["good_events"]
    assert any(r["extra"] and "app_version" in r["extra"] for r in accepted)
    numeric = {}
    for path in event_files(tmp_path / "lake"):
        for raw in file_lines(path):
            match = re.match(rb'\{"event_id":"([^"]+)","user_id":(\d+),', raw)
            if match:
                numeric[match[1].decode()] = match[2].decode()
    assert numeric, "the sample should hold numeric user ids"
    by_id = {r["event_id"]: r["user_id"] for r in accepted}
    assert all(by_id[e] == u for e, u in numeric.items())


@pytest.mark.spark
def test_ingest_day_by_day_finds_duplicates_of_earlier_runs(tmp_path, spark):
    from recsys_core.stages.ingest import run_ingest

    settings = ingest_settings(tmp_path)
    summary = generate_logs(SMALL, Lake(settings.lake))
    assert summary["bad_kinds"]["duplicate_across_days"] > 0
    reports = [run_ingest(settings, [SMALL.day(d)], spark=spark)[0] for d in range(SMALL.days)]
    check_reports(reports, summary)
