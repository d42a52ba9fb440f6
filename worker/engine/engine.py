"""``train_and_evaluate``: the one call the worker makes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import PreparedData, prepare_data, training_shape
from .defaults import resolve_defaults, unresolved_fields
from .errors import DataError, DeviceUnavailable, TrainingDiverged
from .evaluation import evaluate, predict_original
from .layouts import Data
from .models import MAX_AR_LAGS, CombinedForecast, RecurrentModel, build_recurrent_model, recurrent_members
from .predictor import ARTIFACT_FORMAT
from .results import Evaluation, Summary
from .spec import CLASS_TASKS, JobSpec
from .text import uses_sequence_model
from .text_evaluation import evaluate_sequences
from .training import STUCK_PREFIX, EpochReport, TrainOutcome, fit


@dataclass
class EngineResult:
    cancelled: bool
    best_epoch: int
    epochs_run: int
    device: str  # "cpu" / "cuda"
    train_seconds: float  # the epoch loop only (training and per-epoch validation)
    summary: Summary
    evaluation: Evaluation | None  # None when cancelled
    artifact: dict[str, Any]  # torch.save-able, loadable with weights_only=True
    num_examples: dict[str, int]
    evaluation_seconds: float = 0.0
    prepare_seconds: float = 0.0  # windows, split, scalers and the scaled arrays on the device


def resolve_device(requested: str) -> torch.device:
    """``auto`` → cuda when this process has a GPU, else cpu; ``cuda`` without a GPU raises DeviceUnavailable."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "device 'cuda' requested but this worker has no usable GPU; use device 'auto' or 'cpu', "
            "or run a GPU worker (rnnlab worker --queues gpu)"
        )
    return torch.device(requested)


def _num_outputs(spec: JobSpec, prep: PreparedData) -> int:
    if spec.task in CLASS_TASKS:
        assert prep.examples.classes is not None
        return len(prep.examples.classes)
    assert prep.examples.y is not None
    return int(prep.examples.y.shape[1])


def set_naive_map(model: RecurrentModel, spec: JobSpec, prep: PreparedData) -> None:
    """The last target input in scaled input units → the naive forecast in scaled output units."""
    assert prep.y_scaler is not None
    column = prep.examples.feature_names.index(spec.data.target)
    x_center, x_scale = prep.x_scaler.center[column], prep.x_scaler.scale[column]
    slope = x_scale / prep.y_scaler.scale
    intercept = (x_center - prep.y_scaler.center) / prep.y_scaler.scale
    device = model.naive_slope.device
    model.set_naive_map(
        column,
        torch.as_tensor(slope, dtype=torch.float32, device=device),
        torch.as_tensor(intercept, dtype=torch.float32, device=device),
    )


def _build_model(spec: JobSpec, prep: PreparedData) -> torch.nn.Module:
    num_features, num_outputs = len(prep.examples.feature_names), _num_outputs(spec, prep)
    if uses_sequence_model(spec):
        from .sequence_model import build_sequence_model

        codec = prep.examples.codec
        return build_sequence_model(spec, num_features, num_outputs, codec.vocab_size if codec is not None else None)
    return build_recurrent_model(
        spec.model, num_features, num_outputs, steps=prep.examples.steps, classes=spec.task in CLASS_TASKS
    )


# Ridge on the AR's normal equations, relative to their mean diagonal: enough to make a
# rank-deficient design (a constant stretch, more lags than windows) solvable, too small to matter otherwise.
AR_RIDGE = 1e-6
# ``model.ar_ridge 'loo'`` tries these penalties on the lag weights (same units as a numeric ar_ridge).
AR_RIDGE_GRID: tuple[float, ...] = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _ar_design(model: RecurrentModel, spec: JobSpec, prep: PreparedData, parts: tuple[str, ...]) -> np.ndarray:
    x = torch.from_numpy(np.concatenate([prep.x_scaled(p) for p in parts])).to(model.ar_weight.device)
    with torch.no_grad():
        inputs = model.ar_inputs(x).double().cpu().numpy()
    return np.hstack([inputs, np.ones((len(inputs), 1))])


