"""The comparison with each baseline says whether the model's lead is beyond resampling noise: a paired
bootstrap of model − baseline over the same drawn test examples (numbers by construction, no training)."""

from __future__ import annotations

import numpy as np

from worker.engine.evaluation import compare, noise_notes
from worker.engine.metrics import bootstrap_intervals, paired_differences


def _regression(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n, 1))
    return truth, rng


def test_a_clearly_better_model_is_significant_and_a_tie_is_not() -> None:
    truth, rng = _regression()
    good = truth + 0.1 * rng.standard_normal(truth.shape)
    bad = truth + 1.0 * rng.standard_normal(truth.shape)
    out = paired_differences("forecast", truth, good, {"bad": bad, "same": good.copy()}, 500, rng)
    low, high = out["bad"]
    assert high < 0  # rmse: the model's is lower in every resample's 95% range
    assert out["same"] == [0.0, 0.0]
    assert compare("rmse", 0.1, 1.0, out["bad"])["significant"] is True
    same = compare("rmse", 0.1, 0.1, out["same"])
    assert same["significant"] is False and same["beats"] is False


def test_a_lead_within_noise_is_reported_as_such() -> None:
    truth, rng = _regression(n=60)
    model = truth + 0.50 * rng.standard_normal(truth.shape)
    baseline = truth + 0.52 * rng.standard_normal(truth.shape)
    differences = paired_differences("forecast", truth, model, {"mean": baseline}, 500, rng)
    low, high = differences["mean"]
    assert low < 0 < high
    rmse = lambda pred: float(np.sqrt(np.mean((pred - truth) ** 2)))  # noqa: E731
    comparison = {"mean": compare("rmse", rmse(model), rmse(baseline), differences["mean"])}
    assert comparison["mean"]["beats"] is True and comparison["mean"]["significant"] is False  # 0.506 vs 0.512
    [note] = noise_notes("rmse", comparison)
    assert "beats mean on rmse, but within resampling noise" in note and "holds 0" in note


def test_accuracy_differences_point_up_and_pairing_narrows_them() -> None:
    rng = np.random.default_rng(1)
    n = 300
    labels = rng.integers(0, 2, n)
    hard = rng.random(n) < 0.3  # examples both get wrong: shared, so they cancel in the pairing
    model_right = ~hard & (rng.random(n) < 0.95)
    baseline_right = ~hard & (rng.random(n) < 0.85)

    def proba(right: np.ndarray) -> np.ndarray:
        predicted = np.where(right, labels, 1 - labels)
        return np.eye(2)[predicted]

    model, baseline = proba(model_right), proba(baseline_right)
    low, high = paired_differences("classification", labels, model, {"b": baseline}, 1000, rng)["b"]
    assert low > 0  # higher accuracy is better: the interval sits above 0
    # The unpaired view (two separate intervals) is far wider than the paired one.
    a = bootstrap_intervals("classification", labels, model, 1000, rng)["accuracy"]
    b = bootstrap_intervals("classification", labels, baseline, 1000, rng)["accuracy"]
    assert (high - low) < 0.8 * ((a[1] - a[0]) + (b[1] - b[0]))


def test_no_bootstrap_no_interval() -> None:
    truth, rng = _regression()
    assert paired_differences("forecast", truth, truth, {"naive": truth}, 0, rng) == {"naive": None}
    assert compare("rmse", 1.0, 2.0, None)["significant"] is None
