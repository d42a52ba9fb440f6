"""The engine's typed results: the ``Evaluation`` every finished job gets, and the job ``Summary``.

These are the response models of ``GET /jobs/{id}/evaluation`` and of ``Job.summary``, so the
OpenAPI docs describe them field by field; the runner, sweeps and leaderboard read their fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "val", "test"]
# metric name → value; None where the metric is undefined (e.g. MAPE with a true value of 0).
MetricValues = dict[str, float | None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Comparison(_Strict):
    """The model against one baseline on the main metric, both scored on the same test examples."""

    metric: str
    model: float | None
    baseline: float | None
    improvement: float | None = Field(description="Relative gain over the baseline; positive = the model is better.")
    beats: bool | None
    difference_interval: list[float] | None = Field(
        None,
        description="95% paired bootstrap interval of model − baseline on the metric (both scored on the same "
        "resampled test examples); null without bootstrap samples, and for tagging jobs.",
    )
    significant: bool | None = Field(
        None,
        description="The difference interval excludes 0: the gap (either way) is beyond resampling noise of the "
        "test part. beats true with significant false: the model is ahead, but the test part cannot tell.",
    )


class GeneralizationGap(_Strict):
    metric: str
    train: float | None
    test: float | None
    gap: float | None
    positive_means: str = "test is worse than train"


class ConfusionMatrix(_Strict):
    labels: list[str]
    matrix: list[list[int]] = Field(description="matrix[true][predicted] counts on the test part.")
    rows: Literal["true"] = "true"
    columns: Literal["predicted"] = "predicted"


class Attribution(_Strict):
    """Which time steps and features drove the predictions (test part, capped random samples)."""

    method: str
    baseline: str
    examples: int
    steps: int
    features: list[str]
    importance: list[list[float]] = Field(description="[steps][features] mean absolute integrated gradients.")
    feature_importance: dict[str, float]
    step_importance: list[float]
    permutation_importance: dict[str, float] = Field(
        description="How much worse the main metric gets (in its units) when the feature is shuffled."
    )
    permutation_metric: str
    permutation_examples: int


class TokenScores(_Strict):
    """One test text with a score per token (integrated gradients over its token embeddings)."""

    tokens: list[str]
    scores: list[float] = Field(description="Per token; positive pushes toward the explained output.")
    label: str | None = Field(description="The true class (or target value) as text.")
    predicted: str | None = Field(description="The model's class (or value) as text.")


class TextAttribution(_Strict):
    """Which tokens drove the predictions of a text model (test part, capped random samples)."""

    method: str
    baseline: str
    explains: str = Field(description="The output attributed: the predicted class's logit, or the first output.")
    sampled: int = Field(description="Test texts the token importance is averaged over.")
    examples: list[TokenScores]
    token_importance: dict[str, float] = Field(
        description="The most important tokens: mean |score| per occurrence, normalized to sum 1 over all tokens."
    )


class Evaluation(_Strict):
    """Metrics per split with 95% bootstrap intervals on test, baselines, gap and attribution."""

    task: str
    main_metric: str
    metrics: dict[Split, MetricValues]
    intervals: dict[Literal["test"], dict[str, list[float] | None]] = Field(
        description="Per metric [low, high] of the percentile bootstrap over test examples; null if undefined."
    )
    confidence_level: float
    bootstrap_samples: int
    baselines: dict[str, MetricValues] = Field(description="Baseline name → its test metrics.")
    comparison: dict[str, Comparison] = Field(description="Baseline name → the model against it on the main metric.")
    generalization_gap: GeneralizationGap
    num_examples: dict[Split, int]
    notes: list[str]
    confusion_matrix: ConfusionMatrix | None = None
    attribution: Attribution | None = None
    text_attribution: TextAttribution | None = None

    def interval(self, metric: str) -> list[float] | None:
        """The test interval of ``metric``, or None."""
        return self.intervals.get("test", {}).get(metric)


class Timings(_Strict):
    engine_seconds: float
    train_seconds: float
    evaluation_seconds: float


class Summary(_Strict):
    """``Job.summary``: the best epoch and each split's final metrics (empty until the job succeeds)."""

    best_epoch: int
    train: MetricValues = {}
    val: MetricValues = {}
    test: MetricValues = {}
    timings: Timings | None = None
