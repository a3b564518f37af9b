"""Reasons on the pipeline's published night (local engine, trained champion):

- faithfulness: for a sample of model rows, removing the reason item from the user's history and
  scoring the whole catalogue again lowers that item's score, for >= 90% of rows;
- no leakage: every reason item is in that user's history as of the run date (the lake also holds
  later days' events);
- fallback rows and rows no event supports carry a non-personal reason and no reason item.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow.compute as pc
import pytest

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.io.tables import read_interactions
from recsys_core.models.data import Sequences
from recsys_core.serving.output import POPULAR_WITH_PEERS, TRENDING
from recsys_core.timeutil import end_of_day

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]

SAMPLE = 300


@pytest.fixture(scope="module")
def night(pipeline):
    lake = Lake(pipeline.settings.lake)
    dt = pipeline.run_date
    table = lake.read_partition(RECOMMENDATIONS, dt)
    interactions = read_interactions(lake, dt, pipeline.settings.ingest.lateness_days)
    return lake, table, interactions


def test_reason_items_are_in_the_users_history_as_of_the_run_date(pipeline, night):
    lake, table, interactions = night
    history: dict[str, set[str]] = {}
    for user, item in zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()):
        history.setdefault(user, set()).add(item)
    explained = table.filter(pc.is_valid(table["reason_item_id"]))
    assert explained.num_rows > 0.5 * table.filter(pc.equal(table["source"], "model")).num_rows
    pairs = zip(explained["user_id"].to_pylist(), explained["reason_item_id"].to_pylist())
    assert all(item in history.get(user, ()) for user, item in pairs)
    # The lake holds later events too (the next day's): none of them is ever a reason.
    later = read_interactions(lake, pipeline.run_date + timedelta(days=1), pipeline.settings.ingest.lateness_days)
    after = {(u, i) for u, i in zip(later["user_id"].to_pylist(), later["item_id"].to_pylist()) if i not in history.get(u, ())}
    assert after and not after & set(zip(explained["user_id"].to_pylist(), explained["reason_item_id"].to_pylist()))
    titles = dict(zip(*lake.read_partition(ITEM_FEATURES, pipeline.run_date).select(["item_id", "title"]).to_pydict().values()))
    for item, reason in zip(explained["reason_item_id"].to_pylist()[:50], explained["reason"].to_pylist()[:50]):
        assert reason == f"Because you watched {titles[item] or f'item {item}'}"
    plain = table.filter(pc.is_null(table["reason_item_id"]))
    for source, reason in set(zip(plain["source"].to_pylist(), plain["reason"].to_pylist())):
        assert reason == (TRENDING if source == "fallback" else POPULAR_WITH_PEERS)


def test_removing_the_reason_item_lowers_the_items_score(pipeline, night):
    from recsys_core.io.registry import champion
    from recsys_core.models.bundle import ModelBundle
    from recsys_core.stages.recommend import available_catalogue

    lake, table, interactions = night
    settings, dt = pipeline.settings, pipeline.run_date
    current = champion(settings, settings.work_dir / "registry")
    bundle = ModelBundle.load(current.bundle_dir)
    profiles = lake.read_partition(USER_PROFILES, dt).sort_by("user_id")
    catalogue, _ = available_catalogue(lake.read_partition(ITEM_FEATURES, dt), settings.serve)
    column = {item: j for j, item in enumerate(catalogue["item_id"].to_pylist())}
    now = int(end_of_day(dt).timestamp())
    user_ids, sequences, inputs = bundle.user_inputs(interactions, profiles, now=now)
    row_of = {u: i for i, u in enumerate(user_ids)}
    full = bundle.scorer(inputs, catalogue)(np.arange(len(user_ids)))

    explained = table.filter(pc.is_valid(table["reason_item_id"])).to_pylist()
    sample = [explained[i] for i in np.random.default_rng(0).permutation(len(explained))[:SAMPLE]]
    items, times, rows = [], [], []
    for rec in sample:
        row = row_of[rec["user_id"]]
        keep = sequences.items[row] != bundle.prep.item_index[rec["reason_item_id"]]
        assert not keep.all(), "the reason item is in the model's view of the history"
        items.append(sequences.items[row][keep])
        times.append(sequences.times[row][keep])
        rows.append(row)
    without = Sequences([str(i) for i in range(len(sample))], items, times)
    scores = bundle.scorer(bundle.encode_inputs(without, inputs.user_feats[rows].numpy(), now), catalogue)(np.arange(len(sample)))
    cols = np.array([column[rec["item_id"]] for rec in sample])
    lowered = scores[np.arange(len(sample)), cols] < full[rows, cols]
    print(f"faithfulness on the pipeline's champion: {lowered.mean():.3f} of {len(sample)} sampled rows")
    assert lowered.mean() >= 0.9
