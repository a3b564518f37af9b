"""The nightly job's two scoring engines publish the same table; MMR re-ranking on both."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from recsys_core.contracts import ITEM_FEATURES, RECOMMENDATIONS
from recsys_core.io.lake import Lake

pytestmark = [pytest.mark.spark, pytest.mark.torchrun, pytest.mark.mlflow, pytest.mark.slow]


def copy_pipeline(pipeline, dest, **serve):
    """Settings of a private copy of the pipeline's data root (lake, MLflow store, downloaded champion)."""
    shutil.copytree(pipeline.settings.data_root, dest)
    base = pipeline.settings
    return base.model_copy(update={"data_root": dest, "serve": base.serve.model_copy(update=serve)})


def night(settings, dt) -> pa.Table:
    return Lake(settings.lake).read_partition(RECOMMENDATIONS, dt).sort_by([("user_id", "ascending"), ("rank", "ascending")])


def assert_same_table(a: pa.Table, b: pa.Table) -> None:
    assert a.num_rows == b.num_rows
    for column in ("user_id", "rank", "item_id", "source", "model_name", "model_version", "reason_item_id", "reason"):
        assert a[column].equals(b[column]), column
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=0, atol=1e-5)


def test_spark_engine_publishes_the_same_table_as_local(pipeline, tmp_path, monkeypatch):
    from recsys_core.models.bundle import ModelBundle
    from recsys_core.stages import recommend
    from recsys_core.stages.recommend import run_recommend

    settings = copy_pipeline(pipeline, tmp_path / "data", engine="spark")
    lake = Lake(settings.lake)
    reference = night(pipeline.settings, pipeline.run_date)  # published by the local engine
    lake.fs.delete_dir(lake.partition_path(RECOMMENDATIONS, pipeline.run_date))

    def driver_must_not(what):
        def refuse(*args, **kwargs):
            raise AssertionError(f"the Spark engine's driver {what}")

        return refuse

    # The executors are other processes (Spark's Python workers): these hold on the driver only.
    monkeypatch.setattr(ModelBundle, "user_inputs", driver_must_not("encoded users"))
    monkeypatch.setattr(recommend, "read_interactions", driver_must_not("read the interactions"))
    monkeypatch.setattr(recommend, "score_and_explain", driver_must_not("scored users"))
    summary = run_recommend(settings, pipeline.run_date)  # Spark session from the settings (local[*] by default)
    assert summary["engine"] == "spark" and summary["status"] == "published"
    published = night(settings, pipeline.run_date)
    assert_same_table(reference, published)
    manifest = lake.read_manifest(lake.partition_path(RECOMMENDATIONS, pipeline.run_date))
    assert manifest["engine"] == "spark" and manifest["rows"] == published.num_rows
    local = pipeline.recommend
    # Not the content digest: it hashes the scores' bits, and a user's score may differ in its last
    # bits with the batch the GEMM saw it in (the tolerance of assert_same_table).
    for figure in ("users", "rows", "fallback_users", "users_model_profile_only", "rows_with_reason_item"):
        assert summary[figure] == local[figure], figure
    # Each user's K rows sit in one file: the task that scored the user wrote them.
    files = lake.data_files(lake.partition_path(RECOMMENDATIONS, pipeline.run_date))
    owners = [set(pq.read_table(f, filesystem=lake.fs, columns=["user_id"])["user_id"].to_pylist()) for f in files]
    assert len(files) > 1 and sum(len(o) for o in owners) == summary["users"]


def test_executors_load_the_champion_from_the_lake_checked_by_its_digest(pipeline, tmp_path):
    from recsys_core.errors import ModelError
    from recsys_core.io.registry import champion
    from recsys_core.models.bundle import META, ModelBundle
    from recsys_core.serving.spark_score import BundleSource, load_bundle
    from recsys_core.stages.recommend import MODELS, champion_on_lake

    settings = copy_pipeline(pipeline, tmp_path / "data")
    lake = Lake(settings.lake)
    bundle_dir = champion(settings, settings.work_dir / "registry").bundle_dir
    source = champion_on_lake(lake, bundle_dir)
    assert champion_on_lake(lake, bundle_dir) == source  # one copy per content
    assert [i.base_name for i in lake.fs.get_file_info(pafs.FileSelector(lake.path(MODELS)))] == [source.digest]
    loaded = load_bundle(source)
    assert load_bundle(source) is loaded  # once per worker
    expected = ModelBundle.load(bundle_dir).model.state_dict()
    assert all(torch.equal(loaded.model.state_dict()[name], value) for name, value in expected.items())

    tampered = lake.path("tampered")
    lake.fs.create_dir(tampered)
    for info in lake.fs.get_file_info(pafs.FileSelector(source.folder)):
        lake.fs.copy_file(info.path, f"{tampered}/{info.base_name}")
    with lake.fs.open_output_stream(f"{tampered}/{META}") as out:
        out.write(b"{}")
    with pytest.raises(ModelError, match="does not match its digest"):
        load_bundle(BundleSource(lake.fs, tampered, source.digest))


