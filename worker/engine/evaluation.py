"""Evaluating a trained model: metrics per split, bootstrap intervals, baselines, gap, attribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .attribution import attribution_report
from .baselines import classification_baselines, forecast_baselines, regression_baselines
from .data import PreparedData
from .metrics import (
    LOWER_IS_BETTER,
    bootstrap_intervals,
    drop_intervals_missing_their_point,
    json_float,
    main_metric,
    paired_differences,
    point_metrics,
    undefined_metric_notes,
)
from .models import forward_in_chunks
from .results import Evaluation
from .spec import JobSpec


def naive_scale(spec: JobSpec, prep: PreparedData) -> float | None:
    """MASE denominator: in-sample MAE of the naive predictor on the training examples.

    Forecast: the last value of each training window. Regression has no time order in its target,
    so its naive predictor is the training mean.
    """
    y_train = prep.y_original("train")
    if spec.task == "forecast":
        history = prep.examples.target_history
        assert history is not None
        scale = float(np.abs(y_train - history[prep.split.train, -1:]).mean())
    else:
        scale = float(np.abs(y_train - y_train.mean(axis=0)).mean())
    return scale if scale > 0 else None


def predict_original(model: nn.Module, x: torch.Tensor, prep: PreparedData, task: str) -> np.ndarray:
    """Class probabilities [N, C], or predictions [N, H] in the target's original units."""
    out = forward_in_chunks(model, x)
    if task == "classification":
        return torch.softmax(out.double(), dim=1).cpu().numpy()
    assert prep.y_scaler is not None
    return prep.y_scaler.inverse(out.double().cpu().numpy())


def compare(
    main: str, model_value: float | None, baseline_value: float | None, difference: list[float] | None = None
) -> dict[str, Any]:
    """Relative improvement of the model over a baseline on the main metric (positive = better), and,
    given the paired bootstrap interval of model − baseline, whether the gap is beyond resampling noise."""
    improvement, beats = None, None
    if model_value is not None and baseline_value is not None:
        lower = main in LOWER_IS_BETTER
        beats = model_value < baseline_value if lower else model_value > baseline_value
        if baseline_value != 0:
            gain = baseline_value - model_value if lower else model_value - baseline_value
            improvement = json_float(gain / abs(baseline_value))
    return {
        "metric": main,
        "model": model_value,
        "baseline": baseline_value,
        "improvement": improvement,
        "beats": beats,
        "difference_interval": difference,
        "significant": None if difference is None else bool(difference[0] > 0 or difference[1] < 0),
    }


def intervals_on_test(
    spec: JobSpec, y_test: np.ndarray, pred: np.ndarray, point: dict[str, Any], rng: np.random.Generator, scale: Any
) -> tuple[dict[str, list[float] | None], list[str]]:
    """The test part's bootstrap intervals, without those that miss their own value (with a note each)."""
    task = spec.task
    intervals = bootstrap_intervals(task, y_test, pred, spec.evaluation.bootstrap_samples, rng, scale)
    return intervals, drop_intervals_missing_their_point(point, intervals, len(y_test))


def noise_notes(main: str, comparison: dict[str, dict[str, Any]]) -> list[str]:
    """A note for each baseline the model beats by less than the test part can tell apart."""
    return [
        f"beats {name} on {main}, but within resampling noise: the paired 95% interval of model − {name} "
        f"is [{c['difference_interval'][0]:.4g}, {c['difference_interval'][1]:.4g}], which holds 0"
        for name, c in comparison.items()
        if c["beats"] and c["significant"] is False
    ]


def per_part(
    prep: PreparedData,
    predict: Callable[[str], np.ndarray],
    measure: Callable[[str, np.ndarray], dict[str, float | None]],
) -> tuple[dict[str, dict[str, float | None]], dict[str, np.ndarray]]:
    """Each part's predictions and point metrics (``{}`` for an empty part)."""
    metrics: dict[str, dict[str, float | None]] = {}
    predictions: dict[str, np.ndarray] = {}
    for part, idx in prep.split.parts().items():
        if len(idx) == 0:
            metrics[part] = {}
            continue
        predictions[part] = predict(part)
        metrics[part] = measure(part, predictions[part])
    return metrics, predictions


def predict_parts(
    model: nn.Module, tensors: dict[str, torch.Tensor], prep: PreparedData, task: str, scale: float | None
) -> tuple[dict[str, dict[str, float | None]], dict[str, np.ndarray]]:
    """Each part's predictions in original units and its point metrics (``{}`` for an empty part)."""
    return per_part(
        prep,
        lambda part: predict_original(model, tensors[part], prep, task),
        lambda part, predicted: point_metrics(task, prep.y_original(part), predicted, scale),
    )


