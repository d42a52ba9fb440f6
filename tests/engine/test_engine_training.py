from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from worker.engine import (
    DataError,
    DeviceUnavailable,
    EpochReport,
    TrainingDiverged,
    load_predictor,
    train_and_evaluate,
)

from .engine_fixtures import make_spec, separable_arrays, sine_table


def assert_plain_json(value: Any) -> None:
    json.dumps(value, allow_nan=False)


def test_lstm_beats_the_naive_baseline_on_a_sine_wave() -> None:
    spec = make_spec(
        "forecast",
        {"layout": "series", "target": "value", "lookback": 24, "horizon": 3},
        training={"epochs": 8, "learning_rate": 0.01},
        evaluation={"bootstrap_samples": 200, "attribution": True},
    )
    reports: list[EpochReport] = []
    result = train_and_evaluate(spec, sine_table(), on_epoch=reports.append)
    assert result.evaluation is not None
    evaluation = result.evaluation.model_dump(mode="json")
    assert evaluation is not None and not result.cancelled
    assert [r.epoch for r in reports] == list(range(1, result.epochs_run + 1))
    assert set(reports[0].metrics["val"]) == {"loss", "rmse"}
    assert evaluation["comparison"]["naive"]["beats"] is True
    assert evaluation["comparison"]["mean"]["beats"] is True
    assert evaluation["metrics"]["test"]["rmse"] < 0.5 * evaluation["baselines"]["naive"]["rmse"]
    # Half the naive error: far beyond resampling noise (the paired difference interval is below 0).
    naive = evaluation["comparison"]["naive"]
    assert naive["significant"] is True and naive["difference_interval"][1] < 0
    assert "seasonal_naive" in evaluation["baselines"]  # period 20 detected
    low, high = evaluation["intervals"]["test"]["rmse"]
    assert low <= evaluation["metrics"]["test"]["rmse"] <= high
    attribution = evaluation["attribution"]
    assert len(attribution["importance"]) == 24 and attribution["features"] == ["value"]
    assert sum(attribution["step_importance"]) == pytest.approx(1.0)
    assert result.summary.test["rmse"] == evaluation["metrics"]["test"]["rmse"]
    assert result.num_examples == evaluation["num_examples"]
    assert_plain_json(evaluation)
    assert_plain_json(result.summary.model_dump(mode="json"))


def test_separable_classification_is_above_95_percent() -> None:
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y", "split": {"method": "stratified"}},
        model={"cell": "gru"},
        training={"epochs": 6},
    )
    result = train_and_evaluate(spec, separable_arrays())
    assert result.evaluation is not None
    evaluation = result.evaluation.model_dump(mode="json")
    assert evaluation is not None
    assert evaluation["metrics"]["test"]["accuracy"] > 0.95
    assert set(evaluation["baselines"]) == {"majority_class", "nearest_neighbour"}
    assert evaluation["comparison"]["majority_class"]["beats"] is True
    assert evaluation["comparison"]["majority_class"]["difference_interval"][0] > 0  # accuracy: higher is better
    matrix = evaluation["confusion_matrix"]
    assert matrix["labels"] == ["0", "1"] and sum(map(sum, matrix["matrix"])) == result.num_examples["test"]
    assert evaluation["generalization_gap"]["metric"] == "accuracy"
    assert_plain_json(evaluation)


def test_same_seed_same_metrics() -> None:
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y"},
        model={"cell": "lstm", "num_layers": 2, "dropout": 0.3},
        training={"epochs": 2},
    )
    data = separable_arrays(n=200)
    first, second = train_and_evaluate(spec, data), train_and_evaluate(spec, data)
    assert first.evaluation == second.evaluation
    for name, tensor in first.artifact["state_dict"].items():
        assert torch.equal(tensor, second.artifact["state_dict"][name]), name
    other = make_spec(
        "classification",
        {"layout": "arrays", "target": "y"},
        model={"cell": "lstm", "num_layers": 2, "dropout": 0.3},
        training={"epochs": 2, "seed": 1},
    )
    assert train_and_evaluate(other, data).evaluation != first.evaluation


def test_early_stopping_restores_the_best_weights() -> None:
    spec = make_spec(
        "forecast",
        {"layout": "series", "target": "value", "lookback": 12},
        model={"cell": "rnn"},
        training={"epochs": 40, "learning_rate": 0.05, "early_stopping_patience": 2, "optimizer": "sgd"},
    )
    reports: list[EpochReport] = []
    result = train_and_evaluate(spec, sine_table(noise=0.3), on_epoch=reports.append)
    assert result.evaluation is not None
    best = min(reports, key=lambda r: r.metrics["val"]["loss"])
    assert result.best_epoch == best.epoch
    assert result.epochs_run <= result.best_epoch + 2
    assert result.evaluation.metrics["val"]["rmse"] == pytest.approx(best.metrics["val"]["rmse"], rel=1e-4)


