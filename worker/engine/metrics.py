"""Metrics in original units, with vectorized bootstrap confidence intervals.

Every metric is computed from per-resample example weights ``w [B, N]`` (how often each example is
drawn), so the point estimate (``w = 1``) and all bootstrap resamples share one code path and the
resamples run as matrix products instead of a Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

REGRESSION_METRICS = ("mae", "rmse", "smape", "mase", "r2", "mape")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "auroc", "ece")
# Per-step tags (``tagging.py``): token accuracy, macro F1 over tags, and span F1 for BIO tags.
TAGGING_METRICS = ("accuracy", "macro_f1", "span_f1")
# Errors, losses (the per-epoch training losses too) and calibration error go down; scores go up.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "smape", "mase", "mape", "log_loss", "ece", "loss", "mse"})
ECE_BINS = 15
_PROBABILITY_FLOOR = 1e-15
# Bound the [resamples x examples] weight matrix held at once (float64 elements).
_MAX_WEIGHT_ELEMENTS = 4_000_000


def lower_is_better(metric_name: str) -> bool:
    """Errors, losses and calibration error go down; scores (accuracy, r2, auroc, …) go up."""
    return metric_name in LOWER_IS_BETTER


def task_metrics(task: str) -> tuple[str, ...]:
    """The final metrics a job of ``task`` reports for each split."""
    if task == "tagging":
        return TAGGING_METRICS
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def main_metric(task: str) -> str:
    return "accuracy" if task in ("classification", "tagging") else "rmse"


def json_float(value: float | np.floating | None) -> float | None:
    """A plain float, or None for missing / NaN / infinite values (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    ok = den != 0
    return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def regression_scores(
    y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, naive_scale: float | None
) -> dict[str, np.ndarray]:
    """Per-resample regression metrics; ``y_*`` are [N, H] in original units, ``weights`` [B, N].

    MAPE is left out when a true value is 0; MASE when ``naive_scale`` is missing or 0.
    """
    y_true = y_true.reshape(len(y_true), -1).astype(np.float64)
    y_pred = y_pred.reshape(len(y_pred), -1).astype(np.float64)
    outputs = y_true.shape[1]
    err = y_pred - y_true
    abs_err = np.abs(err)
    denom = np.abs(y_true) + np.abs(y_pred)
    smape_terms = np.where(denom > 0, 2.0 * abs_err / np.where(denom > 0, denom, 1.0), 0.0)
    total = weights.sum(axis=1)
    mae = weights @ abs_err.mean(axis=1) / total
    mse = weights @ (err**2).mean(axis=1) / total
    sum_y = weights @ y_true.sum(axis=1)
    sum_y2 = weights @ (y_true**2).sum(axis=1)
    sst = sum_y2 - sum_y**2 / (total * outputs)
    sse = weights @ (err**2).sum(axis=1)
    scores = {
        "mae": mae,
        "rmse": np.sqrt(mse),
        "smape": 100.0 * (weights @ smape_terms.mean(axis=1)) / total,
        "r2": 1.0 - _safe_divide(sse, np.where(sst > 1e-12 * np.maximum(sum_y2, 1.0), sst, 0.0)),
    }
    if naive_scale:
        scores["mase"] = mae / naive_scale
    if np.all(y_true != 0):
        scores["mape"] = 100.0 * (weights @ (abs_err / np.abs(y_true)).mean(axis=1)) / total
    return scores


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC per resample: P(score_pos > score_neg) + 0.5 P(tie), with example weights."""
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    pos = positive[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # tied scores form one group
    w = weights[:, order]
    w_pos = np.add.reduceat(w * pos, starts, axis=1)
    w_neg = np.add.reduceat(w * (1.0 - pos), starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    wins = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    return _safe_divide(wins, w_pos.sum(axis=1) * w_neg.sum(axis=1))


def classification_scores(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per-resample classification metrics; ``y_true`` class indices [N], ``proba`` [N, C]."""
    n, num_classes = proba.shape
    pred = proba.argmax(axis=1)
    correct = (pred == y_true).astype(np.float64)
    true_onehot = np.eye(num_classes)[y_true]
    pred_onehot = np.eye(num_classes)[pred]
    total = weights.sum(axis=1)
    tp = weights @ (true_onehot * correct[:, None])
    support = weights @ true_onehot
    predicted = weights @ pred_onehot
    present = support > 0
    recall = np.where(present, tp / np.where(present, support, 1.0), 0.0)
    f1_den = support + predicted  # = 2TP + FP + FN
    seen = f1_den > 0
    f1 = np.where(seen, 2.0 * tp / np.where(seen, f1_den, 1.0), 0.0)
    p_true = np.clip(proba[np.arange(n), y_true], _PROBABILITY_FLOOR, 1.0)
    confidence = proba.max(axis=1)
    bins = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    bin_gap = weights @ (np.eye(ECE_BINS)[bins] * (correct - confidence)[:, None])
    if num_classes == 2:
        auroc = _weighted_auc(proba[:, 1], y_true == 1, weights)
    else:
        auroc = np.mean([_weighted_auc(proba[:, c], y_true == c, weights) for c in range(num_classes)], axis=0)
    return {
        "accuracy": weights @ correct / total,
        "balanced_accuracy": recall.sum(axis=1) / present.sum(axis=1),
        "macro_f1": f1.sum(axis=1) / np.maximum(seen.sum(axis=1), 1),
        "log_loss": weights @ -np.log(p_true) / total,
        "auroc": auroc,
        "ece": np.abs(bin_gap).sum(axis=1) / total,
    }


def scores(
    task: str, y_true: np.ndarray, pred: np.ndarray, weights: np.ndarray, naive_scale: float | None = None
) -> dict[str, np.ndarray]:
    if task == "classification":
        return classification_scores(y_true, pred, weights)
    return regression_scores(y_true, pred, weights, naive_scale)


def point_metrics(
    task: str, y_true: np.ndarray, pred: np.ndarray, naive_scale: float | None = None
) -> dict[str, float | None]:
    """Every metric of the task; ``None`` where it is undefined (see ``undefined_metric_notes``)."""
    values = scores(task, y_true, pred, np.ones((1, len(y_true))), naive_scale)
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    return {name: json_float(values[name][0]) if name in values else None for name in names}


def undefined_metric_notes(task: str, y_true: np.ndarray, part: str, num_classes: int | None = None) -> list[str]:
    """Why a metric of ``part`` is None, in words."""
    notes = []
    if task == "classification":
        absent = num_classes is not None and len(np.unique(y_true)) < num_classes
        if absent:
            notes.append(f"auroc on {part} is null: not every class occurs in the {part} examples")
    elif np.any(y_true == 0):
        notes.append(f"mape on {part} is null: a true value is 0")
    return notes


def bootstrap_weight_chunks(n: int, samples: int, rng: np.random.Generator, block: int = 1) -> Iterator[np.ndarray]:
    """Resample counts ``[b, n]`` (rows sum to n), in chunks that bound memory.

    ``block`` > 1: a moving-block bootstrap (Künsch 1989): each resample is made of runs of ``block``
    consecutive examples from random starts (the last run cut to n in all), so that examples whose
    errors are correlated with their neighbours' — consecutive forecast windows — are drawn together.
    """
    chunk = max(1, min(samples, _MAX_WEIGHT_ELEMENTS // max(n, 1)))
    block = max(1, min(block, n))
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        if block == 1:
            picked = rng.integers(0, n, size=(b, n))
        else:
            starts = rng.integers(0, n - block + 1, size=(b, -(-n // block)))
            picked = (starts[:, :, None] + np.arange(block)).reshape(b, -1)[:, :n]
        draws = picked + (np.arange(b) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def resample_block(task: str, y_true: np.ndarray, pred: np.ndarray) -> int:
    """Consecutive test examples resampled together: one for every task but a forecast (its examples
    are separate cases); for a forecast, windows whose errors run together (overlapping windows, a
    model that misses a slow pattern) — the largest of the horizon, ∛n (the usual order of a block
    length, Hall, Horowitz & Jing 1995) and twice the lag after which the errors' autocorrelation
    stays insignificant (Politis & White 2004's rule for that lag), never more than half the windows.
    """
    n = len(y_true)
    if task != "forecast" or n < 4:
        return 1
    horizon = int(y_true.shape[1]) if y_true.ndim > 1 else 1
    errors = (pred.reshape(n, -1)[:, 0] - y_true.reshape(n, -1)[:, 0]).astype(np.float64)
    return max(1, min(max(horizon, round(n ** (1 / 3)), 2 * correlated_lags(errors)), n // 2))


def correlated_lags(series: np.ndarray) -> int:
    """The smallest lag m after which the next K autocorrelations all stay within c·√(log10 n / n)
    (c = 2, K = max(5, √log10 n)): how far the series remembers itself (Politis & White 2004)."""
    n = len(series)
    centred = series - series.mean()
    variance = float(centred @ centred)
    if n < 4 or variance <= 0.0 or not math.isfinite(variance):
        return 0
    limit = 2.0 * math.sqrt(math.log10(n) / n)
    window = max(5, math.ceil(math.sqrt(math.log10(n))))
    acf = np.array([float(centred[k:] @ centred[: n - k]) / variance for k in range(1, n // 2 + 1)])
    for m in range(len(acf)):
        if np.all(np.abs(acf[m : m + window]) < limit):
            return m
    return len(acf)


def bootstrap_intervals(
    task: str,
    y_true: np.ndarray,
    pred: np.ndarray,
    samples: int,
    rng: np.random.Generator,
    naive_scale: float | None = None,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals over examples for every metric of the task (over blocks of
    consecutive windows for a forecast: ``resample_block``)."""
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if samples == 0 or len(y_true) == 0:
        return {}
    collected: dict[str, list[np.ndarray]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for weights in bootstrap_weight_chunks(len(y_true), samples, rng, resample_block(task, y_true, pred)):
            for name, values in scores(task, y_true, pred, weights, naive_scale).items():
                collected.setdefault(name, []).append(values)
    return {name: percentile_interval(collected.get(name), samples, level) for name in names}


def drop_intervals_missing_their_point(
    point: dict[str, Any], intervals: dict[str, list[float] | None], n: int
) -> list[str]:
    """Set to None, in place, each interval that does not hold its own point estimate, and say why.

    A metric that resampling biases (the expected calibration error: resamples repeat examples, and
    their bins look worse calibrated) can have every bootstrap value on one side of the value on the
    real test part, and a percentile interval that excludes it: an interval that cannot be read as
    "where the value plausibly lies". Seen with ECE on 18 test examples: 0.0148 with [0.0196, 0.279].
    """
    notes = []
    for name, interval in intervals.items():
        value = point.get(name)
        if interval is None or value is None or not math.isfinite(value) or interval[0] <= value <= interval[1]:
            continue
        intervals[name] = None
        notes.append(
            f"{name}'s 95% bootstrap interval is left out: the value on the test part ({value:.4g}) lies outside "
            f"it ([{interval[0]:.4g}, {interval[1]:.4g}]); resampling {n} test examples biases this metric, so "
            "its interval needs more test examples"
        )
    return notes


def percentile_interval(chunks: list[np.ndarray] | None, samples: int, level: float = 0.95) -> list[float] | None:
    """The central ``level`` percentile interval of bootstrap values gathered in chunks; None when the
    value was undefined (not finite) in most resamples, e.g. a class rarely drawn."""
    if not chunks:
        return None
    values = np.concatenate(chunks)
    values = values[np.isfinite(values)]
    if len(values) < 0.5 * samples:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _main_scores(task: str, y_true: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The main metric alone per resample (accuracy, or rmse): the same values ``scores`` gives it."""
    total = weights.sum(axis=1)
    if task == "classification":
        return weights @ (pred.argmax(axis=1) == y_true).astype(np.float64) / total
    err = pred.reshape(len(pred), -1).astype(np.float64) - y_true.reshape(len(y_true), -1).astype(np.float64)
    return np.sqrt(weights @ (err**2).mean(axis=1) / total)


def paired_differences(
    task: str,
    y_true: np.ndarray,
    model_pred: np.ndarray,
    baseline_preds: dict[str, np.ndarray],
    samples: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Per baseline, the percentile interval of (model − baseline) on the main metric over paired
    bootstrap resamples: the model and the baseline are scored on the same drawn test examples, so
    what the two share (hard examples, an easy test part) cancels and only their difference varies."""
    if samples == 0 or len(y_true) == 0 or not baseline_preds:
        return {name: None for name in baseline_preds}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in baseline_preds}
    with np.errstate(divide="ignore", invalid="ignore"):
        for weights in bootstrap_weight_chunks(len(y_true), samples, rng, resample_block(task, y_true, model_pred)):
            model = _main_scores(task, y_true, model_pred, weights)
            for name, pred in baseline_preds.items():
                collected[name].append(model - _main_scores(task, y_true, pred, weights))
    return {name: percentile_interval(chunks, samples, level) for name, chunks in collected.items()}
