"""The four data layouts turned into examples ``x [N, T, F]`` and targets ``y``.

Every builder has a cheap planning mode (``materialize=False``) that only counts examples and
reads what the split needs, so ``check_spec_fits`` never builds the windows of a large dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError
from .spec import JobSpec
from .tables import (
    count_missing,
    encode_classes,
    is_nested,
    is_numeric,
    label_column,
    normalize_split_labels,
    numeric_column,
    plain_column,
    refuse_inexact_integers,
    refuse_non_finite,
    require_column,
    split_label_column,
)

Data: TypeAlias = pa.Table | dict[str, np.ndarray]


@dataclass
class Examples:
    """Examples in original units. ``x``/``y`` are ``None`` when only planned (not materialized)."""

    n: int
    x: np.ndarray | None  # float32 [N, T, F]
    # float64 [N, H] for forecast/regression; int64 class index [N] for classification
    y: np.ndarray | None
    steps: int
    feature_names: list[str]
    classes: list[Any] | None
    group: np.ndarray  # int64 [N]: which series an example comes from (temporal split is per series)
    time: np.ndarray  # int64 [N]: position in time (series: index of the first target step)
    split_labels: np.ndarray | None  # train / val / test / "" (excluded) from the split column
    group_names: list[str] = field(default_factory=lambda: ["all"])
    target_history: np.ndarray | None = None  # float64 [N, T] the target's lookback (series only)
    series_targets: list[np.ndarray] = field(default_factory=list)  # each series' target (series only)
    # Token inputs (text.py): each example's text (or word list), tokenized into ``x`` once the split
    # is known (the vocabulary is learned from the training part); ``codec`` is the tokenizer then.
    texts: list[Any] | None = None
    # Tagging: each example's tag indices per word / step, padded into ``y [N, T]`` with the inputs.
    step_targets: list[np.ndarray] | None = None
    codec: Any = None


def build_examples(spec: JobSpec, data: Data, *, materialize: bool = True) -> Examples:
    layout = spec.data.layout
    if layout == "arrays":
        if not isinstance(data, dict):
            raise DataError("layout 'arrays' needs an .npz dataset (arrays X and y)", field="data.layout")
        return _arrays(spec, data, materialize)
    if isinstance(data, dict):
        raise DataError(
            f"layout '{layout}' needs a table (.csv or .parquet); this dataset holds arrays",
            field="data.layout",
        )
    if layout == "text" or (layout == "sequences" and (spec.text is not None or spec.task == "tagging")):
        return _token_examples(spec, data)
    builders = {"series": _series, "sequences": _sequences, "wide": _wide}
    return builders[layout](spec, data, materialize)


def _token_examples(spec: JobSpec, table: pa.Table) -> Examples:
    """Text / token inputs and per-step tags (``text.py``); token ids are filled in by ``data.py``."""
    from .text import pad_step_targets, sequence_token_examples, text_examples

    built = text_examples(spec, table) if spec.data.layout == "text" else sequence_token_examples(spec, table)
    n = len(built.texts) if built.texts is not None else len(built.x)  # type: ignore[arg-type]
    steps = built.x.shape[1] if built.x is not None else 0
    y = built.y
    if built.x is not None and built.step_targets is not None:  # numeric tagging: already of equal length
        y = pad_step_targets(built.step_targets, steps)
    return Examples(
        n=n,
        x=built.x,
        y=y,
        steps=steps,
        feature_names=built.feature_names or ["token"],
        classes=built.classes,
        group=np.zeros(n, dtype=np.int64),
        time=np.arange(n),
        split_labels=built.split_labels,
        texts=built.texts,
        step_targets=built.step_targets,
    )


def _column_split(spec: JobSpec, table: pa.Table) -> np.ndarray | None:
    if spec.data.split.method != "column":
        return None
    assert spec.data.split.column is not None  # the spec validator guarantees it for tables
    return split_label_column(table, spec.data.split.column)


def _group_runs(
    table: pa.Table,
    group_column: str | None,
    order_column: str | None,
    group_field: str = "data.group_column",
) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Row order sorted by (group, order) and the [start, stop) run of each group in it.

    ``group_field`` is the spec field naming the group column (``data.sequence_column`` for sequences).
    Missing values (null, or NaN in a float column) are refused in either column: a row without a
    series or a position has no place in a window.
    """
    keys: dict[str, pa.ChunkedArray] = {}
    for name, field_name in ((group_column, group_field), (order_column, "data.order_column")):
        if name is not None:
            column = _sort_key(table, name, field_name)
            missing = count_missing(column)
            if missing:
                raise DataError(
                    f"{missing} missing values in column '{name}' (null or NaN); every row needs a value there",
                    field=field_name,
                )
            keys[name] = column
    n = table.num_rows
    if not keys:
        return np.arange(n), [("all", 0, n)]
    order = np.asarray(pc.sort_indices(pa.table(keys), sort_keys=[(k, "ascending") for k in keys]))
    if group_column is None:
        return order, [("all", 0, n)]
    if n == 0:
        return order, []
    groups = keys[group_column].take(pa.array(order)).combine_chunks()
    changed = pc.not_equal(groups.slice(1), groups.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, changed.astype(bool)])
    stops = np.r_[starts[1:], n]
    names = _key_names(table.column(group_column), groups, starts)
    return order, [(name, int(a), int(b)) for name, a, b in zip(names, starts, stops, strict=True)]


