"""Sweep schemas by role."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.jobs.status import JobStatus
from app.sweeps.space import ParameterRange
from worker.engine.spec import plain_name

Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class SweepCreate(BaseModel):
    """A base JobSpec, a grid of dotted spec paths to value lists, and the seeds to run each setting with."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    _plain_name = field_validator("name")(plain_name)
    base: dict[str, Any] = Field(description="A JobSpec (schema `JobSpec`); the grid's paths override its fields.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description='Dotted spec paths to the values to try, e.g. {"model.hidden_size": [32, 64]}. '
        "Empty: one setting (the base), for a pure seed-stability study.",
    )
    seeds: list[Seed] = Field(default=[0, 1, 2], min_length=1, description="training.seed of each run of a setting.")
    search: Literal["grid", "random", "tpe"] = "grid"
    max_jobs: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="grid: upper bound on settings × seeds (more is refused). "
        "random: how many distinct settings to draw (all of them when the grid has fewer). "
        "tpe: the most jobs the search runs, confirmation runs included (2 × len(confirm_seeds) of "
        "them are held back for the best and the runner-up; the rest are trials).",
    )
    random_seed: int = Field(
        0,
        ge=0,
        le=2**63 - 1,
        description="Seeds the draw of a random search (same seed, same settings) and the tpe sampler.",
    )
    space: dict[str, ParameterRange] | None = Field(
        None,
        description='tpe only: dotted spec paths to a range {"low", "high", "log", "step"} (integers when '
        'low and high are) or {"choices": [...]}, e.g. {"training.learning_rate": {"low": 1e-4, '
        '"high": 1e-2, "log": true}, "model.hidden_size": {"choices": [16, 32, 64]}}.',
    )
    parallelism: int = Field(4, ge=1, le=256, description="tpe: trials queued or running at once.")
    objective: str | None = Field(
        None,
        max_length=80,
        description='tpe: the validation metric to optimise, "val.<metric>" (default: the task\'s main '
        "metric). Test metrics are never used for selection.",
    )
    pruner: Literal["median", "hyperband"] | None = Field(
        None, description="tpe: stop unpromising trials after any epoch (they end 'pruned'); null: never."
    )
    startup_trials: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="tpe: random trials before TPE models the results, and completed trials before the "
        "median pruner acts (default: max_jobs/4, between 1 and 10).",
    )
    confirm_seeds: list[Seed] | None = Field(
        None,
        description="tpe: once every trial has ended, run the best and the runner-up setting again with "
        "these seeds, so the report shows their seed statistics side by side.",
    )

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds must not repeat; repeated: {repeated}")
        return seeds


