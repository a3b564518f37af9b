"""Cold start and exclusions on a copy of the pipeline's lake with a new user, a new item and withdrawn items.

- a user with a profile but no events is scored by the model (source "model"),
- a user with neither gets the trending items (source "fallback"),
- an item with no interactions at all is scored through its content: it has a
  finite score and a rank in the full ranking of every user,
- cold (profile-only) and fallback rows carry a non-personal reason and no reason item,
- items listed in serve.unavailable_items or whose status column says so are never recommended.
"""

from __future__ import annotations

import shutil
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.io.tables import read_interactions
from recsys_core.serving.output import POPULAR_WITH_PEERS, TRENDING
from recsys_core.windows import popularity_column

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]

NEW_USER = "zz-new-with-profile"
BARE_USER = "zz-new-no-profile"
NEW_ITEM = "zz-new-item"
WITHDRAWN = "zz-withdrawn-by-status"


def _zero(kind: pa.DataType):
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return 0
    if pa.types.is_list(kind) or pa.types.is_map(kind):
        return []
    if pa.types.is_string(kind):
        return ""
    raise TypeError(f"no zero value for non-nullable {kind}")


def republish(lake: Lake, contract, dt: date, table: pa.Table) -> None:
    staged = lake.new_staging_path(contract, f"dt={dt}")
    lake.write_parquet(table, staged)
    lake.publish(contract, dt, staged, {"lineage": "edited by test_recommend_cold_start"})


@pytest.fixture(scope="module")
def cold_lake(pipeline, tmp_path_factory):
    """The pipeline's data root, copied, with two new users and two new items (one withdrawn)."""
    root = tmp_path_factory.mktemp("cold") / "data"
    shutil.copytree(pipeline.settings.data_root, root)
    lake = Lake(str(root / "lake"))
    dt = pipeline.run_date
    profiles = lake.read_partition(USER_PROFILES, dt)
    template = (
        profiles.filter(pc.and_(pc.is_valid(profiles["gender"]), pc.is_valid(profiles["occupation"]))).slice(0, 1).to_pylist()[0]
    )
    empty = {f.name: None if f.nullable else _zero(f.type) for f in profiles.schema}
    new_rows = [
        {
            **empty,
            "user_id": NEW_USER,
            "n_events": 0,
            "age": template["age"],
            "gender": template["gender"],
            "occupation": template["occupation"],
        },
        {**empty, "user_id": BARE_USER, "n_events": 0},
    ]
    republish(lake, USER_PROFILES, dt, pa.concat_tables([profiles, pa.Table.from_pylist(new_rows, schema=profiles.schema)]))

    items = lake.read_partition(ITEM_FEATURES, dt)
    popular = items.sort_by([("pop_all", "descending")]).slice(0, 1).to_pylist()[0]
    zero = {c: 0 for c in items.column_names if c.startswith("pop_")}
    new_items = [
        {
            **popular,
            **zero,
            "item_id": NEW_ITEM,
            "title": "Brand new (content of the most popular item)",
            "trend": 0.0,
            "first_seen_ts": None,
        },
        {**popular, "item_id": WITHDRAWN, "title": "Withdrawn"},
    ]
    items = pa.concat_tables([items, pa.Table.from_pylist(new_items, schema=items.schema)])
    status = [
        "withdrawn" if i == WITHDRAWN else ("available" if n % 3 else None) for n, i in enumerate(items["item_id"].to_pylist())
    ]
    republish(lake, ITEM_FEATURES, dt, items.append_column("status", pa.array(status, pa.string())))
    return root, popular["item_id"]


def settings_for_copy(pipeline, root, **serve):
    base = pipeline.settings
    return base.model_copy(update={"data_root": root, "serve": base.serve.model_copy(update=serve)})


