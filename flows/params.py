"""The nightly run's parameters: one typed model, so Prefect's run form shows every knob with its
description, and a deployment can override any of them by name (`--param params='{...}'`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models_src.params import GatBprParams, RatingParams, search_space
from tasks.registry.retention import RetentionPolicy
from tasks.validate.thresholds import ValidationThresholds

ModelKind = Literal["gat-bpr", "rating"]
# The models' parameters are defined once, in models_src/params.py (the trainers, the benchmark
# and the tuner read the same classes); they are re-exported here for the flows.
__all__ = ["GatBprParams", "RatingParams", "search_space", "NightlyParams", "TuneParams"]


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SplitParams(_Params):
    """How interactions split into train / val / test. Stable: a pair keeps its split as data
    grows, so tonight's champion and challenger are compared on held-out data neither saw."""

    method: Literal["auto", "hash", "time", "day-hash"] = Field(
        "auto",
        description="auto: time when the dataset has timestamps, else hash. time: a forward "
        "holdout, the latest events are test and the ones before them val, so the gate picks "
        "the model that predicts the next days; hash: each (user, item) pair by a hash of it "
        "and the salt; day-hash: whole days by a hash of the day and the salt.",
    )
    val_ratio: float = Field(0.15, gt=0, lt=0.5, description="Share of pairs for validation.")
    test_ratio: float = Field(0.15, gt=0, lt=0.5, description="Share of pairs for test.")
    holdout_days: float | None = Field(
        7.0,
        gt=0,
        description="The time split's held-out days: test is the last ones and val the ones "
        "before (each at least 5 % of the events), so the gate judges on the days like the "
        "ones a model serves next. None: val_ratio and test_ratio of the events.",
    )
    salt: str = Field(
        "encore",
        description="Changing it reshuffles the hash splits: champions evaluated under the old "
        "salt are then judged by first-night rules and not warm-started from.",
    )


class GateParams(_Params):
    """Who serves tonight: the challenger, tonight's baselines or the champion, compared paired
    per user on val, test confirming (see models_src/gate.py)."""

    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="Two-sided confidence of every paired interval."
    )
    tolerance: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Non-inferiority margin on Recall@K and NDCG@K, as a share of the "
        "champion's value: the interval's lower bound must stay above -margin.",
    )
    rmse_tolerance: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="Non-inferiority margin on RMSE, as a share of the champion's.",
    )
    min_gain: float = Field(
        0.02,
        ge=0,
        description="Better enough to replace the champion: the lower bound of the val "
        "Recall@K difference above this share of the champion's value.",
    )
    rmse_min_gain: float = Field(
        0.005,
        ge=0,
        description="The same for the rating model: RMSE lower by at least this share.",
    )
    max_champion_age_days: float = Field(
        7.0,
        gt=0,
        description="A champion whose newest event is this many days older than tonight's is "
        "stale: a non-inferior challenger replaces it.",
    )
    max_data_growth: float = Field(
        0.2,
        gt=0,
        description="A champion is stale when tonight's snapshot has this share more "
        "interactions than the one it was trained on.",
    )
    prefer_trained: bool = Field(
        True,
        description="Serve the trained model rather than a baseline ahead of it on val by a "
        "margin the paired interval cannot tell from noise; a baseline serves when it is "
        "significantly better (or the model fails another check).",
    )
    cold_user_guardrail: bool = Field(
        True,
        description="Reject a challenger whose Recall@K on cold users (at most 5 train "
        "interactions) is significantly worse than the champion's.",
    )
    baselines: list[Literal["most-popular", "recent-popular", "als"]] = Field(
        default_factory=lambda: ["most-popular", "recent-popular", "als"],
        description="Baselines fitted each night on the same split; a model significantly worse "
        "than the best of them does not serve, and when nothing trained passes, the best serves. "
        "recent-popular counts only the last days of train (the window chosen on val).",
    )
    serving_refit: bool = Field(
        True,
        description="After a new champion is chosen, train its configuration on all of the "
        "snapshot and serve that (checked for parity and collapse).",
    )
    refresh_kept_champion: bool = Field(
        True,
        description="On a night with new data whose gate keeps the champion, refit the "
        "champion's configuration on all of tonight's snapshot (warm from what serves) and "
        "serve that: the lists learn tonight's interactions, and a recent-popularity list moves "
        "with the days.",
    )


