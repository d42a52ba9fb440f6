"""Per-column affine scalers, fitted on the training part only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Scaler:
    """``scaled = (value - center) / scale`` per column (last axis)."""

    center: np.ndarray
    scale: np.ndarray

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.center) / self.scale

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return values * self.scale + self.center

    def to_dict(self) -> dict[str, list[float]]:
        return {"center": [float(v) for v in self.center], "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Scaler:
        return cls(np.asarray(values["center"], dtype=np.float64), np.asarray(values["scale"], dtype=np.float64))


def fit_scaler(values: np.ndarray, method: str) -> Scaler:
    """Fit on ``values`` shaped [..., C]; constant columns get scale 1 instead of dividing by zero."""
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
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
