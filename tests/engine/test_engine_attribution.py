from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

from worker.engine import train_and_evaluate
from worker.engine.attribution import attribution_map, integrated_gradients, recurrent_layers_in_train_mode
from worker.engine.models import RecurrentModel
from worker.engine.spec import ModelSpec

from .engine_fixtures import make_spec


def dropout_model(cell: Literal["rnn", "lstm", "gru"]) -> RecurrentModel:
    torch.manual_seed(0)
    spec = ModelSpec(cell=cell, hidden_size=8, num_layers=2, dropout=0.5, bidirectional=True)
    return RecurrentModel(spec, num_features=3, num_outputs=2)


def test_train_mode_route_gives_the_eval_mode_map() -> None:
    x = torch.randn(10, 7, 3, generator=torch.Generator().manual_seed(1))
    cells: tuple[Literal["rnn", "lstm", "gru"], ...] = ("rnn", "lstm", "gru")
    for cell in cells:
        model = dropout_model(cell)
        model.eval()
        index = model(x).argmax(dim=1)
        plain = integrated_gradients(model, x, index)  # ordinary eval mode
        with recurrent_layers_in_train_mode(model):
            assert model.rnn.training and not model.dropout.training and model.rnn.dropout == 0.0
            routed = integrated_gradients(model, x, index)
        torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            attribution_map(model, x, classification=True),
            plain.abs().mean(dim=0).double().numpy() / plain.abs().mean(dim=0).sum().item(),
            rtol=1e-5,
        )


def test_train_mode_route_restores_modes_and_dropout() -> None:
    model = dropout_model("lstm")
    model.train()
    with recurrent_layers_in_train_mode(model):
        pass
    assert model.training and model.dropout.training and model.rnn.training and model.rnn.dropout == 0.5
    model.eval()
    with recurrent_layers_in_train_mode(model):
        pass
    assert not any(m.training for m in model.modules())


def test_integrated_gradients_complete_to_the_output_difference() -> None:
    # Completeness: attributions sum to f(x) - f(0) (up to the Riemann error), a sanity check on the path.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(5, 4, 3)
    index = torch.zeros(5, dtype=torch.long)
    attributions = integrated_gradients(model, x, index)
    expected = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), expected, rtol=1e-4, atol=1e-5)


def test_planted_signal_gets_the_attribution_mass() -> None:
    rng = np.random.default_rng(0)
    n, steps, features, k, t = 2000, 16, 3, 1, 11
    x = rng.standard_normal((n, steps, features)).astype(np.float32)
    y = (x[:, t - 1 : t + 2, k].sum(axis=1) > 0).astype(int)  # only feature k near step t decides
    spec = make_spec(
        "classification",
        {"layout": "arrays", "target": "y", "features": ["a", "b", "c"]},
        model={"cell": "gru", "hidden_size": 24},
        training={"epochs": 15, "batch_size": 32, "learning_rate": 0.01},
        evaluation={"attribution": True},
    )
    result = train_and_evaluate(spec, {"X": x, "y": y})
    assert result.evaluation is not None
    assert result.evaluation.metrics["test"]["accuracy"] > 0.85
    attribution = result.evaluation.model_dump()["attribution"]
    importance = np.array(attribution["importance"])
    assert importance.shape == (steps, features) and importance.sum() == pytest.approx(1.0)
    assert importance[t - 2 : t + 3, k].sum() > 0.5
    assert max(attribution["feature_importance"], key=attribution["feature_importance"].get) == "b"
    permutation = attribution["permutation_importance"]
    assert max(permutation, key=permutation.get) == "b" and permutation["b"] > 0.2