class TaskRunnerParams(_Params):
    """Where training and batch scoring run (flows/runners.py). The warehouse steps always run in
    the flow's process: DuckDB has one writer."""

    kind: Literal["in-process", "dask"] = Field(
        "in-process",
        description="in-process: one task at a time in the flow's process. dask: prefect-dask's "
        "DaskTaskRunner; the models train concurrently and scoring is split by user ranges.",
    )
    address: str | None = Field(
        None,
        description="Dask scheduler of an existing cluster (tcp://host:8786). Default: a "
        "LocalCluster started for the run. Its workers must see the data home's paths.",
    )
    workers: int = Field(2, ge=1, description="LocalCluster worker processes.")
    threads_per_worker: int = Field(1, ge=1, description="LocalCluster threads per worker.")
    memory_limit: str = Field(
        "auto", description="LocalCluster memory limit per worker ('auto' shares the RAM)."
    )
    scoring_parts: int = Field(
        0, ge=0, description="User ranges per dataset; 0: 2 per Dask worker, 1 in-process."
    )


class NightlyParams(_Params):
    """Everything the nightly retrain can be told."""

    sources_file: str | None = Field(
        None, description="sources.toml naming the datasets (default: the data home's)."
    )
    datasets: list[str] | None = Field(
        None, description="Only these datasets (default: every dataset in the sources file)."
    )
    models: dict[str, list[ModelKind]] = Field(
        default_factory=dict,
        description='Models to train per dataset, e.g. {"ml-100k": ["gat-bpr"]}. Default: '
        "gat-bpr (the lists) for every dataset, and rating (predicted stars) for explicit ones.",
    )
    like_threshold: float | None = Field(
        None,
        description="Explicit ratings: a rating at or above this is 'liked' (what the lists are "
        "judged on). Default: the scale's upper 40 % (4 and 5 on 1-5).",
    )
    validation: ValidationThresholds = Field(default_factory=ValidationThresholds)
    gat_bpr: GatBprParams = Field(default_factory=GatBprParams)
    rating: RatingParams = Field(default_factory=RatingParams)
    split: SplitParams = Field(default_factory=SplitParams)
    gate: GateParams = Field(default_factory=GateParams)
    k: int = Field(10, ge=1, le=1000, description="K of Recall@K / NDCG@K and of the top-K.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Training device; auto picks CUDA when present."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Training arithmetic: bf16 runs the training steps under autocast "
        "(meant for CUDA; weights, the loss and evaluation stay fp32; `make bench-gpu` "
        "measures it).",
    )
    seed: int = Field(
        42,
        description="Seed of training and of the baselines: the same data and seed give the "
        "same models and the same verdict.",
    )
    retrain_without_new_data: bool = Field(
        False,
        description="Train even when the latest passed snapshot already has a model version.",
    )
    score_kept_champion: bool = Field(
        True,
        description="Re-score with the champion when the challenger is rejected, so tonight's "
        "interactions are excluded and new users get fallback recommendations.",
    )
    task_runner: TaskRunnerParams = Field(default_factory=TaskRunnerParams)
    warm_start: bool = Field(
        True,
        description="Start from the champion's weights when one of the same model and shape "
        "exists, or, when a baseline holds the slot, from the newest kept version of the same "
        "model (new users and items get new rows); train from scratch otherwise.",
    )
    warm_start_epochs: int = Field(
        10,
        ge=1,
        description="Epoch budget of a warm-started run (early stopping still applies); 20 let "
        "the warm rating model run longer than a cold one (bench/results/warm_start*.md).",
    )
    warm_start_patience: int = Field(
        3, ge=1, description="Early-stopping patience of a warm-started run."
    )
    warm_start_lr_factor: float = Field(
        0.3,
        gt=0,
        description="A warm-started run's learning rate, as a share of the model's lr: the full "
        "rate knocks a trained model off its optimum (bench/results/warm_start*.md).",
    )
    lock_wait_seconds: float = Field(
        0,
        ge=0,
        description="How long to wait for another nightly run on the same data home before "
        "skipping this one.",
    )
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)

    def train_config(self, model: ModelKind, tuned: dict | None = None) -> dict[str, Any]:
        """The TrainConfig fields for `model` (models_src.config.TrainConfig.from_dict).

        `tuned` (a tuning study's stored best, tasks/tune.py) replaces the defaults of the
        parameters it searched, except those this run sets explicitly: a value typed into the
        run form or the deployment wins over the tuner's."""
        knobs = self.gat_bpr if model == "gat-bpr" else self.rating
        values = knobs.training_fields()
        if tuned:
            chosen = {
                name: value
                for name, value in tuned["params"].items()
                if name in values and name not in knobs.model_fields_set
            }
            values |= chosen
            values["tuned_from"] = f"study {tuned['study']} trial {tuned['trial']}"
        return {
            "model": model,
            **values,
            "split": self.split.method,
            "val_ratio": self.split.val_ratio,
            "test_ratio": self.split.test_ratio,
            "split_salt": self.split.salt,
            "holdout_days": self.split.holdout_days,
            "rating_threshold": self.like_threshold,
            "k": self.k,
            "device": self.device,
            "precision": self.precision,
            "seed": self.seed,
        }

    def warm_train_config(self, model: ModelKind, tuned: dict | None = None) -> dict[str, Any]:
        """train_config with the warm start's epoch budget and patience."""
        config = self.train_config(model, tuned)
        return {
            **config,
            "epochs": self.warm_start_epochs,
            "patience": self.warm_start_patience,
            "lr": config["lr"] * self.warm_start_lr_factor,
        }

    def gate_thresholds(self) -> dict[str, Any]:
        """The models_src.gate.GateThresholds fields."""
        knobs = self.gate.model_dump(
            exclude={"baselines", "serving_refit", "refresh_kept_champion"}
        )
        return {**knobs, "k": self.k}


