"""Sweep statistics on hand-computed numbers (pure functions: no database, no worker)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from app.sweeps import stats
from app.sweeps.report import SweepJobRow, build_report
from worker.engine.metrics import lower_is_better


@pytest.mark.parametrize(
    ("df", "expected"),
    [
        (1, 12.706),
        (2, 4.303),
        (3, 3.182),
        (4, 2.776),
        (5, 2.571),
        (10, 2.228),
        (20, 2.086),
        (30, 2.042),
        (120, 1.980),
    ],
)
def test_t_quantile_975_matches_tables(df: int, expected: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_closed_forms_for_one_and_two_degrees_of_freedom(p: float) -> None:
    assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


def test_t_quantile_other_levels_symmetry_and_normal_limit() -> None:
    assert stats.t_quantile(0.995, 1) == pytest.approx(63.657, abs=1e-3)
    assert stats.t_quantile(0.95, 9) == pytest.approx(1.833, abs=1e-3)
    assert stats.t_quantile(0.5, 7) == 0.0
    assert stats.t_quantile(0.025, 4) == pytest.approx(-stats.t_quantile(0.975, 4))
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    assert stats.t_cdf(2.776445, 4) == pytest.approx(0.975, abs=1e-6)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_summary_of_three_seeds() -> None:
    s = stats.summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std, s.min, s.max) == (3, 2.0, 1.0, 1.0, 3.0)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, df=2) · s / √n
    assert s.ci == pytest.approx((2.0 - half, 2.0 + half), abs=1e-6)
    assert s.cv == pytest.approx(0.5)


def test_sample_std_uses_n_minus_one() -> None:
    s = stats.summarize([2, 4, 4, 4, 5, 5, 7, 9])
    assert s.mean == 5.0
    assert s.std == pytest.approx(math.sqrt(32 / 7))
    half = 2.364624 * math.sqrt(32 / 7) / math.sqrt(8)  # t(0.975, df=7)
    assert s.ci == pytest.approx((5 - half, 5 + half), abs=1e-5)


def test_one_seed_has_no_std_no_interval() -> None:
    s = stats.summarize([0.7])
    assert s.n == 1 and s.std is None and s.ci is None and s.cv is None
    assert s.as_dict() == {"n": 1, "mean": 0.7, "std": None, "min": 0.7, "max": 0.7, "ci": None}


def test_share_of_variance_and_range_on_an_additive_two_by_two() -> None:
    means = [
        ({"h": 32, "lr": 0.1}, 1.0),
        ({"h": 32, "lr": 0.01}, 2.0),
        ({"h": 64, "lr": 0.1}, 3.0),
        ({"h": 64, "lr": 0.01}, 4.0),
    ]
    # grand mean 2.5, total SS 5; h: groups 1.5 / 3.5 → between SS 4; lr: 2.0 / 3.0 → between SS 1.
    h = stats.parameter_effect(means, "h")
    assert h.range == 2.0 and h.share_of_variance == pytest.approx(0.8)
    assert h.value_means == [(32, 1.5, 2), (64, 3.5, 2)]
    lr = stats.parameter_effect(means, "lr")
    assert lr.range == 1.0 and lr.share_of_variance == pytest.approx(0.2)


def test_share_of_variance_unbalanced_and_constant() -> None:
    means = [({"c": "gru"}, 1.0), ({"c": "gru"}, 3.0), ({"c": "lstm"}, 5.0)]
    # grand 3; total SS 4 + 0 + 4 = 8; groups gru 2.0 (2 settings), lstm 5.0 → between 2·1 + 1·4 = 6.
    effect = stats.parameter_effect(means, "c")
    assert effect.share_of_variance == pytest.approx(0.75) and effect.range == 3.0
    flat = stats.parameter_effect([({"c": "gru"}, 2.0), ({"c": "lstm"}, 2.0)], "c")
    assert flat.range == 0.0 and flat.share_of_variance is None


def test_best_and_runner_up_distinguishable_when_intervals_do_not_overlap() -> None:
    a = stats.summarize([1.0, 1.1, 0.9])  # 1 ± 0.2484
    b = stats.summarize([2.0, 2.1, 1.9])  # 2 ± 0.2484
    order, ranked = stats.rank_settings({"a": a, "b": b}, lower_is_better=True)
    assert order == ["a", "b"] and ranked is not None
    assert ranked.best == "a" and ranked.runner_up == "b" and ranked.distinguishable is True
    assert "do not overlap" in ranked.explanation and "[0.7516" in ranked.explanation and "[1.752" in ranked.explanation

    order, ranked = stats.rank_settings({"a": a, "b": b}, lower_is_better=False)
    assert order == ["b", "a"] and ranked is not None and ranked.best == "b"


def test_best_and_runner_up_not_distinguishable_when_intervals_overlap() -> None:
    a = stats.summarize([1.0, 1.1, 0.9])
    c = stats.summarize([1.2, 1.5, 0.9])  # 1.2 ± 0.745
    _, ranked = stats.rank_settings({"a": a, "c": c}, lower_is_better=True)
    assert ranked is not None and ranked.runner_up == "c" and ranked.distinguishable is False
    assert "overlap" in ranked.explanation and "not distinguishable" in ranked.explanation


def test_undecided_without_two_seeds_or_runner_up() -> None:
    _, ranked = stats.rank_settings({"a": stats.summarize([1.0]), "b": stats.summarize([2.0, 2.2])}, True)
    assert ranked is not None and ranked.distinguishable is None and "at least two" in ranked.explanation
    _, ranked = stats.rank_settings({"a": stats.summarize([1.0, 1.2])}, True)
    assert ranked is not None and ranked.runner_up is None and ranked.distinguishable is None
    assert stats.rank_settings({}, True) == ([], None)


def test_metric_directions() -> None:
    for name in ("rmse", "mae", "smape", "mase", "mape", "log_loss", "ece", "loss"):
        assert lower_is_better(name)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "r2"):
        assert not lower_is_better(name)


def _row(i: int, setting: dict, status: str, rmse: float | None = None, seed: int = 0) -> SweepJobRow:
    import json

    metrics = {"rmse": rmse, "mae": rmse / 2 if rmse else None} if rmse is not None else {}
    return SweepJobRow(f"j{i}", setting, json.dumps(setting, sort_keys=True), seed, status, metrics)


def test_report_counts_only_succeeded_jobs_and_flags_seed_variance() -> None:
    s32, s64 = {"model.hidden_size": 32}, {"model.hidden_size": 64}
    rows = [
        _row(1, s32, "succeeded", 1.0, 0),
        _row(2, s32, "succeeded", 1.05, 1),
        _row(3, s32, "succeeded", 0.95, 2),
        _row(4, s64, "succeeded", 2.0, 0),
        _row(5, s64, "succeeded", 3.0, 1),
        _row(6, s64, "running", None, 2),
        _row(7, s64, "failed", None, 3),
    ]
    report = build_report(rows, ["model.hidden_size"], "rmse")
    assert (report.total, report.finished, report.succeeded, report.complete) == (7, 6, 5, False)
    assert report.lower_is_better and report.high_seed_cv_threshold == 0.1
    first, second = report.settings
    assert first.setting == s32 and first.rank == 1 and first.n == 3 and first.jobs == 3
    assert first.metrics["rmse"].mean == pytest.approx(1.0) and first.metrics["rmse"].std == pytest.approx(0.05)
    assert first.metrics["mae"].mean == pytest.approx(0.5)
    assert first.seed_cv == pytest.approx(0.05) and first.high_seed_variance is False
    assert second.n == 2 and second.jobs == 4 and second.metrics["rmse"].mean == 2.5
    assert second.seed_cv == pytest.approx(math.sqrt(0.5) / 2.5) and second.high_seed_variance is True
    assert report.best is not None and report.best.best.setting == s32
    assert report.best.runner_up is not None and report.best.runner_up.mean == 2.5
    assert report.best.distinguishable is False  # 64's interval with two seeds (t=12.7) is very wide
    effect = report.parameters["model.hidden_size"]
    assert effect.range == pytest.approx(1.5) and effect.share_of_variance is None  # one setting per value


def test_report_before_any_job_succeeded() -> None:
    rows = [_row(1, {"model.cell": "gru"}, "queued"), _row(2, {"model.cell": "lstm"}, "running")]
    report = build_report(rows, ["model.cell"], "accuracy")
    assert report.succeeded == 0 and report.best is None and report.parameters == {}
    assert [s.rank for s in report.settings] == [None, None] and not report.lower_is_better


@pytest.mark.parametrize("name", ["accuracy", "auroc", "ece", "rmse", "mae", "mase", "log_loss", "smape", "r2"])
def test_intervals_never_leave_the_metric_range(name: str) -> None:
    """Many small-sample draws hugging each bound (the negative RMSE bound seen in a report): every
    interval stays inside the metric's range and around the mean."""
    rng = random.Random(name)
    low, high = stats.metric_bounds(name)
    for _ in range(2000):
        n = rng.randint(2, 6)
        if low is not None and high is not None:
            edge = rng.choice((low, high))
            values = [
                min(high, max(low, edge + rng.choice((1, -1)) * rng.random() ** 4 * (high - low))) for _ in range(n)
            ]
        elif low is not None:
            values = [low + rng.random() ** 6 * rng.choice((1e-3, 1.0, 1e3)) for _ in range(n)]
        else:
            assert high is not None
            values = [high - rng.random() ** 6 * rng.choice((1e-3, 1.0, 1e3)) for _ in range(n)]
        s = stats.summarize(values, bounds=(low, high))
        assert s.ci is not None
        assert s.ci[0] <= s.mean + 1e-12 and s.mean <= s.ci[1] + 1e-12, (values, s)
        if low is not None:
            assert s.ci[0] >= low, (values, s)
        if high is not None:
            assert s.ci[1] <= high, (values, s)


