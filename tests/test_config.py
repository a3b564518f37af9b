"""recsys_core.config: defaults, YAML file, environment overrides, strictness, checks at load, derived paths.

get_settings() is lru_cached, so every test builds Settings() / settings_for() directly.
Each test runs in an empty working directory with no RECSYS_* variables, so the
repository's own config/recsys.yaml and the developer's environment cannot leak in.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from recsys_core.config import Settings, settings_for
from recsys_core.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[1]
BROKEN_CASES = sorted((Path(__file__).parent / "config_cases").glob("*.yaml"))


@pytest.fixture(autouse=True)
def isolated(no_recsys_env, monkeypatch, tmp_path):
    # The project's own config/recsys.yaml is the fallback; isolate the defaults from it.
    monkeypatch.setattr("recsys_core.config.PROJECT_CONFIG_FILE", tmp_path / "no-project-config.yaml")
    return tmp_path


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment(tmp_path):
    s = Settings()
    assert s.profile == "local"
    assert s.data_root == (tmp_path / ".recsys").resolve()
    assert s.data_root.is_absolute()
    assert s.lake_uri is None
    assert s.train.epochs == 60
    assert s.train.batch_size == 128
    assert s.train.backend == "gloo"
    assert s.train.model.loss == "full"
    assert s.train.model.max_len == 50
    assert s.serve.top_k == 50
    assert s.ingest.max_reject_rate == 0.05
    assert s.registry.tracking_uri is None
    assert s.registry.gate_min_relative_improvement == 0.0


def test_yaml_file_named_by_recsys_config(monkeypatch, tmp_path):
    cfg = write_yaml(
        tmp_path / "custom.yaml",
        f"profile: cluster\n"
        f"data_root: {tmp_path / 'data'}\n"
        "train:\n  epochs: 7\n  batch_size: 16\n  model:\n    d_model: 32\n"
        "serve:\n  top_k: 5\n",
    )
    monkeypatch.setenv("RECSYS_CONFIG", str(cfg))
    s = Settings()
    assert s.profile == "cluster"
    assert s.data_root == tmp_path / "data"
    assert s.train.epochs == 7
    assert s.train.batch_size == 16
    assert s.train.model.d_model == 32
    # Keys the file does not name keep their defaults.
    assert s.train.model.n_heads == 2
    assert s.train.lr == 1e-3
    assert s.serve.top_k == 5
    assert s.serve.keep_days == 30


def test_default_yaml_in_working_directory_is_read(tmp_path):
    (tmp_path / "config").mkdir()
    write_yaml(tmp_path / "config" / "recsys.yaml", "serve:\n  top_k: 11\n")
    assert Settings().serve.top_k == 11


def test_nested_environment_override_beats_yaml(monkeypatch, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", "train:\n  epochs: 7\n  batch_size: 16\n")
    monkeypatch.setenv("RECSYS_CONFIG", str(cfg))
    monkeypatch.setenv("RECSYS_TRAIN__EPOCHS", "3")
    s = Settings()
    assert s.train.epochs == 3
    assert isinstance(s.train.epochs, int)
    # Overriding one nested key does not discard the file's siblings.
    assert s.train.batch_size == 16


def test_doubly_nested_environment_override(monkeypatch):
    monkeypatch.setenv("RECSYS_TRAIN__MODEL__LOSS", "sampled")
    monkeypatch.setenv("RECSYS_SERVE__TOP_K", "9")
    s = Settings()
    assert s.train.model.loss == "sampled"
    assert s.serve.top_k == 9


def test_explicit_overrides_beat_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_PROFILE", "cluster")
    assert Settings().profile == "cluster"
    assert settings_for(profile="local").profile == "local"


def test_invalid_environment_value_is_rejected(monkeypatch):
    monkeypatch.setenv("RECSYS_TRAIN__BACKEND", "mpi")
    with pytest.raises(ValidationError):
        Settings()


def test_recsys_config_pointing_to_missing_file_raises(monkeypatch, tmp_path):
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("RECSYS_CONFIG", str(missing))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        Settings()


def test_missing_default_file_is_fine_without_recsys_config():
    # No config/recsys.yaml in the (empty) working directory and RECSYS_CONFIG unset.
    assert not Path("config/recsys.yaml").exists()
    assert Settings().train.epochs == 60


def test_unknown_top_level_key_in_yaml_is_rejected(monkeypatch, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", "bogus_key: 1\n")
    monkeypatch.setenv("RECSYS_CONFIG", str(cfg))
    with pytest.raises(ValidationError, match="bogus_key"):
        Settings()


def test_unknown_keyword_override_is_rejected():
    with pytest.raises(ConfigError, match="bogus_key: unknown key"):
        settings_for(bogus_key=1)


def test_unknown_nested_key_in_yaml_is_rejected(monkeypatch, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", "train:\n  epoch: 3\n")  # typo of "epochs"
    monkeypatch.setenv("RECSYS_CONFIG", str(cfg))
    with pytest.raises(ValidationError, match="epoch"):
        Settings()


def test_derived_locations(tmp_path):
    root = tmp_path / "root"
    s = settings_for(data_root=root)
    assert s.lake == str(root / "lake")
    assert s.mlflow_dir == root / "mlflow"
    assert s.tracking_uri == f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    assert s.tracking_uri.startswith("sqlite:////")  # absolute path
    assert s.artifact_location == (root / "mlflow" / "artifacts").as_uri()
    assert s.airflow_home == root / "airflow"
    assert s.work_dir == root / "work"


def test_explicit_lake_and_registry_locations_win(tmp_path):
    s = settings_for(
        data_root=tmp_path,
        lake_uri="s3a://bucket/lake",
        registry={"tracking_uri": "http://mlflow:5000", "artifact_location": "s3://bucket/mlflow"},
    )
    assert s.lake == "s3a://bucket/lake"
    assert s.tracking_uri == "http://mlflow:5000"
    assert s.artifact_location == "s3://bucket/mlflow"


def test_a_tracking_server_keeps_the_artifacts_unless_told_otherwise(tmp_path):
    """With a tracking server and no artifact_location, experiments take the server's artifact root
    (proxied over HTTP), not a folder on the client that other machines cannot see."""
    remote = settings_for(data_root=tmp_path, registry={"tracking_uri": "http://127.0.0.1:5000"})
    assert remote.artifact_location is None
    assert settings_for(data_root=tmp_path).artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()


def test_lake_uri_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_LAKE_URI", "s3://recsys-lake/lake/")
    assert settings_for(data_root=tmp_path).lake == "s3://recsys-lake/lake"


def test_relative_and_home_data_root_become_absolute(monkeypatch, tmp_path):
    assert settings_for(data_root="rel/dir").data_root == tmp_path / "rel" / "dir"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings_for(data_root="~/recsys").data_root == tmp_path / "home" / "recsys"


def test_project_config_is_found_from_another_working_directory(monkeypatch, tmp_path):
    # Airflow and torchrun tasks run elsewhere; they must still read the project's YAML.
    project_file = write_yaml(tmp_path / "project.yaml", "train:\n  epochs: 7\n")
    monkeypatch.setattr("recsys_core.config.PROJECT_CONFIG_FILE", project_file)
    assert Settings().train.epochs == 7


# Configuration checked at load -------------------------------------------------------------
def expected_keys(case: Path) -> list[str]:
    """The keys a broken case must name, from its ``# expect: key [key ...]`` first line."""
    match = re.match(r"# expect: (.+)", case.read_text().splitlines()[0])
    assert match, f"{case.name} must start with '# expect: <key> [<key> ...]'"
    return match.group(1).split()