def test_should_stop_cancels_after_an_epoch_and_between_batches() -> None:
    spec = make_spec("forecast", {"layout": "series", "target": "value"}, training={"epochs": 50, "batch_size": 8})
    reports: list[Any] = []
    result = train_and_evaluate(spec, sine_table(), on_epoch=reports.append, should_stop=lambda: len(reports) >= 2)
    assert result.cancelled and result.epochs_run == 2 and result.evaluation is None
    assert result.artifact["format"] == "rnnlab.model/1"

    # Inside an epoch too (an epoch of 300,000 batches could not be cancelled): asked before each
    # batch but the first, it stops before the fourth; the part-run epoch is not reported.
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    reports.clear()
    result = train_and_evaluate(spec, sine_table(), on_epoch=reports.append, should_stop=should_stop)
    assert result.cancelled and result.epochs_run == 0 and reports == [] and len(calls) == 3
    assert result.evaluation is None and result.artifact["format"] == "rnnlab.model/1"


def test_divergence_is_reported() -> None:
    table = pa.table({"value": np.linspace(1e18, 1e19, 200)})
    spec = make_spec(
        "forecast",
        {"layout": "series", "target": "value", "lookback": 5, "scaling": "none"},
        training={"gradient_clip": None},
    )
    with pytest.raises(TrainingDiverged, match="epoch 1; lower training.learning_rate"):
        train_and_evaluate(spec, table)


def save_and_load(artifact: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(artifact, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_artifact_round_trip_and_predictions() -> None:
    data = separable_arrays(n=200, steps=8, features=3)
    labels = np.where(data["y"] == 1, "yes", "no")
    split = np.array(["train"] * 140 + ["val"] * 30 + ["test"] * 30)
    arrays = {"X": data["X"], "y": labels, "split": split}
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y", "split": {"method": "column"}},
        model={"bidirectional": True},
        training={"epochs": 4},
    )
    result = train_and_evaluate(spec, arrays)
    assert result.evaluation is not None
    predictor = load_predictor(save_and_load(result.artifact))
    out = predictor.predict(data["X"][170:])
    assert len(out["labels"]) == 30 and len(out["probabilities"][0]) == 2
    accuracy = np.mean(np.array(out["labels"]) == labels[170:])
    assert accuracy == pytest.approx(result.evaluation.metrics["test"]["accuracy"])
    with pytest.raises(DataError, match=r"expected inputs shaped \[N, 8, 3\].*got \[2, 7, 3\]"):
        predictor.predict(np.zeros((2, 7, 3)))


def test_forecast_predictor_returns_original_units() -> None:
    table = pa.table({"value": 100.0 + 10.0 * np.sin(np.arange(400) / 3.0)})
    spec = make_spec(
        "forecast",
        {"layout": "series", "target": "value", "lookback": 10, "horizon": 2},
        training={"epochs": 6},
    )
    result = train_and_evaluate(spec, table)
    predictor = load_predictor(save_and_load(result.artifact))
    window = table.column("value").to_numpy()[:10]
    prediction = np.array(predictor.predict(window[None, :]))
    assert prediction.shape == (1, 2)
    assert abs(prediction[0, 0] - table.column("value").to_numpy()[10]) < 5.0
    # Finite in JSON but past what the model computes in: a 4xx naming the inputs, not null forecasts.
    with pytest.raises(DataError, match=r"2 input values beyond the float32 range"):
        predictor.predict(np.array([[1e308, 3.5e38, *window[2:]]]))

    # Inputs so far out that the model's arithmetic overflows (an AR's lag weights times 3e38): refused,
    # not returned as null forecasts. Stand in for such a model with one whose output overflows.
    class Overflowing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2, 0] * 1e38 * 1e38

    predictor.scaled_model = Overflowing()
    with pytest.raises(DataError, match=r"2 predicted values overflowed \(not finite\)"):
        predictor.predict(window[None, :])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_layouts_end_to_end(cell: str) -> None:
    rng = np.random.default_rng(0)
    # Long-format sequences: 40 sequences x 6 steps, target = mean of x.
    seq = np.repeat(np.arange(40), 6)
    x = rng.standard_normal(240)
    target = np.repeat(x.reshape(40, 6).mean(axis=1), 6)
    table = pa.table({"seq": seq, "t": np.tile(np.arange(6), 40), "x": x, "y": target})
    data = {"layout": "sequences", "target": "y", "sequence_column": "seq", "order_column": "t"}
    spec = make_spec("regression", data, model={"cell": cell, "num_layers": 2}, training={"epochs": 2})
    result = train_and_evaluate(spec, table)
    assert result.evaluation is not None and set(result.evaluation.model_dump()["baselines"]) == {"mean", "linear_ar"}
    assert_plain_json(result.evaluation.model_dump(mode="json"))
    wide = pa.table({**{f"s{i}": rng.standard_normal(60) for i in range(5)}, "label": ["a", "b", "c"] * 20})
    spec = make_spec(
        "classification",
        {"layout": "wide", "target": "label"},
        model={"cell": cell},
        evaluation={"attribution": True},
    )
    result = train_and_evaluate(spec, wide)
    assert result.evaluation is not None and result.evaluation.model_dump()["attribution"]["features"] == ["value"]
    assert_plain_json(result.evaluation.model_dump(mode="json"))


