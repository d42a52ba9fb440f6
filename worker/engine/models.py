"""The recurrent network: an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` body and a linear head."""

from __future__ import annotations

import torch
from torch import nn

from .spec import ModelSpec

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentModel(nn.Module):
    """Maps ``x [B, T, F]`` to ``[B, outputs]`` from the last layer's final hidden state(s)."""

    def __init__(self, spec: ModelSpec, num_features: int, num_outputs: int) -> None:
        super().__init__()
        # nn.RNNBase warns when dropout is set with a single layer (it only acts between layers).
        between_layers = spec.dropout if spec.num_layers > 1 else 0.0
        kwargs = {"nonlinearity": "tanh"} if spec.cell == "rnn" else {}
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
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size * self.directions, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.rnn(x)
        if isinstance(hidden, tuple):  # LSTM returns (h_n, c_n)
            hidden = hidden[0]
        # h_n is [layers * directions, B, H]; the last layer's directions are the final entries.
        last = hidden[-self.directions :].transpose(0, 1).reshape(x.shape[0], -1)
        return self.head(self.dropout(last))
