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


def is_nested(kind: pa.DataType) -> bool:
    """Lists, structs, maps and unions: values that are not one number, text or date each."""
    return bool(
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
        or pa.types.is_struct(kind)
        or pa.types.is_map(kind)
        or pa.types.is_union(kind)
    )


def plain_column(table: pa.Table, name: str, field: str, role: str = "column") -> pa.ChunkedArray:
    """The column, refusing nested types (list, struct, map): a key, label or split column needs one
    plain value (number, text, date) per row."""
    column = require_column(table, name, field)
    if is_nested(column.type):
        raise DataError(
            f"{role} '{name}' has type {column.type}; it must hold one plain value (a number, text or date) "
            "per row, not a list, struct or map",
            field=field,
        )
    return column


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
    values = as_float64(column, name, field, role)
    refuse_non_finite(values, f"column '{name}'", field)
    return values


EXACT_INTEGER = 2**53  # beyond it, not every integer has a float64 of its own


def refuse_inexact_integers(values: np.ndarray, name: str, field: str) -> None:
    """Integer arrays (NPZ) by the same rule as table columns: beyond ±2^53 they are refused."""
    if values.dtype.kind not in "iu" or values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    largest = high if abs(high) >= abs(low) else low
    if abs(largest) > EXACT_INTEGER:
        raise DataError(
            f"{name} holds integers beyond ±2^53 (e.g. {largest}), which cannot be represented exactly as "
            "floats; drop or rescale them before uploading",
            field=field,
        )


def as_float64(column: pa.ChunkedArray, name: str, field: str, role: str = "column") -> np.ndarray:
    """A numeric column as float64; integers beyond ±2**53 (which no float holds exactly) are refused."""
    try:
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(), dtype=np.float64)
    except pa.ArrowInvalid:
        if not pa.types.is_integer(column.type):
            raise
        extremes = pc.min_max(column).as_py()
        largest = max((v for v in extremes.values() if v is not None), key=abs)
        raise DataError(
            f"{role} '{name}' holds integers beyond ±2^53 (e.g. {largest}), which cannot be represented "
            "exactly as floats; drop the column (an id or a timestamp in nanoseconds is no feature) or "
            "rescale it (e.g. seconds since the first row) before uploading",
            field=field,
        ) from None


def as_strings(column: pa.ChunkedArray, name: str, field: str, role: str = "column") -> np.ndarray:
    """A plain (not nested) column as an object array of Python strings."""
    try:
        text = column.cast(pa.string())
    except pa.ArrowInvalid:  # binary values that are not UTF-8
        raise DataError(f"{role} '{name}' holds bytes that are not UTF-8 text", field=field) from None
    except pa.ArrowNotImplementedError:
        raise DataError(
            f"{role} '{name}' has type {column.type}, which cannot be read as labels", field=field
        ) from None
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def label_column(table: pa.Table, name: str, field: str) -> np.ndarray:
    """A label column (strings or numbers) as a numpy array, refusing missing values and nested types."""
    column = plain_column(table, name, field, "target")
    refuse_missing(column, name, field)
    if is_numeric(column):
        return as_float64(column, name, field, "target")
    return as_strings(column, name, field, "target")


def encode_classes(labels: np.ndarray, field: str) -> tuple[np.ndarray, list[Any]]:
    """Class indices [N] and the sorted class values (plain Python, ints where integral).

    Labels are numbers, booleans or text: class values are written into the model file and the
    evaluation, so anything else (dates, durations, complex numbers, bytes) is refused here.
    Byte strings are decoded to text by the caller.
    """
    if labels.dtype.kind not in "biufUO":
        raise DataError(
            f"target has dtype {labels.dtype}; class labels must be numbers, booleans or text",
            field=field,
        )
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
    odd = next((v for v in values if not isinstance(v, str | int | float | bool)), None)
    if odd is not None:
        raise DataError(
            f"target holds {type(odd).__name__} values such as {odd!r}; class labels must be numbers, booleans or text",
            field=field,
        )
    if classes.dtype.kind == "f" and all(float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    return codes.astype(np.int64), values


def split_label_column(table: pa.Table, name: str) -> np.ndarray:
    """The split column as lower-case strings, refusing values other than train / val / test."""
    column = plain_column(table, name, "data.split.column", "split column")
    refuse_missing(column, name, "data.split.column")
    values = as_strings(column, name, "data.split.column", "split column")
    return normalize_split_labels(values, f"column '{name}'")


def normalize_split_labels(values: np.ndarray, where: str) -> np.ndarray:
    if values.dtype.kind == "S":
        try:
            values = np.char.decode(values, "utf-8")
        except UnicodeDecodeError as exc:
            message = f"{where} holds byte strings that are not UTF-8 ({exc.reason})"
            raise DataError(message, field="data.split.column") from None
    labels = np.char.lower(np.char.strip(values.astype(str)))
    unknown = sorted(set(np.unique(labels).tolist()) - {"train", "val", "test"})
    if unknown:
        raise DataError(
            f"{where} holds {', '.join(repr(u) for u in unknown[:5])}; allowed values are train, val, test",
            field="data.split.column",
        )
    return labels
