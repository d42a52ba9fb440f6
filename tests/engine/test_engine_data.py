from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from worker.engine import DataError, JobSpec, check_spec_fits
from worker.engine.data import prepare_data
from worker.engine.layouts import build_examples
from worker.engine.splits import Split, assert_disjoint, split_indices

from .engine_fixtures import make_spec


def series_spec(**data: object) -> JobSpec:
    return make_spec("forecast", {"layout": "series", "target": "value", **data})


def test_series_windows_with_horizon_and_stride() -> None:
    table = pa.table({"value": np.arange(10.0)})
    ex = build_examples(series_spec(lookback=3, horizon=2, stride=2), table)
    assert ex.x is not None and ex.y is not None
    # Starts 0, 2, 4: a window of 3 inputs then 2 targets must fit in 10 rows.
    np.testing.assert_array_equal(ex.x[:, :, 0], [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    np.testing.assert_array_equal(ex.y, [[3, 4], [5, 6], [7, 8]])
    np.testing.assert_array_equal(ex.time, [3, 5, 7])
    assert ex.target_history is not None
    np.testing.assert_array_equal(ex.target_history, ex.x[:, :, 0])


def test_window_longer_than_series_is_a_clear_error() -> None:
    table = pa.table({"g": ["a"] * 100 + ["b"] * 200, "value": np.arange(300.0)})
    spec = series_spec(lookback=120, horizon=10, group_column="g")
    with pytest.raises(DataError) as info:
        check_spec_fits(spec, table)
    assert info.value.field == "data.lookback"
    assert "lookback+horizon=130 steps is longer than series 'a' (100 rows)" in str(info.value)


def test_several_series_never_mix_in_a_window_and_split_per_series() -> None:
    # Series 'a' counts from 0, 'b' from 1000; rows are shuffled and ordered by the order column.
    rng = np.random.default_rng(1)
    g = np.array(["a"] * 60 + ["b"] * 80)
    t = np.r_[np.arange(60), np.arange(80)]
    value = np.where(g == "a", t, 1000 + t).astype(float)
    perm = rng.permutation(len(g))
    table = pa.table({"g": g[perm], "t": t[perm], "value": value[perm]})
    spec = series_spec(lookback=5, horizon=3, group_column="g", order_column="t")
    prep = prepare_data(spec, table, np.random.default_rng(0))
    ex = prep.examples
    assert ex.x is not None and ex.y is not None
    full = np.concatenate([ex.x[:, :, 0], ex.y], axis=1)
    assert np.all(np.diff(full, axis=1) == 1)  # consecutive steps of one series, never across
    for g_id in (0, 1):
        parts = {p: idx[ex.group[idx] == g_id] for p, idx in prep.split.parts().items()}
        assert all(len(idx) for idx in parts.values())
        # Leakage: every test (and val) target comes strictly after every training target.
        train_last = ex.time[parts["train"]].max() + 2
        assert ex.time[parts["val"]].min() > train_last
        assert ex.time[parts["test"]].min() > ex.time[parts["val"]].max() + 2


def test_scalers_are_fitted_on_training_data_only() -> None:
    value = np.r_[np.zeros(80), np.full(20, 1e6)]  # the last rows (val / test) are huge
    table = pa.table({"value": value + np.arange(100) % 2})
    prep = prepare_data(series_spec(lookback=4), table, np.random.default_rng(0))
    assert prep.x_scaler.center[0] < 1.0 and prep.y_scaler is not None and prep.y_scaler.center[0] < 1.0


def test_random_and_stratified_splits_are_disjoint_and_balanced() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(900, dtype=int), np.ones(100, dtype=int)]
    for method in ("random", "stratified"):
        split = split_indices(method, 1000, val_fraction=0.2, test_fraction=0.2, rng=rng, labels=labels)
        assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(1000))
        if method == "stratified":
            assert labels[split.test].sum() == 20 and labels[split.val].sum() == 20


def test_disjointness_is_enforced() -> None:
    with pytest.raises(RuntimeError, match="share examples"):
        assert_disjoint(Split(np.array([0, 1]), np.array([2]), np.array([1])))


def test_column_split_carves_validation_out_of_training() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    table = pa.table(
        {
            **{f"s{i}": x[:, i] for i in range(4)},
            "y": rng.integers(0, 2, 50),
            "part": ["train"] * 40 + ["test"] * 10,
        }
    )
    spec = make_spec(
        "classification", {"layout": "wide", "target": "y", "split": {"method": "column", "column": "part"}}
    )
    prep = prepare_data(spec, table, rng)
    assert len(prep.split.val) == 6 and len(prep.split.train) == 34
    np.testing.assert_array_equal(prep.split.test, np.arange(40, 50))
    assert any("set aside for validation" in note for note in prep.notes)