def test_transformed_interval_matches_student_t_far_from_bounds() -> None:
    values = [100.0, 101.0, 102.0]
    plain = stats.summarize(values)
    logged = stats.summarize(values, bounds=stats.metric_bounds("rmse"))
    assert plain.ci is not None and logged.ci is not None
    assert logged.ci == pytest.approx(plain.ci, rel=1e-3)
    assert stats.summarize([0.0, 0.0], bounds=stats.metric_bounds("rmse")).ci == (0.0, 0.0)
    assert stats.summarize([1.0, 1.0, 1.0], bounds=stats.metric_bounds("accuracy")).ci == (1.0, 1.0)


def test_a_setting_whose_seeds_all_agree_leaves_the_verdict_undecided() -> None:
    # Accuracy on a small test part comes in steps, and 1.0 is a bound: [1, 1] is a point, not a spread,
    # and against any imperfect setting it would read "distinguishable" (28% of the time with two equally
    # good settings of 2 seeds each, binomial(30, 0.97) accuracies, in a reviewer's simulation).
    perfect = stats.summarize([1.0, 1.0], bounds=stats.metric_bounds("accuracy"))
    other = stats.summarize([1.0, 29 / 30], bounds=stats.metric_bounds("accuracy"))
    order, ranked = stats.rank_settings({"a": perfect, "b": other}, lower_is_better=False)
    assert order == ["a", "b"] and ranked is not None
    assert ranked.distinguishable is None and "every seed of the best gave the same value" in ranked.explanation