DEFAULT_PARAMS = NightlyParams()


class TuneParams(_Params):
    """The tuning job (flows/tune.py): an Optuna study per dataset and model, judged on val."""

    datasets: list[str] | None = Field(
        None, description="Only these datasets (default: every dataset with a passed snapshot)."
    )
    models: list[ModelKind] | None = Field(
        None,
        description="Models to tune (default: the ones the nightly trains: GAT-BPR everywhere, "
        "and the rating model for explicit ratings).",
    )
    trials: int = Field(
        20,
        ge=1,
        description="Finished trials each study should hold; a resumed study runs only the "
        "missing ones.",
    )
    timeout_minutes: float | None = Field(
        None, gt=0, description="Stop starting new trials after this long (all studies together)."
    )
    max_epochs: int = Field(
        30,
        ge=1,
        description="Epoch budget of one trial (early stopping and pruning end most "
        "trials sooner).",
    )
    nightly: NightlyParams = Field(
        default_factory=NightlyParams,
        description="The nightly settings the trials start from (split, K, seed and the "
        "parameters that are not searched).",
    )
    task_runner: TaskRunnerParams = Field(
        default_factory=TaskRunnerParams,
        description="dask runs the trials of a study side by side, one per worker.",
    )
    lock_wait_seconds: float = Field(
        3600,
        ge=0,
        description="How long to wait for a running nightly before exporting the snapshot.",
    )


def _replay_nightly() -> NightlyParams:
    """The nightly settings of a replay: the defaults, with the validation check that a
    replay's own deliveries trip relaxed: its first night holds years of history and the next
    ones a period each (the volume check compares a night with the median of the last three).
    The never-seen-ids check stays: it tells a sign-up wave from a remap (issue 37)."""
    return NightlyParams(validation=ValidationThresholds(max_volume_ratio=1e6))


class ReplayParams(_Params):
    """`encore replay` (flows/replay.py): a timestamped dataset delivered period by period, the
    nightly after each, what served judged on the next period."""

    dataset: str = Field(description="The dataset of `sources_file` to replay (timestamps needed).")
    sources_file: str = Field(description="The sources.toml that names the dataset.")
    start: float = Field(
        0.7, gt=0, lt=1, description="Share of the events (by time) before the first night's cut."
    )
    period: Literal["day", "week", "month"] = Field("week", description="One delivery a night.")
    nights: int | None = Field(
        None, ge=1, description="Stop after this many nights (default: to the end of the data)."
    )
    results_dir: str | None = Field(
        None, description="Also write the report's JSON, markdown and plots here."
    )
    nightly: NightlyParams = Field(
        default_factory=_replay_nightly, description="The settings of every replayed night."
    )
