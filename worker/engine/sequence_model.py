"""The network of token inputs and per-step outputs: embedding → packed RNN → one output per example
or per step (``tagging``, many-to-many).

Token ids are right-padded with 0. The RNN runs on a ``PackedSequence`` of each example's own
length, so neither direction of a bidirectional RNN ever reads a padding step: the same text padded
to any length gives the same output. The TorchScript ONNX exporter maps the packing onto the ONNX
RNN operators' ``sequence_lens``, so the exported graph is padding-invariant too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .models import build_rnn
from .spec import JobSpec, ModelSpec
from .text import DEFAULT_EMBEDDING_DIM, PAD_ID, per_step


def token_lengths(ids: torch.Tensor) -> torch.Tensor:
    """Steps up to and including the last non-padding token of each row (at least 1)."""
    steps = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=torch.long)
    return ((ids != PAD_ID).long() * steps).max(dim=1).values.clamp(min=1)


class SequenceModel(nn.Module):
    """``x [B, T, F]`` (token ids in channel 0 when ``vocab_size`` is set, or int64 ids ``[B, T]``) to
    ``[B, outputs]`` (pooled as ``spec.pooling``) or, per step, ``[B, outputs, T]`` logits."""

    def __init__(
        self, spec: ModelSpec, num_features: int, num_outputs: int, *, vocab_size: int | None, per_step: bool
    ) -> None:
        super().__init__()
        self.pooling = "last" if spec.pooling == "auto" else spec.pooling
        self.per_step = per_step
        self.embedding: nn.Embedding | None = None
        input_size = num_features
        if vocab_size is not None:
            dim = spec.embedding_dim or DEFAULT_EMBEDDING_DIM
            self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
            input_size = dim
        self.rnn = build_rnn(spec, input_size)
        self.directions = 2 if spec.bidirectional else 1
        self.dropout: nn.Module = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(spec.hidden_size * self.directions, num_outputs)

    def token_ids(self, x: torch.Tensor) -> torch.Tensor:
        ids = x if x.dim() == 2 else x[..., 0]
        return ids.long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return self._run(x, None)
        ids = self.token_ids(x)
        return self._run(self.embedding(ids), token_lengths(ids))

    def forward_embedded(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The outputs from token embeddings ``[B, T, E]`` (integrated gradients walk this input)."""
        return self._run(embedded, lengths)

    def _run(self, inputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        steps = inputs.shape[1]
        if lengths is None:  # numeric sequences: every step is real
            outputs, hidden = self.rnn(inputs)
        else:
            packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, hidden = self.rnn(packed)
            outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
        if self.per_step:
            return self.head(self.dropout(outputs)).transpose(1, 2)
        if self.pooling in ("mean", "max"):
            if lengths is None:
                pooled = outputs.mean(dim=1) if self.pooling == "mean" else outputs.amax(dim=1)
            else:
                mask = (torch.arange(steps, device=inputs.device)[None, :] < lengths[:, None].to(inputs.device))[
                    :, :, None
                ]
                if self.pooling == "mean":
                    pooled = (outputs * mask).sum(dim=1) / lengths.to(outputs.dtype).to(inputs.device)[:, None]
                else:
                    pooled = outputs.masked_fill(~mask, float("-inf")).amax(dim=1)
            return self.head(self.dropout(pooled))
        if lengths is None:
            if isinstance(hidden, tuple):  # LSTM returns (h_n, c_n)
                hidden = hidden[0]
            last = hidden[-self.directions :].transpose(0, 1).reshape(inputs.shape[0], -1)
            return self.head(self.dropout(last))
        # The final states read from the outputs (as h_n holds them: forward at each text's own last
        # step, backward at its first), so the ONNX graph keeps the unpacking it needs.
        size = self.rnn.hidden_size
        at_end = (lengths.to(outputs.device) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
        last = outputs.gather(1, at_end).squeeze(1)[:, :size]
        if self.directions == 2:
            last = torch.cat([last, outputs[:, 0, size:]], dim=1)
        return self.head(self.dropout(last))


def build_sequence_model(spec: JobSpec, num_features: int, num_outputs: int, vocab_size: int | None) -> SequenceModel:
    return SequenceModel(spec.model, num_features, num_outputs, vocab_size=vocab_size, per_step=per_step(spec))