def test_column_split_refuses_unknown_values() -> None:
    table = pa.table({"s0": [1.0, 2.0], "s1": [1.0, 2.0], "y": [0, 1], "part": ["train", "holdout"]})
    spec = make_spec(
        "classification", {"layout": "wide", "target": "y", "split": {"method": "column", "column": "part"}}
    )
    with pytest.raises(DataError, match="'holdout'; allowed values are train, val, test"):
        check_spec_fits(spec, table)


def test_missing_values_name_column_and_count() -> None:
    values = np.arange(50.0)
    values[[3, 7, 9]] = np.nan
    table = pa.table({"value": np.arange(50.0), "x": pa.array(values, from_pandas=True)})
    with pytest.raises(DataError) as info:
        check_spec_fits(series_spec(lookback=4, features=["value", "x"]), table)
    assert "3 missing values in column 'x'" in str(info.value) and info.value.field == "data.features"


def test_unknown_column_lists_the_columns() -> None:
    table = pa.table({"date": ["2020"] * 5, "value": np.arange(5.0)})
    with pytest.raises(DataError, match="column 'temp' not found; columns are: date, value"):
        check_spec_fits(make_spec("forecast", {"layout": "series", "target": "temp"}), table)


def test_classification_target_with_one_class() -> None:
    data = {"X": np.zeros((20, 5)), "y": np.ones(20)}
    with pytest.raises(DataError, match="one class"):
        check_spec_fits(make_spec("classification", {"layout": "arrays", "target": "y"}), data)


def test_string_and_numeric_labels() -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, 0.0, 1.0, 0.0], "y": ["up", "down", "up", "flat"]})
    ex = build_examples(make_spec("classification", {"layout": "wide", "target": "y"}), table)
    assert ex.classes == ["down", "flat", "up"] and ex.y is not None
    assert ex.y.tolist() == [2, 0, 2, 1]
    numeric = build_examples(
        make_spec("classification", {"layout": "arrays", "target": "y"}),
        {"X": np.zeros((3, 2)), "y": np.array([2.0, 1.0, 2.0])},
    )
    assert numeric.classes == [1, 2]


def test_wide_layout_refuses_a_non_numeric_step_column() -> None:
    table = pa.table({"c1": [1.0, 2.0], "c2": [1.0, 2.0], "c3": ["a", "b"], "y": [0, 1]})
    with pytest.raises(DataError, match="wide layout step column 'c3' is not numeric"):
        check_spec_fits(make_spec("classification", {"layout": "wide", "target": "y"}), table)


def test_sequences_layout_orders_steps_and_checks_the_target() -> None:
    table = pa.table(
        {
            "seq": ["a", "a", "a", "b", "b", "b"],
            "t": [2, 0, 1, 0, 2, 1],
            "x": [2.0, 0.0, 1.0, 10.0, 12.0, 11.0],
            "y": [5.0, 5.0, 5.0, 7.0, 7.0, 7.0],
        }
    )
    data = {"layout": "sequences", "target": "y", "sequence_column": "seq", "order_column": "t"}
    ex = build_examples(make_spec("regression", data), table)
    assert ex.x is not None and ex.y is not None
    np.testing.assert_array_equal(ex.x[:, :, 0], [[0, 1, 2], [10, 11, 12]])
    np.testing.assert_array_equal(ex.y, [[5.0], [7.0]])
    changing = table.set_column(3, "y", pa.array([5.0, 5.0, 6.0, 7.0, 7.0, 7.0]))
    with pytest.raises(DataError, match="changes within a sequence"):
        build_examples(make_spec("regression", data), changing)
    uneven = table.slice(0, 5)
    with pytest.raises(DataError, match="different lengths"):
        build_examples(make_spec("regression", data), uneven)


def test_arrays_layout_shapes_and_split_array() -> None:
    arrays = {
        "X": np.arange(40.0).reshape(10, 4),
        "y": np.arange(20.0).reshape(10, 2),
        "split": np.array([b"train"] * 6 + [b"val"] * 2 + [b"test"] * 2),
    }
    spec = make_spec("regression", {"layout": "arrays", "target": "y", "split": {"method": "column"}})
    prep = prepare_data(spec, arrays, np.random.default_rng(0))
    assert prep.examples.x is not None and prep.examples.x.shape == (10, 4, 1)
    assert prep.examples.y is not None and prep.examples.y.shape == (10, 2)
    np.testing.assert_array_equal(prep.split.val, [6, 7])
    with pytest.raises(DataError, match="layout 'series' needs a table"):
        check_spec_fits(series_spec(), arrays)


def test_too_few_examples_to_split() -> None:
    table = pa.table({"value": np.arange(6.0)})
    with pytest.raises(DataError, match="too few to split"):
        check_spec_fits(series_spec(lookback=4), table)
