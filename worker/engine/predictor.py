"""Predictions from a saved model artifact (see ``engine.build_artifact``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DataError
from .models import build_recurrent_model, forward_in_chunks
from .scaling import PER_EXAMPLE_MIN_STD, Scaler
from .spec import CLASS_TASKS, JobSpec
from .text import TextCodec, check_text_inputs, uses_sequence_model

# The artifact layout version: written by engine.build_artifact, checked here on load.
ARTIFACT_FORMAT = "rnnlab.model/1"


class ScaledModel(nn.Module):
    """Raw inputs ``[B, T, F]`` (float32) to outputs in original units, scalers folded in.

    Forecast / regression: float64 ``[B, H]``; classification: float32 class probabilities ``[B, C]``.
    This one module is what ``/predict``, offline prediction and the ONNX export all run, so a
    preprocessing step added here reaches every one of them. The affine steps run in float64 so
    targets in large units keep their precision.
    """

    x_center: torch.Tensor
    x_scale: torch.Tensor
    y_center: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, model: nn.Module, x_scaler: Scaler, y_scaler: Scaler | None) -> None:
        super().__init__()
        self.model = model
        self.classification = y_scaler is None
        # Per-step tags (SequenceModel): class probabilities come out [B, T, C].
        self.per_step = bool(getattr(model, "per_step", False))
        self.per_example = x_scaler.per_example
        self.register_buffer("x_center", torch.as_tensor(x_scaler.center, dtype=torch.float64))
        self.register_buffer("x_scale", torch.as_tensor(x_scaler.scale, dtype=torch.float64))
        y = y_scaler or Scaler(np.zeros(1), np.ones(1))
        self.register_buffer("y_center", torch.as_tensor(y.center, dtype=torch.float64))
        self.register_buffer("y_scale", torch.as_tensor(y.scale, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.double()
        if self.per_example:  # as scaling.z_normalize_examples, in operators ONNX has
            centred = values - values.mean(dim=-2, keepdim=True)
            spread = (centred * centred).mean(dim=-2, keepdim=True).sqrt()
            values = centred / torch.where(spread > PER_EXAMPLE_MIN_STD, spread, torch.ones_like(spread))
        scaled = ((values - self.x_center) / self.x_scale).float()
        out = self.model(scaled)
        if self.classification:
            proba = torch.softmax(out, dim=1)
            return proba.transpose(1, 2) if self.per_step else proba
        return out.double() * self.y_scale + self.y_center


def format_predictions(
    task: str, classes: list[Any] | None, outputs: np.ndarray, tokens: list[list[str]] | None = None
) -> Any:
    """``ScaledModel`` outputs as ``/predict`` answers them (see ``Predictor.predict``).

    ``tokens``: the tokens each text was read as (token-input models; tagging labels one per token).
    """
    if task == "tagging":
        assert classes is not None
        tags = np.asarray(outputs).argmax(axis=2)
        if tokens is None:
            return {"labels": [[classes[t] for t in row] for row in tags]}
        return {
            "tokens": tokens,
            "labels": [[classes[t] for t in row[: len(words)]] for row, words in zip(tags, tokens, strict=True)],
        }
    if tokens is not None:
        formatted = format_predictions(task, classes, outputs)
        return {"tokens": tokens, **formatted} if isinstance(formatted, dict) else formatted
    if classes is not None:
        proba = np.asarray(outputs, dtype=np.float64)
        labels = [classes[i] for i in proba.argmax(axis=1)]
        return {"labels": labels, "probabilities": proba.tolist()}
    values = np.asarray(outputs, dtype=np.float64)
    if task == "regression" and values.shape[1] == 1:
        return values[:, 0].tolist()
    return values.tolist()


# Inputs beyond this overflow the float32 the model computes in.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_inputs(inputs: Any, steps: int, features: list[str]) -> np.ndarray:
    """Raw windows as float32 ``[N, steps, features]``; a ``DataError`` naming the expected shape otherwise."""
    expected = [steps, len(features)]
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim == 2 and len(features) == 1:
        x = x[:, :, None]
    if x.ndim != 3 or list(x.shape[1:]) != expected:
        raise DataError(
            f"expected inputs shaped [N, {expected[0]}, {expected[1]}] (steps, features "
            f"{', '.join(features)}); got {list(np.shape(inputs))}",
            field="inputs",
        )
    if len(x) == 0:
        raise DataError("no input windows (N is 0): nothing to predict", field="inputs")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{int((~np.isfinite(x)).sum())} missing or infinite input values", field="inputs")
    beyond = int((np.abs(x) > FLOAT32_MAX).sum())
    if beyond:
        raise DataError(
            f"{beyond} input values beyond the float32 range the model computes in (±{FLOAT32_MAX:.4g})",
            field="inputs",
        )
    return x.astype(np.float32)


def finite_outputs(out: np.ndarray) -> np.ndarray:
    """``out``, or a ``DataError`` when inputs far outside the training data overflowed the model."""
    bad = int((~np.isfinite(out)).sum())
    if bad:
        raise DataError(
            f"{bad} predicted values overflowed (not finite): the inputs are too far outside the range "
            "the model was trained on",
            field="inputs",
        )
    return out


class Predictor:
    """A trained model with its scalers; ``predict`` takes and returns original units."""

    def __init__(self, artifact: dict[str, Any], device: str = "cpu") -> None:
        if artifact.get("format") != ARTIFACT_FORMAT:
            raise DataError(f"not an rnnlab model artifact (format {artifact.get('format')!r})")
        spec = JobSpec.model_validate(artifact["spec"])
        if spec.model.pooling == "auto":  # saved before pooling existed: the final hidden state
            spec = spec.model_copy(update={"model": spec.model.model_copy(update={"pooling": "last"})})
        self.spec = spec
        self.steps: int = artifact["input"]["steps"]
        self.features: list[str] = list(artifact["input"]["features"])
        self.classes: list[Any] | None = artifact["classes"]
        self.x_scaler = Scaler.from_dict(artifact["scalers"]["x"])
        y_scaler = artifact["scalers"]["y"]
        self.y_scaler = Scaler.from_dict(y_scaler) if y_scaler is not None else None
        state = artifact["state_dict"]
        self.device = torch.device(device)
        text = artifact.get("text")
        self.codec = TextCodec.from_dict(text) if text is not None else None
        # A combination's members (``members.0.head.weight``) have the same outputs as a single model.
        head = "head.weight" if "head.weight" in state else "members.0.head.weight"
        num_outputs = int(state[head].shape[0])
        self.model: nn.Module
        if uses_sequence_model(spec):
            from .sequence_model import build_sequence_model

            vocab = int(state["embedding.weight"].shape[0]) if "embedding.weight" in state else None
            self.model = build_sequence_model(spec, len(self.features), num_outputs, vocab)
        else:
            self.model = build_recurrent_model(
                self.spec.model, len(self.features), num_outputs, steps=self.steps, classes=spec.task in CLASS_TASKS
            )
        self.model.load_state_dict(state)
        self.model.eval()
        self.scaled_model = ScaledModel(self.model, self.x_scaler, self.y_scaler).to(self.device).eval()

    def model_inputs(self, inputs: Any) -> tuple[np.ndarray, list[list[str]] | None]:
        """What ``ScaledModel`` takes: float32 windows, or int64 token ids ``[N, T]`` (with the tokens)
        for texts (a list of strings; of word lists for tagging and token sequences)."""
        if self.codec is None:
            return check_inputs(inputs, self.steps, self.features), None
        return self.codec.encode(check_text_inputs(inputs, self.codec.pretokenized))

    def outputs(self, inputs: Any) -> np.ndarray:
        """``ScaledModel`` outputs for raw windows (or texts): values in original units, or class probabilities."""
        return self._forward(self.model_inputs(inputs)[0])

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return finite_outputs(
            forward_in_chunks(self.scaled_model, torch.as_tensor(x, device=self.device)).cpu().numpy()
        )

    def predict(self, inputs: Any) -> Any:
        """Forecast / regression: a list [N, H] (or [N] for a single regression output).

        Classification: ``{"labels": [...], "probabilities": [[...], ...]}``; tagging: ``{"labels":
        [[tag per step], ...]}``. Text models add ``"tokens"``: how each text was tokenized (tagging
        labels one per token).
        """
        x, tokens = self.model_inputs(inputs)
        return format_predictions(self.spec.task, self.classes, self._forward(x), tokens)


def load_predictor(artifact: dict[str, Any], device: str = "cpu") -> Predictor:
    return Predictor(artifact, device)