class SweepProgress(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    pruned: int = 0
    total: int = 0
    finished: int = Field(0, description="succeeded + failed + cancelled + pruned")


class SweepJob(BaseModel):
    id: str
    setting: dict[str, Any]
    setting_key: str
    seed: int
    status: JobStatus
    main_metric: float | None = Field(description="The job's final test value of the sweep's main metric.")
    trial_number: int | None = Field(default=None, description="tpe: the trial's number; null for confirmation runs.")
    objective_value: float | None = Field(
        default=None, description="tpe: the job's final value of the validation objective."
    )


class MetricSummary(BaseModel):
    n: int
    mean: float
    std: float | None = Field(description="Sample standard deviation over seeds (ddof=1); null when n < 2.")
    min: float
    max: float
    ci: list[float] | None = Field(
        description="95% interval of the mean over seeds (Student t on a scale that keeps it inside the "
        "metric's range: logit for [0, 1] metrics, log for errors; see interval_method); null when n < 2."
    )


class SettingReport(BaseModel):
    setting_key: str
    setting: dict[str, Any]
    rank: int | None = Field(description="1 = best mean of the main metric; null without results yet.")
    jobs: int = Field(description="Jobs of this setting (one per seed).")
    n: int = Field(description="Succeeded jobs counted in the statistics.")
    metrics: dict[str, MetricSummary] = Field(description="Final test metrics over the succeeded seeds.")
    seed_cv: float | None = Field(description="Coefficient of variation std / |mean| of the main metric over seeds.")
    high_seed_variance: bool = Field(description="seed_cv above the report's high_seed_cv_threshold.")


class SettingRef(BaseModel):
    setting_key: str
    setting: dict[str, Any]
    n: int
    mean: float
    ci: list[float] | None


class BestSetting(BaseModel):
    best: SettingRef
    runner_up: SettingRef | None
    distinguishable: bool | None = Field(
        description="true: the 95% intervals of best and runner-up do not overlap; false: they do; "
        "null: fewer than two succeeded seeds on either side, or no runner-up."
    )
    explanation: str


class ValueMean(BaseModel):
    value: Any
    mean: float = Field(description="Mean of the setting means that have this value.")
    settings: int


class ParameterReport(BaseModel):
    values: list[ValueMean]
    range: float = Field(description="max - min of the per-value means, in the main metric's units.")
    share_of_variance: float | None = Field(
        description="Between-value sum of squares / total sum of squares of the setting means (0..1); "
        "null when the setting means do not vary."
    )
    importance: float | None = Field(
        None,
        description="Optuna's fANOVA importance of this parameter (shares of all parameters sum to 1); "
        "null with too few results.",
    )


class ConfirmedSetting(BaseModel):
    setting_key: str
    setting: dict[str, Any]
    seeds: list[int] = Field(
        description="Seeds of the succeeded confirmation runs: fresh runs only, not the trial that selected "
        "the setting."
    )
    objective: MetricSummary | None = Field(
        description="The validation objective over the confirmation runs. The selecting trial is left out: "
        "the best of many noisy trials is optimistic by being chosen (selection bias)."
    )
    test: MetricSummary | None = Field(
        description="The test main metric over the confirmation runs: reported, never used to choose."
    )
    trial_objective: float | None = Field(
        default=None,
        description="The validation objective of the trial that selected the setting (its best trial), for "
        "comparison with the confirmation runs: optimistic by construction.",
    )


class Confirmation(BaseModel):
    seeds: list[int]
    best: ConfirmedSetting | None
    runner_up: ConfirmedSetting | None


class SearchReport(BaseModel):
    objective: str
    direction: Literal["minimize", "maximize"]
    pruner: str | None
    trial_budget: int = Field(description="max_jobs minus the jobs held back for confirmation.")
    trials: int = Field(description="Trials asked so far.")
    pruned: int
    done: bool = Field(description="Nothing is queued or running and nothing is left to ask.")
    selection: str = Field(description="How settings are chosen (validation metrics only).")
    confirmation: Confirmation | None


class SweepReport(BaseModel):
    split: Literal["test", "val"] = Field(
        "test", description="The split whose metrics rank the settings: test for grid and random, val for tpe."
    )
    main_metric: str
    lower_is_better: bool
    confidence_level: float
    high_seed_cv_threshold: float
    total: int = Field(description="Jobs in the sweep.")
    finished: int = Field(description="Jobs that ended (succeeded, failed, cancelled or pruned).")
    pruned: int = Field(0, description="Trials the pruner stopped (not counted in the statistics).")
    succeeded: int = Field(description="Jobs whose metrics are counted; the rest are left out.")
    complete: bool = Field(description="Every job has ended; until then the statistics can still change.")
    settings: list[SettingReport] = Field(description="Best first; settings without results last.")
    best: BestSetting | None
    parameters: dict[str, ParameterReport]
    interval_method: str = Field(
        default="student_t_transformed",
        description="student_t_transformed: Student t interval of the mean over seeds, computed on the "
        "logit scale for metrics in [0, 1] (log of the distance to the bound for errors ≥ 0 and r2 ≤ 1) "
        "and mapped back, so no bound leaves the metric's range.",
    )
    importance_method: str = "fanova"
    search: SearchReport | None = None


class SweepSummary(BaseModel):
    id: str
    name: str | None
    dataset_id: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    search: str
    max_jobs: int
    space: dict[str, Any] | None = None
    parallelism: int | None = None
    objective: str | None = None
    pruner: str | None = None
    confirm_seeds: list[int] | None = None
    created_at: datetime
    progress: SweepProgress


class SweepRead(SweepSummary):
    jobs: list[SweepJob]
    report: SweepReport


class SweepCancel(BaseModel):
    id: str
    cancelled: int = Field(description="Queued jobs cancelled at once.")
    cancel_requested: int = Field(description="Running jobs asked to stop within one epoch.")
    progress: SweepProgress
