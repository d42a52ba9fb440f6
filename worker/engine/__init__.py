"""rnnlab's training engine: pure PyTorch and NumPy — a spec and data in, callbacks and a result out."""

from .data import check_spec_fits
from .engine import EngineResult, train_and_evaluate
from .errors import DataError, TrainingDiverged
from .predictor import Predictor, load_predictor
from .spec import JobSpec
from .training import EpochReport

__all__ = [
    "DataError",
    "EngineResult",
    "EpochReport",
    "JobSpec",
    "Predictor",
    "TrainingDiverged",
    "check_spec_fits",
    "load_predictor",
    "train_and_evaluate",
]
