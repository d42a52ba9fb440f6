"""Offline prediction: a model file and a data file in, a table of predictions out, no server.

Windows are cut from the file the way the job's layout cut them (``layouts.py``), with the same
column checks; a ``series`` file also gets the window ending at its last row, which forecasts
past the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError
from .layouts import Data, _group_runs
from .spec import JobSpec
from .tables import is_numeric, numeric_column, require_column

INPUT_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".npz")
OUTPUT_SUFFIXES = (".csv", ".parquet")


@dataclass
class PredictionWindows:
    x: Any  # float32 [N, T, F] raw values; for text models the texts (or word lists)
    index: dict[str, list[Any]]  # columns that say where each window comes from
    # Tagging of sequences: one output row per step, and the columns that say which.
    step_index: dict[str, list[Any]] | None = None


def read_input_file(path: str | Path) -> Data:
    """A .csv / .csv.gz / .parquet file as a table, or a .npz file as arrays (no pickle)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        import pyarrow.csv as pcsv

        try:
            return pcsv.read_csv(path)
        except pa.ArrowInvalid as exc:
            raise DataError(f"cannot read {path.name} as CSV: {exc}") from exc
    raise DataError(f"unknown input format {path.name!r}; use one of {', '.join(INPUT_SUFFIXES)}")


def prediction_windows(spec: JobSpec, steps: int, features: list[str], data: Data) -> PredictionWindows:
    """Raw input windows for a model trained with ``spec`` on ``steps`` steps of ``features``."""
    layout = spec.data.layout
    if layout == "arrays":
        if not isinstance(data, dict):
            raise DataError("this model was trained on arrays; give an .npz file with an array X")
        return _arrays(data, steps, features)
    if isinstance(data, dict):
        raise DataError(f"this model was trained on a table (layout '{layout}'); give a .csv or .parquet file")
    if layout == "text" or (layout == "sequences" and (spec.text is not None or spec.task == "tagging")):
        return _token_windows(spec, steps, features, data)
    builders = {"series": _series, "sequences": _sequences, "wide": _wide}
    return builders[layout](spec, steps, features, data)


def _labels(column: pa.ChunkedArray) -> list[Any]:
    """A key column's values as the output table can hold them: an extension type's text (a UUID's
    canonical form, JSON text) and a time of day as Arrow writes it (exact to the nanosecond, where
    Python's time stops at microseconds); anything else as it is."""
    kind = column.type
    if isinstance(kind, pa.BaseExtensionType):
        return [None if value is None else str(value) for value in column.to_pylist()]
    if pa.types.is_time(kind):
        return pc.cast(column, pa.string()).to_pylist()
    return column.to_pylist()


def _token_windows(spec: JobSpec, steps: int, features: list[str], table: pa.Table) -> PredictionWindows:
    """Texts (layout text), or sequences of tokens / numeric steps, as the model's predictor takes them."""
    from .text import text_column

    d = spec.data
    if d.layout == "text":
        assert spec.text is not None
        texts: list[Any] = text_column(table, spec.text.column, "text.column")
        if spec.task == "tagging":
            texts = [t.split() for t in texts]
        return PredictionWindows(texts, {"row": list(range(table.num_rows))})
    assert d.sequence_column is not None and d.order_column is not None
    order, runs = _group_runs(table, d.sequence_column, d.order_column, "data.sequence_column")
    index = {d.sequence_column: [name for name, _, _ in runs]}
    step_rows = [order[a:b] for _, a, b in runs]
    orders = _labels(table.column(d.order_column))
    step_index = {
        d.sequence_column: [name for name, a, b in runs for _ in range(b - a)],
        d.order_column: [orders[r] for rows in step_rows for r in rows],
    }
    if spec.text is not None:
        tokens = text_column(table, spec.text.column, "text.column")
        return PredictionWindows([[tokens[r] for r in rows] for rows in step_rows], index, step_index)
    short = [(name, b - a) for name, a, b in runs if b - a != steps]
    if short:
        name, length = short[0]
        raise DataError(f"sequence '{name}' has {length} steps; the model takes sequences of {steps}")
    columns = [numeric_column(table, f, "features", "feature") for f in features]
    x = np.stack([c[order] for c in columns], axis=1).astype(np.float32).reshape(len(runs), steps, len(features))
    return PredictionWindows(x, index, step_index)


def _series(spec: JobSpec, steps: int, features: list[str], table: pa.Table) -> PredictionWindows:
    d = spec.data
    columns = [numeric_column(table, name, "features", "feature") for name in features]
    values_all = np.stack(columns, axis=1).astype(np.float32)
    order, runs = _group_runs(table, d.group_column, d.order_column)
    xs: list[np.ndarray] = []
    index: dict[str, list[Any]] = {"row": []}
    # The group and the order value of each window's last row say which step it forecasts from.
    labels = {c: table.column(c).to_pylist() for c in (d.group_column, d.order_column) if c}
    index.update({c: [] for c in labels})
    for name, a, b in runs:
        rows = order[a:b]
        if b - a < steps:
            label = "the series" if name == "all" else f"series '{name}'"
            raise DataError(f"{label} has {b - a} rows; the model needs windows of {steps} (lookback)")
        # Every stride-th window, counted back from the last row so the newest window is always in.
        ends = np.arange(b - a - 1, steps - 2, -d.stride)[::-1]
        windows = np.lib.stride_tricks.sliding_window_view(values_all[rows], steps, axis=0)  # [W, F, T]
        xs.append(windows[ends - steps + 1].transpose(0, 2, 1))
        index["row"] += rows[ends].tolist()
        for column, values in labels.items():
            index[column] += [values[r] for r in rows[ends]]
    return PredictionWindows(np.ascontiguousarray(np.concatenate(xs)), index)


