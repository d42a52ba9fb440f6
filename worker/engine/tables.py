"""Reading columns out of a ``pyarrow.Table`` with the checks every layout needs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError

MAX_CLASSES = 1000


def require_column(table: pa.Table, name: str, field: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"column '{name}' not found; columns are: {', '.join(table.column_names)}", field=field)
    return table.column(name)


def is_numeric(column: pa.ChunkedArray) -> bool:
    kind = column.type
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    )


def count_missing(column: pa.ChunkedArray) -> int:
    missing = column.null_count
    if pa.types.is_floating(column.type):
        missing += int(pc.sum(pc.is_nan(column.fill_null(0.0))).as_py() or 0)
    return missing


def refuse_missing(column: pa.ChunkedArray, name: str, field: str) -> None:
    missing = count_missing(column)
    if missing:
        raise DataError(f"{missing} missing values in column '{name}'; fill or drop them before training", field=field)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def refuse_non_finite(values: np.ndarray, name: str, field: str) -> None:
    """Infinite values, or values the float32 model inputs cannot hold, are data errors, not divergence."""
    if values.dtype.kind != "f" or values.size == 0:
        return
    bad = int(np.count_nonzero(~np.isfinite(values) & ~np.isnan(values)))
    if bad:
        raise DataError(f"{bad} infinite values in {name}; replace or drop them before training", field=field)
    too_large = int(np.count_nonzero(np.abs(values) > FLOAT32_MAX))
    if too_large:
        raise DataError(
            f"{too_large} values in {name} exceed the float32 range (±{FLOAT32_MAX:.3g}); rescale them",
            field=field,
        )


def numeric_column(table: pa.Table, name: str, field: str, role: str = "column") -> np.ndarray:
    """The column as float64, refusing non-numeric types, missing and infinite values."""
    column = require_column(table, name, field)
    if not is_numeric(column):
        raise DataError(f"{role} '{name}' is not numeric (type {column.type})", field=field)
    refuse_missing(column, name, field)
    values = np.asarray(pc.cast(column, pa.float64()).to_numpy(), dtype=np.float64)
    refuse_non_finite(values, f"column '{name}'", field)
    return values


def label_column(table: pa.Table, name: str, field: str) -> np.ndarray:
    """A label column (strings or numbers) as a numpy array, refusing missing values."""
    column = require_column(table, name, field)
    refuse_missing(column, name, field)
    if is_numeric(column):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy())
    return np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)


def encode_classes(labels: np.ndarray, field: str) -> tuple[np.ndarray, list[Any]]:
    """Class indices [N] and the sorted class values (plain Python, ints where integral)."""
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        value = classes[0] if len(classes) else None
        raise DataError(f"target has one class ({value!r}); classification needs at least two", field=field)
    if len(classes) > MAX_CLASSES:
        raise DataError(
            f"target has {len(classes)} distinct values (at most {MAX_CLASSES} classes); is this a regression task?",
            field=field,
        )
    values = classes.tolist()
    if classes.dtype.kind == "f" and all(float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    return codes.astype(np.int64), values


def split_label_column(table: pa.Table, name: str) -> np.ndarray:
    """The split column as lower-case strings, refusing values other than train / val / test."""
    column = require_column(table, name, "data.split.column")
    refuse_missing(column, name, "data.split.column")
    values = np.asarray(column.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    return normalize_split_labels(values, f"column '{name}'")


def normalize_split_labels(values: np.ndarray, where: str) -> np.ndarray:
    if values.dtype.kind == "S":
        values = np.char.decode(values)
    labels = np.char.lower(np.char.strip(values.astype(str)))
    unknown = sorted(set(np.unique(labels).tolist()) - {"train", "val", "test"})
    if unknown:
        raise DataError(
            f"{where} holds {', '.join(repr(u) for u in unknown[:5])}; allowed values are train, val, test",
            field="data.split.column",
        )
    return labels