def test_new_users_new_items_and_exclusions(pipeline, cold_lake):
    from recsys_core.stages.recommend import run_recommend

    root, _popular = cold_lake
    dt = pipeline.run_date
    unavailable = sorted(set(Lake(pipeline.settings.lake).read_partition(RECOMMENDATIONS, dt)["item_id"].to_pylist()))[:1]
    settings = settings_for_copy(pipeline, root, unavailable_items=unavailable)
    summary = run_recommend(settings, dt)
    lake = Lake(settings.lake)
    table = lake.read_partition(RECOMMENDATIONS, dt)
    k = settings.serve.top_k

    sources = dict(zip(table["user_id"].to_pylist(), table["source"].to_pylist()))
    assert sources[NEW_USER] == "model"
    assert sources[BARE_USER] == "fallback"
    assert summary["users_source_fallback"] == sum(1 for s in sources.values() if s == "fallback") >= 1
    assert summary["users_model_profile_only"] >= 1 and summary["unavailable_items"] == 2

    # Cold and fallback rows carry a non-personal reason and no reason item.
    for user, text in ((NEW_USER, POPULAR_WITH_PEERS), (BARE_USER, TRENDING)):
        rows = table.filter(pc.equal(table["user_id"], user))
        assert rows["reason_item_id"].null_count == rows.num_rows == k and set(rows["reason"].to_pylist()) == {text}

    # The bare user gets the trending items, best first.
    items = lake.read_partition(ITEM_FEATURES, dt)
    allowed = items.filter(pc.invert(pc.is_in(items["item_id"], pa.array([WITHDRAWN, *unavailable]))))
    window = popularity_column(settings.train.trending_window_days)
    popularity = dict(zip(allowed["item_id"].to_pylist(), allowed[window].to_pylist()))
    bare = table.filter(pc.equal(table["user_id"], BARE_USER)).sort_by("rank")
    assert [popularity[i] for i in bare["item_id"].to_pylist()] == sorted(popularity.values(), reverse=True)[:k]
    assert (np.diff(bare["score"].to_numpy()) <= 0).all()

    # The never-interacted item carries the content of the most popular one: the model puts it in
    # real top-K lists through that content (its id embedding is the untrained padding row).
    assert pc.sum(pc.equal(table["item_id"], NEW_ITEM)).as_py() >= 1

    # Nobody gets a withdrawn or unavailable item.
    recommended = set(table["item_id"].to_pylist())
    assert WITHDRAWN not in recommended and not recommended & set(unavailable)


def test_an_item_without_interactions_is_ranked_through_its_content(pipeline, cold_lake):
    from recsys_core.stages.recommend import run_recommend

    root, _ = cold_lake
    dt = pipeline.run_date
    lake = Lake(str(root / "lake"))
    interactions = read_interactions(lake, dt, pipeline.settings.ingest.lateness_days)
    assert NEW_ITEM not in set(interactions["item_id"].to_pylist())
    catalogue = lake.read_partition(ITEM_FEATURES, dt).num_rows - 1  # the withdrawn item never counts
    most_seen = max(
        interactions.group_by("user_id").aggregate([("item_id", "count_distinct")])["item_id_count_distinct"].to_pylist()
    )
    full = catalogue - most_seen  # every user's whole list of unseen items fits in K
    settings = settings_for_copy(pipeline, root, top_k=full)
    run_recommend(settings, dt)
    table = lake.read_partition(RECOMMENDATIONS, dt)
    model = table.filter(pc.equal(table["source"], "model"))
    new_rows = model.filter(pc.equal(model["item_id"], NEW_ITEM))
    # The most active users' lists are their whole unseen catalogue: the new item must be there,
    # with a finite score and a rank (it is also in many other lists).
    counts = dict(zip(*interactions.group_by("user_id").aggregate([("item_id", "count_distinct")]).to_pydict().values()))
    whole = {u for u, n in counts.items() if n == most_seen}
    assert whole <= set(new_rows["user_id"].to_pylist())
    assert np.isfinite(new_rows["score"].to_numpy()).all()
    assert ((new_rows["rank"].to_numpy() >= 1) & (new_rows["rank"].to_numpy() <= full)).all()
