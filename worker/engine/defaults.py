"""Data-aware defaults: every ``"auto"`` in a spec replaced by a value derived from the training set.

The API resolves a spec when the job is submitted, so the stored spec (``GET /jobs/{id}``, the
dashboard) shows exactly what ran; the engine resolves whatever is still ``"auto"`` the same way
when it is called directly. An explicit value always wins over ``"auto"``.

The data-aware recipe applies when the budget is ``"auto"`` (``training.epochs``, the default). A
spec that fixes ``training.epochs`` keeps the behaviour every spec had before these defaults: its
other ``"auto"`` values resolve to ``PREVIOUS_DEFAULTS``, so existing specs run exactly as before.

The budget is counted in optimizer steps, not epochs: 50 epochs of a 40-example set at batch 64 is
50 steps, and nothing learns. Each constant below was chosen by measurement with
``bench/quality.py`` (public UCR/UEA and statsmodels data sets; see the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .spec import JobSpec
from .text import resolve_text

# Batch size: the power of two nearest to sqrt(training examples), within these bounds, so small
# sets take small batches (more steps per epoch) and large sets are not slowed by tiny batches.
MIN_AUTO_BATCH = 8
MAX_AUTO_BATCH = 256
# Epochs: enough for this many optimizer steps, within these bounds.
MIN_AUTO_STEPS = 1_500
MIN_AUTO_EPOCHS = 30
MAX_AUTO_EPOCHS = 1_000
# Early stopping: patience is this share of the planned epochs (at least MIN_AUTO_PATIENCE), and the
# validation loss must improve by this relative amount to reset it.
AUTO_PATIENCE_SHARE = 0.5
MIN_AUTO_PATIENCE = 10
AUTO_MIN_DELTA = 0.001
# Warm-up: this share of the planned steps, at most MAX_AUTO_WARMUP_STEPS.
AUTO_WARMUP_SHARE = 0.05
MAX_AUTO_WARMUP_STEPS = 500
AUTO_SCHEDULE = "one_cycle"
# From this many steps a sequence to classify counts as long: the network reads the mean over its
# steps (the final state of a long sequence has forgotten its start). Measured: ArrowHead (251 steps)
# 0.57 mean vs 0.50 last, OSULeaf (427) 0.52 vs 0.41, JapaneseVowels (29) 0.89 vs 0.94.
LONG_SEQUENCE_STEPS = 64
# An LSTM's forget-gate bias starts at 1 (Jozefowicz et al. 2015) for forecasts and long sequences.
# Measured (lstm, 2 seeds): ArrowHead 0.50 vs 0.33 without; forecast MAE with vs without: Airline
# 27.2 vs 29.1, ShampooSales 104.7 vs 112.1, nile 121.6 vs 122.8, Lynx 252.5 vs 250.7, elnino 0.398
# vs 0.394; but JapaneseVowels (29 steps, 12 channels) 0.935 vs 0.96 without, so short sequences to
# classify keep PyTorch's initialisation.
AUTO_LSTM_FORGET_GATE_BIAS = 1.0
# Learning rate (the peak of one_cycle): JapaneseVowels 0.966 at 0.003 vs 0.951 at 0.001 (worst seed
# 0.965 vs 0.941), OSULeaf (lstm) 0.59 vs 0.53, ArrowHead unchanged; forecasts keep 0.001 (Lynx MAE
# 425 at 0.003 vs 387).
AUTO_CLASSIFICATION_LEARNING_RATE = 0.003
AUTO_LEARNING_RATE = 0.001
# The AR under a forecast (``model.residual 'ar'``), refitted after training on every window before
# the test part, is a ridge regression whose penalty is chosen by leave-one-out error over those
# windows (closed form; cross-validation is valid for autoregressions, Bergmeir, Hyndman & Koo 2018).
# Measured (test MAE, lstm and gru × 2 seeds, plain least squares vs 'loo'): nile 107.69 vs 101.3
# (the plain AR ties the reference AR), Airline 11.60 vs 10.67, Lynx 354 vs 344, co2 0.306 vs 0.306,
# elnino 0.397 vs 0.400, ShampooSales 74 vs 85 (36 points; 4 test windows).
AUTO_AR_RIDGE = "loo"
# The scale of that AR: 'select' tries the target's own units and its logarithm (a positive series
# only) and keeps the one with the lower rolling-origin error over the windows before the test part
# (each of the last third of them forecast by an AR fitted on every earlier window), decided when the
# job trains and named in its notes. A multiplicative series (Lynx: swings of 40 to 7,000) is linear
# in its logarithm; an additive one stays in its own units.
AUTO_AR_SCALE = "select"
# Forecast combination (``model.combine``): with ``residual 'ar'`` a second network with ``residual
# 'last_value'`` trains in the same job (same batches, its own loss) and the forecast is the weighted mean
# of the two, weights ∝ 1 / validation MSE (Bates & Granger 1969), when the ar model's correction is
# material (``engine.MIN_CORRECTION_SHARE``); else the ar model alone. Measured (test MAE, seeds 0 and 1
# × {lstm, gru}, ungated): Lynx 311 → 238, elnino 0.400 → 0.386, but nile 101.3 → 108.4, co2 0.306 → 0.309
# and Airline 10.67 → 12.4, whose corrections stay under 1% of the AR's residuals: the gate keeps them.
AUTO_COMBINE = "inverse_mse"
# Mixup (``training.mixup``, Zhang et al. 2018) for classification of numeric inputs: the Beta
# parameter of the blend weight. See the README's table for the measurements behind it.
AUTO_MIXUP = 0.4
# Ensembles (``model.ensemble``) for classification of numeric inputs on small training sets, where
# one network's accuracy swings 0.1–0.2 between seeds: this many networks from different
# initialisations, their class probabilities averaged. Measured (3 seeds × {lstm, gru}, mean (worst),
# one network → five): ArrowHead 0.754 (0.709) → 0.793 (0.749), OSULeaf 0.780 (0.756) → 0.818
# (0.777), JapaneseVowels 0.989 (0.978) → 0.988 (0.984). Five times the training: only up to
# MAX_AUTO_ENSEMBLE_EXAMPLES training examples, where a job takes seconds to minutes.
AUTO_ENSEMBLE = 5
MAX_AUTO_ENSEMBLE_EXAMPLES = 1_000
# Refit (``training.refit``) for classification of numeric inputs on small training sets: after early
# stopping, the network trains again from the same initialisation on the training and validation parts
# together, for the epochs the first run ran. On a small set the validation part is a large share of the
# examples (ArrowHead: 5 of 36) that the kept network never learnt from. Measured (3 seeds × {lstm, gru},
# mean (worst), ``bench/quality_tune.py``): ArrowHead 0.810 (0.783) → 0.843 (0.811); see the README for
# JapaneseVowels and OSULeaf. Twice the training: only up to MAX_AUTO_REFIT_EXAMPLES training examples.
MAX_AUTO_REFIT_EXAMPLES = 1_000
# Sequences to read longer than this are patched: groups of k consecutive steps become one step of
# k × features inputs, k the smallest that brings the network to at most this many steps.
MAX_NETWORK_STEPS = 64


# What each option meant before it could be "auto" (or before it existed).
PREVIOUS_DEFAULTS: dict[str, Any] = {
    "data.scaling": "standard",
    "model.pooling": "last",
    "model.forget_gate_bias": None,
    "model.differences": False,
    "model.ensemble": 1,
    "model.residual": "none",
    "model.patch": 1,
    "model.ar_ridge": 0.0,
    "model.ar_scale": "linear",
    "model.combine": "none",
    "training.batch_size": 64,
    "training.learning_rate": 0.001,
    "training.early_stopping_patience": 10,
    "training.early_stopping_min_delta": 0.0,
    "training.schedule": "none",
    "training.warmup_steps": 0,
    "training.mixup": 0.0,
    "training.refit": False,
}


@dataclass(frozen=True)
class TrainingShape:
    """What the defaults depend on: the sizes of the training and validation parts, the number
    of input channels (features) per step and the steps per example."""

    train_examples: int
    val_examples: int
    channels: int = 1
    steps: int = 1
    vocabulary: int | None = None  # token inputs: the size of the vocabulary trained on the training part


def auto_batch_size(train_examples: int) -> int:
    nearest = 2 ** round(math.log2(max(1.0, math.sqrt(train_examples))))
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, nearest)))


def steps_per_epoch(train_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(train_examples / batch_size))


def auto_epochs(train_examples: int, batch_size: int) -> int:
    wanted = math.ceil(MIN_AUTO_STEPS / steps_per_epoch(train_examples, batch_size))
    return int(min(MAX_AUTO_EPOCHS, max(MIN_AUTO_EPOCHS, wanted)))


def auto_patience(epochs: int) -> int:
    return max(MIN_AUTO_PATIENCE, math.ceil(AUTO_PATIENCE_SHARE * epochs))


def auto_warmup_steps(total_steps: int) -> int:
    return int(min(MAX_AUTO_WARMUP_STEPS, round(AUTO_WARMUP_SHARE * total_steps)))


def auto_scaling(task: str, channels: int) -> str:
    # The UCR convention for a univariate series: a class is a shape, whatever its level and
    # amplitude. Several channels (features) usually carry meaning in their levels (JapaneseVowels'
    # cepstra: 0.69 accuracy per example vs 0.93 standardised), and a forecast needs the level.
    return "per_example" if task == "classification" and channels == 1 else "standard"


def auto_differences(task: str, channels: int, tokens: bool = False) -> bool:
    # Where the shape carries the class (one channel, scaled per example), its slopes do too.
    return not tokens and auto_scaling(task, channels) == "per_example"


def auto_mixup(task: str, tokens: bool = False) -> float:
    return AUTO_MIXUP if task == "classification" and not tokens else 0.0


def auto_ensemble(task: str, train_examples: int, tokens: bool = False) -> int:
    small = train_examples <= MAX_AUTO_ENSEMBLE_EXAMPLES
    return AUTO_ENSEMBLE if task == "classification" and not tokens and small else 1


def auto_refit(task: str, train_examples: int, val_examples: int, tokens: bool = False) -> bool:
    small = train_examples <= MAX_AUTO_REFIT_EXAMPLES
    return task == "classification" and not tokens and small and val_examples > 0


def auto_residual(spec: JobSpec) -> str:
    # A forecast starts from the least-squares AR over the window and learns the correction; the
    # network reads the window relative to its last step, so trends never leave the training range.
    target_is_input = spec.data.features is None or spec.data.target in spec.data.features
    return "ar" if spec.task == "forecast" and target_is_input else "none"


def auto_combine(residual: str) -> str:
    # Only a model with the AR under it has a second kind of forecast to combine with.
    return AUTO_COMBINE if residual == "ar" else "none"


def auto_learning_rate(task: str) -> float:
    return AUTO_CLASSIFICATION_LEARNING_RATE if task == "classification" else AUTO_LEARNING_RATE


def auto_patch(task: str, steps: int, tokens: bool = False) -> int:
    # Tokens are read one at a time (an embedding each), and tags are per step: never grouped.
    if tokens or task in ("forecast", "tagging") or steps <= MAX_NETWORK_STEPS:
        return 1
    return math.ceil(steps / MAX_NETWORK_STEPS)


def auto_pooling(task: str, steps: int) -> str:
    return "mean" if task != "forecast" and steps >= LONG_SEQUENCE_STEPS else "last"


def auto_forget_gate_bias(cell: str, task: str, steps: int) -> float | None:
    if cell != "lstm" or (task != "forecast" and steps < LONG_SEQUENCE_STEPS):
        return None
    return AUTO_LSTM_FORGET_GATE_BIAS


# "auto" values the worker decides when it runs, from its device, not from the data: never resolved.
RUNTIME_AUTO = frozenset({"training.cuda_graphs"})


def unresolved_fields(spec: JobSpec) -> list[str]:
    """Dotted paths still ``"auto"`` (other than ``RUNTIME_AUTO``)."""
    paths = []
    for section in ("data", "model", "training"):
        for name, value in getattr(spec, section):
            if value == "auto" and f"{section}.{name}" not in RUNTIME_AUTO:
                paths.append(f"{section}.{name}")
    if spec.text is not None and spec.text.max_length == "auto":
        paths.append("text.max_length")
    return paths


def resolve_defaults(spec: JobSpec, shape: TrainingShape) -> JobSpec:
    """The spec with every ``"auto"`` replaced; explicit values are kept as given."""
    spec = resolve_text(spec, shape.steps)  # token inputs: max_length, embedding, no scaling
    if spec.training.epochs != "auto":
        return _resolve_previous(spec)
    data: dict[str, Any] = {}
    model: dict[str, Any] = {}
    training: dict[str, Any] = {}
    if spec.data.scaling == "auto":
        data["scaling"] = auto_scaling(spec.task, shape.channels)
    if spec.model.pooling == "auto":
        model["pooling"] = auto_pooling(spec.task, shape.steps)
    if spec.model.residual == "auto":
        model["residual"] = auto_residual(spec)
    if spec.model.combine == "auto":
        model["combine"] = auto_combine(model.get("residual", spec.model.residual))
    if spec.model.patch == "auto":
        model["patch"] = auto_patch(spec.task, shape.steps, tokens=spec.text is not None)
    if spec.model.ar_ridge == "auto":
        model["ar_ridge"] = AUTO_AR_RIDGE
    if spec.model.ar_scale == "auto":
        model["ar_scale"] = AUTO_AR_SCALE
    if spec.model.differences == "auto":
        model["differences"] = auto_differences(spec.task, shape.channels, tokens=spec.text is not None)
    if spec.model.ensemble == "auto":
        model["ensemble"] = auto_ensemble(spec.task, shape.train_examples, tokens=spec.text is not None)
    if spec.model.forget_gate_bias == "auto":
        model["forget_gate_bias"] = auto_forget_gate_bias(spec.model.cell, spec.task, shape.steps)
    t = spec.training
    batch_size = auto_batch_size(shape.train_examples) if t.batch_size == "auto" else t.batch_size
    epochs = auto_epochs(shape.train_examples, batch_size) if t.epochs == "auto" else t.epochs
    if t.batch_size == "auto":
        training["batch_size"] = batch_size
    if t.epochs == "auto":
        training["epochs"] = epochs
    if t.early_stopping_patience == "auto":
        training["early_stopping_patience"] = auto_patience(epochs)
    if t.early_stopping_min_delta == "auto":
        training["early_stopping_min_delta"] = AUTO_MIN_DELTA
    if t.learning_rate == "auto":
        training["learning_rate"] = auto_learning_rate(spec.task)
    if t.schedule == "auto":
        training["schedule"] = AUTO_SCHEDULE
    if t.mixup == "auto":
        training["mixup"] = auto_mixup(spec.task, tokens=spec.text is not None)
    if t.refit == "auto":
        training["refit"] = auto_refit(
            spec.task, shape.train_examples, shape.val_examples, tokens=spec.text is not None
        )
    if t.warmup_steps == "auto":
        training["warmup_steps"] = auto_warmup_steps(epochs * steps_per_epoch(shape.train_examples, batch_size))
    return spec.model_copy(
        update={
            "data": spec.data.model_copy(update=data),
            "model": spec.model.model_copy(update=model),
            "training": t.model_copy(update=training),
        }
    )


def _resolve_previous(spec: JobSpec) -> JobSpec:
    sections: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "training": {}}
    for path, value in PREVIOUS_DEFAULTS.items():
        section, name = path.split(".")
        if getattr(getattr(spec, section), name) == "auto":
            sections[section][name] = value
    return spec.model_copy(
        update={section: getattr(spec, section).model_copy(update=values) for section, values in sections.items()}
    )
