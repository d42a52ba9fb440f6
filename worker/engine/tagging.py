"""Sequence-labelling (``tagging``) metrics and baselines, with bootstrap intervals over sequences.

Every metric is a ratio of per-sequence counts (correct tokens, tokens, per-tag true positives …),
so a bootstrap resample is a weight per sequence and the resamples run as matrix products, as in
``metrics.py``. Padded steps carry the tag ``IGNORE_TAG`` (< 0) and are never scored.

- ``accuracy``: correct tokens / tokens.
- ``macro_f1``: the mean over tags (seen in the truth or the predictions) of per-tag F1.
- ``span_f1`` (tags in BIO form only: ``O``, ``B-X``, ``I-X``): F1 of exact (start, end, type)
  spans, conlleval's reading (an ``I-X`` that does not continue an ``X`` span starts one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import TAGGING_METRICS, bootstrap_weight_chunks, json_float, percentile_interval


def is_bio(classes: list[Any]) -> bool:
    """Tags written in BIO form (at least one ``B-`` tag, every tag ``O``, ``B-…`` or ``I-…``)."""
    names = [str(c) for c in classes]
    return any(n.startswith("B-") for n in names) and all(n == "O" or n[:2] in ("B-", "I-") for n in names)


def bio_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """The (start, end exclusive, type) spans of one sequence's BIO tags."""
    spans: set[tuple[int, int, str]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and start >= 0 and name == kind
        if start >= 0 and not continues:
            spans.add((start, i, kind))
            start, kind = -1, ""
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, name
    return spans


@dataclass
class SequenceCounts:
    """Per-sequence counts every tagging metric is a ratio of."""

    correct: np.ndarray  # [N]
    tokens: np.ndarray  # [N]
    tp: np.ndarray  # [N, C]
    support: np.ndarray  # [N, C]
    predicted: np.ndarray  # [N, C]
    span_tp: np.ndarray | None  # [N] (BIO tags only)
    span_gold: np.ndarray | None
    span_pred: np.ndarray | None


def sequence_counts(y_true: np.ndarray, y_pred: np.ndarray, classes: list[Any]) -> SequenceCounts:
    """``y_true`` / ``y_pred``: tag indices ``[N, T]``; steps where ``y_true < 0`` are padding."""
    n, num_classes = len(y_true), len(classes)
    real = y_true >= 0
    rows = np.nonzero(real)[0]
    truth, pred = y_true[real], y_pred[real]
    tp = np.zeros((n, num_classes))
    support = np.zeros((n, num_classes))
    predicted = np.zeros((n, num_classes))
    np.add.at(support, (rows, truth), 1.0)
    np.add.at(predicted, (rows, pred), 1.0)
    hit = truth == pred
    np.add.at(tp, (rows[hit], truth[hit]), 1.0)
    counts = SequenceCounts(
        correct=tp.sum(axis=1),
        tokens=real.sum(axis=1).astype(np.float64),
        tp=tp,
        support=support,
        predicted=predicted,
        span_tp=None,
        span_gold=None,
        span_pred=None,
    )
    if is_bio(classes):
        names = [str(c) for c in classes]
        span_tp, span_gold, span_pred = np.zeros(n), np.zeros(n), np.zeros(n)
        for i in range(n):
            keep = real[i]
            gold = bio_spans([names[t] for t in y_true[i][keep]])
            guess = bio_spans([names[t] for t in y_pred[i][keep]])
            span_tp[i], span_gold[i], span_pred[i] = len(gold & guess), len(gold), len(guess)
        counts.span_tp, counts.span_gold, counts.span_pred = span_tp, span_gold, span_pred
    return counts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    ok = den > 0
    return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def tagging_scores(c: SequenceCounts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per-resample metrics; ``weights`` ``[B, N]`` (how often each sequence is drawn)."""
    tp, support, predicted = weights @ c.tp, weights @ c.support, weights @ c.predicted
    den = support + predicted  # 2TP + FP + FN per tag
    seen = den > 0
    f1 = np.where(seen, 2.0 * tp / np.where(seen, den, 1.0), 0.0)
    scores = {
        "accuracy": _ratio(weights @ c.correct, weights @ c.tokens),
        "macro_f1": _ratio(f1.sum(axis=1), seen.sum(axis=1).astype(np.float64)),
    }
    if c.span_tp is not None and c.span_gold is not None and c.span_pred is not None:
        scores["span_f1"] = _ratio(2.0 * (weights @ c.span_tp), weights @ c.span_gold + weights @ c.span_pred)
    return scores


def tagging_point_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[Any]) -> dict[str, float | None]:
    values = tagging_scores(sequence_counts(y_true, y_pred, classes), np.ones((1, len(y_true))))
    return {name: json_float(values[name][0]) if name in values else None for name in TAGGING_METRICS}


def tagging_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: list[Any],
    samples: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals over sequences (tokens of one sequence are drawn together)."""
    if samples == 0 or len(y_true) == 0:
        return {}
    counts = sequence_counts(y_true, y_pred, classes)
    collected: dict[str, list[np.ndarray]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for weights in bootstrap_weight_chunks(len(y_true), samples, rng):
            for name, values in tagging_scores(counts, weights).items():
                collected.setdefault(name, []).append(values)
    return {name: percentile_interval(collected.get(name), samples, level) for name in TAGGING_METRICS}


def tagging_paired_differences(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    baseline_preds: dict[str, np.ndarray],
    classes: list[Any],
    samples: int,
    rng: np.random.Generator,
    metric: str = "accuracy",
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Per baseline, the percentile interval of (model − baseline) on ``metric`` over paired bootstrap
    resamples of whole sequences: both scored on the same drawn test sequences (as
    ``metrics.paired_differences`` does for one output per example)."""
    if samples == 0 or len(y_true) == 0 or not baseline_preds:
        return {name: None for name in baseline_preds}
    model = sequence_counts(y_true, y_pred, classes)
    baselines = {name: sequence_counts(y_true, pred, classes) for name, pred in baseline_preds.items()}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in baseline_preds}
    with np.errstate(divide="ignore", invalid="ignore"):
        for weights in bootstrap_weight_chunks(len(y_true), samples, rng):
            ours = tagging_scores(model, weights)[metric]
            for name, counts in baselines.items():
                collected[name].append(ours - tagging_scores(counts, weights)[metric])
    return {name: percentile_interval(chunks, samples, level) for name, chunks in collected.items()}


def majority_tag(y_train: np.ndarray, num_classes: int) -> int:
    real = y_train[y_train >= 0]
    return int(np.bincount(real, minlength=num_classes).argmax())


def tagging_baselines(
    y_train: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    ids_train: np.ndarray | None,
    ids_test: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Predicted tags ``[N_test, T]`` of ``majority_tag`` and, for token inputs, ``most_frequent_tag``
    (each token's most frequent training tag; the majority tag for tokens never seen in training)."""
    majority = majority_tag(y_train, num_classes)
    preds = {"majority_tag": np.full(y_test.shape, majority, dtype=np.int64)}
    if ids_train is None or ids_test is None:
        return preds
    real = y_train >= 0
    pairs = ids_train[real].astype(np.int64) * num_classes + y_train[real]
    unique, counts = np.unique(pairs, return_counts=True)
    token, tag = unique // num_classes, unique % num_classes
    order = np.lexsort((-counts, token))  # per token, the most frequent tag first
    token, tag = token[order], tag[order]
    first = np.r_[True, token[1:] != token[:-1]]
    table = dict(zip(token[first].tolist(), tag[first].tolist(), strict=True))
    lookup = np.vectorize(lambda t: table.get(int(t), majority), otypes=[np.int64])
    preds["most_frequent_tag"] = lookup(ids_test) if ids_test.size else np.zeros(y_test.shape, dtype=np.int64)
    return preds