def _ar_targets(model: RecurrentModel, prep: PreparedData, parts: tuple[str, ...]) -> np.ndarray:
    """The scaled targets of ``parts`` in the AR's units (with ``ar_scale 'log'``: standardised logs)."""
    targets = np.concatenate([prep.y_scaled(p) for p in parts]).astype(np.float64)
    if not model.ar_log:
        return targets
    assert prep.y_scaler is not None
    m = model.log_map.double().cpu().numpy()
    original = np.maximum(prep.y_scaler.inverse(targets), m[2])
    return (np.log(original) - m[3]) / m[4]


# ``model.ar_scale 'select'``: the rolling-origin comparison forecasts at most this many of the last
# windows before the test part (a third of them), each from an AR fitted on every earlier window.
MAX_SELECT_ORIGINS = 100


def _target_history(spec: JobSpec, prep: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    """The target column's input windows and the targets, in original units, for the windows before the
    test part (training, then validation windows)."""
    assert prep.y_scaler is not None and prep.examples.x is not None and prep.examples.y is not None
    column = prep.examples.feature_names.index(spec.data.target)
    idx = np.concatenate([prep.split.train, prep.split.val])
    x = prep.examples.x[idx][:, :, column].astype(np.float64)
    y = prep.examples.y[idx].astype(np.float64).reshape(len(idx), -1)
    return x, y


def _rolling_origin_error(
    design: np.ndarray,
    targets: np.ndarray,
    back: Callable[[np.ndarray], np.ndarray],
    actual: np.ndarray,
    setting: float | str,
) -> float:
    """Mean absolute error (original units, via ``back``) of forecasting each of the last third of the
    windows (at most ``MAX_SELECT_ORIGINS``) with a ridge AR fitted on every window before it."""
    n = len(design)
    origins = min(MAX_SELECT_ORIGINS, n // 3)
    start = n - origins
    penalty = choose_ar_ridge(design[:start], targets[:start], setting)
    gram = design[:start].T @ design[:start]
    rhs = design[:start].T @ targets[:start]
    errors = []
    for i in range(start, n):
        coef = np.linalg.solve(_ridge_from_gram(gram, penalty), rhs)
        errors.append(np.mean(np.abs(back(design[i] @ coef) - actual[i])))
        gram += np.outer(design[i], design[i])
        rhs += np.outer(design[i], targets[i])
    return float(np.mean(errors))


def choose_ar_scale(spec: JobSpec, prep: PreparedData) -> tuple[str, str | None]:
    """``model.ar_scale`` as it will run (``linear`` or ``log``) and a note when ``select`` chose it.

    ``select``: the logarithm only for a target that is positive in every window before the test part,
    and only when its rolling-origin error (``_rolling_origin_error``) is lower than the linear AR's.
    """
    setting = spec.model.ar_scale
    if setting in ("auto", "linear") or spec.model.residual != "ar":
        return "linear", None
    x, y = _target_history(spec, prep)
    positive = bool(len(x)) and float(min(x.min(), y.min())) > 0.0
    if setting == "log":
        if not positive:
            raise DataError(
                "model.ar_scale 'log' needs a target above 0 in every training and validation window",
                field="model.ar_scale",
            )
        return "log", None
    lags = min(x.shape[1], MAX_AR_LAGS)
    if not positive or len(x) < 6:
        why = "the target is not positive everywhere" if not positive else "too few windows to compare"
        return "linear", f"model.ar_scale 'select' kept the linear AR ({why})"
    ridge = _ar_ridge_setting(spec)
    errors = {}
    for scale in ("linear", "log"):
        values = x[:, -lags:] if scale == "linear" else np.log(x[:, -lags:])
        goal = y if scale == "linear" else np.log(y)
        mean, std = float(goal.mean()), float(goal.std()) or 1.0
        design = np.hstack([(values - mean) / std, np.ones((len(values), 1))])
        if scale == "linear":
            back = lambda z, mean=mean, std=std: z * std + mean  # noqa: E731
        else:
            back = lambda z, mean=mean, std=std: np.exp(np.clip(z * std + mean, -700, 700))  # noqa: E731
        errors[scale] = _rolling_origin_error(design, (goal - mean) / std, back, y, ridge)
    chosen = "log" if errors["log"] < errors["linear"] else "linear"
    return chosen, (
        f"model.ar_scale 'select' chose {chosen} (rolling-origin MAE over the last windows before the test "
        f"part: linear {errors['linear']:.4g}, log {errors['log']:.4g})"
    )


def set_log_map(model: RecurrentModel, spec: JobSpec, prep: PreparedData) -> None:
    """``ar_scale 'log'``: how the model turns the target column's scaled inputs into standardised logs
    and back (statistics of the training windows' targets)."""
    assert prep.y_scaler is not None and prep.examples.y is not None
    column = prep.examples.feature_names.index(spec.data.target)
    y = prep.examples.y[prep.split.train].astype(np.float64)
    floor = float(y.min()) * 1e-3
    logs = np.log(np.maximum(y, floor))
    low, high = float(logs.min()), float(logs.max())
    span = max(high - low, 1.0)
    values = [
        float(prep.x_scaler.scale[column]),
        float(prep.x_scaler.center[column]),
        floor,
        float(logs.mean()),
        float(logs.std()) or 1.0,
        low - span,
        high + span,
    ]
    model.set_log_map(
        values,
        torch.as_tensor(prep.y_scaler.center, dtype=torch.float32),
        torch.as_tensor(prep.y_scaler.scale, dtype=torch.float32),
    )


def ridge_normal_matrix(design: np.ndarray, penalty: float) -> np.ndarray:
    """``DᵀD`` plus ``penalty`` on the lag weights (not the intercept, the last column) and the
    ``AR_RIDGE`` stabiliser on every weight, both relative to the mean diagonal of ``DᵀD``."""
    return _ridge_from_gram(design.T @ design, penalty)


def _ridge_from_gram(gram: np.ndarray, penalty: float) -> np.ndarray:
    size = len(gram)
    scale = max(float(np.trace(gram)) / size, 1e-12)
    lags_only = np.eye(size)
    lags_only[-1, -1] = 0.0
    return gram + scale * (penalty * lags_only + AR_RIDGE * np.eye(size))


def leave_one_out_error(design: np.ndarray, targets: np.ndarray, penalty: float) -> float:
    """Mean squared leave-one-out error of the ridge fit, in closed form: each window's residual
    divided by ``1 - h_ii`` (its leverage), with no refits."""
    inverse = np.linalg.inv(ridge_normal_matrix(design, penalty))
    coef = inverse @ design.T @ targets
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    # A window that alone determines a weight (leverage 1) has no leave-one-out prediction.
    held_out = (targets - design @ coef) / np.maximum(1.0 - leverage, 1e-9)[:, None]
    return float(np.mean(held_out**2))


def choose_ar_ridge(design: np.ndarray, targets: np.ndarray, setting: float | str) -> float:
    """A numeric ``model.ar_ridge`` as given; ``'loo'``: the penalty of ``AR_RIDGE_GRID`` with the lowest
    leave-one-out error (the smallest on a tie). Cross-validation is valid for autoregressions whose
    errors are uncorrelated (Bergmeir, Hyndman & Koo 2018), and uses every window, where a temporal
    validation part holds a handful."""
    if setting != "loo":
        return float(setting)
    errors = [leave_one_out_error(design, targets, penalty) for penalty in AR_RIDGE_GRID]
    return AR_RIDGE_GRID[int(np.argmin(errors))]


def _set_ridge_ar(model: RecurrentModel, design: np.ndarray, targets: np.ndarray, setting: float | str) -> float:
    penalty = choose_ar_ridge(design, targets, setting)
    coef = np.linalg.solve(ridge_normal_matrix(design, penalty), design.T @ targets)
    device = model.ar_weight.device
    model.set_ar_map(
        torch.as_tensor(coef[:-1], dtype=torch.float32, device=device),
        torch.as_tensor(coef[-1], dtype=torch.float32, device=device),
    )
    return penalty


def _ar_ridge_setting(spec: JobSpec) -> float | str:
    # Unresolved (a model built directly from an older spec): plain least squares, as before.
    return 0.0 if spec.model.ar_ridge == "auto" else spec.model.ar_ridge


def fit_ar_map(model: RecurrentModel, spec: JobSpec, prep: PreparedData) -> None:
    """Least-squares AR in scaled units on the training windows: the target column's last ``lags``
    inputs (and an intercept) → every scaled output. Closed form, so training starts at this
    forecast, and the validation windows stay unseen to judge the network's correction.

    Always plain least squares: ``model.ar_ridge`` shrinks the AR the model keeps (``refit_ar_map``).
    Measured with ``'loo'`` in both fits instead (test MAE, lstm and gru × 2 seeds): ShampooSales 105
    vs 85, Lynx 384 vs 344 — the network learns a worse correction to a shrunk start."""
    targets = _ar_targets(model, prep, ("train",))
    _set_ridge_ar(model, _ar_design(model, spec, prep, ("train",)), targets, 0.0)


def refit_ar_map(model: RecurrentModel, spec: JobSpec, prep: PreparedData) -> float:
    """After training, one backfitting step: the AR refitted on the training and validation windows
    (everything before the test part) to what the trained network's correction leaves, with the
    ``model.ar_ridge`` penalty (``'loo'``: chosen on those windows). Returns the penalty used.

    In a temporal split the validation windows are the most recent ones; an AR fitted without them
    forecasts worse (Airline MAE 13.5 vs 11.6 with them)."""
    parts = ("train", "val")
    design = _ar_design(model, spec, prep, parts)
    x = torch.from_numpy(np.concatenate([prep.x_scaled(p) for p in parts])).to(model.ar_weight.device)
    correction = correction_in_chunks(model, x).double().cpu().numpy()
    targets = _ar_targets(model, prep, parts)
    return _set_ridge_ar(model, design, targets - correction, _ar_ridge_setting(spec))


def correction_in_chunks(model: RecurrentModel, x: torch.Tensor, chunk: int = 4_096) -> torch.Tensor:
    """The network's correction (``RecurrentModel.correction``) in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model.correction(x[s : s + chunk]) for s in range(0, max(len(x), 1), chunk)])
    finally:
        model.train(was_training)


def _ar_member_as_refitted(member: RecurrentModel, spec: JobSpec, prep: PreparedData, first: int) -> torch.Tensor:
    """The ar member's forecasts of the windows from ``first`` on (indices into training + validation
    windows) as the refitted AR will make them: for each, the AR refitted (ridge, ``model.ar_ridge``'s
    penalty chosen on the training windows) on every window before it, plus the trained correction.

    The kept AR is refitted on the validation windows too (``refit_ar_map``), so judging the ar member by
    an AR fitted on training windows only would hold it to a staler model than the one that forecasts;
    the last_value network has no such refit."""
    parts = ("train", "val")
    design = _ar_design(member, spec, prep, parts)
    x = torch.from_numpy(np.concatenate([prep.x_scaled(p) for p in parts])).to(member.ar_weight.device)
    correction = correction_in_chunks(member, x).double().cpu().numpy()
    targets = _ar_targets(member, prep, parts) - correction
    n_train = len(prep.split.train)
    penalty = choose_ar_ridge(design[:n_train], targets[:n_train], _ar_ridge_setting(spec))
    gram, rhs = design[:first].T @ design[:first], design[:first].T @ targets[:first]
    saved = member.ar_weight.clone(), member.ar_bias.clone()
    outputs = []
    was_training = member.training
    member.eval()
    try:
        with torch.no_grad():
            for i in range(first, len(design)):
                coef = np.linalg.solve(_ridge_from_gram(gram, penalty), rhs)
                member.set_ar_map(
                    torch.as_tensor(coef[:-1], dtype=torch.float32, device=x.device),
                    torch.as_tensor(coef[-1], dtype=torch.float32, device=x.device),
                )
                outputs.append(member(x[i : i + 1]))
                gram += np.outer(design[i], design[i])
                rhs += np.outer(design[i], targets[i])
    finally:
        member.set_ar_map(*saved)
        member.train(was_training)
    return torch.cat(outputs)


# ``model.combine``: the last_value member joins only when the ar member's trained correction is at
# least this share of what the AR leaves (root mean square over the training and validation windows).
MIN_CORRECTION_SHARE = 0.02


def correction_share(member: RecurrentModel, spec: JobSpec, prep: PreparedData) -> float:
    """How much the ar member's network adds: the root mean square of its trained correction over the
    training and validation windows, over that of the AR's residuals there (AR units). Near 0 when early
    stopping kept the correction at its zero start: the network found nothing beyond the AR."""
    parts = ("train", "val")
    design = _ar_design(member, spec, prep, parts)
    x = torch.from_numpy(np.concatenate([prep.x_scaled(p) for p in parts])).to(member.ar_weight.device)
    correction = correction_in_chunks(member, x).double().cpu().numpy()
    coef = np.vstack([member.ar_weight.double().cpu().numpy(), member.ar_bias.double().cpu().numpy()[None, :]])
    residual = _ar_targets(member, prep, parts) - design @ coef
    return float(np.sqrt(np.mean(correction**2)) / max(float(np.sqrt(np.mean(residual**2))), 1e-12))


def member_validation_mse(model: CombinedForecast, spec: JobSpec, prep: PreparedData) -> list[float]:
    """Each member's mean squared error (scaled units) on the last validation windows (at most
    ``MAX_SELECT_ORIGINS``): the ar member as refitted (``_ar_member_as_refitted``), the last_value
    member as trained."""
    n_train, n_val = len(prep.split.train), len(prep.split.val)
    first = n_train + max(0, n_val - MAX_SELECT_ORIGINS)
    ar, last_value = model.member_models()
    x = torch.from_numpy(prep.x_scaled("val")[first - n_train :]).to(model.weights.device)
    y = torch.from_numpy(np.ascontiguousarray(prep.y_scaled("val")[first - n_train :])).to(x.device).float()
    was_training = last_value.training
    last_value.eval()
    try:
        with torch.no_grad():
            outputs = [_ar_member_as_refitted(ar, spec, prep, first), last_value(x)]
    finally:
        last_value.train(was_training)
    return [float(((out - y) ** 2).mean()) for out in outputs]


def set_combination_weights(model: CombinedForecast, spec: JobSpec, prep: PreparedData) -> str:
    """``model.combine``: the members' weights, decided after training and before the AR refit (so the
    validation windows are unseen by both AR fits and only chose the best epoch). ``inverse_mse``:
    each weight proportional to 1 / the member's validation MSE (Bates & Granger 1969); ``equal`` (or
    no validation part): halves. Returns the note naming them."""
    weights = [0.5, 0.5]
    how = "equal weights"
    share = correction_share(model.member_models()[0], spec, prep)
    if share < MIN_CORRECTION_SHARE:
        weights = [1.0, 0.0]
        how = f"the ar model alone: its correction is {share:.3g} of the AR's residuals, below {MIN_CORRECTION_SHARE:g}"
    elif spec.model.combine == "inverse_mse":
        if len(prep.split.val) == 0:
            how = "equal weights (no validation part to weigh the members by)"
        else:
            errors = member_validation_mse(model, spec, prep)
            if all(math.isfinite(e) for e in errors):
                inverse = [1.0 / max(e, 1e-12) for e in errors]
                weights = [v / sum(inverse) for v in inverse]
                how = f"inverse validation MSE (ar {errors[0]:.6g}, last_value {errors[1]:.6g}, scaled units)"
    model.weights.copy_(torch.as_tensor(weights, dtype=model.weights.dtype))
    how += f"; correction share {share:.4g}"
    return (
        f"model.combine '{spec.model.combine}': the forecast is {weights[0]:.3f} × the ar model + "
        f"{weights[1]:.3f} × the last_value model, by {how}"
    )


def build_artifact(spec: JobSpec, prep: PreparedData, model: torch.nn.Module) -> dict[str, Any]:
    """Plain types and CPU tensors only, so ``torch.load(..., weights_only=True)`` reads it back."""
    return {
        "format": ARTIFACT_FORMAT,
        "spec": spec.normalized(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "scalers": {
            "x": prep.x_scaler.to_dict(),
            "y": prep.y_scaler.to_dict() if prep.y_scaler is not None else None,
        },
        "classes": list(prep.examples.classes) if prep.examples.classes is not None else None,
        "input": {"steps": prep.examples.steps, "features": list(prep.examples.feature_names)},
        # Token inputs: the tokenizer and its vocabulary (text.TextCodec); None for numeric inputs.
        "text": prep.examples.codec.to_dict() if prep.examples.codec is not None else None,
    }


def _set_up(model: torch.nn.Module, spec: JobSpec, prep: PreparedData, x_train: torch.Tensor) -> torch.nn.Module:
    """What each network learns from the data before training: the difference scale, the naive, log
    and AR maps under a forecast."""
    for member in recurrent_members(model):
        if member.differences:
            member.set_difference_scale(x_train)
        if member.residual:
            set_naive_map(member, spec, prep)
        if member.ar_log:
            set_log_map(member, spec, prep)
        if member.autoregressive:
            fit_ar_map(member, spec, prep)
    return model


def _refit(
    spec: JobSpec,
    prep: PreparedData,
    tensors: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    target: torch.device,
    first: TrainOutcome,
    y_scale: torch.Tensor | None,
    should_stop: Callable[[], bool] | None,
) -> tuple[torch.nn.Module | None, TrainOutcome]:
    """``training.refit``: the network built again from the job's seed (the first run's initialisation)
    and trained on the training and validation parts together for the epochs the first run ran, its
    final weights kept. Called inside the job's forked RNG. The returned outcome keeps the first run's
    best epoch and epoch count (its history is the job's) and adds the second run's time. The model is
    None when the second run diverged (the caller keeps the first network; a note says so)."""
    seed = spec.training.seed
    torch.manual_seed(seed)
    x = torch.cat([tensors["train"], tensors["val"]])
    y = torch.cat([targets["train"], targets["val"]])
    model = _set_up(_build_model(spec, prep).to(target), spec, prep, x)
    training = spec.training
    assert isinstance(training.epochs, int) and isinstance(training.batch_size, int)
    assert isinstance(training.warmup_steps, int)
    # The warm-up keeps its share of the steps: a first run stopped early must not leave the second
    # one at the peak learning rate (one_cycle would never anneal).
    planned = training.epochs * math.ceil(len(tensors["train"]) / training.batch_size)
    steps = first.epochs_run * math.ceil(len(x) / training.batch_size)
    warmup = min(training.warmup_steps, round(training.warmup_steps * steps / max(planned, 1)))
    try:
        second = fit(
            model,
            training.model_copy(update={"epochs": first.epochs_run, "warmup_steps": warmup}),
            (x, y),
            None,
            y_scale=y_scale,
            generator=torch.Generator(device=target).manual_seed(seed),
            should_stop=should_stop,
        )
    except TrainingDiverged as exc:
        first.notes.append(
            f"training.refit: the second run on the training and validation parts diverged ({exc}); the first "
            "run's network is kept"
        )
        return None, first
    outcome = TrainOutcome(
        best_epoch=first.best_epoch,
        epochs_run=first.epochs_run,
        cancelled=second.cancelled,
        train_seconds=first.train_seconds + second.train_seconds,
        # Whether training learned anything is judged on the kept network: the second run's note, if any.
        notes=[n for n in first.notes if not n.startswith(STUCK_PREFIX)]
        + [n for n in second.notes if n not in first.notes],
    )
    outcome.notes.append(
        f"training.refit: after the first run (best validation epoch {first.best_epoch} of {first.epochs_run} run), "
        f"the network was trained again from its initialisation on the training and validation parts together "
        f"({x.shape[0]} examples) for {first.epochs_run} epochs and that network kept; the epoch history and "
        "the val metrics are the first run's (the kept network has seen the validation examples)"
    )
    return model, outcome


def train_and_evaluate(
    spec: JobSpec,
    data: Data,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
) -> EngineResult:
    """Prepare the data, train with early stopping, evaluate on the test part and package the model.

    ``on_epoch`` is called after every epoch; ``should_stop`` right after it and between batches — True ends
    training with ``cancelled=True`` and no evaluation. Raises ``DataError`` when the data does not
    fit the spec and ``TrainingDiverged`` when the loss stops being finite; CUDA OOM propagates.
    """
    target = resolve_device(device or spec.device)
    if unresolved_fields(spec):  # the API resolves at submit time; direct callers get the same rules
        spec = resolve_defaults(spec, training_shape(spec, data))
    seed = spec.training.seed
    prepare_started = time.perf_counter()
    prep = prepare_data(spec, data, np.random.default_rng(seed))
    tensors = {part: torch.from_numpy(prep.x_scaled(part)).to(target).contiguous() for part in ("train", "val", "test")}
    targets = {
        part: torch.from_numpy(np.ascontiguousarray(prep.y_scaled(part))).to(target)
        for part in ("train", "val", "test")
    }
    if spec.task not in CLASS_TASKS:
        targets = {part: y.float() for part, y in targets.items()}
    y_scale = None
    if prep.y_scaler is not None:
        y_scale = torch.as_tensor(prep.y_scaler.scale, dtype=torch.float32, device=target)
    prepare_seconds = time.perf_counter() - prepare_started
    # Seed a forked RNG so model init and dropout are reproducible without touching the caller's state.
    cuda_devices = [target.index or 0] if target.type == "cuda" else []
    if spec.task == "forecast" and spec.model.residual == "ar" and spec.model.ar_scale != "linear":
        # Decided from the data before the model is built; the artifact's spec holds the choice.
        scale, note = choose_ar_scale(spec, prep)
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"ar_scale": scale})})
        if note is not None:
            prep.notes.append(note)
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        model = _set_up(_build_model(spec, prep).to(target), spec, prep, tensors["train"])
        generator = torch.Generator(device=target).manual_seed(seed)
        has_val = len(prep.split.val) > 0
        outcome = fit(
            model,
            spec.training,
            (tensors["train"], targets["train"]),
            (tensors["val"], targets["val"]) if has_val else None,
            y_scale=y_scale,
            generator=generator,
            on_epoch=on_epoch,
            should_stop=should_stop,
            scaled_inputs=spec.text is None,  # token ids are not scaled: no data.scaling advice for them
        )
        val_predictions = None
        if spec.training.refit is True and not outcome.cancelled:
            if has_val:
                # The first run's predictions of the validation part: the kept network will have seen it.
                val_predictions = predict_original(model, tensors["val"], prep, spec.task)
                # Only the first network's weights stay, on the host: the device holds one network at a time.
                first_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                del model
                refitted, outcome = _refit(spec, prep, tensors, targets, target, outcome, y_scale, should_stop)
                if refitted is None:  # the second run diverged: the first network is the model
                    refitted = _build_model(spec, prep).to(target)
                    refitted.load_state_dict(first_weights)
                    val_predictions = None  # it never saw the validation part: its own val metrics stand
                model = refitted
                del first_weights
            else:
                outcome.notes.append("training.refit: no validation part to add, the network was trained once")
        if isinstance(model, CombinedForecast) and not outcome.cancelled:
            prep.notes.append(set_combination_weights(model, spec, prep))
        for member in recurrent_members(model):
            if member.autoregressive and not outcome.cancelled:
                penalty = refit_ar_map(member, spec, prep)
                if spec.model.ar_ridge == "loo":
                    prep.notes.append(f"model.ar_ridge 'loo' chose {penalty:g} for the AR (leave-one-out error)")
    prep.notes += outcome.notes
    num_examples = {part: int(len(idx)) for part, idx in prep.split.parts().items()}
    artifact = build_artifact(spec, prep, model)
    evaluation = None
    summary = Summary(best_epoch=outcome.best_epoch)
    started = time.perf_counter()
    if not outcome.cancelled:
        # A separate stream from the data split's, so evaluation settings never change the split.
        eval_rng = np.random.default_rng([seed, 1])
        if uses_sequence_model(spec):
            evaluation = evaluate_sequences(spec, prep, model, tensors, eval_rng)
        else:
            evaluation = evaluate(spec, prep, model, tensors, eval_rng, val_predictions=val_predictions)
        m = evaluation.metrics
        summary = Summary(best_epoch=outcome.best_epoch, train=m["train"], val=m["val"], test=m["test"])
    return EngineResult(
        cancelled=outcome.cancelled,
        best_epoch=outcome.best_epoch,
        epochs_run=outcome.epochs_run,
        device=target.type,
        train_seconds=outcome.train_seconds,
        summary=summary,
        evaluation=evaluation,
        artifact=artifact,
        num_examples=num_examples,
        evaluation_seconds=time.perf_counter() - started,
        prepare_seconds=prepare_seconds,
    )
