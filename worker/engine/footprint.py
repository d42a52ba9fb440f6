"""What training a resolved spec costs in memory, estimated before anything is built (no torch here:
the API refuses a job its workers could not hold).

Counted: the recurrent layers' weights and biases (PyTorch's layout: per layer and direction,
``gates × (inputs × hidden + hidden² + 2 × hidden)``), the token embedding, every network of an
ensemble or a forecast combination, and for training 16 bytes per parameter (float32 weights,
gradients and Adam's two moments) plus the activations one batch keeps for backpropagation
(``gates + 2`` values per step, layer, direction and hidden unit: the gates, the cell state and the
output). With ``training.refit`` the first network's weights wait on the host (4 bytes per parameter)
while the second trains. The heads and the data are left out; they are small beside a network that is
too large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .defaults import TrainingShape
from .spec import JobSpec
from .text import DEFAULT_EMBEDDING_DIM

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
BYTES_PER_VALUE = 4  # float32
BYTES_PER_PARAMETER = 16  # weight, gradient, Adam's first and second moments


@dataclass(frozen=True)
class Footprint:
    parameters: int
    activation_bytes: int
    networks: int
    refit: bool = False

    @property
    def training_bytes(self) -> int:
        kept = BYTES_PER_VALUE * self.parameters if self.refit else 0  # the first network's weights, with refit
        return BYTES_PER_PARAMETER * self.parameters + kept + self.activation_bytes


def recurrent_parameters(cell: str, inputs: int, hidden: int, layers: int, directions: int) -> int:
    gates = GATES[cell]
    first = gates * (inputs * hidden + hidden * hidden + 2 * hidden)
    later = gates * (directions * hidden * hidden + hidden * hidden + 2 * hidden)
    return directions * (first + (layers - 1) * later)


def footprint(spec: JobSpec, shape: TrainingShape) -> Footprint:
    """The estimate for a spec whose "auto" values are resolved (``resolve_defaults``)."""
    m, t = spec.model, spec.training
    patch = m.patch if isinstance(m.patch, int) else 1
    steps = math.ceil(max(1, shape.steps) / patch)
    embedding = 0
    if spec.text is not None:
        inputs = m.embedding_dim or DEFAULT_EMBEDDING_DIM
        # The vocabulary the tokenizer learns (the training part's distinct tokens), at most vocab_size.
        embedding = min(spec.text.vocab_size, shape.vocabulary or spec.text.vocab_size) * inputs
    else:
        inputs = max(1, shape.channels) * patch * (2 if m.differences is True else 1)
    directions = 2 if m.bidirectional else 1
    per_network = embedding + recurrent_parameters(m.cell, inputs, m.hidden_size, m.num_layers, directions)
    networks = m.ensemble if isinstance(m.ensemble, int) else 1
    if spec.task == "forecast" and m.residual == "ar" and m.combine in ("equal", "inverse_mse"):
        networks *= 2
    batch = t.batch_size if isinstance(t.batch_size, int) else 64
    batch = max(1, min(batch, shape.train_examples))
    kept_per_step = (GATES[m.cell] + 2) * m.hidden_size * m.num_layers * directions
    activations = BYTES_PER_VALUE * networks * batch * steps * kept_per_step
    return Footprint(
        parameters=networks * per_network, activation_bytes=activations, networks=networks, refit=t.refit is True
    )


def blamed_fields(spec: JobSpec, f: Footprint) -> tuple[str, list[str]]:
    """The field a refusal names (``model`` when the weights weigh most, ``training.batch_size`` when
    one batch's activations do) and the fields that would lower the estimate, most direct first."""
    fields = ["model.hidden_size", "model.num_layers"]
    if spec.model.bidirectional:
        fields.append("model.bidirectional")
    if f.networks > 1:
        fields.append("model.ensemble" if spec.task != "forecast" else "model.combine")
    if f.refit:
        fields.append("training.refit")
    if spec.text is not None:
        fields += ["model.embedding_dim", "text.vocab_size"]
    steps = "text.max_length" if spec.text is not None else "data.lookback" if spec.data.layout == "series" else None
    batch = ["training.batch_size", *([steps] if steps else [])]
    if f.activation_bytes > BYTES_PER_PARAMETER * f.parameters:
        return "training.batch_size", [*batch, *fields]
    return "model", [*fields, *batch]


def describe(f: Footprint) -> str:
    return (
        f"{f.parameters / 1e6:,.1f} million parameters ({f.networks} network{'s' if f.networks > 1 else ''}) "
        f"and {f.activation_bytes / 1024**3:,.1f} GiB of activations per batch: about "
        f"{f.training_bytes / 1024**3:,.1f} GiB to train"
    )
