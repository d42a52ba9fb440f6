"""Predictions from a saved model artifact (see ``engine.build_artifact``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import DataError
from .models import RecurrentModel, forward_in_chunks
from .scaling import Scaler
from .spec import JobSpec

# The artifact layout version: written by engine.build_artifact, checked here on load.
ARTIFACT_FORMAT = "rnnlab.model/1"


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
        self.model = RecurrentModel(self.spec.model, len(self.features), int(state["head.weight"].shape[0]))
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    def _check(self, inputs: np.ndarray) -> np.ndarray:
        expected = [self.steps, len(self.features)]
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim == 2 and len(self.features) == 1:
            x = x[:, :, None]
        if x.ndim != 3 or list(x.shape[1:]) != expected:
            raise DataError(
                f"expected inputs shaped [N, {expected[0]}, {expected[1]}] (steps, features "
                f"{', '.join(self.features)}); got {list(np.shape(inputs))}",
                field="inputs",
            )
        if not np.all(np.isfinite(x)):
            raise DataError(f"{int((~np.isfinite(x)).sum())} missing or infinite input values", field="inputs")
        return x

    def predict(self, inputs: np.ndarray) -> Any:
        """Forecast / regression: a list [N, H] (or [N] for a single regression output).

        Classification: ``{"labels": [...], "probabilities": [[...], ...]}``.
        """
        x = self._check(inputs)
        scaled = torch.as_tensor(self.x_scaler.transform(x), dtype=torch.float32, device=self.device)
        out = forward_in_chunks(self.model, scaled).double().cpu()
        if self.classes is not None:
            proba = torch.softmax(out, dim=1).numpy()
            labels = [self.classes[i] for i in proba.argmax(axis=1)]
            return {"labels": labels, "probabilities": proba.tolist()}
        assert self.y_scaler is not None
        values = self.y_scaler.inverse(out.numpy())
        if self.spec.task == "regression" and values.shape[1] == 1:
            return values[:, 0].tolist()
        return values.tolist()


def load_predictor(artifact: dict[str, Any], device: str = "cpu") -> Predictor:
    return Predictor(artifact, device)
