"""The lake's Python paths on an S3 API: the nightly publish (staging, manifest, swap), the `latest`
pointer, the reader and an idempotent rerun, moved there by ``RECSYS_LAKE_URI`` and the standard
``AWS_*`` variables only.

Stand-in: the S3 API is moto's server mode (``moto[server]``), the one stand-in of the cluster tests:
no S3-compatible server (MinIO, Ceph RGW without a Ceph cluster) installs from PyPI or Debian here.
pyarrow speaks to it over HTTP exactly as to MinIO or S3. The night's inputs are copied into the
bucket first: ingest and features are Spark jobs, and Spark's s3a needs hadoop-aws and the AWS SDK
jars from Maven, which cannot be fetched here (docs/deploy.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from recsys_core.config import Settings, load_settings
from recsys_core.contracts import INTERACTIONS, ITEM_FEATURES, RECOMMENDATIONS, USER_PROFILES
from recsys_core.io.lake import Lake
from recsys_core.io.recommendations import LATEST, RecommendationReader

from .engines import BIN, LAKE_BUCKET, assert_keeps_the_contract, run_logged

pytestmark = [pytest.mark.cluster, pytest.mark.mlflow, pytest.mark.slow]


def test_nightly_publishes_reads_and_reruns_on_the_s3_lake(pipeline, s3, tmp_path, monkeypatch):
    uri = f"s3://{LAKE_BUCKET}/lake"
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    local, remote = Lake(pipeline.settings.lake), Lake(uri)
    for table in (INTERACTIONS, USER_PROFILES, ITEM_FEATURES):
        pafs.copy_files(local.table_path(table), remote.table_path(table), local.fs, remote.fs)

    # The pipeline's own settings as a YAML file; the lake and the registry (a copy of the pipeline's
    # store, whose champion scored the local night) come from RECSYS_* variables.
    config = pipeline.settings.model_dump(mode="json", exclude={"data_root", "lake_uri"})
    config_file = tmp_path / "recsys.yaml"
    config_file.write_text(yaml.safe_dump(config))
    store = tmp_path / "mlflow.db"
    shutil.copy(Path(pipeline.settings.tracking_uri.removeprefix("sqlite:///")), store)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("RECSYS_")},
        **s3.env,
        "RECSYS_CONFIG": str(config_file),
        "RECSYS_DATA_ROOT": str(tmp_path / "data"),
        "RECSYS_LAKE_URI": uri,
        "RECSYS_REGISTRY__TRACKING_URI": f"sqlite:///{store}",
    }
    for key in list(env):
        if key.startswith("RECSYS_"):
            monkeypatch.setenv(key, env[key])
    settings: Settings = load_settings()
    assert settings.lake == uri
    day = pipeline.run_date.isoformat()
    command = [str(BIN / "recsys"), "recommend", "--date", day]

    run_logged(command, env, tmp_path / "recommend.log")
    assert_keeps_the_contract(settings, day)
    reader = RecommendationReader(settings)
    assert reader.latest_date() == day
    manifest = reader.manifest(day)
    # Same model, same inputs, same engine: the very rows the local lake got.
    assert manifest["content_digest"] == pipeline.recommend["content_digest"]
    assert manifest["checksum_sha256"] == remote.checksum(remote.partition_path(RECOMMENDATIONS, day))
    keys = s3.keys(LAKE_BUCKET, "lake/recommendations/")
    assert f"lake/recommendations/{LATEST}" in keys
    assert f"lake/recommendations/dt={day}/_manifest.json" in keys
    leftovers = [k for k in keys if ("/_staging/" in k or "/_trash/" in k) and not k.endswith("/")]
    assert not leftovers, leftovers
    user = reader.table(day)["user_id"][0].as_py()
    assert len(reader.for_user(user, day)[1]) == settings.serve.top_k

    # A rerun with the same rows leaves the published objects as they are.
    rerun = run_logged(command, env, tmp_path / "rerun.log")
    assert "unchanged" in rerun
    assert reader.manifest(day)["created_at"] == manifest["created_at"]
