"""Reference predictors scored on exactly the same test examples as the network."""

from __future__ import annotations

import numpy as np
import torch

from .data import PreparedData

MAX_LSTSQ_ROWS = 50_000
MAX_AR_LAGS = 256
MAX_LINEAR_INPUTS = 2_000
MAX_NEIGHBOUR_EXAMPLES = 20_000
MAX_SEASON_SAMPLES = 20_000
SEASON_MIN_ACF = 0.3
# Eigenvalues of the Gram matrix below this share of the largest count as zero (singular values below
# 1e-6 of the largest): collinear lags or constant columns.
_GRAM_RCOND = 1e-12
# Bound the [test chunk x training examples] distance matrix (float32 elements).
_MAX_DISTANCE_ELEMENTS = 4_000_000


def naive_forecast(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last observed value repeated over the horizon; ``history`` is [N, T]."""
    return np.repeat(history[:, -1:], horizon, axis=1)


def seasonal_naive_forecast(history: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """Each future step copies the value one (or more) whole periods earlier inside the window."""
    steps = history.shape[1]
    ahead = np.arange(1, horizon + 1)
    source = steps - 1 + ahead - period * np.ceil(ahead / period).astype(np.int64)
    return history[:, source]


def detect_season_period(series: np.ndarray, max_lag: int) -> int | None:
    """The lag (>= 2) of the highest local autocorrelation peak above ``SEASON_MIN_ACF``, if any."""
    values = series[-MAX_SEASON_SAMPLES:].astype(np.float64)
    values = values - values.mean()
    max_lag = min(max_lag, len(values) // 2)
    variance = float(values @ values)
    if max_lag < 3 or variance <= 0:
        return None
    acf = np.array([values[: len(values) - k] @ values[k:] / variance for k in range(max_lag + 1)])
    peaks = [k for k in range(2, max_lag) if acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1] and acf[k] > SEASON_MIN_ACF]
    return max(peaks, key=lambda k: acf[k]) if peaks else None


def solve_least_squares(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients (intercept last) by the normal equations of the centred data, float64.

    ``inputs`` [N, D], ``targets`` [N, K] on any device. Cholesky when the Gram matrix is well
    conditioned; otherwise (constant or collinear columns) the minimum-norm solution from its
    eigendecomposition, dropping directions whose eigenvalue is below ``_GRAM_RCOND`` of the largest,
    like ``lstsq``'s cut-off on singular values.
    """
    x = inputs.to(torch.float64)
    y = targets.to(torch.float64)
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    x = x - x_mean
    gram = x.T @ x
    rhs = x.T @ (y - y_mean)
    factor, info = torch.linalg.cholesky_ex(gram)
    diag = torch.diagonal(factor) ** 2 if int(info) == 0 else None
    if diag is not None and float(diag.min()) > _GRAM_RCOND * float(diag.max()):
        beta = torch.cholesky_solve(rhs, factor)
    else:
        values, vectors = torch.linalg.eigh(gram)
        keep = values > _GRAM_RCOND * values.max().clamp(min=0.0)
        inverse = torch.where(keep, 1.0 / torch.where(keep, values, 1.0), 0.0)
        beta = vectors @ (inverse[:, None] * (vectors.T @ rhs))
    intercept = y_mean - x_mean @ beta
    return torch.cat([beta, intercept[None, :]])


def fit_least_squares(
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray,
    rng: np.random.Generator,
    device: torch.device | None = None,
) -> tuple[np.ndarray, bool]:
    """Coefficients (intercept last) of ``targets ~ inputs``, solved on ``device`` (the inputs' own
    device for a tensor, else the CPU); True when rows were subsampled."""
    capped = len(inputs) > MAX_LSTSQ_ROWS
    if capped:
        rows = rng.choice(len(inputs), MAX_LSTSQ_ROWS, replace=False)
        inputs, targets = inputs[torch.as_tensor(rows) if isinstance(inputs, torch.Tensor) else rows], targets[rows]
    x = torch.as_tensor(inputs, device=device)
    y = torch.as_tensor(np.asarray(targets, dtype=np.float64).reshape(len(targets), -1), device=x.device)
    coef = solve_least_squares(x, y).cpu().numpy()
    return coef if np.ndim(targets) > 1 else coef[:, 0], capped


def predict_least_squares(coef: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    return inputs @ coef[:-1] + coef[-1]


def forecast_baselines(
    prep: PreparedData, season_period: int | None, rng: np.random.Generator, device: torch.device | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    ex = prep.examples
    assert ex.target_history is not None and ex.y is not None
    horizon = ex.y.shape[1]
    train, test = prep.split.train, prep.split.test
    history = ex.target_history
    notes: list[str] = []
    preds = {"naive": naive_forecast(history[test], horizon)}
    period = season_period
    if period is None:
        # Detect on the training stretch of the longest series only, so test data never informs it.
        lengths = [len(s) for s in ex.series_targets]
        g = int(np.argmax(lengths))
        in_group = train[ex.group[train] == g]
        end = int(ex.time[in_group].max()) + horizon if len(in_group) else 0
        period = detect_season_period(ex.series_targets[g][:end], ex.steps)
        if period is not None:
            notes.append(f"seasonal_naive uses period {period}, detected from the training autocorrelation")
    if period is None:
        notes.append("seasonal_naive omitted: no data.season_period given and no season detected")
    elif period > ex.steps:
        notes.append(f"seasonal_naive omitted: season_period {period} exceeds lookback {ex.steps}")
    else:
        preds["seasonal_naive"] = seasonal_naive_forecast(history[test], horizon, period)
    preds["mean"] = np.full((len(test), horizon), ex.y[train].mean())
    lags = min(ex.steps, MAX_AR_LAGS)
    coef, capped = fit_least_squares(history[train, -lags:], ex.y[train], rng, device)
    preds["linear_ar"] = predict_least_squares(coef, history[test, -lags:])
    if lags < ex.steps:
        notes.append(f"linear_ar uses the last {lags} lags of the lookback")
    if capped:
        notes.append(f"linear_ar was fitted on {MAX_LSTSQ_ROWS} sampled training windows")
    return preds, notes


def fitted_on(prep: PreparedData, parts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The scaled inputs (flattened per example) and original targets of ``parts``, in that order."""
    x = np.concatenate([prep.x_scaled(p).reshape(len(prep.y_original(p)), -1) for p in parts])
    return x, np.concatenate([prep.y_original(p) for p in parts])


def regression_baselines(
    prep: PreparedData,
    rng: np.random.Generator,
    x_train: torch.Tensor | None = None,
    parts: tuple[str, ...] = ("train",),
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``x_train``: the scaled inputs of ``parts`` already on the device, where the least squares is
    solved. ``parts``: what the baselines learn from (the training part; with ``training.refit`` the
    validation part too, as the kept network did)."""
    y_train = np.concatenate([prep.y_original(p) for p in parts])
    test = prep.split.test
    preds = {"mean": np.repeat(y_train.mean(axis=0, keepdims=True), len(test), axis=0)}
    ex = prep.examples
    inputs = ex.steps * len(ex.feature_names)
    if inputs > MAX_LINEAR_INPUTS:
        return preds, [f"linear_ar omitted: {inputs} flattened inputs exceed {MAX_LINEAR_INPUTS}"]
    notes = ["linear_ar for regression is least squares on the flattened, scaled inputs"]
    # The inputs are flattened on the host only when the caller has none on the device.
    train = x_train if x_train is not None else torch.from_numpy(fitted_on(prep, parts)[0])
    coef, capped = fit_least_squares(train.reshape(len(y_train), -1), y_train, rng)
    flat_test = prep.x_scaled("test").reshape(len(test), -1).astype(np.float64)
    preds["linear_ar"] = predict_least_squares(coef, flat_test)
    if capped:
        notes.append(f"linear_ar was fitted on {MAX_LSTSQ_ROWS} sampled training examples")
    return preds, notes


def nearest_neighbour_labels(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """1-NN by Euclidean distance, in chunks of test rows so the distance matrix stays bounded."""
    train_sq = (train_x**2).sum(axis=1)
    chunk = max(1, _MAX_DISTANCE_ELEMENTS // max(len(train_x), 1))
    out = np.empty(len(test_x), dtype=train_y.dtype)
    for start in range(0, len(test_x), chunk):
        block = test_x[start : start + chunk]
        # ||a - b||^2 = ||a||^2 - 2ab + ||b||^2; ||a||^2 is constant per row, so it can be dropped.
        distances = train_sq[None, :] - 2.0 * block @ train_x.T
        out[start : start + chunk] = train_y[distances.argmin(axis=1)]
    return out


def classification_baselines(
    prep: PreparedData, num_classes: int, rng: np.random.Generator, parts: tuple[str, ...] = ("train",)
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class probabilities [N_test, C] of each baseline, learnt from ``parts`` (see ``regression_baselines``)."""
    train_x, y_train = fitted_on(prep, parts)
    n_test = len(prep.split.test)
    frequencies = np.bincount(y_train, minlength=num_classes) / len(y_train)
    # Training class frequencies: argmax is the majority class, and log loss stays meaningful.
    majority = np.repeat(frequencies[None, :], n_test, axis=0)
    notes = []
    if len(train_x) > MAX_NEIGHBOUR_EXAMPLES:
        rows = rng.choice(len(train_x), MAX_NEIGHBOUR_EXAMPLES, replace=False)
        train_x, y_train = train_x[rows], y_train[rows]
        notes.append(f"nearest_neighbour searches {MAX_NEIGHBOUR_EXAMPLES} sampled training examples")
    test_x = prep.x_scaled("test").reshape(n_test, -1)
    neighbour = np.eye(num_classes)[nearest_neighbour_labels(train_x, y_train, test_x)]
    return {"majority_class": majority, "nearest_neighbour": neighbour}, notes
