"""recsys_core.models.data and .dataset: vocabularies, sequences, splits, windows, tensors."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys_core.config import ModelSettings
from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, USER_PROFILES
from recsys_core.errors import DataError
from recsys_core.models.data import (
    AGE_BUCKETS,
    LeaveLastOut,
    Preprocessing,
    Sequences,
    build_sequences,
    gaps_of,
    left_pad,
    query_gaps_of,
)
from recsys_core.training.dataset import (
    DATASET_VERSION,
    TrainingDataset,
    build_dataset,
    future_targets,
    model_config,
    prepare,
    seen_csr,
    training_windows,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SEQ_COLUMNS = ["user_id", "item_id", "event_ts", "source_file", "line_no"]


def prep(**kw) -> Preprocessing:
    base = {
        "item_ids": ["A", "B", "C", "D", "E"],
        "genres": ["Action", "Comedy", "Drama"],
        "gender_vocab": ["F", "M"],
        "occupation_vocab": ["artist", "engineer"],
        "text_dim": 2,
        "release_year_mean": 1990.0,
        "release_year_std": 10.0,
    }
    base.update(kw)
    return Preprocessing(**base)


def events(rows: list[tuple]) -> pa.Table:
    """(user, item, seconds after T0, source_file, line_no) → an interactions-shaped table."""
    schema = pa.schema([INTERACTIONS.schema.field(c) for c in SEQ_COLUMNS])
    return pa.Table.from_pylist(
        [
            {"user_id": u, "item_id": i, "event_ts": T0 + timedelta(seconds=s), "source_file": f, "line_no": n}
            for u, i, s, f, n in rows
        ],
        schema=schema,
    )


def item_features(rows: list[dict]) -> pa.Table:
    full = [{"item_id": None, "title": None, "genres": None, "release_year": None, "text_embedding": None, **r} for r in rows]
    schema = pa.schema([ITEM_FEATURES.schema.field(c) for c in ("item_id", "title", "genres", "release_year", "text_embedding")])
    return pa.Table.from_pylist(full, schema=schema)


def user_profiles(rows: list[dict]) -> pa.Table:
    schema = pa.schema([USER_PROFILES.schema.field(c) for c in ("user_id", "age", "gender", "occupation")])
    return pa.Table.from_pylist(rows, schema=schema)


# Sequences -----------------------------------------------------------------------


def test_build_sequences_orders_by_time_then_file_then_line():
    p = prep()
    rows = [
        ("u1", "E", 50, "z.gz", 1),  # latest
        ("u1", "C", 10, "b.gz", 1),  # tie at t=10: file b after a
        ("u1", "B", 10, "a.gz", 9),  # tie at t=10, file a: line 9 after line 2
        ("u1", "A", 10, "a.gz", 2),
        ("u1", "D", 5, "zz.gz", 100),  # earliest, despite its file and line
        ("u2", "B", 1, "a.gz", 3),
    ]
    for seed in range(3):  # input order must not matter
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        seqs = build_sequences(events(shuffled), p, ["u1", "u2"])
        np.testing.assert_array_equal(seqs.items[0], [4, 1, 2, 3, 5])  # D, A, B, C, E
        np.testing.assert_array_equal(seqs.times[0], T0.timestamp() + np.array([5, 10, 10, 10, 50]))
        np.testing.assert_array_equal(seqs.items[1], [2])


def test_build_sequences_skips_unknown_items_and_keeps_requested_user_order():
    p = prep()
    seqs = build_sequences(
        events(
            [("u1", "A", 1, "f", 1), ("u1", "NOT-IN-CATALOGUE", 2, "f", 2), ("u1", "C", 3, "f", 3), ("u3", "nope", 1, "f", 4)]
        ),
        p,
        ["ghost", "u3", "u1"],
    )
    assert seqs.user_ids == ["ghost", "u3", "u1"]
    np.testing.assert_array_equal(seqs.items[2], [1, 3])
    assert len(seqs.items[0]) == 0 and len(seqs.times[0]) == 0  # no events at all
    assert len(seqs.items[1]) == 0  # only events outside the catalogue
    assert seqs.items[0].dtype == np.int64 and seqs.times[0].dtype == np.int64
    assert seqs.items[2].dtype == np.int64 and seqs.times[2].dtype == np.int64


def test_build_sequences_keeps_only_the_first_interaction_with_an_item():
    rows = [
        ("u1", "A", 30, "f", 3),  # repeat of A: dropped
        ("u1", "A", 10, "f", 1),
        ("u1", "B", 20, "f", 2),
        ("u1", "B", 20, "f", 5),  # same second, later line: dropped
        ("u2", "A", 40, "f", 4),  # another user's A is their own first
    ]
    seqs = build_sequences(events(rows), prep(), ["u1", "u2"])
    np.testing.assert_array_equal(seqs.items[0], [1, 2])
    np.testing.assert_array_equal(seqs.times[0], T0.timestamp() + np.array([10, 20]))
    np.testing.assert_array_equal(seqs.items[1], [1])


def test_build_sequences_first_interaction_across_record_batches():
    # Several chunks (as read from several Parquet files): users must not be confused across chunks.
    part1 = events([("u1", "A", 1, "f1", 1), ("u2", "B", 1, "f1", 2)])
    part2 = events([("u2", "A", 2, "f2", 1), ("u1", "B", 2, "f2", 2), ("u3", "A", 3, "f2", 3)])
    part3 = events([("u1", "A", 3, "f3", 1), ("u3", "C", 4, "f3", 2)])
    table = pa.concat_tables([part1, part2, part3])
    assert table.column("user_id").num_chunks == 3
    seqs = build_sequences(table, prep(), ["u1", "u2", "u3"])
    assert [s.tolist() for s in seqs.items] == [[1, 2], [2, 1], [1, 3]]


def test_build_sequences_without_interactions():
    seqs = build_sequences(events([]), prep(), ["u1"])
    assert len(seqs.items) == 1 and len(seqs.items[0]) == 0


def test_leave_last_out_split():
    seqs = Sequences(
        user_ids=["long", "short", "three"],
        items=[np.array([1, 2, 3, 4, 5]), np.array([4, 2]), np.array([5, 3, 1])],
        times=[np.array([10, 20, 30, 40, 50]), np.array([1, 2]), np.array([7, 8, 9])],
    )
    s = LeaveLastOut.split(seqs)
    np.testing.assert_array_equal(s.train[0], [1, 2, 3])
    np.testing.assert_array_equal(s.train_times[0], [10, 20, 30])
    np.testing.assert_array_equal(s.valid_input[0], [1, 2, 3])
    np.testing.assert_array_equal(s.test_input[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(s.test_times[0], [10, 20, 30, 40])
    np.testing.assert_array_equal(s.valid_target, [4, 0, 3])  # second last
    np.testing.assert_array_equal(s.test_target, [5, 0, 1])  # last
    # Too short to evaluate: everything is training data, no target.
    np.testing.assert_array_equal(s.train[1], [4, 2])
    np.testing.assert_array_equal(s.test_input[1], [4, 2])
    np.testing.assert_array_equal(s.train[2], [5])


def test_leave_last_out_never_trains_on_targets():
    rng = np.random.default_rng(0)
    items = [rng.permutation(np.arange(1, 30))[: rng.integers(0, 29)] for _ in range(20)]
    s = LeaveLastOut.split(Sequences([str(i) for i in range(20)], items, [np.arange(len(x)) for x in items]))
    for u in range(len(items)):
        if s.test_target[u]:
            assert s.test_target[u] not in s.train[u] and s.valid_target[u] not in s.train[u]
            assert s.valid_target[u] not in s.valid_input[u]


def test_left_pad():
    out = left_pad([np.array([1, 2, 3]), np.array([], dtype=np.int64), np.arange(4, 10)], 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [0, 0, 0, 0], [6, 7, 8, 9]])
    assert out.dtype == np.int64
    assert left_pad([], 3).shape == (0, 3)


def test_gaps_of():
    out = gaps_of([np.array([100, 160, 400]), np.array([], dtype=np.int64), np.array([5])], 4)
    np.testing.assert_array_equal(out, [[0, 0, 60, 240], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_training_windows_cover_every_step_exactly_once():
    n, length = 25, 5
    seq = np.arange(1, n + 1)  # distinct items: a step is identified by its (input, target) pair
    times = np.cumsum(np.arange(1, n + 1)) * 60
    seqs = Sequences(
        ["long", "tiny", "empty"],
        [seq, np.array([7]), np.zeros(0, dtype=np.int64)],
        [times, np.array([1]), np.zeros(0, dtype=np.int64)],
    )
    split = LeaveLastOut.split(seqs)
    train = split.train[0]
    assert len(train) == n - 2
    windows = training_windows(split, length)
    inputs, targets, gaps, users = windows.inputs, windows.targets, windows.gaps, windows.users
    steps = [(int(i), int(t)) for x, y, u in zip(inputs, targets, users) if u == 0 for i, t in zip(x, y)]
    # Step 0 predicts the first item from an empty history (input 0), then each next item.
    expected = [(0, int(train[0]))] + [(int(train[j]), int(train[j + 1])) for j in range(len(train) - 1)]
    assert sorted(steps) == sorted(expected)
    assert len(steps) == len(set(steps)) == len(train)
    assert all(1 <= len(x) <= length and len(x) == len(y) == len(g) for x, y, g in zip(inputs, targets, gaps))
    # "tiny" keeps its single event for training (one empty-history step); "empty" yields nothing.
    assert sorted(set(users.tolist())) == [0, 1]
    assert targets[0][-1] == train[-1]  # newest window first
    # Gaps are aligned with the inputs: the gap before each input event (0 for the empty-history step).
    train_gaps = np.diff(split.train_times[0], prepend=split.train_times[0][:1])
    for x, g in zip(inputs[: len(inputs) - 1], gaps):
        np.testing.assert_array_equal(g, np.where(x > 0, train_gaps[np.maximum(x - 1, 0)], 0))
    # Query gaps run from each input event to its target: the gap before the target event.
    for y, q, u in zip(targets, windows.query_gaps, users):
        if u == 0:
            np.testing.assert_array_equal(q, train_gaps[y - 1])


def test_query_gaps_run_to_the_next_event_then_to_now():
    times = [np.array([100, 160, 400]), np.array([], dtype=np.int64), np.array([5])]
    np.testing.assert_array_equal(query_gaps_of(times, 4), [[0, 60, 240, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(query_gaps_of(times, 4, now=1_000), [[0, 60, 240, 600], [0, 0, 0, 0], [0, 0, 0, 995]])
    # One moment per user, and never negative (an event after "now" reads as zero).
    np.testing.assert_array_equal(query_gaps_of(times, 2, now=np.array([300, 0, 9])), [[240, 0], [0, 0], [0, 4]])


def test_future_targets_stay_within_the_horizon_of_each_step():
    day = 86_400
    seq = np.arange(1, 9)
    times = np.array([0, 10, 20, 2 * day, 2 * day + 5, 9 * day, 9 * day + 1, 9 * day + 2])
    split = LeaveLastOut.split(Sequences(["u"], [seq], [times]), min_events=99)
    future = future_targets(split, 3, horizon_days=1, samples=16, seed=0)
    windows = training_windows(split, 3)
    assert [len(f) for f in future] == [len(t) for t in windows.targets]
    for targets, drawn in zip(windows.targets, future):
        for target, items in zip(targets, drawn):
            # Within a day of the target event: the target itself or a later item of the same burst.
            horizon = times[target - 1] + day
            assert all(target <= item and times[item - 1] < horizon for item in items), (target, items)
    # Drawn with a seed: the same dataset every time, and more than the next item alone.
    again = future_targets(split, 3, horizon_days=1, samples=16, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(future, again))
    assert len(np.unique(np.concatenate([f.ravel() for f in future]))) == len(seq)
    assert any(len(np.unique(row)) > 1 for f in future for row in f)


def test_training_windows_short_sequence_is_one_window():
    seqs = Sequences(["u"], [np.array([3, 1, 4, 1, 5])], [np.arange(5)])
    split = LeaveLastOut.split(seqs, min_events=99)  # keep the whole sequence for training
    windows = training_windows(split, 10)
    inputs, targets = windows.inputs, windows.targets
    assert len(inputs) == 1
    np.testing.assert_array_equal(inputs[0], [0, 3, 1, 4, 1])
    np.testing.assert_array_equal(targets[0], [3, 1, 4, 1, 5])


# Preprocessing -----------------------------------------------------------------


def test_preprocessing_round_trip_through_json():
    p = prep()
    again = Preprocessing.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again.to_dict() == p.to_dict()
    assert again.item_index == p.item_index == {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5}
    assert again.n_items == 5
    assert again.content_dim == 3 + 2 + 1
    assert again.user_cardinalities == (len(AGE_BUCKETS) + 1, 3, 3)


def test_preprocessing_fit():
    items = item_features(
        [
            {"item_id": "b", "genres": ["Drama", "Action"], "release_year": 2000, "text_embedding": [0.1, 0.2, 0.3]},
            {"item_id": "a", "genres": ["Comedy"], "release_year": 1990, "text_embedding": [0.0, 0.0, 1.0]},
            {"item_id": "c", "genres": None, "release_year": None, "text_embedding": None},
        ]
    )
    users = user_profiles(
        [
            {"user_id": "u1", "age": 30, "gender": "M", "occupation": "writer"},
            {"user_id": "u2", "age": None, "gender": None, "occupation": "artist"},
            {"user_id": "u3", "age": 40, "gender": "F", "occupation": ""},
        ]
    )
    p = Preprocessing.fit(items, users)
    assert p.item_ids == ["a", "b", "c"]  # sorted, so indices do not depend on input order
    assert p.genres == ["Action", "Comedy", "Drama"]
    assert p.gender_vocab == ["F", "M"]
    assert p.occupation_vocab == ["artist", "writer"]
    assert p.text_dim == 3
    assert p.release_year_mean == pytest.approx(1995.0)
    assert p.release_year_std == pytest.approx(5.0)


def test_preprocessing_fit_with_one_release_year_does_not_divide_by_zero():
    items = item_features([{"item_id": "a", "genres": [], "release_year": 1999}, {"item_id": "b", "release_year": 1999}])
    users = user_profiles([{"user_id": "u", "age": None, "gender": None, "occupation": None}])
    p = Preprocessing.fit(items, users)
    assert p.release_year_std == 1.0 and p.text_dim == 0 and p.genres == []
    m = p.content_matrix(items)
    assert m.shape == (3, 1) and np.isfinite(m).all() and m[1, 0] == 0.0


def test_content_matrix_genre_multi_hot_text_and_year():
    p = prep()
    features = item_features(
        [
            {"item_id": "B", "genres": ["Comedy", "Drama", "Western"], "release_year": 2010, "text_embedding": [0.5, -0.5]},
            {"item_id": "A", "genres": ["Action"], "release_year": 1990, "text_embedding": None},
            {"item_id": "D", "genres": None, "release_year": None, "text_embedding": [1.0, 2.0]},
            {"item_id": "not-in-vocab", "genres": ["Action"], "release_year": 2000, "text_embedding": [9.0, 9.0]},
        ]
    )
    m = p.content_matrix(features)
    assert m.shape == (6, 6) and m.dtype == np.float32
    np.testing.assert_array_equal(m[0], 0)  # padding row
    np.testing.assert_allclose(m[2], [0, 1, 1, 0.5, -0.5, 2.0])  # B: Comedy+Drama, unknown Western ignored
    np.testing.assert_allclose(m[1], [1, 0, 0, 0, 0, 0.0])  # A: year at the mean scales to 0
    np.testing.assert_allclose(m[4], [0, 0, 0, 1.0, 2.0, 0])  # D: no genres, no year
    np.testing.assert_array_equal(m[3], 0)  # C: no feature row at all
    np.testing.assert_array_equal(m[5], 0)
    assert set(np.unique(m[1:, :3])) <= {0.0, 1.0}


def test_user_features_encoding_and_unknown_categories():
    p = prep()
    profiles = user_profiles(
        [
            {"user_id": "u1", "age": 17, "gender": "F", "occupation": "engineer"},
            {"user_id": "u2", "age": 18, "gender": "X", "occupation": "astronaut"},
            {"user_id": "u3", "age": None, "gender": None, "occupation": None},
            {"user_id": "u4", "age": 60, "gender": "M", "occupation": "artist"},
            {"user_id": "u5", "age": 0, "gender": "", "occupation": ""},
        ]
    )
    ids, feats = p.user_features(profiles)
    assert ids == ["u1", "u2", "u3", "u4", "u5"]
    assert feats.dtype == np.int64 and feats.shape == (5, 3)
    np.testing.assert_array_equal(feats[:, 1], [1, 0, 0, 2, 0])  # gender: F=1, M=2, unknown/None/"" → 0
    np.testing.assert_array_equal(feats[:, 2], [2, 0, 0, 1, 0])  # occupation: artist=1, engineer=2
    np.testing.assert_array_equal(feats[:, 0], [1, 2, 0, 7, 1])  # age buckets; missing age → 0
    assert (feats < np.array(p.user_cardinalities)).all()


def test_user_features_without_missing_ages():
    _ids, feats = prep().user_features(user_profiles([{"user_id": "u", "age": 35, "gender": "M", "occupation": "x"}]))
    np.testing.assert_array_equal(feats, [[4, 2, 0]])


# The dataset file ------------------------------------------------------------------


def test_seen_csr():
    indptr, indices = seen_csr([np.array([3, 1, 3]), np.array([], dtype=np.int64), np.array([2])])
    assert indptr.tolist() == [0, 2, 2, 3]
    assert indices.tolist() == [0, 2, 1]  # 0-based, distinct, sorted per user
    assert indices.dtype == torch.int64


def small_world():
    items = item_features(
        [
            {
                "item_id": f"i{j}",
                "genres": ["Drama"] if j % 2 else ["Comedy"],
                "release_year": 1980 + j,
                "text_embedding": [float(j), 1.0],
            }
            for j in range(6)
        ]
    )
    users = user_profiles(
        [
            {"user_id": "u2", "age": 25, "gender": "F", "occupation": "artist"},
            {"user_id": "u1", "age": 40, "gender": "M", "occupation": "engineer"},
            {"user_id": "u3", "age": None, "gender": None, "occupation": None},
        ]
    )
    rows = [("u1", f"i{j % 6}", 60 * j, "f.gz", j) for j in range(9)] + [
        ("u2", "i3", 5, "f.gz", 100),
        ("u2", "i4", 900, "f.gz", 101),
    ]
    return events(rows), users, items


def test_prepare_and_build_dataset():
    interactions, users, items = small_world()
    data = prepare(interactions, users, items)
    assert data.sequences.user_ids == ["u1", "u2", "u3"]  # profiles sorted by user id
    cfg = model_config(data, ModelSettings(max_len=4, d_model=8, n_heads=2, n_layers=1))
    assert cfg.n_items == 6 and cfg.content_dim == data.prep.content_dim == 1 + 2 + 1 + 1
    t = build_dataset(data, cfg)
    train = t.train.inputs
    assert train.items.shape[1] == 4
    assert train.items.shape == t.train.targets.shape == train.gaps.shape == train.query_gaps.shape
    # Targets are the next items of the inputs; padding (no target) has no input either,
    # and an input 0 with a target is the empty-history first step.
    inputs, targets = train.items, t.train.targets
    assert torch.all(inputs[targets == 0] == 0)
    assert torch.all((inputs == 0).sum(dim=1) - (targets == 0).sum(dim=1) <= 1)
    real = inputs[:, :-1] > 0  # left padding: a real position is followed by a real one
    assert torch.equal(targets[:, :-1][real], inputs[:, 1:][real])
    assert train.gaps.min() >= 0 and train.gaps.max() < 24
    assert train.user_feats.shape == (len(targets), 3)  # each window carries its user's features
    assert t.valid.targets.tolist() == [data.sequences.items[0][-2], 0, 0]
    assert t.test.targets.tolist() == [data.sequences.items[0][-1], 0, 0]
    assert t.item_content.shape == (7, cfg.content_dim)
    assert t.test.inputs.user_feats.shape == (3, 3)
    assert t.config == cfg
    again = build_dataset(prepare(*small_world()), cfg)
    assert again.fingerprint == t.fingerprint


def test_build_dataset_without_time_or_content_zeroes_them():
    data = prepare(*small_world())
    cfg = model_config(data, ModelSettings(max_len=4, use_time=False, use_content=False, use_user_features=False))
    assert cfg.content_dim == 0 and cfg.user_cardinalities == ()
    t = build_dataset(data, cfg)
    assert t.train.inputs.gaps.abs().sum() == 0 and t.test.inputs.gaps.abs().sum() == 0
    assert t.train.inputs.query_gaps.abs().sum() == 0 and t.valid.inputs.query_gaps.abs().sum() == 0
    assert t.item_content.shape == (7, 0)


def test_saved_dataset_loads_with_weights_only(tmp_path):
    data = prepare(*small_world())
    t = build_dataset(data, model_config(data, ModelSettings(max_len=4)))
    path = tmp_path / "deep" / "dataset.pt"
    t.save(path)
    assert not list(path.parent.glob("*.tmp"))
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == DATASET_VERSION and set(t.tensors()) < set(raw)
    loaded = TrainingDataset.load(path)
    assert loaded.config == t.config and loaded.fingerprint == t.fingerprint
    for key, value in t.tensors().items():
        assert torch.equal(loaded.tensors()[key], value), key


def test_a_dataset_of_another_version_is_refused_with_the_fix(tmp_path):
    data = prepare(*small_world())
    path = tmp_path / "dataset.pt"
    build_dataset(data, model_config(data, ModelSettings(max_len=4))).save(path)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "version": DATASET_VERSION + 1}, path)
    with pytest.raises(DataError, match=f"format version {DATASET_VERSION + 1}.*reads version {DATASET_VERSION}") as error:
        TrainingDataset.load(path)
    assert "prepare step" in error.value.hint
    del raw["version"]  # the unversioned files written before the format had a version
    torch.save(raw, path)
    with pytest.raises(DataError, match="format version 1"):
        TrainingDataset.load(path)


def test_trend_table_counts_each_window_before_the_start_of_each_day():
    from recsys_core.models.data import TrendTable

    day = 86_400
    rows = [("u", "A", 0, "f", 1), ("v", "A", 100, "f", 2), ("u", "A", day + 5, "f", 3), ("u", "A", 5 * day, "f", 4)]
    table = events(rows)
    first = int(T0.timestamp()) // day
    trend = TrendTable.build(table, prep(), windows=(1, 3), until_day=first + 6)
    a = prep().item_index["A"]
    got = np.expm1(trend.values[:, a, :])  # back to counts
    # start of day: 0 -> nothing yet; 1 -> day0 (2); 2 -> day1 (1) | days0-1 (3); 4 -> day3 (0) | days1-3 (1);
    # 6 -> day5 (1) | days3-5 (1)
    np.testing.assert_allclose(got[0], [0, 0], atol=1e-5)
    np.testing.assert_allclose(got[1], [2, 2], atol=1e-5)
    np.testing.assert_allclose(got[2], [1, 3], atol=1e-5)
    np.testing.assert_allclose(got[4], [0, 1], atol=1e-5)
    np.testing.assert_allclose(got[6], [1, 1], atol=1e-5)
    assert trend.row(first + 100) == len(trend.values) - 1  # clipped to the table
