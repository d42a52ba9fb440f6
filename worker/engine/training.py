"""The training loop: data resident on the device, batches by index slicing, one host sync per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
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
# Validation runs forward-only, so it can take larger chunks than the training batch; on a GPU much
# larger ones (fewer launches), bounded by the activations one chunk holds (float32 elements).
VALIDATION_CHUNK = 4_096
_MAX_VALIDATION_ELEMENTS = 1 << 28
# Optimizers whose step can be captured in a CUDA graph (``capturable=True`` and a tensor learning
# rate the schedule updates in place); the others train eagerly with a note.
CUDA_GRAPH_OPTIMIZERS = frozenset({"adam", "adamw", "rmsprop"})
# Eager steps on the capture's side stream before capturing (cuDNN / cuBLAS workspaces, lazy optimizer
# state); their effect on the weights, optimizer state and RNG is undone before training starts.
GRAPH_WARMUP_STEPS = 3


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
    notes: list[str] = field(default_factory=list)


# The training loss must end below this share of a constant prediction's loss to count as learning.
STUCK_LOSS_SHARE = 0.95


def make_optimizer(
    spec: TrainingSpec, model: nn.Module, *, capturable: bool = False, tensor_lr: bool = False
) -> torch.optim.Optimizer:
    """The optimizer of ``spec``; for a CUDA graph ``capturable`` with the learning rate a device tensor
    (the schedule fills it in place, so the captured step reads the current rate on every replay)."""
    assert spec.learning_rate != "auto"  # resolved before training
    lr: float | torch.Tensor = spec.learning_rate
    if tensor_lr:
        device = next(model.parameters()).device
        lr = torch.tensor(spec.learning_rate, dtype=torch.float32, device=device)
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": spec.weight_decay}
    if capturable:
        kwargs["capturable"] = True
    elif tensor_lr:
        kwargs["foreach"] = False  # torch takes a tensor learning rate in foreach steps only when capturable
    return OPTIMIZERS[spec.optimizer](model.parameters(), **kwargs)


class StepSchedule:
    """The learning rate of ``spec.schedule`` with linear warm-up, stepped after every optimizer step.

    ``none``: warm-up, then constant. ``cosine``: warm-up, then cosine decay to 0 at the planned last
    step. ``one_cycle``: ``torch.optim.lr_scheduler.OneCycleLR`` peaking at ``learning_rate`` when the
    warm-up ends (momentum is not cycled). ``plateau``: warm-up, then ``ReduceLROnPlateau`` halving the
    rate when the monitored loss stalls for a quarter of the early-stopping patience.
    """

    def __init__(self, spec: TrainingSpec, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        assert spec.schedule != "auto" and spec.warmup_steps != "auto"  # resolved before training
        assert spec.learning_rate != "auto"
        self.kind = spec.schedule
        self.optimizer = optimizer
        self.warmup = min(spec.warmup_steps, total_steps)
        self.base_lr = spec.learning_rate
        self.step_count = 0
        self.per_step: torch.optim.lr_scheduler.LRScheduler | None = None
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if self.kind == "one_cycle":
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=spec.learning_rate,
                total_steps=max(total_steps, 2),
                pct_start=min(max(self.warmup, 1) / max(total_steps, 2), 1.0),
                anneal_strategy="cos",
                cycle_momentum=False,
            )
        elif self.kind == "cosine":
            decay = max(total_steps - self.warmup, 1)
            self.per_step = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: self._warmup_factor(step) if step < self.warmup else _cosine(step - self.warmup, decay),
            )
        else:
            if self.warmup:
                self.per_step = torch.optim.lr_scheduler.LambdaLR(
                    optimizer, lambda step: self._warmup_factor(step) if step < self.warmup else 1.0
                )
            if self.kind == "plateau":
                patience = spec.early_stopping_patience if isinstance(spec.early_stopping_patience, int) else 8
                self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode="min", factor=0.5, patience=max(1, patience // 4)
                )

    def _warmup_factor(self, step: int) -> float:
        return (step + 1) / (self.warmup + 1)

    def after_step(self) -> None:
        self.step_count += 1
        if self.per_step is not None and self.step_count < _total(self.per_step):
            self.per_step.step()

    def after_epoch(self, monitored: float) -> None:
        if self.plateau is not None and self.step_count >= self.warmup:
            self.plateau.step(monitored)

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def _total(scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    # OneCycleLR refuses to step past its total; the others run on at their final factor.
    return int(getattr(scheduler, "total_steps", 1 << 62))


def training_loss(
    model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
) -> torch.Tensor:
    """The loss a training step minimises: of the model's output, or for a forecast combination
    (``CombinedForecast``) the mean of its members' own losses, so each member learns as if alone."""
    member_outputs = getattr(model, "member_outputs", None)
    if member_outputs is None:
        return loss_fn(model(xb), yb)
    return torch.stack([loss_fn(out, yb) for out in member_outputs(xb)]).mean()


