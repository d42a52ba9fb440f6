"""The job spec (``JobSpec``): the single pydantic definition the API and the engine share."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Layout = Literal["series", "sequences", "wide", "arrays", "text"]
Task = Literal["forecast", "regression", "classification", "tagging"]
TokenizerKind = Literal["word", "bpe"]
SplitMethod = Literal["temporal", "random", "stratified", "column"]
Loss = Literal["mse", "mae", "huber", "cross_entropy"]
Scaling = Literal["standard", "minmax", "none", "per_example"]
Pooling = Literal["last", "mean", "max"]
Schedule = Literal["none", "cosine", "one_cycle", "plateau"]
# "auto" is resolved from the dataset when the job is submitted (``defaults.resolve_defaults``);
# the stored spec holds the value that ran.
Auto = Literal["auto"]

REGRESSION_LOSSES: tuple[str, ...] = ("mse", "mae", "huber")
# Tasks whose targets are classes (one per example, or one per step for tagging).
CLASS_TASKS: tuple[str, ...] = ("classification", "tagging")
# ``model.ensemble``: networks per model, at most (each one multiplies the job's training time).
MAX_ENSEMBLE = 16


def hidden_characters(text: str) -> list[str]:
    """Control characters (Cc) and invisible formatting ones (Cf: bidi overrides, zero-width
    spaces) in ``text``, as ``U+XXXX``: they make a name display as something it is not."""
    return [f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) in ("Cc", "Cf")]


def plain_name(name: str | None) -> str | None:
    """A job or sweep name, refused when it holds characters that would make it display as something else."""
    hidden = hidden_characters(name or "")
    if hidden:
        raise ValueError(f"holds control or invisible formatting characters ({', '.join(hidden[:5])})")
    return name


class _Strict(BaseModel):
    # Unknown fields are rejected so a typo never silently falls back to a default.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # Pydantic reads true / false as 1 / 0 for a number; in a spec that is a mistake, not a count.
        if isinstance(value, bool) and info.field_name is not None:
            kinds = _kinds(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and (int in kinds or float in kinds):
                allowed = "a number" + "".join(f" or {k!r}" for k in kinds if isinstance(k, str))
                allowed += " or null" if type(None) in kinds else ""
                raise ValueError(f"expected {allowed}, not the boolean {str(value).lower()}")
        return value


def _kinds(annotation: Any) -> list[Any]:
    """The plain types and literal values a field's type is made of (``Annotated[int, …] | Literal["auto"]``
    → ``[int, "auto"]``)."""
    if isinstance(annotation, type) or not get_args(annotation):
        return [annotation]
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [kind for arg in get_args(annotation) for kind in _kinds(arg)]


class SplitSpec(_Strict):
    """How examples are divided into train / val / test.

    ``method`` left out means ``temporal`` for the ``series`` layout and ``random`` otherwise.
    """

    method: SplitMethod | None = None
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)
    column: str | None = None

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitSpec:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (got {self.val_fraction} + "
                f"{self.test_fraction}); nothing would be left for training"
            )
        return self


class DataSpec(_Strict):
    layout: Layout
    target: str = Field(min_length=1)
    features: list[str] | None = None
    sequence_column: str | None = None
    order_column: str | None = None
    group_column: str | None = None
    lookback: int = Field(default=24, ge=1, le=100_000)
    horizon: int = Field(default=1, ge=1, le=10_000)
    stride: int = Field(default=1, ge=1, le=100_000)
    scaling: Scaling | Auto = Field(
        default="auto",
        description="per_example z-normalises each example per channel (not for forecast); "
        "auto: per_example for classification of one channel, standard otherwise (standard whenever "
        "training.epochs is set); token inputs: none",
    )
    season_period: int | None = Field(
        default=None, ge=2, le=100_000, description="period for the seasonal naive baseline"
    )
    split: SplitSpec = Field(default_factory=SplitSpec, validate_default=True)

    @field_validator("features")
    @classmethod
    def _features_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) == 0:
            raise ValueError("features must name at least one column, or be null for the default")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("features must not repeat a column")
        return value

    @field_validator("split")
    @classmethod
    def _split_fits_layout(cls, split: SplitSpec, info: ValidationInfo) -> SplitSpec:
        layout = info.data.get("layout")
        if split.method is None:
            split = split.model_copy(update={"method": "temporal" if layout == "series" else "random"})
        if split.method == "column" and layout != "arrays" and not split.column:
            raise ValueError("split.method 'column' needs split.column: the column holding train / val / test")
        return split

    @model_validator(mode="after")
    def _per_example_needs_examples(self) -> DataSpec:
        if self.scaling == "per_example" and self.layout == "series":
            raise ValueError(
                "data.scaling 'per_example' would remove each window's level, which a forecast needs; "
                "use 'standard', 'minmax' or 'none' for layout 'series'"
            )
        return self

    @model_validator(mode="after")
    def _sequences_columns(self) -> DataSpec:
        if self.layout == "sequences":
            missing = [n for n in ("sequence_column", "order_column") if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    "layout 'sequences' needs "
                    + " and ".join(f"data.{n}" for n in missing)
                    + " (which column names the sequence, which orders its steps)"
                )
        return self


class ModelSpec(_Strict):
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    hidden_size: int = Field(default=64, ge=1, le=4096)
    num_layers: int = Field(default=1, ge=1, le=8)
    bidirectional: bool = False
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    pooling: Pooling | Auto = Field(
        default="auto",
        description="what the head reads from the sequence: the final hidden state, or the mean/max; auto: mean "
        "for sequences of at least 64 steps that are not forecasts, else last (last whenever training.epochs is set)",
    )
    residual: Literal["none", "last_value", "ar"] | Auto = Field(
        default="auto",
        description="forecast only: 'last_value' reads each window relative to its last step and predicts "
        "the change from the last target value (the naive forecast); 'ar' adds the network to a "
        "least-squares linear autoregression over the window, fitted on the training windows; auto: 'ar' for a "
        "forecast whose target is an input, else 'none' ('none' whenever training.epochs is set)",
    )
    ar_ridge: Annotated[float, Field(ge=0.0, le=1_000.0)] | Literal["loo"] | Auto = Field(
        default="auto",
        description="residual 'ar' only: ridge penalty on the lag weights of the AR the model keeps (refitted "
        "on the training and validation windows after training), relative to the mean diagonal of its "
        "normal equations (0: plain least squares); 'loo': the penalty with the lowest leave-one-out "
        "error over those windows; auto: 'loo' (0 whenever training.epochs is set)",
    )
    ar_scale: Literal["linear", "log", "select"] | Auto = Field(
        default="auto",
        description="residual 'ar' only: the scale the AR (and the network's correction) works in: 'linear' "
        "(the target's own units), 'log' (the logarithm of a positive target: a multiplicative series), "
        "'select': whichever forecasts the windows before the test part better, by rolling-origin error (decided "
        "when the job trains; the job's spec keeps 'select', the artifact's spec and the notes hold the choice); "
        "auto: 'select' ('linear' whenever training.epochs is set)",
    )
    combine: Literal["none", "equal", "inverse_mse"] | Auto = Field(
        default="auto",
        description="residual 'ar' only: also train a 'last_value' network in the same job and forecast the "
        "weighted mean of the two (a forecast combination): 'equal' halves, 'inverse_mse' weights inversely "
        "proportional to each member's validation MSE before the AR refit (Bates & Granger 1969); "
        "'none': the 'ar' model alone; auto: 'inverse_mse' with residual 'ar', else 'none' ('none' whenever "
        "training.epochs is set)",
    )
    patch: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        default="auto",
        description="the network reads each group of this many consecutive steps as one step "
        "(features × patch inputs); auto: enough to bring sequences longer than 64 steps to at most 64, and "
        "always 1 for forecasts, tagging and token inputs (1 whenever training.epochs is set)",
    )
    differences: bool | Auto = Field(
        default="auto",
        description="the network also reads each step's change from the step before (the first difference of "
        "every input feature, scaled to unit spread on the training part) next to its value; auto: on for "
        "classification of a single numeric channel (the shape is the class), off otherwise (off whenever "
        "training.epochs is set)",
    )
    ensemble: Annotated[int, Field(ge=1, le=MAX_ENSEMBLE)] | Auto = Field(
        default="auto",
        description="classification and regression of numeric inputs: this many networks of the same shape "
        "train side by side from different initialisations (same batches, on the mean of their own losses) and "
        "the model predicts their mean class probabilities (classification) or mean outputs (regression); auto: "
        "5 for classification of numeric inputs with at most 1,000 training examples, where one network's result "
        "swings most between seeds, else 1 (1 whenever training.epochs is set)",
    )
    forget_gate_bias: Annotated[float, Field(ge=-10.0, le=10.0)] | Auto | None = Field(
        default="auto",
        description="initial LSTM forget-gate bias (lstm only; null keeps PyTorch's initialisation); auto: 1.0 for "
        "forecasts and sequences of at least 64 steps, else null (null whenever training.epochs is set)",
    )
    embedding_dim: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="token inputs (layout 'text', or text.column of 'sequences'): size of the token "
        "embedding in front of the RNN; null: 64 for token inputs",
    )


class TrainingSpec(_Strict):
    epochs: Annotated[int, Field(ge=1, le=10_000)] | Auto = Field(
        default="auto",
        description="auto: enough epochs for 1,500 optimizer steps (30 to 1,000), and every other 'auto' in the "
        "spec is resolved from the data; a number keeps the earlier defaults for the other 'auto' options "
        "(batch 64, learning rate 0.001, patience 10, no schedule, scaling standard, no ensemble, …; each "
        "option's description names its own)",
    )
    batch_size: Annotated[int, Field(ge=1, le=65_536)] | Auto = Field(
        default="auto",
        description="auto: the power of two nearest to the square root of the training examples, 8 to 256 "
        "(64 whenever training.epochs is set)",
    )
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop", "adagrad"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] | Auto = Field(
        default="auto",
        description="auto: 0.003 for classification, 0.001 otherwise (0.001 whenever training.epochs is set)",
    )
    weight_decay: float = Field(default=0.0, ge=0.0, le=100.0)
    loss: Loss | None = Field(default=None, description="null: cross_entropy for classification, mse otherwise")
    gradient_clip: float | None = Field(default=1.0, gt=0.0)
    early_stopping_patience: Annotated[int, Field(ge=1)] | Auto | None = Field(
        default="auto",
        description="epochs without improvement (null: no early stopping); auto: half the epochs, at least 10 "
        "(10 whenever training.epochs is set)",
    )
    early_stopping_min_delta: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = Field(
        default="auto",
        description="relative improvement of the validation loss that resets the patience; auto: 0.001 "
        "(0 whenever training.epochs is set)",
    )
    schedule: Schedule | Auto = Field(
        default="auto",
        description="learning-rate schedule, stepped per batch; auto: one_cycle (none whenever training.epochs is set)",
    )
    warmup_steps: Annotated[int, Field(ge=0, le=1_000_000)] | Auto = Field(
        default="auto",
        description="optimizer steps of linear warm-up; auto: 5% of the planned steps, at most 500 "
        "(0 whenever training.epochs is set)",
    )
    mixup: Annotated[float, Field(ge=0.0, le=100.0)] | Auto = Field(
        default="auto",
        description="classification only: mixup (Zhang et al. 2018), each training batch blended with a "
        "shuffled copy of itself, inputs and targets alike, by a weight drawn from Beta(mixup, mixup); "
        "0: off; auto: 0.4 for classification of numeric inputs, 0 otherwise (0 whenever training.epochs is set)",
    )
    refit: bool | Auto = Field(
        default="auto",
        description="classification and regression of numeric inputs: after early stopping, train the network "
        "again from the same initialisation on the training and validation parts together, for as many epochs "
        "as the first run ran, and keep that network (its epoch history and val metrics stay the first run's: "
        "the kept network has seen the validation examples); about twice the training time; auto: on for "
        "classification of numeric inputs with at most 1,000 training examples and a validation part, off "
        "otherwise (off whenever training.epochs is set)",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    cuda_graphs: Literal["auto", "off"] = Field(
        default="auto",
        description="on a GPU, auto captures each full-batch training step in a CUDA graph and replays it "
        "(adam, adamw and rmsprop; other optimizers train eagerly); off always trains eagerly",
    )


class TextSpec(_Strict):
    """Token inputs: the text column of layout ``text`` (or the token column of layout ``sequences``)
    and how it is tokenized. The vocabulary is learned from the training part only."""

    column: str = Field(min_length=1, description="the column holding the text (one token per row for 'sequences')")
    tokenizer: TokenizerKind = Field(
        default="word", description="word: whole words (punctuation split off); bpe: byte-pair subwords"
    )
    vocab_size: int = Field(default=20_000, ge=10, le=1_000_000, description="most frequent tokens kept")
    max_length: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        default="auto",
        description="tokens read per text (longer ones are cut); auto: the longest training text, at most 256",
    )
    lowercase: bool = True


class EvaluationSpec(_Strict):
    bootstrap_samples: int = Field(default=1000, ge=0, le=100_000)
    attribution: bool = True


class JobSpec(_Strict):
    name: str | None = Field(default=None, max_length=200)
    dataset_id: str = Field(min_length=1)
    task: Task
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    text: TextSpec | None = Field(
        default=None, description="token inputs: layout 'text', or a token column of 'sequences'"
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, validate_default=True)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        # Checked when a spec is submitted (validation context ``{"submitted": True}``), not when a
        # stored one is read back: a job or artifact accepted before the rule still runs and loads.
        return plain_name(name) if (info.context or {}).get("submitted") else name

    @field_validator("data")
    @classmethod
    def _data_fits_task(cls, data: DataSpec, info: ValidationInfo) -> DataSpec:
        task = info.data.get("task")
        if task is None:  # task itself failed validation; that error is reported already
            return data
        if task == "forecast" and data.layout != "series":
            raise ValueError(f"task 'forecast' needs data.layout 'series' (got '{data.layout}')")
        if data.layout == "series" and task != "forecast":
            raise ValueError(f"data.layout 'series' is for task 'forecast' (got task '{task}')")
        if data.split.method == "stratified" and task != "classification":
            raise ValueError("data.split.method 'stratified' needs task 'classification'")
        if task == "tagging" and data.layout not in ("sequences", "text"):
            raise ValueError(f"task 'tagging' needs data.layout 'sequences' or 'text' (got '{data.layout}')")
        if data.layout == "text" and data.scaling not in ("auto", "none"):
            raise ValueError("data.scaling: layout 'text' reads token ids, which are not scaled; leave it 'auto'")
        return data

    @model_validator(mode="after")
    def _text_fits_layout(self) -> JobSpec:
        layout = self.data.layout
        if layout == "text" and self.text is None:
            raise ValueError("data.layout 'text' needs text.column: the column holding the text")
        if self.text is not None and layout not in ("text", "sequences"):
            raise ValueError(
                f"text.column is for layouts 'text' and 'sequences' (got '{layout}'): leave the text section out "
                "for numeric inputs"
            )
        if self.text is not None and layout == "sequences" and self.data.features is not None:
            raise ValueError("text.column is the input of a 'sequences' job; leave data.features out")
        if self.text is not None and self.task == "tagging" and self.text.tokenizer != "word":
            raise ValueError("task 'tagging' needs text.tokenizer 'word': one tag per whitespace-separated word")
        if self.model.embedding_dim is not None and self.text is None:
            raise ValueError("model.embedding_dim is for token inputs (layout 'text', or text.column)")
        if self.model.patch not in ("auto", 1) and (self.text is not None or self.task == "tagging"):
            raise ValueError("model.patch groups numeric steps; token inputs and per-step tags take one step at a time")
        if self.model.differences is True and (self.text is not None or self.task == "tagging"):
            raise ValueError(
                "model.differences reads the change of numeric inputs between steps; token inputs and per-step "
                "tags read each step as it is"
            )
        ensemble = self.model.ensemble
        if ensemble not in ("auto", 1) and (self.task not in ("classification", "regression") or self.text is not None):
            raise ValueError(
                f"model.ensemble {ensemble} averages whole-sequence networks: it needs task 'classification' or "
                "'regression' without token inputs (forecasts combine an AR model and a last_value model through "
                "model.combine instead)"
            )
        if self.training.refit is True and (self.task not in ("classification", "regression") or self.text is not None):
            raise ValueError(
                "training.refit trains a whole-sequence network again on the training and validation parts: it "
                "needs task 'classification' or 'regression' without token inputs (a forecast's AR is refitted on "
                "the validation windows by model.residual 'ar')"
            )
        mixup = self.training.mixup
        if mixup not in ("auto", 0.0) and (self.task != "classification" or self.text is not None):
            raise ValueError(
                f"training.mixup {mixup:g} blends numeric inputs and their class targets: it needs task "
                "'classification' without token inputs (set it to 0 or leave it 'auto')"
            )
        return self

    @model_validator(mode="after")
    def _combine_needs_the_ar(self) -> JobSpec:
        combine = self.model.combine
        if combine in ("auto", "none"):
            return self
        if self.task != "forecast" or self.model.residual not in ("ar", "auto"):
            raise ValueError(
                f"model.combine '{combine}' combines the 'ar' forecast with a 'last_value' one: it needs task "
                "'forecast' and model.residual 'ar' (or 'auto')"
            )
        if self.data.features is not None and self.data.target not in self.data.features:
            raise ValueError(f"model.combine '{combine}' needs the target among data.features")
        return self

    @model_validator(mode="after")
    def _residual_needs_the_target(self) -> JobSpec:
        residual = self.model.residual
        if residual not in ("last_value", "ar"):
            return self
        if self.task != "forecast":
            raise ValueError(f"model.residual '{residual}' is for task 'forecast' (got task '{self.task}')")
        if self.data.features is not None and self.data.target not in self.data.features:
            raise ValueError(f"model.residual '{residual}' needs the target among data.features")
        return self

    @field_validator("training")
    @classmethod
    def _loss_fits_task(cls, training: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        task = info.data.get("task")
        if task is None:
            return training
        if training.loss is None:
            default = "cross_entropy" if task in CLASS_TASKS else "mse"
            return training.model_copy(update={"loss": default})
        if task in CLASS_TASKS and training.loss != "cross_entropy":
            raise ValueError(f"training.loss '{training.loss}' is a regression loss; {task} uses 'cross_entropy'")
        if task not in CLASS_TASKS and training.loss not in REGRESSION_LOSSES:
            raise ValueError(
                f"training.loss '{training.loss}' is for classification; task '{task}' takes one of "
                + ", ".join(REGRESSION_LOSSES)
            )
        return training

    def normalized(self) -> dict[str, Any]:
        """The spec as stored: plain JSON types, every default filled in."""
        return self.model_dump(mode="json")
