"""Hostile data reaching the engine's readers: a ``DataError`` naming the field (a 422 at submission,
the job's ``data_error`` message in the worker), never an Arrow or numpy exception."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.engine.engine_fixtures import make_spec, sine_table
from worker.engine import DataError
from worker.engine.data import check_spec_fits, prepare_data
from worker.engine.layouts import build_examples
from worker.engine.splits import split_indices
from worker.engine.tables import encode_classes, label_column, numeric_column, split_label_column
from worker.runner import classify_error


def test_integers_beyond_2_53_are_a_data_error_when_planning_and_when_training() -> None:
    n = 200
    table = pa.table(
        {"ts": pa.array([1700000000000000000 + i * 1000000001 for i in range(n)]), "value": np.sin(np.arange(n) / 4)}
    )
    spec = make_spec("forecast", {"layout": "series", "target": "value", "features": ["ts", "value"], "lookback": 4})
    with pytest.raises(DataError, match=r"feature 'ts' holds integers beyond ±2\^53") as planned:
        check_spec_fits(spec, table)
    assert planned.value.field == "data.features"
    with pytest.raises(DataError) as trained:  # what the worker runs: the job fails with this message
        prepare_data(spec, table, np.random.default_rng(0))
    failure = classify_error(trained.value)
    assert failure.error_type == "data_error" and "'ts'" in failure.message and "rescale" in failure.message
    # Up to 2**53 integers are exact floats, and still read.
    exact = pa.table({"v": pa.array([2**53, -(2**53), 0])})
    assert numeric_column(exact, "v", "data.target").tolist() == [2.0**53, -(2.0**53), 0.0]
    unsigned = pa.table({"u": pa.array([2**64 - 1, 0], pa.uint64())})
    with pytest.raises(DataError, match=str(2**64 - 1)):
        label_column(unsigned, "u", "data.target")


def test_nested_and_unreadable_label_and_split_columns_are_data_errors() -> None:
    table = pa.table(
        {
            "m": pa.array([[("a", 1)], [("b", 2)]], pa.map_(pa.string(), pa.int64())),
            "b": pa.array([b"train", b"\xff"]),
        }
    )
    with pytest.raises(DataError, match=r"'m' has type map<string, int64>"):
        label_column(table, "m", "data.target")
    with pytest.raises(DataError, match=r"'m' has type map<string, int64>") as err:
        split_label_column(table, "m")
    assert err.value.field == "data.split.column"
    with pytest.raises(DataError, match="not UTF-8"):
        split_label_column(table, "b")


def test_dictionary_and_half_float_key_columns_sort() -> None:
    n = 60
    table = pa.table(
        {
            "g": pa.array(["a", "b"] * (n // 2)).dictionary_encode(),
            "o": pa.array(np.arange(n, dtype=np.float16)),
            "value": np.sin(np.arange(n) / 3),
        }
    )
    spec = make_spec(
        "forecast", {"layout": "series", "target": "value", "lookback": 2, "group_column": "g", "order_column": "o"}
    )
    examples = build_examples(spec, table)
    assert examples.group_names == ["a", "b"] and examples.n == 2 * (n // 2 - 2)


def test_empty_npz_arrays_are_data_errors() -> None:
    spec = make_spec("regression", {"layout": "arrays", "target": "y"})
    with pytest.raises(DataError, match=r"array X holds no examples \(shape \[0, 3, 1\]\)"):
        build_examples(spec, {"X": np.zeros((0, 3, 1)), "y": np.zeros(0)})
    with pytest.raises(DataError, match="array y has no target columns"):
        build_examples(spec, {"X": np.zeros((5, 3, 1)), "y": np.zeros((5, 0))})


def test_npz_integers_beyond_2_53_are_refused_like_table_columns() -> None:
    x = np.arange(60, dtype=np.int64).reshape(20, 3, 1)
    x[3, 1, 0] = -(2**62)
    spec = make_spec("regression", {"layout": "arrays", "target": "y"})
    with pytest.raises(DataError, match=r"array 'X' holds integers beyond ±2\^53 \(e.g. -4611686018427387904\)") as err:
        build_examples(spec, {"X": x, "y": np.zeros(20)})
    assert err.value.field == "data.features"
    big_y = np.full(20, 2**60, dtype=np.int64)
    with pytest.raises(DataError, match=r"array 'y' holds integers beyond") as err:
        build_examples(spec, {"X": np.zeros((20, 3, 1)), "y": big_y})
    assert err.value.field == "data.target"
    # As class labels, large integers are names: accepted.
    labels = np.where(np.arange(20) % 2 == 0, 2**60, 7).astype(np.int64)
    classes = make_spec("classification", {"layout": "arrays", "target": "y"})
    build_examples(classes, {"X": np.zeros((20, 3, 1)), "y": labels})


@pytest.mark.parametrize("val_fraction", [0.15, 0.0])
def test_purge_that_leaves_nothing_names_horizon_with_real_counts(val_fraction: float) -> None:
    spec = make_spec(
        "forecast",
        {"layout": "series", "target": "value", "lookback": 1, "horizon": 590, "split": {"val_fraction": val_fraction}},
    )
    with pytest.raises(DataError) as err:
        check_spec_fits(spec, sine_table(600))
    message = err.value.message
    assert err.value.field == "data.horizon"
    assert "10 forecast windows" in message and "drops 589 window(s)" in message and "leaves 0" in message
    assert "data.lookback" in message and "-1168" not in message and "-579" not in message
    # Without a purge the old message stands.
    with pytest.raises(DataError, match="has only 1 examples"):
        split_indices("temporal", 1, val_fraction=0.1, test_fraction=0.1, rng=np.random.default_rng(0))


def test_token_sequences_name_the_sequence_column() -> None:
    """Token sequences (text.column of 'sequences') name data.sequence_column, as numeric sequences do."""
    table = pa.table(
        {
            "case": pa.array([1, 1, None, 2]),
            "step": [0, 1, 0, 1],
            "word": ["ann", "smith", "bob", "went"],
            "tag": ["B", "I", "B", "O"],
        }
    )
    data = {"layout": "sequences", "target": "tag", "sequence_column": "case", "order_column": "step"}
    spec = make_spec("tagging", data, text={"column": "word"}, training={"epochs": 1})
    with pytest.raises(DataError, match="missing values in column 'case'") as err:
        build_examples(spec, table)
    assert err.value.field == "data.sequence_column"


@pytest.mark.parametrize("dtype", ["datetime64[D]", "timedelta64[s]", "complex128", "V8"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_npz_y_of_dates_durations_complex_or_raw_bytes_is_refused_at_submit(task: str, dtype: str) -> None:
    """Such labels made the job succeed and /predict and the exports fail (datetime classes in the .pt)."""
    y = np.array([0, 1] * 20).astype(dtype) if dtype != "V8" else np.zeros(40, dtype=dtype)
    spec = make_spec(task, {"layout": "arrays", "target": "y"})
    with pytest.raises(DataError, match=r"array y has dtype") as err:
        check_spec_fits(spec, {"X": np.random.default_rng(0).standard_normal((40, 6, 2)), "y": y})
    assert err.value.field == "data.target"
    # The encoder itself takes only numbers, booleans and text.
    with pytest.raises(DataError, match="class labels must be") as encoded:
        encode_classes(np.array([0, 1] * 3, dtype="datetime64[D]"), "data.target")
    assert encoded.value.field == "data.target"
    codes, classes = encode_classes(np.array(["b", "a", "b"], dtype=object), "data.target")
    assert classes == ["a", "b"] and codes.tolist() == [1, 0, 1]
    assert all(type(c) is str for c in classes)


def test_npz_byte_string_labels_are_decoded_as_utf8() -> None:
    """``y`` of dtype S holding UTF-8 (``"é".encode()``) raised UnicodeDecodeError from ``astype(str)``:
    a crash of the worker and a 500 at submit, not a data error."""
    spec = make_spec("classification", {"layout": "arrays", "target": "y"})
    x = np.random.default_rng(0).standard_normal((40, 6, 2))
    y = np.array(["é".encode(), b"a"] * 20)
    assert y.dtype.kind == "S"
    check_spec_fits(spec, {"X": x, "y": y})
    examples = build_examples(spec, {"X": x, "y": y})
    assert examples.classes == ["a", "é"] and all(type(c) is str for c in examples.classes)
    assert np.asarray(examples.y).tolist()[:2] == [1, 0]
    bad = np.array([b"a", b"\xff\xfe"] * 20)
    for run in (check_spec_fits, build_examples):
        with pytest.raises(DataError, match=r"array 'y' holds byte strings that are not UTF-8 \(entry 1") as err:
            run(spec, {"X": x, "y": bad})
        assert err.value.field == "data.target"
        assert classify_error(err.value).error_type == "data_error"
    # The same for a split array of byte strings.
    split = np.array([b"train"] * 30 + [b"val\xff"] * 10)
    column_spec = make_spec(
        "classification", {"layout": "arrays", "target": "y", "split": {"method": "column", "column": "split"}}
    )
    with pytest.raises(DataError, match="not UTF-8") as err:
        build_examples(column_spec, {"X": x, "y": y, "split": split})
    assert err.value.field == "data.split.column"


def test_npz_zero_dimensional_y_names_data_target() -> None:
    spec = make_spec("regression", {"layout": "arrays", "target": "y"})
    with pytest.raises(DataError, match=r"array y must be shaped \[N\] or \[N, H\] with N=40; got \[\]") as err:
        check_spec_fits(spec, {"X": np.zeros((40, 6, 2)), "y": np.array(1.0)})
    assert err.value.field == "data.target"


def _key_table(key: pa.Array, tmp_path: Any = None) -> pa.Table:
    """A table with key column ``k`` (read back from Parquet, as the worker reads it, with ``tmp_path``)."""
    n = len(key)
    table = pa.table(
        {
            "y": np.sin(np.arange(n) / 3),
            "cls": [["a", "b", "a"][i % 3] for i in range(n)],  # constant per sequence (k = i % 3)
            "o": np.arange(n),
            "k": key,
        }
    )
    if tmp_path is None:
        return table
    pq.write_table(table, tmp_path / "keys.parquet")
    return pq.read_table(tmp_path / "keys.parquet")


def _key_specs() -> dict[str, Any]:
    return {
        "data.group_column": make_spec(
            "forecast", {"layout": "series", "target": "y", "lookback": 2, "group_column": "k", "order_column": "o"}
        ),
        "data.order_column": make_spec(
            "forecast", {"layout": "series", "target": "y", "lookback": 2, "order_column": "k"}
        ),
        "data.sequence_column": make_spec(
            "classification",
            {"layout": "sequences", "target": "cls", "sequence_column": "k", "order_column": "o", "features": ["y"]},
        ),
    }


def test_uuid_json_and_time_of_day_key_columns_group_order_and_sequence(tmp_path) -> None:
    """UUIDs (as DuckDB and Polars write sequence ids), JSON text and nanosecond times of day were a 500
    (Arrow cannot sort extension types; a time with nanoseconds has no Python value)."""
    n = 60
    keys = {
        "uuid": pa.array([uuid.UUID(int=i % 3).bytes for i in range(n)], pa.uuid()),
        "json": pa.array([f'{{"a": {i % 3}}}' for i in range(n)], pa.json_()),
        "time64[ns]": pa.array([i % 3 for i in range(n)], pa.time64("ns")),
        "string_view": pa.array([str(i % 3) for i in range(n)], pa.string_view()),
    }
    names = {
        "uuid": [str(uuid.UUID(int=i)) for i in range(3)],
        "json": ['{"a": 0}', '{"a": 1}', '{"a": 2}'],
        "time64[ns]": ["00:00:00.000000000", "00:00:00.000000001", "00:00:00.000000002"],
        "string_view": ["0", "1", "2"],
    }
    for label, key in keys.items():
        table = _key_table(key, None if label == "string_view" else tmp_path)
        assert table.schema.field("k").type == key.type, label
        specs = _key_specs()
        grouped = build_examples(specs["data.group_column"], table)
        assert grouped.group_names == names[label], label
        assert grouped.n == 3 * (n // 3 - 2), label
        ordered = build_examples(specs["data.order_column"], table)
        assert ordered.n == n - 2, label
        sequences = build_examples(specs["data.sequence_column"], table)
        assert sequences.n == 3 and sequences.steps == n // 3, label
        check_spec_fits(specs["data.sequence_column"], table)


def test_key_columns_arrow_cannot_sort_are_data_errors_naming_the_field() -> None:
    n = 60
    table = _key_table(pa.array([pa.MonthDayNano([1, 2, i % 3]) for i in range(n)], pa.month_day_nano_interval()))
    for field, spec in _key_specs().items():
        with pytest.raises(DataError, match=r"column 'k' has type month_day_nano_interval, which cannot order") as err:
            build_examples(spec, table)
        assert err.value.field == field


def test_nan_in_key_columns_is_refused_like_null() -> None:
    """A NaN order value was sorted last and a NaN group became a series named 'nan'."""
    n = 60
    key = np.array([float(i % 3) for i in range(n)])
    key[5] = np.nan
    table = _key_table(pa.array(key))
    for field, spec in _key_specs().items():
        with pytest.raises(DataError, match=r"1 missing values in column 'k' \(null or NaN\)") as err:
            check_spec_fits(spec, table)
        assert err.value.field == field
