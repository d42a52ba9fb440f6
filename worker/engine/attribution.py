"""Which time steps and features drove the predictions: integrated gradients and permutation importance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

MAX_ATTRIBUTION_EXAMPLES = 256
IG_STEPS = 32
MAX_PERMUTATION_EXAMPLES = 2_000
PERMUTATION_REPEATS = 3
# Rows (path points x examples) per integrated-gradients forward/backward pass.
_IG_ROWS_PER_PASS = 4_096


@contextmanager
def recurrent_layers_in_train_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode everywhere except the ``nn.RNNBase`` layers, which run in train mode with dropout 0.

    cuDNN's RNN backward refuses eval mode; disabling cuDNN instead is ~24x slower. With their dropout
    zeroed these layers compute exactly what they compute in eval mode, so the gradients are the same
    and deterministic. Used on every device so CPU and CUDA take one route.
    """
    was_training = {m: m.training for m in model.modules()}
    saved_dropout: dict[nn.RNNBase, float] = {}
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            saved_dropout[module] = module.dropout
            module.dropout = 0.0
            module.train()
    try:
        yield
    finally:
        for module, dropout in saved_dropout.items():
            module.dropout = dropout
        for module, training in was_training.items():
            module.train(training)


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, output_index: torch.Tensor, steps: int = IG_STEPS
) -> torch.Tensor:
    """Integrated gradients of ``model(x)[i, output_index[i]]`` from a zero baseline, shaped like x.

    Zero is the training mean under standard scaling, a neutral reference. Midpoint Riemann sum.
    """
    alphas = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
    # Every network of an ensemble (``model.ensemble``) keeps its own graph: fewer rows per pass.
    networks = max(1, sum(isinstance(m, nn.RNNBase) for m in model.modules()))
    per_pass = max(1, _IG_ROWS_PER_PASS // (steps * networks))
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], per_pass):
        xb = x[start : start + per_pass]
        m = xb.shape[0]
        path = (alphas.view(-1, 1, 1, 1) * xb.unsqueeze(0)).reshape(steps * m, *xb.shape[1:])
        path.requires_grad_(True)
        outputs = model(path)
        chosen = outputs.gather(1, output_index[start : start + m].repeat(steps).view(-1, 1))
        (grad,) = torch.autograd.grad(chosen.sum(), path)
        out[start : start + m] = xb * grad.view(steps, m, *xb.shape[1:]).mean(dim=0)
    return out


def attribution_map(model: nn.Module, x: torch.Tensor, classification: bool) -> np.ndarray:
    """Mean |IG| over examples as [T, F], normalized to sum 1.

    Classification attributes the predicted class logit (for an ensemble, the log of the members'
    mean probability of that class); regression and forecast the first output.
    """
    with recurrent_layers_in_train_mode(model):
        with torch.no_grad():
            index = model(x).argmax(dim=1) if classification else torch.zeros(len(x), dtype=torch.long, device=x.device)
        attributions = integrated_gradients(model, x, index)
    importance = attributions.abs().mean(dim=0).double().cpu().numpy()
    total = importance.sum()
    return importance / total if total > 0 else importance


def permutation_importance(
    x: torch.Tensor,
    y: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], float],
    lower_is_better: bool,
    generator: torch.Generator,
) -> list[float]:
    """How much worse ``score`` gets when one feature is shuffled across examples (whole sequences)."""
    base = score(x, y)
    worse: list[float] = []
    for f in range(x.shape[2]):
        drops = []
        for _ in range(PERMUTATION_REPEATS):
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
            shuffled = x.clone()
            shuffled[:, :, f] = x[perm, :, f]
            value = score(shuffled, y)
            drops.append(value - base if lower_is_better else base - value)
        worse.append(float(np.mean(drops)))
    return worse


def attribution_report(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    feature_names: list[str],
    classification: bool,
    score: Callable[[torch.Tensor, torch.Tensor], float],
    metric: str,
    lower_is_better: bool,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The ``evaluation["attribution"]`` block, on capped random samples of the test examples.

    ``score(x, y)`` is the main metric on scaled inputs and targets; permutation importance reports how
    much worse it gets (in the metric's units) when one feature is shuffled.
    """
    n = x_test.shape[0]
    sample = np.sort(rng.choice(n, min(n, MAX_ATTRIBUTION_EXAMPLES), replace=False))
    importance = attribution_map(model, x_test[torch.as_tensor(sample, device=x_test.device)], classification)
    perm_rows = np.sort(rng.choice(n, min(n, MAX_PERMUTATION_EXAMPLES), replace=False))
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            rows = torch.as_tensor(perm_rows, device=x_test.device)
            perm = permutation_importance(x_test[rows], y_test[rows], score, lower_is_better, generator)
        finally:
            model.train(was_training)
    return {
        "method": "integrated_gradients",
        "baseline": "zero in scaled units (the training mean under standard scaling)",
        "examples": len(sample),
        "steps": int(importance.shape[0]),
        "features": list(feature_names),
        "importance": [[float(v) for v in row] for row in importance],
        "feature_importance": {f: float(v) for f, v in zip(feature_names, importance.sum(axis=0), strict=True)},
        "step_importance": [float(v) for v in importance.sum(axis=1)],
        "permutation_importance": {f: v for f, v in zip(feature_names, perm, strict=True)},
        "permutation_metric": metric,
        "permutation_examples": len(perm_rows),
    }