def _sequences(spec: JobSpec, steps: int, features: list[str], table: pa.Table) -> PredictionWindows:
    d = spec.data
    assert d.sequence_column is not None and d.order_column is not None
    order, runs = _group_runs(table, d.sequence_column, d.order_column, "data.sequence_column")
    short = [(name, b - a) for name, a, b in runs if b - a != steps]
    if short:
        name, length = short[0]
        raise DataError(f"sequence '{name}' has {length} steps; the model takes sequences of {steps}")
    columns = [numeric_column(table, f, "features", "feature") for f in features]
    x = np.stack([c[order] for c in columns], axis=1).astype(np.float32).reshape(len(runs), steps, len(features))
    return PredictionWindows(x, {d.sequence_column: [name for name, _, _ in runs]})


def _wide(spec: JobSpec, steps: int, features: list[str], table: pa.Table) -> PredictionWindows:
    d = spec.data
    exclude = {d.target, d.split.column, d.group_column, d.sequence_column, d.order_column}
    step_columns = d.features or [
        n for n in table.column_names if n not in exclude and is_numeric(require_column(table, n, "features"))
    ]
    if len(step_columns) != steps:
        raise DataError(f"the model takes {steps} step columns; the file has {len(step_columns)} ({step_columns[:5]}…)")
    columns = [numeric_column(table, c, "features", "step column") for c in step_columns]
    x = np.stack(columns, axis=1).astype(np.float32)[:, :, None]
    return PredictionWindows(x, {"row": list(range(table.num_rows))})


def _arrays(arrays: dict[str, np.ndarray], steps: int, features: list[str]) -> PredictionWindows:
    if "X" not in arrays:
        raise DataError(f"array 'X' not found; arrays are: {', '.join(arrays)}")
    x = np.asarray(arrays["X"])
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[1:] != (steps, len(features)) or x.dtype.kind not in "fiub":
        raise DataError(f"array X must be numeric shaped [N, {steps}, {len(features)}]; got {x.dtype} {list(x.shape)}")
    return PredictionWindows(np.ascontiguousarray(x, dtype=np.float32), {"row": list(range(len(x)))})


def predictions_table(spec: JobSpec, classes: list[Any] | None, windows: PredictionWindows, outputs: Any) -> pa.Table:
    """The index columns, then ``prediction`` (``prediction_1..H`` for several steps) or, for
    classification, the label and one ``probability_<class>`` column per class."""
    columns: dict[str, Any] = dict(windows.index)
    values = np.asarray(outputs, dtype=np.float64)
    if spec.task == "tagging":
        assert classes is not None
        tags = values.argmax(axis=2)  # [N, T]
        lengths = [min(len(x), tags.shape[1]) for x in windows.x] if isinstance(windows.x, list) else None
        per_example = [
            [classes[t] for t in row[: lengths[i] if lengths is not None else len(row)]] for i, row in enumerate(tags)
        ]
        if windows.step_index is None:  # texts: the tags of each text's words, space-separated
            columns["prediction"] = [" ".join(str(t) for t in row) for row in per_example]
            return pa.table(columns)
        # One row per step; steps past the model's max_length get no prediction.
        columns = dict(windows.step_index)
        flat: list[Any] = []
        for i, row in enumerate(per_example):
            total = len(windows.x[i]) if isinstance(windows.x, list) else len(row)
            flat += [str(t) for t in row] + [None] * (total - len(row))
        columns["prediction"] = flat
        return pa.table(columns)
    if classes is not None:
        columns["prediction"] = [classes[i] for i in values.argmax(axis=1)]
        for k, label in enumerate(classes):
            columns[f"probability_{label}"] = values[:, k]
    elif values.shape[1] == 1:
        columns["prediction"] = values[:, 0]
    else:
        for h in range(values.shape[1]):
            columns[f"prediction_{h + 1}"] = values[:, h]
    return pa.table(columns)


def write_table(table: pa.Table, path: str | Path) -> None:
    """CSV, or Parquet when the name ends in .parquet."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a file name ending in .csv or .parquet")
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)


def predict_file(model_path: str | Path, input_path: str | Path) -> pa.Table:
    """Predictions for every window of ``input_path`` with the model file at ``model_path``."""
    from .export import load_model_file

    predictor = load_model_file(model_path)
    windows = prediction_windows(predictor.spec, predictor.steps, predictor.features, read_input_file(input_path))
    return predictions_table(predictor.spec, predictor.classes, windows, predictor.outputs(windows.x))
