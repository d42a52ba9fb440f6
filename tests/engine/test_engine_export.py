"""Model export (ONNX with the scalers folded in, safetensors, pt) and offline prediction from files.

The reference in every comparison is ``Predictor.predict``: the exact call behind ``POST /jobs/{id}/predict``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch

from tests.engine.engine_fixtures import make_spec, separable_arrays, sine_table
from worker.engine import DataError, load_predictor, train_and_evaluate
from worker.engine.export import (
    ONNX_OPSET,
    OnnxPredictor,
    export_model,
    from_safetensors,
    load_model_file,
    safetensors_metadata,
)
from worker.engine.layouts import build_examples
from worker.engine.offline import predict_file, prediction_windows

TOLERANCE = 1e-4


def _regression_table(n: int = 160, steps: int = 6, seed: int = 0) -> pa.Table:
    """Long format: sequences of two features; the target (in large units) is their sum of means."""
    rng = np.random.default_rng(seed)
    a = rng.normal(50.0, 10.0, (n, steps))
    b = rng.normal(-3.0, 2.0, (n, steps))
    target = 1000.0 + 20.0 * a.mean(axis=1) + 5.0 * b.mean(axis=1)
    return pa.table(
        {
            "seq": np.repeat(np.arange(n), steps),
            "step": np.tile(np.arange(steps), n),
            "a": a.ravel(),
            "b": b.ravel(),
            "y": np.repeat(target, steps),
        }
    )


def _case(task: str) -> tuple[dict[str, Any], Any]:
    if task == "forecast":
        table = sine_table(240)
        # Shift and stretch the sine so folding the scalers in is visible in the outputs.
        table = table.set_column(1, "value", pa.array(np.asarray(table.column("value")) * 40.0 + 300.0))
        return {"layout": "series", "target": "value", "lookback": 10, "horizon": 3}, table
    if task == "regression":
        data = {"layout": "sequences", "target": "y", "sequence_column": "seq", "order_column": "step"}
        return data, _regression_table()
    return {"layout": "arrays", "target": "y"}, separable_arrays(160, steps=8, features=3)


# Every cell and every task, with bidirectional and multi-layer models among them.
CASES = [
    ("lstm", False, 1, "forecast", "standard"),
    ("gru", True, 1, "forecast", "minmax"),
    ("rnn", True, 2, "forecast", "standard"),
    ("lstm", True, 2, "regression", "standard"),
    ("gru", False, 2, "regression", "minmax"),
    ("rnn", False, 1, "regression", "standard"),
    ("lstm", False, 2, "classification", "standard"),
    ("gru", True, 2, "classification", "standard"),
    ("rnn", True, 1, "classification", "none"),
    # The training defaults' options: per-example scaling, pooling, forecast residual, forget-gate bias.
    ("gru", False, 1, "classification", "per_example", {"pooling": "mean"}),
    ("lstm", True, 1, "regression", "per_example", {"pooling": "max"}),
    ("lstm", False, 2, "forecast", "standard", {"residual": "last_value", "forget_gate_bias": 1.0}),
    # The AR residual and patching (8 steps in groups of 3: the front padded by one step).
    ("gru", False, 1, "forecast", "standard", {"residual": "ar", "patch": 4}),
    # The AR in the logarithm of the target (a positive series), from min-max scaled inputs.
    ("lstm", False, 1, "forecast", "minmax", {"residual": "ar", "ar_scale": "log", "ar_ridge": "loo"}),
    # A forecast combination: the ar and last_value members and their weights, in one graph.
    ("gru", False, 1, "forecast", "standard", {"residual": "ar", "combine": "inverse_mse"}),
    ("lstm", False, 1, "classification", "per_example", {"patch": 3, "pooling": "mean"}),
    ("rnn", True, 1, "regression", "standard", {"patch": 4}),
    # Step changes next to the values (a buffer scales them), with patching and under the AR.
    ("gru", False, 1, "classification", "per_example", {"differences": True, "patch": 3, "pooling": "mean"}),
    ("lstm", False, 1, "forecast", "standard", {"residual": "ar", "differences": True}),
    # Ensembles: three networks' mean probabilities (as log-probabilities) or mean outputs, in one graph.
    ("gru", False, 1, "classification", "per_example", {"ensemble": 3, "differences": True, "patch": 2}),
    ("lstm", True, 1, "regression", "standard", {"ensemble": 2, "pooling": "mean"}),
]


def _train(
    cell: str, bidirectional: bool, layers: int, task: str, scaling: str, model: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    data_spec, data = _case(task)
    spec = make_spec(
        task,
        {**data_spec, "scaling": scaling},
        model={"cell": cell, "hidden_size": 8, "num_layers": layers, "bidirectional": bidirectional, **(model or {})},
        training={"epochs": 2},
        evaluation={"bootstrap_samples": 0, "attribution": False},
    )
    return train_and_evaluate(spec, data), data


@pytest.mark.parametrize("case", CASES)
def test_onnx_matches_predict(case: tuple[Any, ...]) -> None:
    import onnx

    cell, bidirectional, layers, task, scaling, *model = case
    result, data = _train(cell, bidirectional, layers, task, scaling, *model)
    reference = load_predictor(result.artifact)
    onnx_bytes = export_model(result.artifact, "onnx")
    rng = np.random.default_rng(1)
    # Raw inputs in original units, a batch size the export never saw.
    if task == "classification":
        x = data["X"][:37]
    else:
        x = np.asarray(build_examples(reference.spec, data).x)[:37] + rng.normal(0, 0.01, (37, 1, 1)).astype(np.float32)
    expected = reference.predict(x)
    got = OnnxPredictor(onnx_bytes).predict(x)
    if task == "classification":
        assert got["labels"] == expected["labels"]
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=TOLERANCE, atol=TOLERANCE)
    else:
        np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE)
        # Original units, not scaled ones: the forecast case's values are around 300.
        assert task != "forecast" or np.mean(np.abs(got)) > 100

    model = onnx.load_from_string(onnx_bytes)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {ONNX_OPSET}
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["rnnlab.opset"] == str(ONNX_OPSET) and "rnnlab.spec" in metadata and "rnnlab.scalers" in metadata
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch axis


def test_safetensors_and_pt_round_trip_without_pickle(tmp_path: Path) -> None:
    result, data = _train("gru", True, 2, "forecast", "standard")
    reference = load_predictor(result.artifact)
    x = np.asarray(build_examples(reference.spec, data).x)[:20]
    expected = reference.predict(x)

    st = export_model(result.artifact, "safetensors")
    metadata = safetensors_metadata(st)
    assert set(metadata) == {"format", "spec", "scalers", "classes", "input"}
    # safetensors holds tensors and a JSON header only: nothing to unpickle.
    assert b"\x80\x04" not in st[:16] and st[8:9] == b"{"
    np.testing.assert_array_equal(load_predictor(from_safetensors(st)).predict(x), expected)

    pt = export_model(result.artifact, "pt")
    reloaded = torch.load(io.BytesIO(pt), weights_only=True)
    np.testing.assert_array_equal(load_predictor(reloaded).predict(x), expected)

    for name, blob in (("m.pt", pt), ("m.safetensors", st), ("m.onnx", export_model(result.artifact, "onnx"))):
        path = tmp_path / name
        path.write_bytes(blob)
        np.testing.assert_allclose(load_model_file(path).predict(x), expected, rtol=TOLERANCE, atol=TOLERANCE)
        # The format is recognised from the content when the suffix says nothing.
        anonymous = tmp_path / f"download-{name.split('.')[1]}"
        anonymous.write_bytes(blob)
        np.testing.assert_allclose(load_model_file(anonymous).predict(x), expected, rtol=TOLERANCE, atol=TOLERANCE)


def test_unknown_export_format_is_a_data_error() -> None:
    result, _ = _train("rnn", False, 1, "forecast", "standard")
    with pytest.raises(DataError, match="formats are: pt, onnx, safetensors"):
        export_model(result.artifact, "tflite")


def test_series_windows_are_the_layout_windows_plus_the_newest(tmp_path: Path) -> None:
    result, table = _train("lstm", False, 1, "forecast", "standard")
    predictor = load_predictor(result.artifact)
    windows = prediction_windows(predictor.spec, predictor.steps, predictor.features, table)
    training = np.asarray(build_examples(predictor.spec, table).x)
    lookback, horizon = 10, 3
    # The layout's windows need `horizon` targets after them; prediction also forecasts past the data.
    assert len(windows.x) == len(training) + horizon
    np.testing.assert_array_equal(windows.x[: len(training)], training)
    np.testing.assert_array_equal(windows.x[-1, :, 0], np.asarray(table.column("value"))[-lookback:].astype(np.float32))
    assert windows.index["row"][-1] == table.num_rows - 1

    csv_path, model_path = tmp_path / "series.csv", tmp_path / "model.onnx"
    pcsv.write_csv(table, csv_path)
    model_path.write_bytes(export_model(result.artifact, "onnx"))
    predictions = predict_file(model_path, csv_path)
    assert predictions.column_names == ["row", "prediction_1", "prediction_2", "prediction_3"]
    expected = np.asarray(predictor.predict(windows.x))
    got = np.stack([np.asarray(predictions.column(f"prediction_{h}")) for h in (1, 2, 3)], axis=1)
    np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE)


def test_offline_classification_and_sequences_files(tmp_path: Path) -> None:
    result, arrays = _train("gru", False, 1, "classification", "standard")
    npz = tmp_path / "x.npz"
    np.savez(npz, X=arrays["X"][:25])
    model = tmp_path / "model.pt"
    torch.save(result.artifact, model)
    table = predict_file(model, npz)
    expected = load_predictor(result.artifact).predict(arrays["X"][:25])
    assert table.column("prediction").to_pylist() == expected["labels"]
    assert table.column_names == ["row", "prediction", "probability_0", "probability_1"]

    result, long_table = _train("lstm", False, 1, "regression", "standard")
    parquet = tmp_path / "seqs.parquet"
    import pyarrow.parquet as pq

    pq.write_table(long_table.drop_columns(["y"]), parquet)  # no target needed to predict
    model = tmp_path / "reg.safetensors"
    model.write_bytes(export_model(result.artifact, "safetensors"))
    predictions = predict_file(model, parquet)
    assert predictions.column_names == ["seq", "prediction"] and predictions.num_rows == 160

    short = tmp_path / "short.csv"
    pcsv.write_csv(long_table.slice(0, 4), short)
    with pytest.raises(DataError, match="sequence '0' has 4 steps; the model takes sequences of 6"):
        predict_file(model, short)


def test_series_with_groups_predicts_from_each_series_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 120
    t = np.concatenate([np.arange(n), np.arange(n)])
    values = np.concatenate([np.sin(np.arange(n) / 3), 5 + np.cos(np.arange(n) / 4)])
    group = ["a"] * n + ["b"] * n
    order = rng.permutation(2 * n)  # rows in no particular order: the layout sorts by (group, t)
    table = pa.table({"g": [group[i] for i in order], "t": t[order], "v": values[order]})
    spec = make_spec(
        "forecast",
        {"layout": "series", "target": "v", "group_column": "g", "order_column": "t", "lookback": 8},
        model={"cell": "gru", "hidden_size": 4},
        training={"epochs": 1},
        evaluation={"bootstrap_samples": 0, "attribution": False},
    )
    model_path, csv_path = tmp_path / "m.pt", tmp_path / "g.csv"
    torch.save(train_and_evaluate(spec, table).artifact, model_path)
    pcsv.write_csv(table, csv_path)
    predictions = predict_file(model_path, csv_path)
    assert predictions.column_names == ["row", "g", "t", "prediction"]
    last_b = predictions.num_rows - 1
    assert predictions.column("g")[last_b].as_py() == "b" and predictions.column("t")[last_b].as_py() == n - 1
    expected = load_predictor(torch.load(model_path, weights_only=True)).predict(values[None, -8:, None])
    np.testing.assert_allclose(predictions.column("prediction")[last_b].as_py(), expected[0][0], rtol=1e-6)