def mixup_loss(
    model: nn.Module, loss_fn: nn.Module, xb: torch.Tensor, yb: torch.Tensor, weight: float, partner: torch.Tensor
) -> torch.Tensor:
    """``training.mixup`` (Zhang et al. 2018): the loss on the batch blended with ``xb[partner]`` by
    ``weight``, against both blends' class targets in the same proportion; for an ensemble
    (``member_outputs``) the mean of its members' own losses, as in ``training_loss``."""

    def blended_loss(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return weight * loss_fn(out, yb) + (1.0 - weight) * loss_fn(out, yb[partner])

    return training_loss(model, blended_loss, weight * xb + (1.0 - weight) * xb[partner], yb)


def mixup_alpha(spec: TrainingSpec) -> float:
    """The Beta parameter of ``training.mixup`` (0: off; an unresolved "auto" counts as off)."""
    return float(spec.mixup) if isinstance(spec.mixup, (int, float)) else 0.0


def constant_prediction_loss(loss_fn: nn.Module, y: torch.Tensor, classification: bool) -> float:
    """The training loss of the best input-free prediction: class frequencies, or the mean target."""
    with torch.no_grad():
        if classification:
            y = y[y >= 0]  # per-step tags: padded steps (-100) are not scored
            counts = torch.bincount(y, minlength=int(y.max()) + 1).double()
            logits = torch.log(counts.clamp(min=1e-12) / counts.sum()).float()
            out = logits.expand(y.shape[0], -1)
        else:
            out = y.mean(dim=0, keepdim=True).expand_as(y)
        return float(loss_fn(out, y))


STUCK_PREFIX = "the training loss never moved below that of predicting"


def stuck_note(best_train_loss: float, constant_loss: float, classification: bool, scaled: bool = True) -> str | None:
    """A note when training ended no better than a constant prediction, with the likely fixes
    (``scaled``: the inputs are numbers that ``data.scaling`` scales, not token ids)."""
    if not (math.isfinite(constant_loss) and constant_loss > 0) or best_train_loss < STUCK_LOSS_SHARE * constant_loss:
        return None
    level = "the majority class" if classification else "the mean target"
    scaling = (
        ", or another data.scaling ('per_example' when the shape carries the class, 'standard' when the level does)"
        if scaled
        else ""
    )
    return (
        f"{STUCK_PREFIX} {level} ({best_train_loss:.4g} vs "
        f"{constant_loss:.4g}): the model learned nothing from the inputs. Likely fixes: more optimizer "
        f"steps (training.epochs 'auto', a smaller batch_size), a higher training.learning_rate{scaling}"
    )


def validation_chunk(x: torch.Tensor, hidden: int) -> int:
    """Rows per validation forward: ``VALIDATION_CHUNK`` on the CPU; on a GPU as many as keep one chunk's
    activations (steps x hidden x 8, an LSTM's gates and states) under ``_MAX_VALIDATION_ELEMENTS``."""
    if x.device.type != "cuda" or x.dim() < 2:
        return VALIDATION_CHUNK
    per_row = max(1, int(x.shape[1]) * max(hidden, int(x.shape[-1])) * 8)
    return max(VALIDATION_CHUNK, _MAX_VALIDATION_ELEMENTS // per_row)


def _hidden_size(model: nn.Module) -> int:
    sizes = [m.hidden_size for m in model.modules() if isinstance(m, nn.RNNBase)]
    return max(sizes, default=1) * 2  # both directions, at most


def _validate(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, y_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and main metric (accuracy, or RMSE in original units) as device tensors."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    metric_sum = torch.zeros((), device=x.device)
    chunk = validation_chunk(x, _hidden_size(model))
    scored = torch.zeros((), device=x.device)  # examples, or real (unpadded) steps of per-step tags
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            out = model(xb)
            loss_sum += loss_fn(out, yb) * xb.shape[0]
            if y_scale is None:
                real = yb >= 0
                metric_sum += ((out.argmax(dim=1) == yb) & real).sum()
                scored += real.sum()
            else:
                metric_sum += (((out - yb) * y_scale) ** 2).mean(dim=1).sum()
    n = x.shape[0]
    metric = metric_sum / scored.clamp(min=1) if y_scale is None else torch.sqrt(metric_sum / n)
    return loss_sum / n, metric


StepMode = Literal["eager", "static", "graph"]


class StaticStep:
    """One training step on static batch buffers, filled by ``index_select`` from the resident data.

    ``graph``: the step (forward, backward, gradient clipping, optimizer) is captured once in a CUDA
    graph and replayed for every full batch. ``static``: the same step runs eagerly on the same buffers
    (any device) — the graph path without the capture, so a CPU can check that it trains like the plain
    loop. Gradients are zeroed in place (their addresses are part of the graph), never set to None.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        clip: float | None,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        loss_sum: torch.Tensor,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.params, self.clip = model, loss_fn, optimizer, params, clip
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.loss_sum = loss_sum  # the epoch's accumulator, zeroed in place at every epoch start
        self.index = torch.zeros(batch_size, dtype=torch.long, device=x.device)
        self.xb = torch.empty((batch_size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.yb = torch.empty((batch_size, *y.shape[1:]), dtype=y.dtype, device=y.device)
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured

    def _body(self) -> None:
        torch.index_select(self.x, 0, self.index, out=self.xb)
        torch.index_select(self.y, 0, self.index, out=self.yb)
        loss = training_loss(self.model, self.loss_fn, self.xb, self.yb)
        loss.backward()
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.loss_sum.add_(loss.detach() * self.batch_size)

    def run(self, idx: torch.Tensor) -> None:
        self.index.copy_(idx, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return
        self.optimizer.zero_grad(set_to_none=False)
        self._body()

    def capture(self) -> None:
        """Warm up on a side stream, capture the step into a CUDA graph, then undo the warm-up.

        The weights, the dropout RNG and the loss sum are restored whether or not the capture
        succeeds; on success the optimizer state is reset to its fresh value (all zeros for the
        capturable optimizers: step counts and moment estimates), so the first replay is step 1.
        """
        model, optimizer = self.model, self.optimizer
        device = self.x.device
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rng = torch.cuda.get_rng_state(device)
        loss_before = self.loss_sum.clone()
        self.index.copy_(torch.arange(self.batch_size, device=device) % self.x.shape[0])
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    optimizer.zero_grad(set_to_none=True)
                    self._body()
            torch.cuda.current_stream(device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # backward inside the capture allocates static gradients
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            with torch.no_grad():
                for state in optimizer.state.values():
                    for value in state.values():
                        if isinstance(value, torch.Tensor):
                            value.zero_()
            self.graph = graph
        finally:
            torch.cuda.synchronize(device)
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    value.copy_(weights[key])
            torch.cuda.set_rng_state(rng, device)
            self.loss_sum.copy_(loss_before)


def graph_plan(spec: TrainingSpec, device: torch.device, n: int, batch_size: int) -> tuple[StepMode, str | None]:
    """How full batches run on ``device``, and a note when a GPU trains without a CUDA graph."""
    if device.type != "cuda" or spec.cuda_graphs == "off":
        return "eager", None
    if mixup_alpha(spec) > 0:
        # The blend weight is drawn on the host every step; a captured graph would replay one.
        return "eager", "training.mixup draws a blend per batch, which a CUDA graph cannot replay: trained eagerly"
    if spec.optimizer not in CUDA_GRAPH_OPTIMIZERS:
        return "eager", (
            f"training.optimizer '{spec.optimizer}' cannot be captured in a CUDA graph: trained eagerly "
            f"(graph-capturable optimizers: {', '.join(sorted(CUDA_GRAPH_OPTIMIZERS))})"
        )
    if n < batch_size:
        return "eager", None  # a single ragged batch per epoch: nothing to replay
    return "graph", None


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
    step_mode: StepMode | None = None,
    scaled_inputs: bool = True,
) -> TrainOutcome:
    """Train ``model`` in place; with validation data, early-stop and restore the best weights.

    ``scaled_inputs``: the inputs are numbers ``data.scaling`` scales (False for token ids, which
    reach the model as floats too), for the advice of a note when nothing was learned.

    ``y_scale`` (per output) converts scaled regression errors to original units; None for
    classification. Loss values are accumulated on the device and read once per epoch.
    ``step_mode`` None picks the path (``graph_plan``): a CUDA graph for full batches on a GPU,
    the plain eager loop otherwise; ``static`` forces the graph path's step without capturing.
    The ragged last batch of an epoch always runs eagerly.
    """
    assert spec.loss is not None  # filled in by the spec validator
    epochs, batch_size, patience, min_delta = (
        spec.epochs,
        spec.batch_size,
        spec.early_stopping_patience,
        spec.early_stopping_min_delta,
    )
    assert epochs != "auto" and batch_size != "auto" and patience != "auto" and min_delta != "auto"
    x_train, y_train = train
    n = x_train.shape[0]
    loss_fn = LOSSES[spec.loss]()
    total_steps = epochs * math.ceil(n / batch_size)
    outcome = TrainOutcome(best_epoch=0, epochs_run=0, cancelled=False, train_seconds=0.0)
    mode, graph_note = graph_plan(spec, x_train.device, n, batch_size) if step_mode is None else (step_mode, None)
    alpha = mixup_alpha(spec)
    if alpha > 0:
        mode = "eager"  # a blend per batch: the static step's buffers hold the batch as drawn
    if graph_note is not None:
        outcome.notes.append(graph_note)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=x_train.device)
    stepper: StaticStep | None = None
    optimizer = make_optimizer(spec, model, capturable=mode == "graph", tensor_lr=mode != "eager")
    if mode != "eager":
        stepper = StaticStep(
            model, loss_fn, optimizer, params, spec.gradient_clip, x_train, y_train, batch_size, loss_sum
        )
    if mode == "graph":
        assert stepper is not None
        started = time.perf_counter()
        model.train()
        try:
            stepper.capture()
        except Exception as exc:  # an op in this model or optimizer that a graph cannot hold
            stepper = None
            optimizer = make_optimizer(spec, model)
            outcome.notes.append(
                f"CUDA-graph capture failed ({type(exc).__name__}: {str(exc)[:160]}): trained eagerly; "
                "training.cuda_graphs 'off' skips the attempt"
            )
        outcome.train_seconds += time.perf_counter() - started
    schedule = StepSchedule(spec, optimizer, total_steps)
    # Blend weights from their own stream, seeded like the batches, so a job is reproducible.
    blend_rng = np.random.default_rng(generator.initial_seed()) if alpha > 0 else None
    metric_name = "accuracy" if y_scale is None else "rmse"
    best_loss, best_epoch, best_state, since_best = math.inf, 0, None, 0
    # The loss that resets the patience: it must beat this by min_delta (relative), so that a tiny,
    # noisy validation part does not keep training alive on noise.
    patience_loss = math.inf
    lowest_train_loss = math.inf
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum.zero_()
        perm = torch.randperm(n, generator=generator, device=generator.device).to(x_train.device)
        for start in range(0, n, batch_size):
            if start and should_stop is not None and should_stop():
                # A cancel, a lost claim or a shutdown does not wait for the end of a long epoch
                # (an epoch of 300,000 batches could not be cancelled at all): the part-run epoch is
                # dropped, the best weights so far are kept.
                outcome.cancelled = True
                break
            idx = perm[start : start + batch_size]
            if stepper is not None and idx.shape[0] == batch_size:
                stepper.run(idx)
                schedule.after_step()
                continue
            xb, yb = x_train[idx], y_train[idx]
            # The graph's gradients keep their addresses: zeroed in place, not freed.
            optimizer.zero_grad(set_to_none=stepper is None)
            if blend_rng is not None:
                partner = torch.randperm(idx.shape[0], generator=generator, device=generator.device)
                weight = float(blend_rng.beta(alpha, alpha))
                loss = mixup_loss(model, loss_fn, xb, yb, weight, partner.to(xb.device))
            else:
                loss = training_loss(model, loss_fn, xb, yb)
            loss.backward()
            if spec.gradient_clip is not None:
                nn.utils.clip_grad_norm_(params, spec.gradient_clip)
            optimizer.step()
            schedule.after_step()
            loss_sum += loss.detach() * idx.shape[0]
        if outcome.cancelled:
            break
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
        report = EpochReport(epoch=epoch, epochs=epochs, metrics=metrics, seconds=seconds)
        lowest_train_loss = min(lowest_train_loss, values[0])
        if monitored < best_loss:
            best_loss, best_epoch = monitored, epoch
            if val is not None:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if monitored < patience_loss - min_delta * abs(patience_loss) or patience_loss == math.inf:
            patience_loss, since_best = monitored, 0
        else:
            since_best += 1
        schedule.after_epoch(monitored)
        if on_epoch is not None:
            on_epoch(report)
        if should_stop is not None and should_stop():
            outcome.cancelled = True
            break
        if val is not None and patience is not None and since_best >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no validation part: the final weights are the result
        best_epoch = outcome.epochs_run
    outcome.best_epoch = best_epoch
    if alpha > 0 and not outcome.cancelled:
        # The epochs' losses were of blended batches: judge the kept weights on the training part itself.
        lowest_train_loss = float(_validate(model, loss_fn, x_train, y_train, y_scale)[0])
    constant = constant_prediction_loss(loss_fn, y_train, y_scale is None)
    note = stuck_note(lowest_train_loss, constant, y_scale is None, scaled=scaled_inputs)
    if note is not None and not outcome.cancelled:
        outcome.notes.append(note)
    return outcome