def test_mmr_rerank_is_the_same_on_both_engines_and_more_diverse(pipeline, tmp_path):
    from recsys_core.stages.recommend import run_recommend

    local = copy_pipeline(pipeline, tmp_path / "local", mmr_lambda=0.5)
    spark = copy_pipeline(pipeline, tmp_path / "spark", mmr_lambda=0.5, engine="spark")
    assert run_recommend(local, pipeline.run_date)["status"] == "published"
    assert run_recommend(spark, pipeline.run_date)["status"] == "published"
    plain = night(pipeline.settings, pipeline.run_date)
    diverse = night(local, pipeline.run_date)
    assert_same_table(diverse, night(spark, pipeline.run_date))

    k = local.serve.top_k
    scores = diverse["score"].to_numpy().reshape(-1, k)
    assert (np.diff(scores, axis=1) <= 0).all()  # the published MMR objective never increases
    items = Lake(local.lake).read_partition(ITEM_FEATURES, pipeline.run_date)
    genres = dict(zip(items["item_id"].to_pylist(), items["genres"].to_pylist()))

    def mean_distinct_genres(table: pa.Table) -> float:
        lists = np.array(table["item_id"].to_pylist(), dtype=object).reshape(-1, k)
        return float(np.mean([len({g for item in row for g in (genres[item] or [])}) for row in lists]))

    assert mean_distinct_genres(diverse) > mean_distinct_genres(plain)
    # Same users and the first pick is always the model's best item.
    assert diverse["user_id"].equals(plain["user_id"])
    firsts = lambda t: t.filter(pa.compute.equal(t["rank"], 1))["item_id"]  # noqa: E731
    model_rows = pa.compute.equal(plain.filter(pa.compute.equal(plain["rank"], 1))["source"], "model")
    assert firsts(diverse).filter(model_rows).equals(firsts(plain).filter(model_rows))


def test_an_item_adjustment_is_served_alike_by_both_engines(pipeline, tmp_path):
    """The champion's item adjustment (models.adjustment) goes through the matrix-product form of
    both engines: the same night on each, and not the unadjusted night."""
    from recsys_core.io.registry import champion
    from recsys_core.models.adjustment import ItemAdjustment
    from recsys_core.models.bundle import ModelBundle
    from recsys_core.stages.recommend import run_recommend

    copies = {
        "local": copy_pipeline(pipeline, tmp_path / "local"),
        "spark": copy_pipeline(pipeline, tmp_path / "spark", engine="spark"),
    }
    for settings in copies.values():
        bundle_dir = champion(settings, settings.work_dir / "registry").bundle_dir
        bundle = ModelBundle.load(bundle_dir)
        n = len(bundle.prep.item_ids)
        rng = np.random.default_rng(0)
        bundle.adjustment = ItemAdjustment(
            1.0, 0.5, rng.normal(size=n).astype(np.float32), rng.uniform(0.5, 2, n).astype(np.float32)
        )
        bundle.save(bundle_dir)
        assert ModelBundle.load(bundle_dir).adjustment.centering == 1.0
        assert run_recommend(settings, pipeline.run_date)["status"] == "published"
    adjusted = night(copies["local"], pipeline.run_date)
    assert_same_table(adjusted, night(copies["spark"], pipeline.run_date))
    plain = night(pipeline.settings, pipeline.run_date)
    model_rows = pa.compute.equal(plain["source"], "model")
    assert not adjusted.filter(model_rows)["item_id"].equals(plain.filter(model_rows)["item_id"])
