"""The recurrent network: an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` body and a linear head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .spec import ModelSpec

CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentModel(nn.Module):
    """Maps ``x [B, T, F]`` to ``[B, outputs]`` from the last layer's final hidden state(s)."""

    def __init__(self, spec: ModelSpec, num_features: int, num_outputs: int) -> None:
        super().__init__()
        # nn.RNNBase warns when dropout is set with a single layer (it only acts between layers).
        between_layers = spec.dropout if spec.num_layers > 1 else 0.0
        kwargs: dict[str, Any] = {"nonlinearity": "tanh"} if spec.cell == "rnn" else {}
        self.rnn = CELLS[spec.cell](
            input_size=num_features,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            batch_first=True,
            bidirectional=spec.bidirectional,
            dropout=between_layers,
            **kwargs,
        )
        self.directions = 2 if spec.bidirectional else 1
        # Identity when unused: saves a kernel per step of the training loop.
        self.dropout: nn.Module = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(spec.hidden_size * self.directions, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.rnn(x)
        if isinstance(hidden, tuple):  # LSTM returns (h_n, c_n)
            hidden = hidden[0]
        # h_n is [layers * directions, B, H]; the last layer's directions are the final entries.
        last = hidden[-self.directions :].transpose(0, 1).reshape(x.shape[0], -1)
        return self.head(self.dropout(last))


def forward_in_chunks(model: nn.Module, x: torch.Tensor, chunk: int = 4_096) -> torch.Tensor:
    """Eval-mode outputs for many examples without holding every activation at once."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)]) if len(x) else model(x)
    finally:
        model.train(was_training)
