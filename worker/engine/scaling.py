"""Per-column affine scalers fitted on the training part only, and per-example z-normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Below this standard deviation a channel of an example counts as constant: it is centred, not divided.
PER_EXAMPLE_MIN_STD = 1e-8


def z_normalize_examples(values: np.ndarray) -> np.ndarray:
    """Each example ``[..., T, C]`` centred and scaled over its own steps, per channel (UCR convention)."""
    x = np.asarray(values, dtype=np.float64)
    center = x.mean(axis=-2, keepdims=True)
    spread = x.std(axis=-2, keepdims=True)
    return (x - center) / np.where(spread > PER_EXAMPLE_MIN_STD, spread, 1.0)


@dataclass
class Scaler:
    """``scaled = (value - center) / scale`` per column (last axis).

    With ``per_example`` every example is first z-normalised over its own steps (inputs ``[N, T, C]``
    only); ``center`` and ``scale`` are then 0 and 1.
    """

    center: np.ndarray
    scale: np.ndarray
    per_example: bool = False

    def transform(self, values: np.ndarray) -> np.ndarray:
        if self.per_example:
            values = z_normalize_examples(values)
        return (values - self.center) / self.scale

    def inverse(self, values: np.ndarray) -> np.ndarray:
        if self.per_example:
            raise ValueError("per-example scaling has no inverse; it is for inputs only")
        return values * self.scale + self.center

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"center": [float(v) for v in self.center], "scale": [float(v) for v in self.scale]}
        if self.per_example:  # absent otherwise, so artifacts without it read as before
            values["per_example"] = True
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Scaler:
        return cls(
            np.asarray(values["center"], dtype=np.float64),
            np.asarray(values["scale"], dtype=np.float64),
            bool(values.get("per_example", False)),
        )


def fit_scaler(values: np.ndarray, method: str) -> Scaler:
    """Fit on ``values`` shaped [..., C]; constant columns get scale 1 instead of dividing by zero."""
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    if method == "per_example":
        return Scaler(np.zeros(flat.shape[1]), np.ones(flat.shape[1]), per_example=True)
    if method == "standard":
        center, scale = flat.mean(axis=0), flat.std(axis=0)
    elif method == "minmax":
        center, scale = flat.min(axis=0), flat.max(axis=0) - flat.min(axis=0)
    elif method == "none":
        center, scale = np.zeros(flat.shape[1]), np.ones(flat.shape[1])
    else:
        raise ValueError(f"unknown scaling {method!r}")
    scale = np.where(scale > 1e-12, scale, 1.0)
    return Scaler(center, scale)