@pytest.mark.parametrize("case", BROKEN_CASES, ids=[c.stem for c in BROKEN_CASES])
def test_broken_yaml_is_rejected_at_load_naming_the_key(monkeypatch, case):
    monkeypatch.setenv("RECSYS_CONFIG", str(case))
    with pytest.raises(ValidationError) as raw:
        Settings()
    with pytest.raises(ConfigError) as readable:
        settings_for()
    for key in expected_keys(case):
        assert key in str(raw.value)
        assert f"{key}: " in str(readable.value), str(readable.value)
    assert str(readable.value).startswith(f"invalid configuration ({case})")
    assert str(case) in readable.value.hint


def test_there_are_broken_cases():
    assert len(BROKEN_CASES) >= 8


def test_several_problems_are_listed_one_per_line(monkeypatch):
    monkeypatch.setenv("RECSYS_CONFIG", str(PROJECT / "tests" / "config_cases" / "several_problems.yaml"))
    with pytest.raises(ConfigError) as info:
        settings_for()
    header, *problems = str(info.value).splitlines()
    assert header.endswith("2 problems:")
    assert [p.split(":")[0].strip() for p in problems] == ["train.rdzv_endpoint", "train.batch_size"]


def test_unknown_key_suggests_the_known_one(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_CONFIG", str(write_yaml(tmp_path / "c.yaml", "serve:\n  topk: 5\n")))
    with pytest.raises(ConfigError, match=r"serve\.topk: unknown key; did you mean serve\.top_k\?"):
        settings_for()


def test_environment_values_are_checked_too(monkeypatch):
    monkeypatch.setenv("RECSYS_FEATURES__TREND_SHORT_DAYS", "14")
    with pytest.raises(ConfigError, match=r"features\.trend_short_days: 14 is not a popularity window"):
        settings_for()


def test_gate_metric_may_be_any_reported_higher_is_better_metric():
    for metric in ("ndcg@50", "recall@20", "hitrate@10", "mrr", "mrr@50", "coverage@10", "novelty@10"):
        assert settings_for(registry={"gate_metric": metric}).registry.gate_metric == metric
    assert settings_for(eval={"ks": [5, 10, 50]}, registry={"gate_metric": "ndcg@5"}).eval.ks == [5, 10, 50]


def test_trend_windows_are_popularity_windows():
    settings = settings_for(features={"trend_short_days": 1, "trend_long_days": 7}, train={"trending_window_days": 7})
    assert settings.features.trend_windows == (1, 7)
    assert settings_for().features.trend_windows == (7, 30)


def test_invalid_yaml_syntax_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_CONFIG", str(write_yaml(tmp_path / "c.yaml", "train: [epochs: 3\n")))
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML"):
        settings_for()


@pytest.mark.parametrize("shipped", ["config/recsys.yaml", "config/cluster.yaml", "tests/recsys-test.yaml"])
def test_shipped_yaml_files_load(monkeypatch, shipped):
    monkeypatch.setenv("RECSYS_CONFIG", str(PROJECT / shipped))
    assert settings_for().registry.gate_metric == "ndcg@10"


def test_frontier_keeps_the_calibration_as_fitted_and_min_coverage_is_a_share():
    from recsys_core.config import settings_for
    from recsys_core.errors import ConfigError

    with pytest.raises(ConfigError, match="frontier_trend_scales"):
        settings_for(train={"calibration": {"frontier_trend_scales": [0.0, 0.5]}})
    with pytest.raises(ConfigError, match=r"serve\.min_coverage"):
        settings_for(serve={"min_coverage": 1.5})
    with pytest.raises(ConfigError, match=r"frontier_mmr_lambdas"):
        settings_for(train={"calibration": {"frontier_mmr_lambdas": [None, 1.2]}})
    with pytest.raises(ConfigError, match="frontier_reference_coverage"):
        settings_for(train={"calibration": {"frontier_reference_coverage": 0}})
    assert settings_for(serve={"min_coverage": 0.3}).serve.min_coverage == 0.3
    assert settings_for().serve.min_coverage is None  # the most accurate point, the calibration as fitted
