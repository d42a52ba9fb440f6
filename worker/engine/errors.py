"""Exceptions the engine raises for the caller to map onto job errors."""

from __future__ import annotations


class DataError(ValueError):
    """The data (or the data together with the spec) cannot be used.

    ``field`` is the dotted spec path the problem belongs to (``data.target``), or ``""``.
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class DeviceUnavailable(RuntimeError):
    """The spec asks for a device this process does not have."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""
