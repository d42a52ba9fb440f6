"""The recurrent network: an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` body and a linear head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .spec import ModelSpec

CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def set_forget_gate_bias(lstm: nn.LSTM, value: float) -> None:
    """Set the forget-gate share of the LSTM's biases so ``b_if + b_hf == value``.

    PyTorch orders each layer's gates (input, forget, cell, output); the forget gate's bias is the
    sum of ``bias_ih`` and ``bias_hh``, so each gets half.
    """
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, bias in lstm.named_parameters():
            if name.startswith("bias_"):
                bias[hidden : 2 * hidden].fill_(value / 2)


class RecurrentModel(nn.Module):
    """Maps ``x [B, T, F]`` to ``[B, outputs]`` from what ``spec.pooling`` reads of the last layer.

    ``last``: the final hidden state(s); ``mean`` / ``max``: over the last layer's outputs at
    every step (both directions when bidirectional).
    """

    # Buffers of a ``residual 'last_value'`` model (see ``set_naive_map``).
    naive_column: torch.Tensor
    naive_slope: torch.Tensor
    naive_intercept: torch.Tensor

    def __init__(self, spec: ModelSpec, num_features: int, num_outputs: int) -> None:
        super().__init__()
        # An unresolved spec (a model built directly, an artifact saved before pooling existed) reads
        # the final hidden state and keeps PyTorch's initialisation, as every model did before.
        self.pooling = "last" if spec.pooling == "auto" else spec.pooling
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
        if spec.cell == "lstm" and isinstance(spec.forget_gate_bias, float):
            set_forget_gate_bias(self.rnn, spec.forget_gate_bias)  # type: ignore[arg-type]
        self.directions = 2 if spec.bidirectional else 1
        # Identity when unused: saves a kernel per step of the training loop.
        self.dropout: nn.Module = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(spec.hidden_size * self.directions, num_outputs)
        self.residual = spec.residual == "last_value"
        if self.residual:
            # The target's input column, and the map from its scaled input units to each scaled output:
            # ``naive = last * naive_slope + naive_intercept``. Buffers, so the artifact carries them.
            self.register_buffer("naive_column", torch.zeros((), dtype=torch.long))
            self.register_buffer("naive_slope", torch.ones(num_outputs))
            self.register_buffer("naive_intercept", torch.zeros(num_outputs))

    def set_naive_map(self, column: int, slope: torch.Tensor, intercept: torch.Tensor) -> None:
        """For ``residual 'last_value'``: which input column is the target and how its scale maps to the outputs'."""
        self.naive_column.fill_(column)
        self.naive_slope.copy_(slope)
        self.naive_intercept.copy_(intercept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self._network(x)
        # The window relative to its last step: the network sees no level, only shape and change,
        # so a level outside the training range (a trend) does not saturate it.
        last = x[:, -1:, :]
        naive = last[:, 0, self.naive_column].unsqueeze(1) * self.naive_slope + self.naive_intercept
        return naive + self._network(x - last)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        outputs, hidden = self.rnn(x)
        if self.pooling == "mean":
            return self.head(self.dropout(outputs.mean(dim=1)))
        if self.pooling == "max":
            return self.head(self.dropout(outputs.amax(dim=1)))
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