def evaluate(
    spec: JobSpec,
    prep: PreparedData,
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    rng: np.random.Generator,
    *,
    val_predictions: np.ndarray | None = None,
) -> Evaluation:
    """The evaluation of a trained model. ``tensors`` holds the scaled inputs of each part on the device.

    ``val_predictions``: the validation part's predictions by the network of the first run, when
    ``training.refit`` trained the kept one on the validation part too (its own would be in-sample)."""
    task = spec.task
    main = main_metric(task)
    classes = prep.examples.classes
    num_classes = len(classes) if classes is not None else None
    scale = naive_scale(spec, prep) if task != "classification" else None
    notes = list(prep.notes)
    metrics, predictions = predict_parts(model, tensors, prep, task, scale)
    if val_predictions is not None:
        predictions["val"] = val_predictions
        metrics["val"] = point_metrics(task, prep.y_original("val"), val_predictions, scale)
    if "test" in predictions:
        notes += undefined_metric_notes(task, prep.y_original("test"), "test", num_classes)
    if metrics["val"] == {}:
        notes.append("no validation part (val_fraction 0): no early stopping, the final epoch's weights are kept")
    if scale is None and task != "classification":
        notes.append("mase is null: the naive predictor is exact on the training examples")
    if task == "regression":
        notes.append("mase for regression is scaled by the training mean's in-sample MAE (no time order)")
    y_test = prep.y_original("test")
    intervals, interval_notes = intervals_on_test(spec, y_test, predictions["test"], metrics["test"], rng, scale)
    notes += interval_notes

    # With training.refit the kept network learnt from the validation part too: so do the baselines.
    parts = ("train", "val") if val_predictions is not None else ("train",)
    if task == "forecast":
        baseline_preds, baseline_notes = forecast_baselines(prep, spec.data.season_period, rng, tensors["test"].device)
    elif task == "regression":
        x_fit = tensors["train"] if len(parts) == 1 else torch.cat([tensors[p] for p in parts])
        baseline_preds, baseline_notes = regression_baselines(prep, rng, x_fit, parts)
    else:
        assert num_classes is not None
        baseline_preds, baseline_notes = classification_baselines(prep, num_classes, rng, parts)
    if val_predictions is not None:
        baseline_notes.append(
            "the baselines were fitted on the training and validation parts, as the refitted network was"
        )
    notes += baseline_notes
    baselines = {name: point_metrics(task, y_test, pred, scale) for name, pred in baseline_preds.items()}
    differences = paired_differences(
        task, y_test, predictions["test"], baseline_preds, spec.evaluation.bootstrap_samples, rng
    )
    comparison = {
        name: compare(main, metrics["test"][main], values[main], differences.get(name))
        for name, values in baselines.items()
    }
    notes += noise_notes(main, comparison)

    train_value, test_value = metrics["train"][main], metrics["test"][main]
    gap = None
    if train_value is not None and test_value is not None:
        # Signed so that a positive gap always means the test score is worse than the training score.
        worse = test_value - train_value if main in LOWER_IS_BETTER else train_value - test_value
        gap = json_float(worse)
    evaluation: dict[str, Any] = {
        "task": task,
        "main_metric": main,
        "metrics": metrics,
        "intervals": {"test": intervals},
        "confidence_level": 0.95,
        "bootstrap_samples": spec.evaluation.bootstrap_samples,
        "baselines": baselines,
        "comparison": comparison,
        "generalization_gap": {
            "metric": main,
            "train": train_value,
            "test": test_value,
            "gap": gap,
            "positive_means": "test is worse than train",
        },
        "num_examples": {part: int(len(idx)) for part, idx in prep.split.parts().items()},
        "notes": notes,
    }
    if task == "classification":
        assert classes is not None and num_classes is not None
        pred_test = predictions["test"].argmax(axis=1)
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(matrix, (y_test, pred_test), 1)
        evaluation["confusion_matrix"] = {
            "labels": [str(c) for c in classes],
            "matrix": matrix.tolist(),
            "rows": "true",
            "columns": "predicted",
        }
    if spec.evaluation.attribution:
        evaluation["attribution"] = _attribution(spec, prep, model, tensors["test"], rng)
    return Evaluation.model_validate(evaluation)


def _attribution(
    spec: JobSpec, prep: PreparedData, model: nn.Module, x_test: torch.Tensor, rng: np.random.Generator
) -> dict[str, Any]:
    task = spec.task
    main = main_metric(task)
    y_test = torch.as_tensor(prep.y_scaled("test"), device=x_test.device)

    def score(x: torch.Tensor, y: torch.Tensor) -> float:
        return _main_metric_of(model, x, y, prep, task)

    return attribution_report(
        model,
        x_test,
        y_test,
        prep.examples.feature_names,
        task == "classification",
        score,
        main,
        main in LOWER_IS_BETTER,
        rng,
    )


def _main_metric_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prep: PreparedData, task: str) -> float:
    out = forward_in_chunks(model, x)
    if task == "classification":
        return float((out.argmax(dim=1) == y).double().mean())
    assert prep.y_scaler is not None
    scale = torch.as_tensor(prep.y_scaler.scale, device=out.device)
    return float(torch.sqrt((((out.double() - y.double()) * scale) ** 2).mean()))
