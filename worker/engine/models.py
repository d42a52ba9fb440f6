"""The recurrent network: an ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` body and a linear head."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .spec import ModelSpec

CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# ``residual 'ar'`` regresses on at most this many of the window's last steps.
MAX_AR_LAGS = 256


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


def build_rnn(spec: ModelSpec, input_size: int) -> nn.RNNBase:
    """The recurrent layers of ``spec`` (batch first), with the LSTM forget-gate bias it asks for."""
    # nn.RNNBase warns when dropout is set with a single layer (it only acts between layers).
    between_layers = spec.dropout if spec.num_layers > 1 else 0.0
    kwargs: dict[str, Any] = {"nonlinearity": "tanh"} if spec.cell == "rnn" else {}
    rnn = CELLS[spec.cell](
        input_size=input_size,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        batch_first=True,
        bidirectional=spec.bidirectional,
        dropout=between_layers,
        **kwargs,
    )
    if spec.cell == "lstm" and isinstance(spec.forget_gate_bias, float):
        set_forget_gate_bias(rnn, spec.forget_gate_bias)  # type: ignore[arg-type]
    return rnn


def patch_steps(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, T, F]`` → ``[B, ceil(T / patch), patch * F]``: each group of ``patch`` consecutive steps
    becomes one step. When ``T`` is not a multiple, the first step is repeated in front (as the
    ``sequences`` layout pads shorter cases), so the last group ends on the last real step."""
    steps, features = int(x.shape[1]), int(x.shape[2])
    pad = (-steps) % patch
    if pad:
        x = torch.cat([x[:, :1, :].expand(-1, pad, -1), x], dim=1)
    # -1 for the batch: the ONNX export keeps that axis dynamic.
    return x.reshape(-1, (steps + pad) // patch, patch * features)


def step_changes(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, F]`` → each step's change from the step before (0 at the first step)."""
    return torch.cat([torch.zeros_like(x[:, :1, :]), x[:, 1:, :] - x[:, :-1, :]], dim=1)


class RecurrentModel(nn.Module):
    """Maps ``x [B, T, F]`` to ``[B, outputs]`` from what ``spec.pooling`` reads of the last layer.

    ``last``: the final hidden state(s); ``mean`` / ``max``: over the last layer's outputs at
    every step (both directions when bidirectional). With ``spec.differences`` each step also
    carries its change from the step before (``step_changes``, scaled by ``difference_scale``); with
    ``spec.patch`` k > 1 the network reads groups of k steps as one step (``patch_steps``).

    Forecast residuals: ``last_value`` predicts the change from the window's last target value;
    ``ar`` adds the network to a linear autoregression over the window's target values (least
    squares on the training windows, see ``set_ar_map``), with the head starting at zero so
    training starts exactly at the AR forecast. ``steps`` (the window length) is needed for ``ar``.
    """

    # Buffers of a residual model (see ``set_naive_map`` and ``set_ar_map``) and of ``differences``.
    difference_scale: torch.Tensor
    naive_column: torch.Tensor
    naive_slope: torch.Tensor
    naive_intercept: torch.Tensor
    ar_weight: torch.Tensor
    ar_bias: torch.Tensor
    log_map: torch.Tensor
    log_output: torch.Tensor

    def __init__(self, spec: ModelSpec, num_features: int, num_outputs: int, steps: int | None = None) -> None:
        super().__init__()
        # Unresolved or absent (an artifact saved before patching existed): every step on its own.
        self.patch = spec.patch if isinstance(spec.patch, int) else 1
        # An unresolved spec (a model built directly, an artifact saved before pooling existed) reads
        # the final hidden state and keeps PyTorch's initialisation, as every model did before.
        self.pooling = "last" if spec.pooling == "auto" else spec.pooling
        # ``differences``: each step's change from the step before, next to its value (an artifact saved
        # before the option existed reads the values alone).
        self.differences = spec.differences is True
        inputs = num_features * (2 if self.differences else 1)
        if self.differences:
            self.register_buffer("difference_scale", torch.ones(num_features))
        self.rnn = build_rnn(spec, inputs * self.patch)
        self.directions = 2 if spec.bidirectional else 1
        # Identity when unused: saves a kernel per step of the training loop.
        self.dropout: nn.Module = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(spec.hidden_size * self.directions, num_outputs)
        self.residual = spec.residual in ("last_value", "ar")
        self.autoregressive = spec.residual == "ar"
        self.ar_log = False
        if self.residual:
            # The target's input column, and the map from its scaled input units to each scaled output:
            # ``naive = last * naive_slope + naive_intercept``. Buffers, so the artifact carries them.
            self.register_buffer("naive_column", torch.zeros((), dtype=torch.long))
            self.register_buffer("naive_slope", torch.ones(num_outputs))
            self.register_buffer("naive_intercept", torch.zeros(num_outputs))
        if self.autoregressive:
            if steps is None:
                raise ValueError("model.residual 'ar' needs the window length (steps)")
            # ``base = window[:, -lags:, column] @ ar_weight + ar_bias``, in scaled units.
            self.register_buffer("ar_weight", torch.zeros(min(steps, MAX_AR_LAGS), num_outputs))
            self.register_buffer("ar_bias", torch.zeros(num_outputs))
            # ``ar_scale 'log'``: the AR and the correction work on the logarithm of the target, standardised.
            self.ar_log = spec.ar_scale == "log"
            if self.ar_log:
                # [input scale, input center, floor, log mean, log std, lowest log, highest log] and,
                # per output, [center, scale] of the scaled outputs (see ``set_log_map``).
                self.register_buffer("log_map", torch.tensor([1.0, 0.0, 1e-12, 0.0, 1.0, -30.0, 30.0]))
                self.register_buffer("log_output", torch.stack([torch.zeros(num_outputs), torch.ones(num_outputs)]))
            with torch.no_grad():  # the correction starts at zero: the untrained model is the AR
                self.head.weight.zero_()
                self.head.bias.zero_()

    def set_naive_map(self, column: int, slope: torch.Tensor, intercept: torch.Tensor) -> None:
        """For ``residual 'last_value'``: which input column is the target and how its scale maps to the outputs'."""
        self.naive_column.fill_(column)
        self.naive_slope.copy_(slope)
        self.naive_intercept.copy_(intercept)

    def set_difference_scale(self, x: torch.Tensor) -> None:
        """For ``differences``: scale each feature's step-to-step change to unit spread over ``x``
        (the training inputs ``[B, T, F]``), so it reaches the network at the values' magnitude
        (a smooth z-normalised series changes by a few hundredths per step)."""
        std = step_changes(x.float()).std(dim=(0, 1)) if x.shape[0] * x.shape[1] > 1 else torch.zeros(x.shape[2])
        ok = torch.isfinite(std) & (std > 1e-8)
        self.difference_scale.copy_(torch.where(ok, 1.0 / std.clamp(min=1e-8), torch.ones_like(std)))

    def set_ar_map(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """For ``residual 'ar'``: the least-squares map from the target column's last ``lags`` scaled
        inputs to the scaled outputs ``[H]`` (``weight [lags, H]``, ``bias [H]``)."""
        self.ar_weight.copy_(weight)
        self.ar_bias.copy_(bias)

    def set_log_map(self, values: list[float], output_center: torch.Tensor, output_scale: torch.Tensor) -> None:
        """For ``ar_scale 'log'``: the target column's input scale and center (scaled → original units),
        the floor below which an input counts as that floor, the mean and std of the training targets'
        logarithms, the range a forecast's logarithm is clamped to, and the outputs' scaler."""
        self.log_map.copy_(torch.as_tensor(values, dtype=self.log_map.dtype))
        self.log_output.copy_(torch.stack([output_center, output_scale]).to(self.log_output))

    def ar_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the AR regresses on: the target column's last ``lags`` scaled inputs, or with
        ``ar_scale 'log'`` their standardised logarithms."""
        window = x[:, -self.ar_weight.shape[0] :, self.naive_column]
        if not self.ar_log:
            return window
        m = self.log_map
        original = (window * m[0] + m[1]).clamp(min=m[2])
        return (torch.log(original) - m[3]) / m[4]

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """The network's part of a residual forecast (in the AR's units)."""
        return self._network(x - x[:, -1:, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return self._network(x)
        # The window relative to its last step: the network sees no level, only shape and change,
        # so a level outside the training range (a trend) does not saturate it.
        last = x[:, -1:, :]
        if self.autoregressive:
            base = self.ar_inputs(x) @ self.ar_weight + self.ar_bias
            if self.ar_log:
                m = self.log_map
                logs = ((base + self._network(x - last)) * m[4] + m[3]).clamp(m[5], m[6])
                return (torch.exp(logs) - self.log_output[0]) / self.log_output[1]
        else:
            base = last[:, 0, self.naive_column].unsqueeze(1) * self.naive_slope + self.naive_intercept
        return base + self._network(x - last)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        if self.differences:
            x = torch.cat([x, step_changes(x) * self.difference_scale], dim=2)
        if self.patch > 1:
            x = patch_steps(x, self.patch)
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


class CombinedForecast(nn.Module):
    """``model.combine``: the ``residual 'ar'`` model and a ``residual 'last_value'`` model of the same
    shape, trained side by side in one job; the forecast is ``weights[0] * ar + weights[1] * last_value``
    (a buffer, so every export computes the same). While training, ``member_outputs`` gives each
    member's own forecast: each learns from its own loss, as if trained alone (a forecast combination,
    Bates & Granger 1969), not a joint model of the weighted mean."""

    weights: torch.Tensor

    def __init__(self, spec: ModelSpec, num_features: int, num_outputs: int, steps: int | None = None) -> None:
        super().__init__()
        ar = spec.model_copy(update={"residual": "ar", "combine": "none"})
        lv = spec.model_copy(update={"residual": "last_value", "combine": "none", "ar_scale": "linear"})
        self.members = nn.ModuleList(
            [RecurrentModel(ar, num_features, num_outputs, steps), RecurrentModel(lv, num_features, num_outputs)]
        )
        self.register_buffer("weights", torch.full((2,), 0.5))

    def member_models(self) -> list[RecurrentModel]:
        return [m for m in self.members if isinstance(m, RecurrentModel)]

    def member_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [member(x) for member in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ar, last_value = self.member_outputs(x)
        return self.weights[0] * ar + self.weights[1] * last_value


class Ensemble(nn.Module):
    """``model.ensemble``: networks of the same shape from different initialisations, trained side by
    side (same batches; ``member_outputs`` gives each its own loss, and the step minimises their mean
    with one optimizer and one gradient clip over all members, as for ``CombinedForecast``). The
    model predicts the members' mean class probabilities, as log-probabilities (so a softmax of its
    output is that mean, and every consumer of logits reads it unchanged), or their mean outputs for
    regression. Averaging networks that differ only in their start is the standard cure for the
    seed-to-seed swing of one network on a small training set (InceptionTime, Ismail Fawaz et al.
    2020, averages five)."""

    def __init__(
        self,
        spec: ModelSpec,
        num_features: int,
        num_outputs: int,
        count: int,
        steps: int | None = None,
        *,
        probabilities: bool,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList([RecurrentModel(spec, num_features, num_outputs, steps) for _ in range(count)])
        self.probabilities = probabilities

    def member_models(self) -> list[RecurrentModel]:
        return [m for m in self.members if isinstance(m, RecurrentModel)]

    def member_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [member(x) for member in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack(self.member_outputs(x))
        if not self.probabilities:
            return outputs.mean(dim=0)
        # log(mean softmax), computed stably: logsumexp over members of log-softmax, minus log(count).
        return torch.logsumexp(torch.log_softmax(outputs, dim=-1), dim=0) - math.log(len(self.members))


def ensemble_size(spec: ModelSpec) -> int:
    """Networks in the model (``"auto"``, as in an artifact saved before the option existed: one)."""
    return spec.ensemble if isinstance(spec.ensemble, int) else 1


def combines(spec: ModelSpec) -> bool:
    """Whether ``spec`` builds a ``CombinedForecast`` (``"auto"``, as in an artifact saved before the
    option existed, does not)."""
    return spec.combine in ("equal", "inverse_mse") and spec.residual == "ar"


def build_recurrent_model(
    spec: ModelSpec, num_features: int, num_outputs: int, steps: int | None = None, *, classes: bool
) -> RecurrentModel | CombinedForecast | Ensemble:
    """The model ``spec`` describes; ``classes``: its outputs are class logits (an ensemble then
    averages probabilities, not logits)."""
    if combines(spec):
        return CombinedForecast(spec, num_features, num_outputs, steps)
    if ensemble_size(spec) > 1:
        return Ensemble(spec, num_features, num_outputs, ensemble_size(spec), steps, probabilities=classes)
    return RecurrentModel(spec, num_features, num_outputs, steps=steps)


def recurrent_members(model: nn.Module) -> list[RecurrentModel]:
    """The ``RecurrentModel`` s inside ``model``: itself, or a combination's or an ensemble's members."""
    if isinstance(model, (CombinedForecast, Ensemble)):
        return model.member_models()
    return [model] if isinstance(model, RecurrentModel) else []


def forward_in_chunks(model: nn.Module, x: torch.Tensor, chunk: int = 4_096) -> torch.Tensor:
    """Eval-mode outputs for many examples without holding every activation at once."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)]) if len(x) else model(x)
    finally:
        model.train(was_training)
