from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from worker.engine.baselines import (
    detect_season_period,
    fit_least_squares,
    forecast_baselines,
    naive_forecast,
    nearest_neighbour_labels,
    predict_least_squares,
    seasonal_naive_forecast,
)
from worker.engine.data import prepare_data

from .engine_fixtures import make_spec


def test_naive_and_seasonal_naive_by_hand() -> None:
    history = np.array([[1.0, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(naive_forecast(history, 3), [[6, 6, 6]])
    np.testing.assert_array_equal(seasonal_naive_forecast(history, 4, period=3), [[4, 5, 6, 4]])


def test_season_detection() -> None:
    t = np.arange(400)
    assert detect_season_period(np.sin(2 * np.pi * t / 17), max_lag=40) == 17
    noise = np.random.default_rng(0).standard_normal(400)
    assert detect_season_period(noise, max_lag=40) is None


def test_least_squares_recovers_a_linear_rule() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((100, 2))
    targets = (2 * inputs[:, 0] - inputs[:, 1] + 3)[:, None]
    coef, capped = fit_least_squares(inputs, targets, rng)
    assert not capped
    np.testing.assert_allclose(coef[:, 0], [2, -1, 3], atol=1e-10)
    np.testing.assert_allclose(predict_least_squares(coef, np.array([[1.0, 1.0]])), [[4.0]])


def test_normal_equations_match_lstsq_also_when_columns_are_collinear() -> None:
    """The normal equations (float64, centred) give numpy lstsq's coefficients; with a constant and a
    duplicated column (a singular Gram matrix) the minimum-norm solution, as lstsq does."""
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((500, 6))
    targets = inputs @ rng.standard_normal((6, 2)) + 0.1 * rng.standard_normal((500, 2)) + 1.5
    design = np.hstack([inputs, np.ones((500, 1))])
    expected, *_ = np.linalg.lstsq(design, targets, rcond=None)
    coef, _ = fit_least_squares(inputs, targets, rng)
    np.testing.assert_allclose(coef, expected, rtol=1e-9, atol=1e-11)
    singular = np.hstack([inputs, inputs[:, :1], np.full((500, 1), 4.0)])
    expected, *_ = np.linalg.lstsq(np.hstack([singular, np.ones((500, 1))]), targets, rcond=None)
    coef, _ = fit_least_squares(singular, targets, rng)
    np.testing.assert_allclose(
        predict_least_squares(coef, singular), design @ np.linalg.lstsq(design, targets, rcond=None)[0], atol=1e-9
    )
    np.testing.assert_allclose(coef[0], coef[6], rtol=1e-9)  # the duplicate shares the weight: minimum norm
    assert coef[7, 0] == pytest.approx(0.0, abs=1e-9)  # the constant column is the intercept's
    np.testing.assert_allclose(coef[:6], expected[:6], rtol=1e-7)


def test_nearest_neighbour_by_hand() -> None:
    train_x = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    train_y = np.array([0, 1, 2])
    test_x = np.array([[1.0, 1.0], [9.0, 8.0], [1.0, 9.0], [0.0, 0.0]])
    np.testing.assert_array_equal(nearest_neighbour_labels(train_x, train_y, test_x), [0, 1, 2, 0])


def test_forecast_baselines_use_the_test_windows() -> None:
    value = np.arange(60.0) * 2.0  # a line: naive misses by one step, linear AR is exact
    spec = make_spec(
        "forecast", {"layout": "series", "target": "value", "lookback": 5, "horizon": 2, "season_period": 3}
    )
    prep = prepare_data(spec, pa.table({"value": value}), np.random.default_rng(0))
    preds, _ = forecast_baselines(prep, 3, np.random.default_rng(0))
    y_test = prep.y_original("test")
    np.testing.assert_allclose(preds["naive"], y_test - np.array([[2.0, 4.0]]))
    np.testing.assert_allclose(preds["seasonal_naive"], y_test - np.array([[6.0, 6.0]]))
    np.testing.assert_allclose(preds["linear_ar"], y_test, atol=1e-6)
    assert preds["mean"][0, 0] == pytest.approx(prep.y_original("train").mean())