def test_a_setting_run_twice_with_the_same_seed_counts_once() -> None:
    # A tpe search may propose a setting twice; both trials run its trial seed: one draw, not two seeds.
    rows = [
        SweepJobRow(
            f"j{i}", {"model.hidden_size": h}, json.dumps({"model.hidden_size": h}), 0, "succeeded", {"rmse": v}
        )
        for i, (h, v) in enumerate([(8, 0.4), (8, 0.4), (8, 0.4), (16, 0.401), (16, 0.401)])
    ]
    report = build_report(rows, ["model.hidden_size"], "rmse", split="val")
    assert [(s.n, s.jobs) for s in report.settings] == [(1, 3), (1, 2)]
    assert report.best is not None and report.best.distinguishable is None  # one seed each: undecided


def test_grid_importance_uses_the_values_that_ran_not_the_whole_grid() -> None:
    """A random search over 500,000 learning rates made fANOVA a category of every grid value (minutes
    of CPU and 8.8 GB for one GET of the sweep): only the values that ran count, and a parameter with
    more than 50 of them gets no importance."""
    import time
    from types import SimpleNamespace

    from app.sweeps.tpe import MAX_IMPORTANCE_LEVELS, grid_importance

    rates = [round(1e-4 + i * 1e-9, 12) for i in range(500_000)]
    grid = {"training.learning_rate": rates, "model.hidden_size": [4, 8]}

    def report(settings: list[dict[str, Any]]) -> Any:
        rows = [
            SimpleNamespace(setting=s, metrics={"rmse": SimpleNamespace(mean=0.1 * (1 + i % 3))})
            for i, s in enumerate(settings)
        ]
        return SimpleNamespace(settings=rows, main_metric="rmse", lower_is_better=True)

    few = [{"training.learning_rate": rates[i * 1000], "model.hidden_size": h} for i in range(3) for h in (4, 8)]
    began = time.monotonic()
    importance = grid_importance(grid, report(few))
    assert time.monotonic() - began < 20
    assert importance is not None and set(importance) == set(grid)
    many = [{"training.learning_rate": rates[i], "model.hidden_size": 4} for i in range(MAX_IMPORTANCE_LEVELS + 1)]
    assert grid_importance(grid, report(many)) is None
