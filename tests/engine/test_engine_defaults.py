"""Data-aware defaults: resolution rules, schedules, pooling, per-example scaling, residual forecasts."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from worker.engine import JobSpec, load_predictor, train_and_evaluate
from worker.engine import engine as engine_module
from worker.engine.data import prepare_data
from worker.engine.defaults import PREVIOUS_DEFAULTS, TrainingShape, resolve_defaults, unresolved_fields
from worker.engine.engine import (
    AR_RIDGE_GRID,
    choose_ar_ridge,
    choose_ar_scale,
    fit_ar_map,
    leave_one_out_error,
    refit_ar_map,
    ridge_normal_matrix,
    set_naive_map,
)
from worker.engine.errors import DataError
from worker.engine.models import (
    CombinedForecast,
    Ensemble,
    RecurrentModel,
    forward_in_chunks,
    patch_steps,
    step_changes,
)
from worker.engine.predictor import ScaledModel
from worker.engine.scaling import Scaler, fit_scaler
from worker.engine.spec import ModelSpec, TrainingSpec
from worker.engine.splits import split_indices
from worker.engine.training import StepSchedule, mixup_loss, training_loss

from .engine_fixtures import separable_arrays, sine_table


def bare_spec(task: str = "classification", layout: str = "arrays", **sections: Any) -> JobSpec:
    """A spec with every default left alone (what a new user sends)."""
    data = {"layout": layout, "target": "y" if layout != "series" else "value"}
    body: dict[str, Any] = {"dataset_id": "ds", "task": task, "data": data, "device": "cpu"}
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    return JobSpec.model_validate(body)


def save_and_load(artifact: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(artifact, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------- resolution rules


@pytest.mark.parametrize(
    ("train_examples", "batch_size", "epochs"),
    [
        (31, 8, 375),  # tiny: 4 steps an epoch → 375 epochs for 1,500 steps
        (1_000, 32, 47),  # medium: √1000 ≈ 32, 32 steps an epoch
        (200_000, 256, 30),  # large: batch capped at 256, at least 30 epochs
        (1, 8, 1_000),  # one example: the epoch cap
    ],
)
def test_budget_resolves_from_the_training_set_size(train_examples: int, batch_size: int, epochs: int) -> None:
    spec = resolve_defaults(bare_spec(), TrainingShape(train_examples, 5))
    assert spec.training.batch_size == batch_size and spec.training.epochs == epochs
    steps = epochs * math.ceil(train_examples / batch_size)
    assert spec.training.warmup_steps == min(500, round(0.05 * steps))
    assert spec.training.early_stopping_patience == max(10, math.ceil(0.5 * epochs))
    assert spec.training.early_stopping_min_delta == 0.001
    assert spec.training.schedule == "one_cycle"
    assert unresolved_fields(spec) == []
    # The resolved spec is a plain, valid spec that resolves to itself.
    assert JobSpec.model_validate(spec.normalized()) == spec
    assert resolve_defaults(spec, TrainingShape(7, 1)) == spec


def test_explicit_values_always_win_over_auto() -> None:
    explicit = {
        "batch_size": 16,
        "early_stopping_patience": 3,
        "early_stopping_min_delta": 0.0,
        "schedule": "cosine",
        "warmup_steps": 7,
    }
    spec = resolve_defaults(
        bare_spec(data={"scaling": "minmax"}, model={"pooling": "max", "forget_gate_bias": 0.5}, training=explicit),
        TrainingShape(1_000, 100),
    )
    assert spec.training.batch_size == 16 and spec.training.epochs == 30  # 63 steps an epoch: the floor
    for name, value in explicit.items():
        assert getattr(spec.training, name) == value
    assert spec.data.scaling == "minmax" and spec.model.pooling == "max" and spec.model.forget_gate_bias == 0.5
    # Auto epochs follow an explicit batch size: 1,500 steps of 31 examples at batch 4 is 188 epochs.
    small = resolve_defaults(bare_spec(training={"batch_size": 4}), TrainingShape(31, 5))
    assert small.training.epochs == 188


def test_explicit_epochs_keep_the_previous_behaviour() -> None:
    spec = resolve_defaults(bare_spec(training={"epochs": 50}), TrainingShape(31, 5))
    assert spec.training.epochs == 50
    resolved = {
        "data.scaling": spec.data.scaling,
        "model.pooling": spec.model.pooling,
        "model.forget_gate_bias": spec.model.forget_gate_bias,
        "model.residual": spec.model.residual,
        "model.patch": spec.model.patch,
        "model.ar_ridge": spec.model.ar_ridge,
        "model.ar_scale": spec.model.ar_scale,
        "model.combine": spec.model.combine,
        "model.differences": spec.model.differences,
        "model.ensemble": spec.model.ensemble,
        "training.batch_size": spec.training.batch_size,
        "training.learning_rate": spec.training.learning_rate,
        "training.early_stopping_patience": spec.training.early_stopping_patience,
        "training.early_stopping_min_delta": spec.training.early_stopping_min_delta,
        "training.schedule": spec.training.schedule,
        "training.warmup_steps": spec.training.warmup_steps,
        "training.mixup": spec.training.mixup,
        "training.refit": spec.training.refit,
    }
    assert resolved == PREVIOUS_DEFAULTS
    # …and explicit values still win there too.
    mixed = resolve_defaults(bare_spec(training={"epochs": 50, "schedule": "cosine"}), TrainingShape(31, 5))
    assert mixed.training.schedule == "cosine" and mixed.training.batch_size == 64


def test_scaling_pooling_residual_and_bias_depend_on_task_channels_and_length() -> None:
    univariate = resolve_defaults(bare_spec(), TrainingShape(100, 10, channels=1, steps=251))
    assert univariate.data.scaling == "per_example"
    assert univariate.model.forget_gate_bias == 1.0 and univariate.model.pooling == "mean"  # long
    multichannel = resolve_defaults(bare_spec(), TrainingShape(100, 10, channels=12, steps=29))
    assert multichannel.data.scaling == "standard"
    assert multichannel.model.forget_gate_bias is None and multichannel.model.pooling == "last"  # short
    regression = resolve_defaults(bare_spec("regression"), TrainingShape(100, 10, channels=1))
    assert regression.data.scaling == "standard" and regression.model.residual == "none"
    forecast = resolve_defaults(bare_spec("forecast", "series"), TrainingShape(100, 10, steps=100))
    assert forecast.data.scaling == "standard" and forecast.model.residual == "ar"
    assert forecast.model.pooling == "last"  # a forecast reads the end of its window, however long
    assert forecast.model.forget_gate_bias == 1.0
    exogenous = bare_spec("forecast", "series", data={"features": ["other"]})
    assert resolve_defaults(exogenous, TrainingShape(100, 10)).model.residual == "none"
    gru = resolve_defaults(bare_spec(model={"cell": "gru"}), TrainingShape(100, 10, steps=251))
    assert gru.model.forget_gate_bias is None


@pytest.mark.parametrize("train_examples", [20, 700, 150_000])  # tiny, medium and large: the same rule
def test_differences_and_mixup_resolve_from_task_and_channels(train_examples: int) -> None:
    shape = TrainingShape(train_examples, 10, channels=1, steps=251)
    univariate = resolve_defaults(bare_spec(), shape)
    assert univariate.model.differences is True and univariate.training.mixup == 0.4
    multichannel = resolve_defaults(bare_spec(), TrainingShape(train_examples, 10, channels=12, steps=29))
    assert multichannel.model.differences is False and multichannel.training.mixup == 0.4
    for task, layout in (("regression", "arrays"), ("forecast", "series")):
        other = resolve_defaults(bare_spec(task, layout), shape)
        assert other.model.differences is False and other.training.mixup == 0.0
    text = JobSpec.model_validate(
        {
            "dataset_id": "ds",
            "task": "classification",
            "data": {"layout": "text", "target": "y"},
            "text": {"column": "t"},
        }
    )
    tokens = resolve_defaults(text, TrainingShape(train_examples, 10, steps=40))
    assert tokens.model.differences is False and tokens.training.mixup == 0.0
    # An explicit value wins, in either direction.
    explicit = bare_spec(model={"differences": False}, training={"mixup": 1.5})
    resolved = resolve_defaults(explicit, shape)
    assert resolved.model.differences is False and resolved.training.mixup == 1.5
    off = resolve_defaults(bare_spec(training={"mixup": 0}), shape)
    assert off.training.mixup == 0.0
    on = resolve_defaults(bare_spec("regression", model={"differences": True}), shape)
    assert on.model.differences is True


@pytest.mark.parametrize(("train_examples", "refit"), [(31, True), (1_000, True), (1_001, False), (150_000, False)])
def test_refit_resolves_for_small_classification_sets_with_a_validation_part(train_examples: int, refit: bool) -> None:
    shape = TrainingShape(train_examples, 5, channels=1, steps=251)
    assert resolve_defaults(bare_spec(), shape).training.refit is refit
    assert resolve_defaults(bare_spec(), TrainingShape(train_examples, 0)).training.refit is False  # no val part
    for task, layout in (("regression", "arrays"), ("forecast", "series")):
        assert resolve_defaults(bare_spec(task, layout), shape).training.refit is False
    text = {"dataset_id": "ds", "task": "classification", "data": {"layout": "text", "target": "y"}}
    tokens = JobSpec.model_validate({**text, "text": {"column": "t"}})
    assert resolve_defaults(tokens, TrainingShape(train_examples, 5, steps=40)).training.refit is False
    # An explicit value wins, in either direction.
    assert resolve_defaults(bare_spec(training={"refit": False}), shape).training.refit is False
    on = resolve_defaults(bare_spec("regression", training={"refit": True}), TrainingShape(150_000, 5))
    assert on.training.refit is True


def test_refit_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="training.refit trains a whole-sequence network again"):
        bare_spec("forecast", "series", training={"refit": True})
    text = {"dataset_id": "ds", "task": "classification", "data": {"layout": "text", "target": "y"}}
    with pytest.raises(ValueError, match="training.refit"):
        JobSpec.model_validate({**text, "text": {"column": "t"}, "training": {"refit": True}})
    with pytest.raises(ValueError, match="training.refit"):
        bare_spec("tagging", "sequences", data={"sequence_column": "s", "order_column": "o"}, training={"refit": True})
    assert bare_spec("forecast", "series", training={"refit": False}).training.refit is False


def test_mixup_and_differences_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(ValueError, match="training.mixup 0.4 blends numeric inputs and their class targets"):
        bare_spec("regression", training={"mixup": 0.4})
    with pytest.raises(ValueError, match="training.mixup 1 blends"):
        bare_spec("forecast", "series", training={"mixup": 1})
    text = {"dataset_id": "ds", "task": "classification", "data": {"layout": "text", "target": "y"}}
    with pytest.raises(ValueError, match="needs task 'classification' without token inputs"):
        JobSpec.model_validate({**text, "text": {"column": "t"}, "training": {"mixup": 0.2}})
    with pytest.raises(ValueError, match="model.differences reads the change of numeric inputs"):
        JobSpec.model_validate({**text, "text": {"column": "t"}, "model": {"differences": True}})
    with pytest.raises(ValueError, match="model.differences"):
        bare_spec(
            "tagging", "sequences", data={"sequence_column": "s", "order_column": "o"}, model={"differences": True}
        )
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        bare_spec(training={"mixup": -0.1})
    # Off is always allowed.
    assert bare_spec("regression", training={"mixup": 0}).training.mixup == 0.0


@pytest.mark.parametrize(("steps", "patch"), [(29, 1), (64, 1), (65, 2), (251, 4), (427, 7)])
def test_long_sequences_are_patched_to_at_most_64_network_steps(steps: int, patch: int) -> None:
    spec = resolve_defaults(bare_spec(), TrainingShape(100, 10, channels=1, steps=steps))
    assert spec.model.patch == patch and math.ceil(steps / patch) <= 64
    # A forecast's window is read step by step (its AR residual reads the raw window anyway).
    forecast = resolve_defaults(bare_spec("forecast", "series"), TrainingShape(100, 10, steps=steps))
    assert forecast.model.patch == 1


def test_learning_rate_depends_on_the_task_and_an_explicit_one_wins() -> None:
    shape = TrainingShape(100, 10, steps=24)
    assert resolve_defaults(bare_spec(), shape).training.learning_rate == 0.003
    assert resolve_defaults(bare_spec("regression"), shape).training.learning_rate == 0.001
    assert resolve_defaults(bare_spec("forecast", "series"), shape).training.learning_rate == 0.001
    assert resolve_defaults(bare_spec(training={"learning_rate": 0.02}), shape).training.learning_rate == 0.02
    assert resolve_defaults(bare_spec(training={"epochs": 9}), shape).training.learning_rate == 0.001


def test_explicit_residual_and_patch_win_over_auto() -> None:
    forecast = bare_spec("forecast", "series", model={"residual": "last_value", "patch": 2})
    resolved = resolve_defaults(forecast, TrainingShape(100, 10, steps=24))
    assert resolved.model.residual == "last_value" and resolved.model.patch == 2
    long = resolve_defaults(bare_spec(model={"patch": 1}), TrainingShape(100, 10, steps=427))
    assert long.model.patch == 1
    # A spec with explicit epochs reads every step and forecasts without a residual, as before.
    old = resolve_defaults(bare_spec("forecast", "series", training={"epochs": 5}), TrainingShape(100, 10, steps=427))
    assert old.model.patch == 1 and old.model.residual == "none"


def test_specs_refuse_options_that_cannot_apply() -> None:
    with pytest.raises(ValueError, match="per_example' would remove each window's level"):
        bare_spec("forecast", "series", data={"scaling": "per_example"})
    with pytest.raises(ValueError, match="residual 'last_value' is for task 'forecast'"):
        bare_spec(model={"residual": "last_value"})
    with pytest.raises(ValueError, match="needs the target among data.features"):
        bare_spec("forecast", "series", data={"features": ["other"]}, model={"residual": "last_value"})
    with pytest.raises(ValueError, match="residual 'ar' is for task 'forecast'"):
        bare_spec(model={"residual": "ar"})
    with pytest.raises(ValueError, match="residual 'ar' needs the target among data.features"):
        bare_spec("forecast", "series", data={"features": ["other"]}, model={"residual": "ar"})


# ---------------------------------------------------------------- validation part


def test_stratified_split_always_has_a_validation_example() -> None:
    labels = np.array([0] * 3 + [1] * 3)  # 15% of 3 rounds to 0 in every class
    split = split_indices(
        "stratified", 6, val_fraction=0.15, test_fraction=0.34, rng=np.random.default_rng(0), labels=labels
    )
    assert len(split.val) == 1 and len(split.train) + len(split.val) + len(split.test) == 6
    none = split_indices(
        "stratified", 6, val_fraction=0.0, test_fraction=0.34, rng=np.random.default_rng(0), labels=labels
    )
    assert len(none.val) == 0  # the spec said none


def test_split_column_carves_a_stratified_validation_part() -> None:
    labels = np.array([0] * 30 + [1] * 10 + [2] * 2 + [0] * 20)
    split_labels = np.array(["train"] * 42 + ["test"] * 20)
    split = split_indices(
        "column", 62, val_fraction=0.15, test_fraction=0.15, rng=np.random.default_rng(0),
        labels=labels, split_labels=split_labels,
    )  # fmt: skip
    assert len(split.val) == 6  # round(42 × 0.15)
    val_counts = np.bincount(labels[split.val], minlength=3)
    assert val_counts.tolist() == [4, 2, 0] or val_counts.tolist() == [4, 1, 1]
    assert set(labels[split.train]) == {0, 1, 2}  # every class keeps training examples
    assert set(split.test) == set(range(42, 62))


# ---------------------------------------------------------------- schedules


def lr_trace(
    schedule: str, warmup: int, total: int, patience: int = 8, plateau_losses: list[float] | None = None
) -> list[float]:
    spec = TrainingSpec(
        epochs=1, batch_size=1, schedule=schedule, warmup_steps=warmup, early_stopping_patience=patience,
        learning_rate=0.1, loss="mse",
    )  # fmt: skip
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = StepSchedule(spec, optimizer, total)
    trace = []
    for step in range(total):
        trace.append(scheduler.learning_rate())
        optimizer.step()
        scheduler.after_step()
        if plateau_losses is not None:
            scheduler.after_epoch(plateau_losses[step])
    return trace


def test_none_schedule_is_constant_after_a_linear_warmup() -> None:
    assert lr_trace("none", 0, 5) == pytest.approx([0.1] * 5)
    assert lr_trace("none", 3, 6) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    trace = lr_trace("cosine", 2, 12)
    assert trace[:2] == pytest.approx([0.1 / 3, 0.2 / 3])
    decay = [0.05 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert trace[2:] == pytest.approx(decay)


def test_one_cycle_peaks_when_the_warmup_ends_and_anneals() -> None:
    trace = lr_trace("one_cycle", 10, 100)
    assert trace[0] == pytest.approx(0.1 / 25)  # OneCycleLR's div_factor
    peak = int(np.argmax(trace))
    assert trace[peak] == pytest.approx(0.1) and peak == 9  # the warm-up's last step
    assert all(a < b for a, b in zip(trace[:peak], trace[1 : peak + 1], strict=True))  # rises during warm-up
    assert all(a >= b for a, b in zip(trace[peak:], trace[peak + 1 :], strict=False))  # then only falls
    assert trace[-1] < 1e-3


def test_plateau_halves_the_rate_when_the_loss_stalls() -> None:
    losses = [1.0, 0.9, 0.8] + [0.8] * 6
    trace = lr_trace("plateau", 0, 9, patience=8, plateau_losses=losses)  # plateau patience 8 // 4 = 2
    assert trace[:6] == pytest.approx([0.1] * 6)
    assert trace[6] == pytest.approx(0.05)


# ---------------------------------------------------------------- models


def test_pooling_modes_read_what_they_say() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 7, 3)
    models = {
        pooling: RecurrentModel(ModelSpec(cell="gru", hidden_size=5, pooling=pooling), 3, 2)
        for pooling in ("last", "mean", "max")
    }
    state = models["last"].state_dict()
    for model in models.values():
        model.load_state_dict(state)
    outputs, _ = models["last"].rnn(x)
    head = models["last"].head
    torch.testing.assert_close(models["last"](x), head(outputs[:, -1]))
    torch.testing.assert_close(models["mean"](x), head(outputs.mean(dim=1)))
    torch.testing.assert_close(models["max"](x), head(outputs.max(dim=1).values))


def test_differences_reach_the_network_scaled_to_unit_spread_on_the_training_part() -> None:
    spec = ModelSpec(cell="gru", hidden_size=4, differences=True, patch=2, pooling="mean")
    model = RecurrentModel(spec, num_features=2, num_outputs=3)
    # Two values and two changes per step, in groups of 2 steps.
    assert model.rnn.input_size == 8
    ramp = torch.arange(6.0).reshape(1, 6, 1)
    x_train = torch.cat([ramp * 0.1, ramp * 3.0 + torch.tensor([0.0, 1, 0, 1, 0, 1]).reshape(1, 6, 1)], dim=2)
    np.testing.assert_allclose(step_changes(x_train)[0, :, 0].numpy(), [0, 0.1, 0.1, 0.1, 0.1, 0.1], atol=1e-6)
    model.set_difference_scale(x_train)
    expected = 1.0 / step_changes(x_train).std(dim=(0, 1))
    torch.testing.assert_close(model.difference_scale, expected)
    seen: list[torch.Tensor] = []
    model.rnn.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    model(x_train)
    # Step 2 of the network holds steps 2 and 3: each step's values, then its scaled changes.
    step = seen[0][0, 1].reshape(2, 4)
    torch.testing.assert_close(step[:, :2], x_train[0, 2:4])
    torch.testing.assert_close(step[:, 2:], step_changes(x_train)[0, 2:4] * expected)
    # A constant feature (no change at all) keeps scale 1 instead of dividing by zero.
    model.set_difference_scale(torch.ones(3, 5, 2))
    torch.testing.assert_close(model.difference_scale, torch.ones(2))


def test_mixup_blends_inputs_and_targets_in_the_same_proportion() -> None:
    torch.manual_seed(0)
    model = RecurrentModel(ModelSpec(cell="rnn", hidden_size=4), num_features=1, num_outputs=2)
    xb, yb = torch.randn(4, 5, 1), torch.tensor([0, 1, 1, 0])
    partner = torch.tensor([1, 0, 3, 2])
    loss_fn = torch.nn.CrossEntropyLoss()
    got = mixup_loss(model, loss_fn, xb, yb, 0.7, partner)
    out = model(0.7 * xb + 0.3 * xb[partner])
    torch.testing.assert_close(got, 0.7 * loss_fn(out, yb) + 0.3 * loss_fn(out, yb[partner]))
    # Weight 1 is the plain loss.
    torch.testing.assert_close(mixup_loss(model, loss_fn, xb, yb, 1.0, partner), loss_fn(model(xb), yb))


def test_mixup_training_is_reproducible_and_still_detects_a_run_that_learned_nothing() -> None:
    data = separable_arrays(n=120)
    spec = bare_spec(
        training={"epochs": 4, "batch_size": 16, "learning_rate": 0.02, "mixup": 0.4},
        evaluation={"attribution": False, "bootstrap_samples": 0},
    )
    first, second = train_and_evaluate(spec, data), train_and_evaluate(spec, data)
    assert first.summary.test == second.summary.test and first.summary.test["accuracy"] > 0.8
    plain = train_and_evaluate(
        spec.model_copy(update={"training": spec.training.model_copy(update={"mixup": 0.0})}), data
    )
    assert plain.summary.val != first.summary.val  # the blends changed what was learned
    assert first.evaluation is not None and not any("never moved" in n for n in first.evaluation.notes)
    # Judged on the training part unblended: a run with no signal is still called out.
    flat = train_and_evaluate(spec, {"X": np.zeros_like(data["X"]), "y": data["y"]})
    assert flat.evaluation is not None
    assert any("never moved below that of predicting the majority class" in n for n in flat.evaluation.notes)


@pytest.mark.parametrize(("train_examples", "expected"), [(20, 5), (1_000, 5), (1_001, 1), (150_000, 1)])
def test_ensemble_resolves_to_five_networks_for_small_classification_sets(train_examples: int, expected: int) -> None:
    shape = TrainingShape(train_examples, 10, channels=1, steps=251)
    assert resolve_defaults(bare_spec(), shape).model.ensemble == expected
    multichannel = resolve_defaults(bare_spec(), TrainingShape(train_examples, 10, channels=12, steps=29))
    assert multichannel.model.ensemble == expected
    for task, layout in (("regression", "arrays"), ("forecast", "series")):
        assert resolve_defaults(bare_spec(task, layout), shape).model.ensemble == 1
    text = JobSpec.model_validate(
        {
            "dataset_id": "ds",
            "task": "classification",
            "data": {"layout": "text", "target": "y"},
            "text": {"column": "t"},
        }
    )
    assert resolve_defaults(text, TrainingShape(train_examples, 10, steps=40)).model.ensemble == 1
    # An explicit value wins, in either direction, and explicit epochs keep one network.
    assert resolve_defaults(bare_spec(model={"ensemble": 1}), shape).model.ensemble == 1
    assert resolve_defaults(bare_spec(model={"ensemble": 3}), TrainingShape(150_000, 10)).model.ensemble == 3
    assert resolve_defaults(bare_spec("regression", model={"ensemble": 2}), shape).model.ensemble == 2
    assert resolve_defaults(bare_spec(training={"epochs": 5}), shape).model.ensemble == 1


def test_ensemble_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="model.ensemble 3 averages whole-sequence networks"):
        bare_spec("forecast", "series", model={"ensemble": 3})
    text = {"dataset_id": "ds", "task": "classification", "data": {"layout": "text", "target": "y"}}
    with pytest.raises(ValueError, match="model.ensemble 2 .* without token inputs"):
        JobSpec.model_validate({**text, "text": {"column": "t"}, "model": {"ensemble": 2}})
    with pytest.raises(ValueError, match="model.ensemble"):
        bare_spec("tagging", "sequences", data={"sequence_column": "s", "order_column": "o"}, model={"ensemble": 2})
    with pytest.raises(ValueError, match="less than or equal to 16"):
        bare_spec(model={"ensemble": 17})
    # One network is always allowed.
    assert bare_spec("forecast", "series", model={"ensemble": 1}).model.ensemble == 1


def test_ensemble_predicts_the_mean_of_its_members() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(cell="gru", hidden_size=4, ensemble=3)
    classes = Ensemble(spec, num_features=2, num_outputs=4, count=3, probabilities=True)
    x = torch.randn(5, 6, 2)
    members = classes.member_outputs(x)
    # Different initialisations, so different networks.
    assert not torch.allclose(members[0], members[1])
    mean_probabilities = torch.stack([torch.softmax(m, dim=-1) for m in members]).mean(dim=0)
    # The output is a log-probability: its softmax (what every consumer of logits takes) is the mean.
    torch.testing.assert_close(torch.softmax(classes(x), dim=-1), mean_probabilities)
    torch.testing.assert_close(classes(x).exp().sum(dim=-1), torch.ones(5))
    outputs = Ensemble(spec, num_features=2, num_outputs=1, count=3, probabilities=False)
    torch.testing.assert_close(outputs(x), torch.stack(outputs.member_outputs(x)).mean(dim=0))
    # Each member learns from its own loss, with and without mixup.
    loss_fn = torch.nn.CrossEntropyLoss()
    y = torch.tensor([0, 1, 2, 3, 0])
    own = torch.stack([loss_fn(m, y) for m in members]).mean()
    torch.testing.assert_close(training_loss(classes, loss_fn, x, y), own)
    partner = torch.tensor([1, 0, 3, 2, 4])
    blended = classes.member_outputs(0.7 * x + 0.3 * x[partner])
    expected = torch.stack([0.7 * loss_fn(m, y) + 0.3 * loss_fn(m, y[partner]) for m in blended]).mean()
    torch.testing.assert_close(mixup_loss(classes, loss_fn, x, y, 0.7, partner), expected)


def test_an_ensemble_job_trains_every_member_and_reports_one_model() -> None:
    data = separable_arrays(n=120)
    spec = bare_spec(
        model={"ensemble": 3, "hidden_size": 8},
        training={"epochs": 3, "batch_size": 16, "learning_rate": 0.02, "mixup": 0.4},
        evaluation={"attribution": True, "bootstrap_samples": 0},
    )
    first, second = train_and_evaluate(spec, data), train_and_evaluate(spec, data)
    assert first.summary.test == second.summary.test and first.summary.test["accuracy"] > 0.8
    predictor = load_predictor(first.artifact)
    assert isinstance(predictor.model, Ensemble) and len(predictor.model.members) == 3
    # Every member moved from its initialisation and the members still differ.
    torch.manual_seed(spec.training.seed)
    untrained = Ensemble(spec.model, 2, 2, 3, probabilities=True)
    for before, after in zip(untrained.member_models(), predictor.model.member_models(), strict=True):
        assert not torch.allclose(before.head.weight, after.head.weight.cpu())
    heads = [m.head.weight for m in predictor.model.member_models()]
    assert not torch.allclose(heads[0], heads[1])
    probabilities = np.asarray(predictor.predict(data["X"][:10])["probabilities"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert first.evaluation is not None and first.evaluation.attribution is not None


def test_lstm_forget_gate_bias_is_set_and_other_gates_are_not() -> None:
    torch.manual_seed(0)
    default = RecurrentModel(ModelSpec(cell="lstm", hidden_size=6, num_layers=2, forget_gate_bias=None), 2, 1)
    torch.manual_seed(0)
    biased = RecurrentModel(ModelSpec(cell="lstm", hidden_size=6, num_layers=2, forget_gate_bias=1.0), 2, 1)
    for layer in range(2):
        ih, hh = (getattr(biased.rnn, f"bias_{k}_l{layer}") for k in ("ih", "hh"))
        torch.testing.assert_close(ih[6:12] + hh[6:12], torch.ones(6))
        for name in ("bias_ih", "bias_hh"):
            before = getattr(default.rnn, f"{name}_l{layer}")
            after = getattr(biased.rnn, f"{name}_l{layer}")
            torch.testing.assert_close(torch.cat([before[:6], before[12:]]), torch.cat([after[:6], after[12:]]))


def test_patching_groups_consecutive_steps_and_pads_the_front() -> None:
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    patched = patch_steps(x, 2)  # 5 steps → the first repeated in front → 3 steps of 2 × 2 inputs
    assert patched.shape == (2, 3, 4)
    torch.testing.assert_close(patched[:, 0], torch.cat([x[:, 0], x[:, 0]], dim=1))
    torch.testing.assert_close(patched[:, 2], torch.cat([x[:, 3], x[:, 4]], dim=1))
    torch.testing.assert_close(patch_steps(x, 1), x)
    # A patched model is the unpatched network reading the patched window.
    torch.manual_seed(0)
    model = RecurrentModel(ModelSpec(cell="lstm", hidden_size=5, patch=2), 2, 3)
    assert model.rnn.input_size == 4
    plain = RecurrentModel(ModelSpec(cell="lstm", hidden_size=5, patch=1), 4, 3)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), plain(patched))


def ar_series(n: int = 400, seed: int = 0) -> np.ndarray:
    """A stationary AR(2) around a level of 50, in large units."""
    rng = np.random.default_rng(seed)
    values = np.zeros(n)
    for t in range(2, n):
        values[t] = 1.2 * values[t - 1] - 0.5 * values[t - 2] + rng.normal()
    return 50.0 + 10.0 * values


def test_ar_residual_starts_at_least_squares_and_is_refitted_on_everything_before_test() -> None:
    spec = bare_spec(
        "forecast", "series", data={"lookback": 6, "horizon": 2}, model={"residual": "ar", "hidden_size": 4},
        training={"epochs": 1},
    )  # fmt: skip
    prep = prepare_data(spec, pa.table({"value": ar_series()}), np.random.default_rng(0))
    model = RecurrentModel(spec.model, 1, 2, steps=6)
    set_naive_map(model, spec, prep)
    history = prep.examples.x[:, :, 0].astype(np.float64)
    test = prep.split.test

    def least_squares_forecast(fitted: np.ndarray, targets: np.ndarray) -> np.ndarray:
        # The AR in original units: the scalers are affine, so it is the same forecast.
        design = np.hstack([history[fitted], np.ones((len(fitted), 1))])
        coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
        return np.hstack([history[test], np.ones((len(test), 1))]) @ coef

    def model_forecast() -> np.ndarray:
        scaled = forward_in_chunks(model, torch.from_numpy(prep.x_scaled("test"))).numpy()
        return prep.y_scaler.inverse(scaled)

    train = prep.split.train
    fit_ar_map(model, spec, prep)  # the head starts at zero: the model is the AR on the training windows
    np.testing.assert_allclose(model_forecast(), least_squares_forecast(train, prep.examples.y[train]), atol=2e-3)
    # After training, the AR is refitted on training and validation windows to what the network leaves.
    before = prep.split.val
    with torch.no_grad():
        model.head.bias.fill_(0.5)  # a constant correction of 0.5 scaled units
    refit_ar_map(model, spec, prep)
    fitted = np.concatenate([train, before])
    shifted = prep.examples.y[fitted] - 0.5 * prep.y_scaler.scale
    expected = least_squares_forecast(fitted, shifted) + 0.5 * prep.y_scaler.scale
    np.testing.assert_allclose(model_forecast(), expected, atol=2e-3)


def test_ar_ridge_resolves_to_leave_one_out_and_an_explicit_value_wins() -> None:
    shape = TrainingShape(200, 30)
    assert resolve_defaults(bare_spec("forecast", "series"), shape).model.ar_ridge == "loo"
    assert resolve_defaults(bare_spec("forecast", "series", model={"ar_ridge": 0.3}), shape).model.ar_ridge == 0.3
    # Explicit epochs: plain least squares, as before the option existed; an explicit value still wins.
    old = resolve_defaults(bare_spec("forecast", "series", training={"epochs": 5}), shape)
    assert old.model.ar_ridge == 0.0
    chosen = bare_spec("forecast", "series", model={"ar_ridge": "loo"}, training={"epochs": 5})
    assert resolve_defaults(chosen, shape).model.ar_ridge == "loo"
    with pytest.raises(ValueError):
        bare_spec("forecast", "series", model={"ar_ridge": -1.0})


def test_leave_one_out_error_matches_refitting_without_each_window() -> None:
    rng = np.random.default_rng(3)
    design = np.hstack([rng.standard_normal((25, 4)), np.ones((25, 1))])
    targets = design @ rng.standard_normal((5, 2)) + 0.3 * rng.standard_normal((25, 2))
    for penalty in (0.0, 0.3):
        errors = []
        for i in range(len(design)):
            keep = np.arange(len(design)) != i
            # The penalty is relative to the full design's normal equations, as in the closed form.
            normal = ridge_normal_matrix(design, penalty) - design[i : i + 1].T @ design[i : i + 1]
            coef = np.linalg.solve(normal, design[keep].T @ targets[keep])
            errors.append((targets[i] - design[i] @ coef) ** 2)
        assert leave_one_out_error(design, targets, penalty) == pytest.approx(float(np.mean(errors)), rel=1e-6)


def test_leave_one_out_picks_no_penalty_with_many_windows_and_one_with_few() -> None:
    def lagged(values: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
        windows = np.stack([values[t - lags : t] for t in range(lags, len(values))])
        return np.hstack([windows, np.ones((len(windows), 1))]), values[lags:, None]

    long_design, long_targets = lagged((ar_series(2_000) - 50) / 10, 4)
    assert choose_ar_ridge(long_design, long_targets, "loo") == 0.0
    # 20 windows of a short, noisy series read with 12 lags: least squares overfits.
    noisy = np.random.default_rng(5).standard_normal(32)
    short_design, short_targets = lagged(noisy, 12)
    chosen = choose_ar_ridge(short_design, short_targets, "loo")
    assert chosen in AR_RIDGE_GRID and chosen > 0.0
    plain_error = leave_one_out_error(short_design, short_targets, 0.0)
    assert leave_one_out_error(short_design, short_targets, chosen) < plain_error
    assert choose_ar_ridge(short_design, short_targets, 0.25) == 0.25  # a number is used as given


def test_ar_ridge_shrinks_the_refitted_ar_and_the_job_notes_its_choice() -> None:
    spec = bare_spec(
        "forecast", "series", data={"lookback": 6}, model={"residual": "ar", "hidden_size": 4, "ar_ridge": 3.0},
        training={"epochs": 1},
    )  # fmt: skip
    prep = prepare_data(spec, pa.table({"value": ar_series()}), np.random.default_rng(0))
    model = RecurrentModel(spec.model, 1, 1, steps=6)
    set_naive_map(model, spec, prep)
    fit_ar_map(model, spec, prep)  # training starts from plain least squares whatever the penalty
    start = model.ar_weight.clone()
    plain = spec.model_copy(update={"model": spec.model.model_copy(update={"ar_ridge": 0.0})})
    fit_ar_map(model, plain, prep)
    torch.testing.assert_close(model.ar_weight, start)
    assert refit_ar_map(model, plain, prep) == 0.0
    unshrunk = float(model.ar_weight.norm())
    assert refit_ar_map(model, spec, prep) == 3.0
    assert float(model.ar_weight.norm()) < unshrunk
    loo = spec.model_copy(update={"model": spec.model.model_copy(update={"ar_ridge": "loo"})})
    result = train_and_evaluate(loo, pa.table({"value": ar_series()}))
    assert result.evaluation is not None
    assert any("model.ar_ridge 'loo' chose" in note for note in result.evaluation.notes)


def small_ar_forecast_spec(epochs: int, **model: Any) -> JobSpec:
    """A small forecast with the AR inside (lookback 8, hidden 8, ridge by LOO) and ``model`` options."""
    return bare_spec(
        "forecast", "series",
        data={"lookback": 8},
        model={"hidden_size": 8, "residual": "ar", "ar_ridge": "loo", **model},
        training={"epochs": epochs, "batch_size": 32},
        evaluation={"attribution": False, "bootstrap_samples": 0},
    )  # fmt: skip


def multiplicative_series(n: int = 300, seed: int = 1) -> np.ndarray:
    """Cycles whose swings grow with their level (Lynx-like): an AR(2) in the logarithm."""
    return np.exp(np.log(50.0) + (ar_series(n, seed) - 50.0) / 12.0)


def test_ar_scale_resolves_to_select_and_an_explicit_value_wins() -> None:
    shape = TrainingShape(200, 30)
    assert resolve_defaults(bare_spec("forecast", "series"), shape).model.ar_scale == "select"
    assert resolve_defaults(bare_spec("forecast", "series", model={"ar_scale": "log"}), shape).model.ar_scale == "log"
    # Explicit epochs: the linear AR, as before the option existed; an explicit value still wins.
    assert resolve_defaults(bare_spec("forecast", "series", training={"epochs": 5}), shape).model.ar_scale == "linear"
    chosen = bare_spec("forecast", "series", model={"ar_scale": "select"}, training={"epochs": 5})
    assert resolve_defaults(chosen, shape).model.ar_scale == "select"
    with pytest.raises(ValueError):
        bare_spec("forecast", "series", model={"ar_scale": "exp"})


def test_ar_scale_select_takes_the_log_of_a_multiplicative_series_only() -> None:
    def chosen(values: np.ndarray, setting: str = "select") -> tuple[str, str | None]:
        model = {"residual": "ar", "ar_scale": setting, "ar_ridge": "loo"}
        spec = bare_spec("forecast", "series", data={"lookback": 6}, model=model, training={"epochs": 1})
        prep = prepare_data(spec, pa.table({"value": values}), np.random.default_rng(0))
        return choose_ar_scale(spec, prep)

    scale, note = chosen(multiplicative_series())
    assert scale == "log" and note is not None and "chose log" in note
    additive = ar_series(seed=2)
    scale, note = chosen(additive - additive.min() + 5.0)  # additive swings that reach near zero
    assert scale == "linear" and note is not None and "chose linear" in note
    scale, note = chosen(ar_series(seed=2) - 50.0)  # crosses zero: no logarithm
    assert scale == "linear" and note is not None and "not positive" in note
    assert chosen(ar_series(seed=2) - 50.0, "linear") == ("linear", None)
    with pytest.raises(DataError, match="above 0"):
        chosen(ar_series(seed=2) - 50.0, "log")


def test_log_ar_forecast_beats_the_linear_ar_and_predicts_the_same_through_the_artifact() -> None:
    values = multiplicative_series(400)
    spec = small_ar_forecast_spec(epochs=3, ar_scale="select")
    result = train_and_evaluate(spec, pa.table({"value": values}))
    assert result.evaluation is not None
    assert any("model.ar_scale 'select' chose log" in note for note in result.evaluation.notes)
    assert result.artifact["spec"]["model"]["ar_scale"] == "log"  # the artifact holds what ran
    assert {"log_map", "log_output"} <= set(result.artifact["state_dict"])
    linear = spec.model_copy(update={"model": spec.model.model_copy(update={"ar_scale": "linear"})})
    plain = train_and_evaluate(linear, pa.table({"value": values}))
    assert plain.evaluation is not None
    assert result.evaluation.metrics["test"]["mae"] < plain.evaluation.metrics["test"]["mae"]
    predictor = load_predictor(save_and_load(result.artifact))
    windows = np.stack([values[i : i + 8] for i in range(300, 340)])
    x = torch.from_numpy(windows[:, :, None].astype(np.float32))
    direct = forward_in_chunks(predictor.scaled_model, x).numpy()
    np.testing.assert_allclose(np.array(predictor.predict(windows)), direct, rtol=1e-5)
    assert np.all(np.array(predictor.predict(windows)) > 0)


def test_ar_residual_forecast_trains_and_predicts_the_same_through_the_artifact() -> None:
    values = ar_series()
    spec = bare_spec(
        "forecast", "series",
        data={"lookback": 8},
        model={"hidden_size": 8},
        training={"epochs": 5, "batch_size": 32},
        evaluation={"attribution": False, "bootstrap_samples": 0},
    )  # fmt: skip
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"residual": "ar"})})
    result = train_and_evaluate(spec, pa.table({"value": values}))
    assert result.evaluation is not None
    comparison = result.evaluation.comparison
    assert comparison["naive"].beats is True
    # Starting at the AR and keeping the best validation weights, it stays close to the AR baseline.
    ar = comparison["linear_ar"]
    assert ar.model is not None and ar.baseline is not None and ar.model < 1.1 * ar.baseline
    predictor = load_predictor(save_and_load(result.artifact))
    assert set(result.artifact["state_dict"]) >= {"ar_weight", "ar_bias", "naive_column"}
    windows = np.stack([values[i : i + 8] for i in range(300, 340)])
    x = torch.from_numpy(windows[:, :, None].astype(np.float32))
    direct = forward_in_chunks(predictor.scaled_model, x).numpy()
    np.testing.assert_allclose(np.array(predictor.predict(windows)), direct, rtol=1e-6)


# ---------------------------------------------------------------- per-example scaling and artifacts


def test_per_example_scaler_round_trips_as_a_dict() -> None:
    x = np.random.default_rng(0).standard_normal((5, 9, 2)) * 4 + 3
    scaler = fit_scaler(x, "per_example")
    again = Scaler.from_dict(scaler.to_dict())
    scaled = again.transform(x)
    np.testing.assert_allclose(scaled.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(scaled.std(axis=1), 1, atol=1e-12)
    assert "per_example" not in fit_scaler(x, "standard").to_dict()  # older artifacts read the same
    with pytest.raises(ValueError, match="no inverse"):
        scaler.inverse(x)


def test_per_example_scaling_survives_the_artifact_and_ignores_level_and_amplitude() -> None:
    data = separable_arrays(n=160, steps=10, features=1)
    # Class 1 is a rising ramp, class 0 a falling one; each example gets its own level and amplitude.
    rng = np.random.default_rng(1)
    ramp = np.linspace(-1, 1, 10)[None, :, None]
    shape = np.where(data["y"][:, None, None] == 1, ramp, -ramp) + 0.1 * rng.standard_normal((160, 10, 1))
    x = (shape * rng.uniform(0.5, 5, (160, 1, 1)) + rng.uniform(-50, 50, (160, 1, 1))).astype(np.float32)
    spec = bare_spec(training={"epochs": 40, "batch_size": 16, "learning_rate": 0.01}, data={"scaling": "per_example"})
    spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"attribution": False})})
    result = train_and_evaluate(spec, {"X": x, "y": data["y"]})
    assert result.evaluation is not None and result.evaluation.metrics["test"]["accuracy"] > 0.9
    assert result.artifact["scalers"]["x"]["per_example"] is True
    predictor = load_predictor(save_and_load(result.artifact))
    first = predictor.predict(x)
    moved = predictor.predict(x * 3.0 + 100.0)  # the same shapes, elsewhere and larger
    np.testing.assert_allclose(first["probabilities"], moved["probabilities"], atol=1e-5)
    accuracy = np.mean(np.array(first["labels"]) == data["y"])
    assert accuracy > 0.9


def test_residual_forecast_follows_a_level_shift_through_the_artifact() -> None:
    values = 10.0 * np.sin(np.arange(300) / 4.0) + np.arange(300) * 0.2  # a trend leaves the training range
    spec = bare_spec(
        "forecast", "series",
        data={"lookback": 12, "horizon": 2},
        model={"hidden_size": 16},
        training={"epochs": 20, "learning_rate": 0.01, "batch_size": 32},
        evaluation={"attribution": False, "bootstrap_samples": 0},
    )  # fmt: skip
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"residual": "last_value"})})
    result = train_and_evaluate(spec, pa.table({"value": values}))
    assert result.evaluation is not None
    assert result.evaluation.comparison["naive"].beats is True
    predictor = load_predictor(save_and_load(result.artifact))
    window = values[-12:][None, :]
    shifted = np.array(predictor.predict(window + 500.0))
    np.testing.assert_allclose(shifted, np.array(predictor.predict(window)) + 500.0, rtol=1e-5)


def test_artifacts_saved_before_pooling_existed_still_load() -> None:
    spec = bare_spec("forecast", "series", training={"epochs": 2}, evaluation={"attribution": False})
    result = train_and_evaluate(spec, sine_table(n=120))
    artifact = save_and_load(result.artifact)
    for name in ("pooling", "forget_gate_bias", "residual", "patch", "ar_ridge", "ar_scale", "combine"):
        artifact["spec"]["model"].pop(name)
    predictor = load_predictor(artifact)
    assert predictor.model.pooling == "last"
    assert len(predictor.predict(np.zeros((1, 24)))) == 1


# ---------------------------------------------------------------- no silent collapse


def test_a_run_that_learns_nothing_says_so_in_the_notes() -> None:
    data = separable_arrays(n=120)
    flat = {"X": np.zeros_like(data["X"]), "y": data["y"]}  # no signal at all
    spec = bare_spec(training={"epochs": 5, "batch_size": 16, "learning_rate": 0.02}, evaluation={"attribution": False})
    result = train_and_evaluate(spec, flat)
    assert result.evaluation is not None
    assert any("never moved below that of predicting the majority class" in n for n in result.evaluation.notes)
    learned = train_and_evaluate(spec, data)
    assert learned.evaluation is not None
    assert not any("never moved" in n for n in learned.evaluation.notes)


def test_a_default_spec_runs_with_resolved_values_in_its_artifact() -> None:
    spec = bare_spec(
        "forecast", "series", model={"hidden_size": 4}, evaluation={"attribution": False, "bootstrap_samples": 0}
    )
    reports: list[Any] = []
    # One epoch is enough to see what ran: stop right after it (the artifact is still built).
    result = train_and_evaluate(
        spec, sine_table(n=120), device="cpu", on_epoch=reports.append, should_stop=lambda: bool(reports)
    )
    stored = result.artifact["spec"]
    # 120 rows, lookback 24 → 96 windows, 68 train → batch 8, 9 steps an epoch → 167 epochs.
    assert stored["training"]["batch_size"] == 8 and stored["training"]["epochs"] == 167
    assert stored["training"]["schedule"] == "one_cycle" and stored["model"]["residual"] == "ar"
    assert reports[0].epochs == 167 and result.cancelled


# ---------------------------------------------------------------- forecast combination (model.combine)


@pytest.mark.parametrize(
    ("train_examples", "steps"),
    [(20, 6), (700, 24), (150_000, 48)],  # tiny, medium and large training sets: the rule is the same
)
def test_combine_resolves_to_inverse_mse_for_an_ar_forecast(train_examples: int, steps: int) -> None:
    shape = TrainingShape(train_examples, max(1, train_examples // 5), steps=steps)
    spec = resolve_defaults(bare_spec("forecast", "series"), shape)
    assert spec.model.residual == "ar" and spec.model.combine == "inverse_mse"
    assert unresolved_fields(spec) == []


def test_combine_auto_is_none_without_the_ar_and_an_explicit_value_wins() -> None:
    shape = TrainingShape(200, 30)
    # No AR under the forecast (an explicit last_value residual, or classification): nothing to combine.
    last_value = bare_spec("forecast", "series", model={"residual": "last_value"})
    assert resolve_defaults(last_value, shape).model.combine == "none"
    assert resolve_defaults(bare_spec(), shape).model.combine == "none"
    explicit = bare_spec("forecast", "series", model={"combine": "equal"})
    assert resolve_defaults(explicit, shape).model.combine == "equal"
    assert resolve_defaults(bare_spec("forecast", "series", model={"combine": "none"}), shape).model.combine == "none"
    # Explicit epochs: a single model, as before the option existed; an explicit value still wins.
    assert resolve_defaults(bare_spec("forecast", "series", training={"epochs": 5}), shape).model.combine == "none"
    kept = bare_spec("forecast", "series", model={"combine": "inverse_mse"}, training={"epochs": 5})
    assert resolve_defaults(kept, shape).model.combine == "inverse_mse"


@pytest.mark.parametrize(
    ("task", "layout", "model", "message"),
    [
        ("forecast", "series", {"combine": "mean"}, "combine"),  # not a value
        ("forecast", "series", {"combine": "equal", "residual": "last_value"}, "model.combine 'equal'"),
        ("classification", "arrays", {"combine": "inverse_mse"}, "model.combine 'inverse_mse'"),
    ],
)
def test_combine_refuses_what_it_cannot_run(task: str, layout: str, model: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bare_spec(task, layout, model=model)


def test_combined_forecast_trains_both_members_and_predicts_the_same_through_the_artifact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "MIN_CORRECTION_SHARE", 0.0)  # the last_value member always joins
    values = ar_series()
    spec = small_ar_forecast_spec(epochs=4, combine="inverse_mse")
    result = train_and_evaluate(spec, pa.table({"value": values}))
    assert result.evaluation is not None
    notes = [n for n in result.evaluation.notes if n.startswith("model.combine 'inverse_mse'")]
    assert len(notes) == 1 and "inverse validation MSE" in notes[0]
    state = result.artifact["state_dict"]
    assert {"weights", "members.0.ar_weight", "members.1.naive_slope", "members.1.head.weight"} <= set(state)
    weights = state["weights"]
    assert float(weights.sum()) == pytest.approx(1.0) and bool((weights > 0).all())
    assert result.evaluation.comparison["naive"].beats is True
    predictor = load_predictor(save_and_load(result.artifact))
    windows = np.stack([values[i : i + 8] for i in range(300, 340)])
    x = torch.from_numpy(windows[:, :, None].astype(np.float32))
    combined = predictor.model
    assert isinstance(combined, CombinedForecast)
    scaled = forward_in_chunks(predictor.scaled_model, x).numpy()
    np.testing.assert_allclose(np.array(predictor.predict(windows)), scaled, rtol=1e-6)
    # The forecast is the weighted mean of the members' own forecasts.
    members = [ScaledModel(m, predictor.x_scaler, predictor.y_scaler).eval() for m in combined.members]
    each = [forward_in_chunks(m, x).numpy() for m in members]
    w = weights.double().numpy()
    np.testing.assert_allclose(scaled, w[0] * each[0] + w[1] * each[1], rtol=1e-5)


def test_equal_combination_and_a_split_without_validation_take_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MIN_CORRECTION_SHARE", 0.0)
    values = ar_series(200)
    for combine, split in (("equal", {}), ("inverse_mse", {"split": {"method": "temporal", "val_fraction": 0.0}})):
        spec = bare_spec(
            "forecast", "series",
            data={"lookback": 6, **split},
            model={"hidden_size": 4, "residual": "ar", "combine": combine},
            training={"epochs": 2, "batch_size": 32},
            evaluation={"attribution": False, "bootstrap_samples": 0},
        )  # fmt: skip
        result = train_and_evaluate(spec, pa.table({"value": values}))
        assert result.evaluation is not None
        assert result.artifact["state_dict"]["weights"].tolist() == [0.5, 0.5]
        assert any(n.startswith(f"model.combine '{combine}'") and "equal weights" in n for n in result.evaluation.notes)


def test_each_member_of_a_combination_learns_from_its_own_loss() -> None:
    spec = ModelSpec(hidden_size=4, residual="ar", combine="equal")
    model = CombinedForecast(spec, 1, 1, steps=6)
    x, y = torch.randn(5, 6, 1), torch.randn(5, 1)
    loss_fn = torch.nn.MSELoss()
    with torch.no_grad():
        loss = float(training_loss(model, loss_fn, x, y))
        own = [float(loss_fn(out, y)) for out in model.member_outputs(x)]
        joint = float(loss_fn(model(x), y))
    assert loss == pytest.approx(sum(own) / 2)
    # Not the loss of the weighted mean (a joint model): each member's own error.
    assert loss != pytest.approx(joint)


def test_a_correction_that_stayed_near_zero_keeps_the_ar_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    values = ar_series(240)
    spec = bare_spec(
        "forecast", "series",
        data={"lookback": 6},
        model={"hidden_size": 4, "residual": "ar", "combine": "inverse_mse"},
        training={"epochs": 2, "batch_size": 32},
        evaluation={"attribution": False, "bootstrap_samples": 0},
    )  # fmt: skip
    shares: list[float] = []
    measure = engine_module.correction_share

    def recorded(*args: Any) -> float:
        shares.append(measure(*args))
        return shares[-1]

    monkeypatch.setattr(engine_module, "correction_share", recorded)
    monkeypatch.setattr(engine_module, "MIN_CORRECTION_SHARE", 1e9)  # no correction is large enough
    result = train_and_evaluate(spec, pa.table({"value": values}))
    assert result.evaluation is not None
    assert result.artifact["state_dict"]["weights"].tolist() == [1.0, 0.0]
    assert any("the ar model alone: its correction is" in n for n in result.evaluation.notes)
    assert len(shares) == 1 and 0.0 <= shares[0] < 1e9
    # The forecast is then the ar member's own.
    predictor = load_predictor(save_and_load(result.artifact))
    windows = np.stack([values[i : i + 6] for i in range(200, 230)])
    x = torch.from_numpy(windows[:, :, None].astype(np.float32))
    ar_member = ScaledModel(predictor.model.members[0], predictor.x_scaler, predictor.y_scaler).eval()
    np.testing.assert_allclose(np.array(predictor.predict(windows)), forward_in_chunks(ar_member, x).numpy(), rtol=1e-6)


def test_correction_share_is_zero_for_an_untrained_correction() -> None:
    spec = bare_spec("forecast", "series", data={"lookback": 6}, model={"hidden_size": 4, "residual": "ar"})
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"residual": "ar", "combine": "none"})})
    prep = prepare_data(spec, pa.table({"value": ar_series(200)}), np.random.default_rng(0))
    model = RecurrentModel(spec.model, 1, 1, steps=6)
    set_naive_map(model, spec, prep)
    fit_ar_map(model, spec, prep)
    assert engine_module.correction_share(model, spec, prep) == 0.0  # the head starts at zero
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    assert engine_module.correction_share(model, spec, prep) > 0.0


def test_the_footprint_counts_the_first_networks_weights_kept_during_a_refit() -> None:
    from worker.engine.footprint import blamed_fields, footprint

    shape = TrainingShape(31, 5, channels=1, steps=251)
    once = footprint(resolve_defaults(bare_spec(training={"refit": False}), shape), shape)
    refit = footprint(resolve_defaults(bare_spec(), shape), shape)
    assert refit.refit and not once.refit and refit.parameters == once.parameters
    assert refit.training_bytes - once.training_bytes == 4 * refit.parameters
    assert "training.refit" in blamed_fields(resolve_defaults(bare_spec(), shape), refit)[1]