def test_missing_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    spec = make_spec("forecast", {"layout": "series", "target": "value"})
    with pytest.raises(DeviceUnavailable, match="no usable GPU"):
        train_and_evaluate(spec, sine_table(), device="cuda")


def test_without_validation_part_the_final_weights_are_kept() -> None:
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y", "split": {"val_fraction": 0.0}},
        training={"epochs": 3},
    )
    result = train_and_evaluate(spec, separable_arrays(n=120))
    assert result.evaluation is not None
    assert result.num_examples["val"] == 0 and result.best_epoch == result.epochs_run == 3
    assert result.evaluation.metrics["val"] == {}
    assert any("no validation part" in note for note in result.evaluation.model_dump()["notes"])


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_refit_trains_again_on_train_and_val_and_keeps_the_first_runs_val_metrics(task: str) -> None:
    """``training.refit``: the same first run (same seed, same epochs, same early stopping), then a
    second network from the same initialisation on train + val; the kept model is the second (its
    artifact predicts the test part as the evaluation scored it), the val metrics are the first's."""
    data = separable_arrays(n=160, steps=6)
    y: np.ndarray = data["y"] if task == "classification" else data["X"][:, :, 0].mean(axis=1) + 0.1 * data["y"]
    split = np.array(["train"] * 100 + ["val"] * 30 + ["test"] * 30)
    arrays = {"X": data["X"], "y": y, "split": split}
    body = {"layout": "arrays", "target": "y", "split": {"method": "column"}}
    once = make_spec(task, body, training={"epochs": 5, "refit": False})
    twice = make_spec(task, body, training={"epochs": 5, "refit": True})
    first_reports: list[EpochReport] = []
    reports: list[EpochReport] = []
    first = train_and_evaluate(once, arrays, on_epoch=first_reports.append)
    refit = train_and_evaluate(twice, arrays, on_epoch=reports.append)
    assert first.evaluation is not None and refit.evaluation is not None
    # The first run is the same run: its epochs are the job's history, its val metrics the job's.
    assert [r.metrics for r in reports] == [r.metrics for r in first_reports]
    assert refit.best_epoch == first.best_epoch and refit.epochs_run == first.epochs_run
    assert refit.evaluation.metrics["val"] == first.evaluation.metrics["val"]
    # The kept network is another one, trained on more examples: other weights.
    weights = [name for name, t in first.artifact["state_dict"].items() if t.is_floating_point()]
    assert any(not torch.equal(first.artifact["state_dict"][n], refit.artifact["state_dict"][n]) for n in weights)
    note = next(n for n in refit.evaluation.notes if n.startswith("training.refit"))
    assert f"(130 examples) for {first.epochs_run} epochs" in note
    assert not any(n.startswith("training.refit") for n in first.evaluation.notes)
    # The artifact is the kept network: it predicts the test part as the evaluation scored it.
    out = load_predictor(save_and_load(refit.artifact)).predict(data["X"][130:])
    if task == "classification":
        accuracy = np.mean(np.array(out["labels"]).astype(int) == y[130:])
        assert accuracy == pytest.approx(refit.evaluation.metrics["test"]["accuracy"])
    else:
        rmse = float(np.sqrt(np.mean((np.asarray(out) - y[130:]) ** 2)))
        assert rmse == pytest.approx(refit.evaluation.metrics["test"]["rmse"], rel=1e-4)


def test_refit_without_a_validation_part_trains_once_and_says_so() -> None:
    data = separable_arrays(n=120, steps=6)
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y", "split": {"val_fraction": 0.0}},
        training={"epochs": 3, "refit": True},
    )
    result = train_and_evaluate(spec, data)
    assert result.evaluation is not None
    assert "training.refit: no validation part to add, the network was trained once" in result.evaluation.notes


