from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from worker.engine.metrics import (
    bootstrap_intervals,
    bootstrap_weight_chunks,
    classification_scores,
    correlated_lags,
    drop_intervals_missing_their_point,
    point_metrics,
    resample_block,
)


def test_regression_metrics_by_hand() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 3.0, 2.0, 6.0])
    m = point_metrics("regression", y[:, None], pred[:, None], naive_scale=2.0)
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(1.5))
    assert m["smape"] == pytest.approx(100 * (0 + 2 / 5 + 2 / 5 + 4 / 10) / 4)
    assert m["mape"] == pytest.approx(100 * (0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert m["r2"] == pytest.approx(1 - 6 / 5)
    assert m["mase"] == pytest.approx(0.5)


def test_mape_is_null_when_a_true_value_is_zero_and_horizon_is_flattened() -> None:
    y = np.array([[0.0, 1.0], [2.0, 3.0]])
    pred = np.array([[1.0, 1.0], [2.0, 1.0]])
    m = point_metrics("forecast", y, pred)
    assert m["mape"] is None and m["mase"] is None
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["r2"] == pytest.approx(1 - 5 / 5)


def test_classification_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    m = point_metrics("classification", y, proba)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.2)) / 4)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.8) / 4)


def brute_force_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(scores[positive], scores[~positive])]
    return float(np.mean(wins))


def test_macro_one_vs_rest_auroc_with_ties_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60).round(1)  # rounding creates ties
    proba /= proba.sum(axis=1, keepdims=True)
    expected = np.mean([brute_force_auc(proba[:, c], y == c) for c in range(3)])
    assert point_metrics("classification", y, proba)["auroc"] == pytest.approx(expected)


def test_imbalanced_balanced_accuracy_and_f1() -> None:
    y = np.array([0, 0, 0, 1])
    proba = np.array([[1.0, 0.0]] * 4)  # always class 0
    m = point_metrics("classification", y, proba)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 * 3 / (2 * 3 + 1) + 0.0) / 2)


def test_auroc_is_null_when_a_class_is_absent() -> None:
    y = np.array([0, 0, 1])
    proba = np.full((3, 3), 1 / 3)
    assert point_metrics("classification", y, proba)["auroc"] is None


def test_weights_equal_repeating_examples() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 10)
    proba = rng.dirichlet(np.ones(2), 10)
    weights = np.array([[2.0, 0, 1, 1, 3, 0, 1, 1, 0, 1]])
    repeated = np.repeat(np.arange(10), weights[0].astype(int))
    weighted = classification_scores(y, proba, weights)
    direct = point_metrics("classification", y[repeated], proba[repeated])
    for name, value in direct.items():
        assert weighted[name][0] == pytest.approx(value), name


def test_bootstrap_weights_are_resample_counts() -> None:
    chunks = list(bootstrap_weight_chunks(7, 25, np.random.default_rng(0)))
    weights = np.concatenate(chunks)
    assert weights.shape == (25, 7) and np.all(weights.sum(axis=1) == 7)


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((300, 1))
    pred = y + 0.3 * rng.standard_normal((300, 1))
    first = bootstrap_intervals("regression", y, pred, 500, np.random.default_rng(5))
    second = bootstrap_intervals("regression", y, pred, 500, np.random.default_rng(5))
    assert first == second
    point = point_metrics("regression", y, pred)
    for name in ("mae", "rmse", "r2", "smape"):
        low, high = first[name]  # type: ignore[misc]
        assert low < point[name] < high  # type: ignore[operator]


def test_an_interval_that_excludes_its_own_value_is_left_out_with_a_note() -> None:
    # 18 test examples, confidences spread over [0.5, 1]: resamples repeat examples, so their calibration
    # bins look worse, and every bootstrap ECE lands above the test part's own (found by search, seed 70).
    rng = np.random.default_rng(70)
    y = rng.integers(0, 2, 18)
    confidence = rng.uniform(0.5, 1.0, 18)
    predicted = np.where(rng.random(18) < confidence, y, 1 - y)
    probabilities = np.zeros((18, 2))
    probabilities[np.arange(18), predicted] = confidence
    probabilities[np.arange(18), 1 - predicted] = 1 - confidence
    point = point_metrics("classification", y, probabilities)
    intervals = bootstrap_intervals("classification", y, probabilities, 500, np.random.default_rng(0))
    low, high = intervals["ece"]  # type: ignore[misc]
    assert point["ece"] < low < high  # the percentile interval misses the value it is about
    kept = {name: interval for name, interval in intervals.items() if name != "ece"}
    notes = drop_intervals_missing_their_point(point, intervals, 18)
    assert intervals["ece"] is None and {k: v for k, v in intervals.items() if k != "ece"} == kept
    (note,) = notes
    assert note.startswith("ece's 95% bootstrap interval is left out") and "18 test examples" in note


def test_bootstrap_coverage_is_close_to_nominal() -> None:
    # MAE of predicting 0 for N(0, 1) targets has expectation sqrt(2 / pi).
    rng = np.random.default_rng(42)
    truth = math.sqrt(2 / math.pi)
    hits = 0
    trials = 200
    for _ in range(trials):
        y = rng.standard_normal((200, 1))
        interval = bootstrap_intervals("regression", y, np.zeros_like(y), 400, rng)["mae"]
        assert interval is not None
        hits += interval[0] <= truth <= interval[1]
    assert 0.88 <= hits / trials <= 0.99


def test_block_resamples_draw_runs_of_consecutive_examples() -> None:
    (counts,) = bootstrap_weight_chunks(20, 50, np.random.default_rng(0), block=5)
    assert counts.shape == (50, 20) and np.all(counts.sum(axis=1) == 20)
    for row in counts:  # four blocks of five: every run of drawn examples is at least five long
        runs = np.split(np.flatnonzero(row), np.flatnonzero(np.diff(np.flatnonzero(row)) > 1) + 1)
        assert min(len(run) for run in runs) >= 5, row
    (whole,) = bootstrap_weight_chunks(20, 3, np.random.default_rng(0), block=20)
    assert np.all(whole == 1)  # one block of every example: the sample itself


def test_forecast_intervals_resample_blocks_sized_by_the_errors_memory() -> None:
    rng = np.random.default_rng(3)
    n = 120
    iid = rng.standard_normal(n)
    persistent = np.zeros(n)
    for t in range(1, n):  # AR(0.9): each error remembers the last
        persistent[t] = 0.9 * persistent[t - 1] + rng.standard_normal()
    y = np.zeros((n, 1))
    assert resample_block("regression", y, persistent[:, None]) == 1  # separate cases: never blocks
    assert resample_block("forecast", np.zeros((n, 3)), iid[:, None] * np.ones((1, 3))) == 5  # ∛120, horizon 3
    assert correlated_lags(iid) <= 2 and correlated_lags(persistent) >= 5
    assert resample_block("forecast", y, persistent[:, None]) == 2 * correlated_lags(persistent)
    # Blocks widen the interval of an error that runs in long stretches; independent draws would
    # treat 120 windows as 120 separate pieces of evidence.
    as_forecast = bootstrap_intervals("forecast", y, persistent[:, None], 400, np.random.default_rng(0))["rmse"]
    as_cases = bootstrap_intervals("regression", y, persistent[:, None], 400, np.random.default_rng(0))["rmse"]
    assert as_forecast is not None and as_cases is not None
    assert as_forecast[1] - as_forecast[0] > 1.3 * (as_cases[1] - as_cases[0])
