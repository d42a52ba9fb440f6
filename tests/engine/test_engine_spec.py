from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.engine import JobSpec


def spec(**overrides: Any) -> JobSpec:
    body: dict[str, Any] = {
        "dataset_id": "d",
        "task": "forecast",
        "data": {"layout": "series", "target": "v"},
    }
    body.update(overrides)
    return JobSpec.model_validate(body)


def errors(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        spec(**overrides)
    return str(info.value)


def test_defaults_are_filled_in() -> None:
    normalized = spec().normalized()
    assert normalized["data"]["lookback"] == 24
    assert normalized["data"]["split"] == {
        "method": "temporal",
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "column": None,
    }
    assert normalized["model"] == {
        "cell": "lstm",
        "hidden_size": 64,
        "num_layers": 1,
        "bidirectional": False,
        "dropout": 0.0,
        "pooling": "auto",
        "residual": "auto",
        "ar_ridge": "auto",
        "ar_scale": "auto",
        "combine": "auto",
        "differences": "auto",
        "ensemble": "auto",
        "forget_gate_bias": "auto",
        "embedding_dim": None,
        "patch": "auto",
    }
    assert normalized["training"]["loss"] == "mse"
    assert normalized["training"]["learning_rate"] == "auto"
    # Data-aware values stay "auto" until the job is submitted against a dataset (test_engine_defaults).
    assert normalized["training"]["early_stopping_patience"] == "auto"
    assert normalized["training"]["epochs"] == normalized["training"]["batch_size"] == "auto"
    assert normalized["training"]["mixup"] == "auto"
    assert normalized["evaluation"] == {"bootstrap_samples": 1000, "attribution": True}
    assert normalized["device"] == "auto"
    # The normalized form validates to the same spec (it is what the API stores).
    assert JobSpec.model_validate(normalized).normalized() == normalized


def test_split_and_loss_defaults_depend_on_layout_and_task() -> None:
    table = spec(task="classification", data={"layout": "wide", "target": "y"}).normalized()
    assert table["data"]["split"]["method"] == "random"
    assert table["training"]["loss"] == "cross_entropy"
    regression = spec(task="regression", data={"layout": "arrays", "target": "y"}).normalized()
    assert regression["training"]["loss"] == "mse"


def test_unknown_fields_are_named() -> None:
    message = errors(model={"hiden_size": 3})
    assert "hiden_size" in message and "Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data": {"layout": "series", "target": "v", "lookback": 0}}, "lookback"),
        ({"data": {"layout": "series", "target": "v", "horizon": 10_001}}, "horizon"),
        ({"model": {"hidden_size": 5000}}, "hidden_size"),
        ({"model": {"num_layers": 9}}, "num_layers"),
        ({"model": {"dropout": 1.0}}, "dropout"),
        ({"training": {"learning_rate": 0}}, "learning_rate"),
        ({"training": {"seed": 2**31}}, "seed"),
        ({"training": {"early_stopping_patience": 0}}, "early_stopping_patience"),
        ({"evaluation": {"bootstrap_samples": 100_001}}, "bootstrap_samples"),
        ({"name": "x" * 201}, "name"),
    ],
)
def test_bounds(overrides: dict[str, Any], field: str) -> None:
    assert field in errors(**overrides)


def test_forecast_needs_series_and_series_needs_forecast() -> None:
    assert "needs data.layout 'series'" in errors(data={"layout": "wide", "target": "y"})
    assert "is for task 'forecast'" in errors(task="regression")


def test_fractions_must_leave_training_data() -> None:
    split = {"val_fraction": 0.5, "test_fraction": 0.5}
    assert "below 1" in errors(data={"layout": "series", "target": "v", "split": split})


def test_column_split_needs_a_column_for_tables_only() -> None:
    data = {"layout": "wide", "target": "y", "split": {"method": "column"}}
    assert "split.column" in errors(task="classification", data=data)
    arrays = {"layout": "arrays", "target": "y", "split": {"method": "column"}}
    assert spec(task="classification", data=arrays).data.split.method == "column"


def test_sequences_needs_sequence_and_order_columns() -> None:
    message = errors(task="regression", data={"layout": "sequences", "target": "y", "order_column": "t"})
    assert "data.sequence_column" in message and "data.order_column" not in message


def test_loss_must_fit_task() -> None:
    assert "regression loss" in errors(
        task="classification", data={"layout": "wide", "target": "y"}, training={"loss": "mse"}
    )
    assert "is for classification" in errors(training={"loss": "cross_entropy"})


def test_stratified_needs_classification() -> None:
    data = {"layout": "wide", "target": "y", "split": {"method": "stratified"}}
    assert "stratified" in errors(task="regression", data=data)


def test_names_with_hidden_characters_are_refused_on_submission_only() -> None:
    body = {**spec().normalized(), "name": "evil\u202etxt"}
    with pytest.raises(ValueError, match="invisible formatting characters \\(U\\+202E\\)"):
        JobSpec.model_validate(body, context={"submitted": True})
    # A spec stored before the rule (a queued job, an artifact) still reads back as it was.
    assert JobSpec.model_validate(body).name == "evil\u202etxt"
