"""The CUDA-graph training path: its step on static buffers trains like the plain loop.

On a CPU the graph path's step runs eagerly (``step_mode='static'``); ``pytest -m cuda`` compares
the captured graph with the eager loop on a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from worker.engine import train_and_evaluate
from worker.engine.models import RecurrentModel
from worker.engine.spec import ModelSpec, TrainingSpec
from worker.engine.training import EpochReport, StepMode, fit, graph_plan

from .engine_fixtures import make_spec, sine_table


def _train(
    mode: StepMode,
    device: str,
    *,
    cell: str = "lstm",
    dropout: float = 0.0,
    layers: int = 1,
    n: int = 200,
    batch: int = 32,
    epochs: int = 2,
    classification: bool = False,
    **training: Any,
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Per-epoch train and val losses, and the final weights, of one small seeded run."""
    gen = np.random.default_rng(0)
    x = torch.as_tensor(gen.standard_normal((n, 12, 3)), dtype=torch.float32, device=device)
    if classification:
        y = torch.as_tensor((gen.standard_normal(n) > 0).astype(np.int64), device=device)
        outputs, loss = 2, "cross_entropy"
    else:
        y = torch.as_tensor(gen.standard_normal((n, 2)), dtype=torch.float32, device=device)
        outputs, loss = 2, "mse"
    spec = TrainingSpec.model_validate(
        {
            "epochs": epochs,
            "batch_size": batch,
            "learning_rate": 0.01,
            "loss": loss,
            "early_stopping_patience": None,
            "early_stopping_min_delta": 0.0,
            "schedule": "none",
            "warmup_steps": 0,
            **training,
        }
    )
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.manual_seed(0)
    model_spec = ModelSpec(cell=cell, hidden_size=16, num_layers=layers, dropout=dropout)  # type: ignore[arg-type]
    model = RecurrentModel(model_spec, 3, outputs).to(device)
    reports: list[EpochReport] = []
    generator = torch.Generator(device=device).manual_seed(0)
    val = (x[:40], y[:40])
    y_scale = None if classification else torch.ones(outputs, device=device)
    fit(model, spec, (x, y), val, y_scale=y_scale, generator=generator, on_epoch=reports.append, step_mode=mode)
    losses = [v for r in reports for part in ("train", "val") for v in r.metrics[part].values()]
    return losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _assert_same(
    a: tuple[list[float], dict[str, torch.Tensor]], b: tuple[list[float], dict[str, torch.Tensor]], tol: float
) -> None:
    assert a[0] == pytest.approx(b[0], rel=tol, abs=tol)
    for key, value in a[1].items():
        torch.testing.assert_close(value, b[1][key], rtol=tol, atol=tol)


CASES = [
    {"cell": "lstm"},
    {"cell": "gru"},
    {"cell": "rnn"},
    {"cell": "lstm", "dropout": 0.3, "layers": 2},  # dropout between layers and before the head
    {"cell": "gru", "n": 203},  # a ragged last batch every epoch
    {"cell": "lstm", "classification": True, "optimizer": "adamw", "weight_decay": 0.01},
    {"cell": "lstm", "optimizer": "rmsprop", "schedule": "cosine", "warmup_steps": 3},
    {"cell": "lstm", "schedule": "one_cycle", "warmup_steps": 2, "gradient_clip": None},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_static_buffer_step_trains_like_the_eager_loop(case: dict[str, Any]) -> None:
    """The graph path's step (index_select into static buffers, in-place zeroed gradients, a tensor
    learning rate the schedule fills) run eagerly on the CPU: the same trajectory as the plain loop."""
    eager = _train("eager", "cpu", **case)
    static = _train("static", "cpu", **case)
    _assert_same(eager, static, 1e-5)


def test_graph_plan() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    spec = TrainingSpec.model_validate({})
    assert spec.cuda_graphs == "auto"
    assert graph_plan(spec, cpu, 1000, 64) == ("eager", None)
    assert graph_plan(spec, gpu, 1000, 64) == ("graph", None)
    assert graph_plan(spec.model_copy(update={"cuda_graphs": "off"}), gpu, 1000, 64) == ("eager", None)
    assert graph_plan(spec, gpu, 10, 64) == ("eager", None)  # one ragged batch: nothing to replay
    mode, note = graph_plan(spec.model_copy(update={"optimizer": "sgd"}), gpu, 1000, 64)
    assert mode == "eager" and note is not None and "'sgd' cannot be captured" in note
    # Mixup draws a fresh blend every batch: trained eagerly, and the note says why.
    mode, note = graph_plan(spec.model_copy(update={"mixup": 0.4}), gpu, 1000, 64)
    assert mode == "eager" and note is not None and "training.mixup" in note
    assert graph_plan(spec.model_copy(update={"mixup": 0.0}), gpu, 1000, 64) == ("graph", None)
    with pytest.raises(ValueError):
        TrainingSpec.model_validate({"cuda_graphs": "on"})


def test_cuda_graphs_setting_leaves_cpu_results_alone() -> None:
    spec = make_spec("forecast", {"layout": "series", "target": "value", "lookback": 12})
    off = make_spec(
        "forecast", {"layout": "series", "target": "value", "lookback": 12}, training={"cuda_graphs": "off"}
    )
    a, b = train_and_evaluate(spec, sine_table(300)), train_and_evaluate(off, sine_table(300))
    assert a.summary.test == b.summary.test
    assert a.artifact["spec"]["training"]["cuda_graphs"] == "auto"


needs_cuda = pytest.mark.cuda


@needs_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_cuda_graph_trajectory_matches_eager(case: dict[str, Any]) -> None:
    """100+ steps (200 examples / batch 8 = 25 steps per epoch, 4 epochs) graphed vs eager on the GPU."""
    case = {"batch": 8, "epochs": 4, **case}
    eager = _train("eager", "cuda", **case)
    graphed = _train("graph", "cuda", **case)
    _assert_same(eager, graphed, 2e-4)


@needs_cuda
def test_cuda_graph_job_notes_and_fallback() -> None:
    table = sine_table(400)
    data = {"layout": "series", "target": "value", "lookback": 12}
    graphed = train_and_evaluate(make_spec("forecast", data, device="cuda"), table)
    eager = train_and_evaluate(make_spec("forecast", data, device="cuda", training={"cuda_graphs": "off"}), table)
    assert graphed.summary.test["rmse"] == pytest.approx(eager.summary.test["rmse"], rel=1e-3)
    sgd = train_and_evaluate(make_spec("forecast", data, device="cuda", training={"optimizer": "sgd"}), table)
    assert sgd.evaluation is not None
    assert any("cannot be captured in a CUDA graph" in note for note in sgd.evaluation.notes)


@needs_cuda
def test_attribution_on_cuda_equals_cpu() -> None:
    from worker.engine.attribution import attribution_map

    torch.manual_seed(0)
    model = RecurrentModel(ModelSpec(cell="lstm", hidden_size=16, num_layers=2), 3, 2)
    x = torch.randn(64, 12, 3)
    cpu = attribution_map(model, x, classification=False)
    gpu = attribution_map(model.to("cuda"), x.to("cuda"), classification=False)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-6)