def _key_names(original: pa.ChunkedArray, sorted_keys: pa.Array, starts: np.ndarray) -> list[str]:
    """Each group's name: an extension type's own text (a UUID's canonical form, JSON text), a time of
    day as Arrow writes it (exact to the nanosecond), anything else as numpy shows the sort key."""
    picked = sorted_keys.take(pa.array(starts))
    kind = original.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if isinstance(kind, pa.BaseExtensionType):
        try:
            extension = pa.ExtensionArray.from_storage(kind, picked.cast(kind.storage_type))
            return [str(value) for value in extension.to_pylist()]
        except (pa.ArrowException, ValueError, TypeError):
            pass
    try:
        if pa.types.is_time(kind):
            return [str(value) for value in pc.cast(picked.cast(kind), pa.string()).to_pylist()]
        return [str(value) for value in picked.to_numpy(zero_copy_only=False)]
    except (pa.ArrowException, ValueError, OverflowError):
        try:
            return [str(value) for value in pc.cast(picked, pa.string()).to_pylist()]
        except pa.ArrowException:
            return [f"group {i}" for i in range(len(picked))]


def _sort_key(table: pa.Table, name: str, field_name: str) -> pa.ChunkedArray:
    """A column to sort rows by, as a type Arrow sorts and compares: nested types (list, struct, map)
    are refused, extension types (UUID, JSON) read as their storage, dictionary-encoded ones decoded,
    half floats widened, times of day as integers of their unit, string views as strings. A type Arrow
    still cannot sort (intervals) is a ``DataError`` naming the field."""
    column = plain_column(table, name, field_name)
    for _ in range(3):  # an extension of a dictionary, a dictionary of an extension: unwrap each
        kind = column.type
        if isinstance(kind, pa.BaseExtensionType):
            column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=kind.storage_type)
        elif pa.types.is_dictionary(kind):
            column = column.cast(kind.value_type)
        else:
            break
    kind = column.type
    if is_nested(kind) or pa.types.is_dictionary(kind) or isinstance(kind, pa.BaseExtensionType):
        raise DataError(
            f"column '{name}' has type {table.column(name).type}; it must hold one plain value "
            "(a number, text or date) per row, not a list, struct or map",
            field=field_name,
        )
    try:
        if pa.types.is_float16(kind):
            column = column.cast(pa.float64())
        elif pa.types.is_time(kind):
            column = column.cast(pa.int64() if kind.bit_width == 64 else pa.int32())
        elif pa.types.is_string_view(kind):
            column = column.cast(pa.large_string())
        elif pa.types.is_binary_view(kind):
            column = column.cast(pa.large_binary())
        # Sorting and comparing check the type before the values: one row tells whether they can.
        probe = column.slice(0, 1)
        pc.sort_indices(probe)
        pc.not_equal(probe, probe)
    except (pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise DataError(
            f"column '{name}' has type {table.column(name).type}, which cannot order or group rows ({exc}); "
            "use a column of numbers, text or dates",
            field=field_name,
        ) from None
    return column


def _series(spec: JobSpec, table: pa.Table, materialize: bool) -> Examples:
    d = spec.data
    lookback, horizon, stride = d.lookback, d.horizon, d.stride
    features = d.features or [d.target]
    target = numeric_column(table, d.target, "data.target", "target")
    columns = [
        target if name == d.target else numeric_column(table, name, "data.features", "feature") for name in features
    ]
    split_rows = _column_split(spec, table)
    order, runs = _group_runs(table, d.group_column, d.order_column)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    histories: list[np.ndarray] = []
    series_targets: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    times: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for g, (name, a, b) in enumerate(runs):
        rows = order[a:b]
        length = b - a
        if length < lookback + horizon:
            label = "the series" if name == "all" else f"series '{name}'"
            raise DataError(
                f"window of lookback+horizon={lookback + horizon} steps is longer than {label} "
                f"({length} rows); lower data.lookback or data.horizon",
                field="data.lookback",
            )
        count = (length - lookback - horizon) // stride + 1
        starts = np.arange(count) * stride
        groups.append(np.full(count, g, dtype=np.int64))
        times.append(starts + lookback)
        if split_rows is not None:
            s = split_rows[rows]
            first, last = s[starts + lookback], s[starts + lookback + horizon - 1]
            # A window whose targets straddle two parts would leak; it belongs to none.
            labels.append(np.where(first == last, first, ""))
        if materialize:
            y_series = target[rows]
            series_targets.append(y_series)
            values = np.stack([c[rows] for c in columns], axis=1).astype(np.float32)
            windows = np.lib.stride_tricks.sliding_window_view(values, lookback, axis=0)  # [W, F, T]
            xs.append(windows[starts].transpose(0, 2, 1))
            ys.append(np.lib.stride_tricks.sliding_window_view(y_series[lookback:], horizon)[starts])
            histories.append(np.lib.stride_tricks.sliding_window_view(y_series, lookback)[starts])
    return Examples(
        n=int(sum(len(g) for g in groups)),
        x=np.ascontiguousarray(np.concatenate(xs)) if materialize else None,
        y=np.concatenate(ys).astype(np.float64) if materialize else None,
        steps=lookback,
        feature_names=list(features),
        classes=None,
        group=np.concatenate(groups),
        time=np.concatenate(times),
        split_labels=np.concatenate(labels) if split_rows is not None else None,
        group_names=[name for name, _, _ in runs],
        target_history=np.concatenate(histories) if materialize else None,
        series_targets=series_targets,
    )


def _targets(spec: JobSpec, values: np.ndarray) -> tuple[np.ndarray, list[Any] | None]:
    if spec.task == "classification":
        return encode_classes(values, "data.target")
    if values.dtype.kind not in "fiub":
        raise DataError(
            f"target '{spec.data.target}' is not numeric; task '{spec.task}' needs numbers",
            field="data.target",
        )
    target = values.astype(np.float64).reshape(len(values), -1)
    refuse_non_finite(target, f"target '{spec.data.target}'", "data.target")
    return target, None


def _default_features(table: pa.Table, exclude: set[str]) -> list[str]:
    return [n for n in table.column_names if n not in exclude and is_numeric(table.column(n))]


def _sequences(spec: JobSpec, table: pa.Table, materialize: bool) -> Examples:
    d = spec.data
    assert d.sequence_column is not None and d.order_column is not None
    exclude = {d.target, d.sequence_column, d.order_column, d.group_column, d.split.column}
    features = d.features or _default_features(table, {e for e in exclude if e})
    if not features:
        raise DataError("no numeric feature columns besides the target; set data.features", field="data.features")
    order, runs = _group_runs(table, d.sequence_column, d.order_column, "data.sequence_column")
    lengths = np.array([b - a for _, a, b in runs])
    if lengths.min() != lengths.max():
        raise DataError(
            f"sequences have different lengths ({lengths.min()} to {lengths.max()} steps); "
            "this layout needs equal lengths — pad or trim them before uploading",
            field="data.sequence_column",
        )
    steps = int(lengths[0])
    starts = np.array([a for _, a, _ in runs])
    raw_target = label_column(table, d.target, "data.target")[order]
    first_target = raw_target[starts]
    if not np.all(raw_target.reshape(len(runs), steps) == first_target[:, None]):
        raise DataError(
            f"target '{d.target}' changes within a sequence; it must be constant per sequence",
            field="data.target",
        )
    y, classes = _targets(spec, first_target)
    split_rows = _column_split(spec, table)
    labels = None
    if split_rows is not None:
        per_step = split_rows[order].reshape(len(runs), steps)
        if not np.all(per_step == per_step[:, :1]):
            raise DataError("the split column changes within a sequence", field="data.split.column")
        labels = per_step[:, 0]
    # Read (and so check: numeric, no missing or infinite values) every feature even when only
    # planning, so a bad column is refused before the job is queued.
    columns = [numeric_column(table, f, "data.features", "feature") for f in features]
    x = None
    if materialize:
        x = np.stack([c[order] for c in columns], axis=1).astype(np.float32).reshape(len(runs), steps, len(features))
    n = len(runs)
    return Examples(
        n=n,
        x=x,
        y=y,
        steps=steps,
        feature_names=list(features),
        classes=classes,
        group=np.zeros(n, dtype=np.int64),
        time=np.arange(n),
        split_labels=labels,
    )


def _wide(spec: JobSpec, table: pa.Table, materialize: bool) -> Examples:
    d = spec.data
    exclude = {d.target, d.split.column, d.group_column, d.sequence_column, d.order_column}
    step_columns = d.features or [n for n in table.column_names if n not in exclude]
    if not step_columns:
        raise DataError("no step columns besides the target", field="data.features")
    for name in step_columns:
        column = require_column(table, name, "data.features")
        if not is_numeric(column):
            raise DataError(
                f"wide layout step column '{name}' is not numeric (type {column.type}); "
                "list the step columns in data.features",
                field="data.features",
            )
    y, classes = _targets(spec, label_column(table, d.target, "data.target"))
    # Checked when planning too (missing or infinite values are refused before queueing).
    columns = [numeric_column(table, c, "data.features", "step column") for c in step_columns]
    x = None
    if materialize:
        x = np.stack(columns, axis=1).astype(np.float32)[:, :, None]
    n = table.num_rows
    return Examples(
        n=n,
        x=x,
        y=y,
        steps=len(step_columns),
        feature_names=["value"],
        classes=classes,
        group=np.zeros(n, dtype=np.int64),
        time=np.arange(n),
        split_labels=_column_split(spec, table),
    )


def _arrays(spec: JobSpec, arrays: dict[str, np.ndarray], materialize: bool) -> Examples:
    for key in ("X", "y"):
        if key not in arrays:
            raise DataError(f"array '{key}' not found; arrays are: {', '.join(arrays)}", field="data.layout")
    x_raw, y_raw = arrays["X"], arrays["y"]
    if x_raw.ndim not in (2, 3) or x_raw.dtype.kind not in "fiub":
        raise DataError(
            f"array X must be numeric shaped [N, T, F] or [N, T]; got {x_raw.dtype} {list(x_raw.shape)}",
            field="data.layout",
        )
    n, steps = x_raw.shape[0], x_raw.shape[1]
    num_features = x_raw.shape[2] if x_raw.ndim == 3 else 1
    if n == 0:
        raise DataError(f"array X holds no examples (shape {list(x_raw.shape)})", field="data.layout")
    if steps == 0 or num_features == 0:
        raise DataError(
            f"array X needs at least one time step and one feature; got shape {list(x_raw.shape)}",
            field="data.layout",
        )
    if y_raw.ndim not in (1, 2) or y_raw.shape[0] != n:  # the rank first: a 0-d y has no shape[0]
        raise DataError(
            f"array y must be shaped [N] or [N, H] with N={n}; got {list(y_raw.shape)}", field="data.target"
        )
    if y_raw.dtype.kind not in "biufSU":
        # Dates, durations, complex numbers and raw bytes are no targets: as class labels they became
        # datetime objects in the model file, which /predict and the exports could not serve.
        raise DataError(
            f"array y has dtype {y_raw.dtype}; a target holds numbers, booleans or text (class names)",
            field="data.target",
        )
    if y_raw.ndim == 2 and y_raw.shape[1] == 0:
        raise DataError(f"array y has no target columns (shape {list(y_raw.shape)})", field="data.target")
    if spec.task == "classification" and y_raw.ndim != 1:
        raise DataError(f"classification needs y shaped [N]; got {list(y_raw.shape)}", field="data.target")
    names = spec.data.features or [f"x{i}" for i in range(num_features)]
    if len(names) != num_features:
        raise DataError(f"data.features names {len(names)} features but X has {num_features}", field="data.features")
    if x_raw.dtype.kind == "f":
        missing = int(np.isnan(x_raw).sum())
        if missing:
            raise DataError(
                f"{missing} missing values in array 'X'; fill or drop them before training",
                field="data.features",
            )
    refuse_non_finite(x_raw, "array 'X'", "data.features")
    refuse_inexact_integers(x_raw, "array 'X'", "data.features")
    if spec.task != "classification":  # class labels are names, however large
        refuse_inexact_integers(y_raw, "array 'y'", "data.target")
    labels = y_raw
    if y_raw.dtype.kind == "f":
        missing = int(np.isnan(y_raw).sum())
        if missing:
            raise DataError(f"{missing} missing values in array 'y'", field="data.target")
        refuse_non_finite(y_raw, "array 'y'", "data.target")
    elif y_raw.dtype.kind == "S":
        labels = _decoded_labels(y_raw).astype(object)
    elif y_raw.dtype.kind == "U":
        labels = y_raw.astype(str).astype(object)
    y, classes = _targets(spec, labels)
    split_labels = None
    if spec.data.split.method == "column":
        if "split" not in arrays:
            raise DataError(
                "split.method 'column' needs an array 'split' of train / val / test",
                field="data.split.method",
            )
        if arrays["split"].shape != (n,):
            raise DataError(f"array 'split' must be shaped [{n}]", field="data.split.column")
        split_labels = normalize_split_labels(arrays["split"], "array 'split'")
    x = None
    if materialize:
        x = np.ascontiguousarray(x_raw.reshape(n, steps, num_features), dtype=np.float32)
    return Examples(
        n=n,
        x=x,
        y=y,
        steps=steps,
        feature_names=list(names),
        classes=classes,
        group=np.zeros(n, dtype=np.int64),
        time=np.arange(n),
        split_labels=split_labels,
    )


def _decoded_labels(y_raw: np.ndarray) -> np.ndarray:
    """Byte-string labels (numpy dtype ``S``) decoded as UTF-8: ``astype(str)`` decodes as ASCII and
    raised UnicodeDecodeError (a crash, not a data error) on any other byte."""
    try:
        return np.asarray(np.char.decode(y_raw, "utf-8"))
    except UnicodeDecodeError as exc:
        flat = y_raw.reshape(-1)
        bad = next((i for i, v in enumerate(flat.tolist()) if not _is_utf8(v)), None)
        where = f" (entry {bad}: {repr(bytes(flat[bad]))[:60]})" if bad is not None else ""
        raise DataError(
            f"array 'y' holds byte strings that are not UTF-8{where}; store class names as UTF-8 text",
            field="data.target",
        ) from exc


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
