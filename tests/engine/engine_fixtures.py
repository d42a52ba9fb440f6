"""Small synthetic datasets and specs shared by the engine tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from worker.engine import JobSpec


def make_spec(task: str, data: dict[str, Any], **sections: Any) -> JobSpec:
    """A spec with small, fast defaults; ``sections`` override model / training / evaluation."""
    body: dict[str, Any] = {
        "dataset_id": "ds",
        "task": task,
        "data": data,
        "model": {"hidden_size": 16},
        "training": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01},
        "evaluation": {"bootstrap_samples": 100, "attribution": False},
        "device": "cpu",
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return JobSpec.model_validate(body)


def sine_table(n: int = 600, period: int = 20, noise: float = 0.05, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    value = np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)
    return pa.table({"t": t, "value": value})


def separable_arrays(n: int = 400, steps: int = 12, features: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Two classes whose sequences differ in mean by 1.5 standard deviations in every step."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, steps, features)) + 1.5 * y[:, None, None]
    return {"X": x.astype(np.float32), "y": y}
