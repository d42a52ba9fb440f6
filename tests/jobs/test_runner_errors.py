"""How training-time failures become error.type + a message a user can act on."""

from __future__ import annotations

import pytest
import torch

from worker.engine import DataError, TrainingDiverged
from worker.runner import JobFailure, classify_error, resolve_device


@pytest.mark.parametrize(
    ("exc", "error_type", "says"),
    [
        (DataError("12 missing values in column 'x'", field="data.features"), "data_error", "missing"),
        (TrainingDiverged("loss became NaN at epoch 3; lower the learning rate"), "diverged", "learning rate"),
        (MemoryError(), "out_of_memory", "batch_size"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory", "batch_size"),
        (RuntimeError("something odd\nTraceback (most recent call last):\n  File ..."), "internal_error", "odd"),
    ],
)
def test_failures_are_classified_without_stack_traces(exc: BaseException, error_type: str, says: str) -> None:
    failure = classify_error(exc)
    assert failure.error_type == error_type
    assert says in failure.message and "Traceback" not in failure.message


def test_cuda_without_a_gpu_is_a_clear_failure() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
        return
    with pytest.raises(JobFailure) as info:
        resolve_device("cuda")
    assert info.value.error_type == "device_unavailable" and "gpu" in info.value.message
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