def test_a_cancel_during_the_refit_cancels_the_job() -> None:
    data = separable_arrays(n=160, steps=6)
    spec = make_spec("classification", {"layout": "arrays", "target": "y"}, training={"epochs": 3, "refit": True})
    reports: list[EpochReport] = []
    asked = [0]

    def should_stop() -> bool:
        if len(reports) < 3:
            return False
        asked[0] += 1  # 1: the first run's check after its last epoch; then the refit's batches
        return asked[0] >= 3

    result = train_and_evaluate(spec, data, on_epoch=reports.append, should_stop=should_stop)
    assert len(reports) == 3 and result.cancelled and result.evaluation is None and asked[0] == 3


def _refit_arrays(task: str = "regression") -> tuple[dict[str, np.ndarray], np.ndarray]:
    data = separable_arrays(n=160, steps=6)
    y = data["y"] if task == "classification" else data["X"][:, :, 0].mean(axis=1) + 0.1 * data["y"]
    split = np.array(["train"] * 100 + ["val"] * 30 + ["test"] * 30)
    return {"X": data["X"], "y": y, "split": split}, y


def test_refit_baselines_learn_from_train_and_val_as_the_kept_network_did() -> None:
    arrays, y = _refit_arrays()
    body = {"layout": "arrays", "target": "y", "split": {"method": "column"}}
    refit = train_and_evaluate(make_spec("regression", body, training={"epochs": 2, "refit": True}), arrays)
    once = train_and_evaluate(make_spec("regression", body, training={"epochs": 2, "refit": False}), arrays)
    assert refit.evaluation is not None and once.evaluation is not None
    mean_rmse = lambda fitted: float(np.sqrt(np.mean((y[130:] - fitted.mean()) ** 2)))  # noqa: E731
    assert refit.evaluation.baselines["mean"]["rmse"] == pytest.approx(mean_rmse(y[:130]), rel=1e-6)
    assert once.evaluation.baselines["mean"]["rmse"] == pytest.approx(mean_rmse(y[:100]), rel=1e-6)
    note = "the baselines were fitted on the training and validation parts, as the refitted network was"
    assert note in refit.evaluation.notes and note not in once.evaluation.notes


def test_refit_after_an_early_stop_keeps_the_warm_up_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first run stopped early: the second run's warm-up shrinks with its steps, so one_cycle still
    anneals (a warm-up as long as the whole refit would end it at the peak learning rate)."""
    from worker.engine import engine

    calls: list[Any] = []
    real_fit = engine.fit

    def spy(model: Any, training: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(training)
        return real_fit(model, training, *args, **kwargs)

    monkeypatch.setattr(engine, "fit", spy)
    arrays, _ = _refit_arrays("classification")
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y", "split": {"method": "column"}},
        training={
            "epochs": 200,
            "batch_size": 10,
            "schedule": "one_cycle",
            "warmup_steps": 400,
            "early_stopping_patience": 2,
            "refit": True,
        },
    )
    result = train_and_evaluate(spec, arrays)
    assert result.epochs_run < 200 and len(calls) == 2
    first, second = calls
    assert first.warmup_steps == 400 and second.epochs == result.epochs_run
    # 400 of 200 × 10 planned steps is a fifth; the refit runs epochs_run × 13 steps.
    assert second.warmup_steps == round(400 * result.epochs_run * 13 / 2000)


def test_a_diverging_refit_keeps_the_first_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.engine import engine

    real_fit = engine.fit
    calls: list[int] = []

    def second_diverges(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise TrainingDiverged("the loss became nan in epoch 2; lower training.learning_rate")
        return real_fit(*args, **kwargs)

    arrays, _ = _refit_arrays("classification")
    body = {"layout": "arrays", "target": "y", "split": {"method": "column"}}
    once = train_and_evaluate(make_spec("classification", body, training={"epochs": 3, "refit": False}), arrays)
    monkeypatch.setattr(engine, "fit", second_diverges)
    kept = train_and_evaluate(make_spec("classification", body, training={"epochs": 3, "refit": True}), arrays)
    assert kept.evaluation is not None and once.evaluation is not None and len(calls) == 2
    for name, tensor in once.artifact["state_dict"].items():
        assert torch.equal(tensor, kept.artifact["state_dict"][name]), name
    assert kept.evaluation.metrics == once.evaluation.metrics
    assert kept.evaluation.baselines == once.evaluation.baselines
    assert any(
        n.startswith("training.refit: the second run on the training and validation parts diverged")
        for n in kept.evaluation.notes
    )
