"""rnnlab's training engine: pure PyTorch and NumPy — a spec and data in, callbacks and a result out.

The names load lazily, so the API can validate specs against datasets (``JobSpec``,
``check_spec_fits``, ``DataError``: NumPy and pyarrow only) without importing torch; torch is
loaded on first use of training or prediction.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .data import check_spec_fits
    from .engine import EngineResult, resolve_device, train_and_evaluate
    from .errors import DataError, DeviceUnavailable, TrainingDiverged
    from .predictor import Predictor, load_predictor
    from .spec import JobSpec
    from .training import EpochReport

_EXPORTS = {
    "DataError": ".errors",
    "TrainingDiverged": ".errors",
    "DeviceUnavailable": ".errors",
    "resolve_device": ".engine",
    "JobSpec": ".spec",
    "check_spec_fits": ".data",
    "EngineResult": ".engine",
    "train_and_evaluate": ".engine",
    "Predictor": ".predictor",
    "load_predictor": ".predictor",
    "EpochReport": ".training",
}

__all__ = [
    "DataError",
    "DeviceUnavailable",
    "EngineResult",
    "EpochReport",
    "JobSpec",
    "Predictor",
    "TrainingDiverged",
    "check_spec_fits",
    "load_predictor",
    "resolve_device",
    "train_and_evaluate",
]
assert set(__all__) == set(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
