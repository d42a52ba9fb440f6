"""The training loop: data resident on the device, batches by index slicing, one host sync per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import TrainingDiverged
from .spec import TrainingSpec

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
LOSSES: dict[str, type[nn.Module]] = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
    "cross_entropy": nn.CrossEntropyLoss,
}
# Validation runs forward-only, so it can take larger chunks than the training batch.
VALIDATION_CHUNK = 4_096


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int  # planned
    metrics: dict[str, dict[str, float]]  # {"train": {"loss": ..}, "val": {"loss": .., "rmse"|"accuracy": ..}}
    seconds: float


@dataclass
class TrainOutcome:
    best_epoch: int
    epochs_run: int
    cancelled: bool
    train_seconds: float


def make_optimizer(spec: TrainingSpec, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.optimizer](model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)


def _validate(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, y_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and main metric (accuracy, or RMSE in original units) as device tensors."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    metric_sum = torch.zeros((), device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], VALIDATION_CHUNK):
            xb, yb = x[start : start + VALIDATION_CHUNK], y[start : start + VALIDATION_CHUNK]
            out = model(xb)
            loss_sum += loss_fn(out, yb) * xb.shape[0]
            if y_scale is None:
                metric_sum += (out.argmax(dim=1) == yb).sum()
            else:
                metric_sum += (((out - yb) * y_scale) ** 2).mean(dim=1).sum()
    n = x.shape[0]
    metric = metric_sum / n if y_scale is None else torch.sqrt(metric_sum / n)
    return loss_sum / n, metric


def fit(
    model: nn.Module,
    spec: TrainingSpec,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    y_scale: torch.Tensor | None,
    generator: torch.Generator,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainOutcome:
    """Train ``model`` in place; with validation data, early-stop and restore the best weights.

    ``y_scale`` (per output) converts scaled regression errors to original units; None for
    classification. Loss values are accumulated on the device and read once per epoch.
    """
    assert spec.loss is not None  # filled in by the spec validator
    x_train, y_train = train
    n = x_train.shape[0]
    loss_fn = LOSSES[spec.loss]()
    optimizer = make_optimizer(spec, model)
    params = [p for p in model.parameters() if p.requires_grad]
    metric_name = "accuracy" if y_scale is None else "rmse"
    best_loss, best_epoch, best_state, since_best = math.inf, 0, None, 0
    outcome = TrainOutcome(best_epoch=0, epochs_run=0, cancelled=False, train_seconds=0.0)
    for epoch in range(1, spec.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=x_train.device)
        perm = torch.randperm(n, generator=generator, device=generator.device).to(x_train.device)
        for start in range(0, n, spec.batch_size):
            idx = perm[start : start + spec.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if spec.gradient_clip is not None:
                nn.utils.clip_grad_norm_(params, spec.gradient_clip)
            optimizer.step()
            loss_sum += loss.detach() * idx.shape[0]
        stats = [loss_sum / n]
        if val is not None:
            stats.extend(_validate(model, loss_fn, val[0], val[1], y_scale))
        values = torch.stack(stats).tolist()  # the epoch's single host sync
        seconds = time.perf_counter() - started
        outcome.train_seconds += seconds
        outcome.epochs_run = epoch
        bad = [v for v in values[:2] if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(
                f"the loss became {bad[0]} in epoch {epoch}; lower training.learning_rate "
                "or enable training.gradient_clip"
            )
        metrics = {"train": {"loss": values[0]}}
        monitored = values[0]
        if val is not None:
            metrics["val"] = {"loss": values[1], metric_name: values[2]}
            monitored = values[1]
        report = EpochReport(epoch=epoch, epochs=spec.epochs, metrics=metrics, seconds=seconds)
        if monitored < best_loss:
            best_loss, best_epoch, since_best = monitored, epoch, 0
            if val is not None:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch(report)
        if should_stop is not None and should_stop():
            outcome.cancelled = True
            break
        if val is not None and spec.early_stopping_patience is not None and since_best >= spec.early_stopping_patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no validation part: the final weights are the result
        best_epoch = outcome.epochs_run
    outcome.best_epoch = best_epoch
    return outcome
