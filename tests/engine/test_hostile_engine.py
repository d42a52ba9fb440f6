"""Hostile data reaching the engine's readers: a ``DataError`` naming the field (a 422 at submission,
the job's ``data_error`` message in the worker), never an Arrow or numpy exception."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tests.engine.engine_fixtures import make_spec, sine_table
from worker.engine import DataError
from worker.engine.data import check_spec_fits, prepare_data
from worker.engine.layouts import build_examples
from worker.engine.splits import split_indices
from worker.engine.tables import label_column, numeric_column, split_label_column
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
