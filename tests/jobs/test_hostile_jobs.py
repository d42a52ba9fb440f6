"""Hostile input to the job, sweep and list routes: each is a 4xx naming the problem, never a 500."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pytest

from tests.datasets.conftest import assert_error, parquet_bytes
from tests.stack import forecast_spec, sine_csv

JOBS = "/api/v1/jobs"


def _upload(client: Any, auth: dict[str, str], filename: str, content: bytes) -> str:
    r = client.post("/api/v1/datasets", headers=auth, files={"file": (filename, content, "application/octet-stream")})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _npz(**arrays: Any) -> bytes:
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


def _submit(client: Any, auth: dict[str, str], dataset_id: str, task: str, data: dict[str, Any]) -> Any:
    return client.post(JOBS, headers=auth, json={"dataset_id": dataset_id, "task": task, "data": data})


# -- 1. integers beyond 2**53 ------------------------------------------------------------------------


def test_nanosecond_timestamps_as_a_feature_are_422_naming_the_column(client, auth) -> None:
    rows = "\n".join(f"{1700000000000000000 + i * 1000000001},{math.sin(i / 4):.4f}" for i in range(200))
    ds = _upload(client, auth, "ns.csv", f"ts,value\n{rows}\n".encode())
    data = {"layout": "series", "target": "value", "features": ["ts", "value"], "lookback": 4}
    error = assert_error(_submit(client, auth, ds, "forecast", data), 422, "spec_does_not_fit_dataset", "'ts'", "2^53")
    assert "cannot be represented exactly as floats" in error["message"] and "rescale" in error["message"]
    assert error["details"][0]["field"] == "data.features"


def test_parquet_uint64_max_as_target_is_422_naming_the_column(client, auth) -> None:
    n = 60
    table = pa.table(
        {
            "big": pa.array([2**64 - 1 - i for i in range(n)], pa.uint64()),
            "x": pa.array(np.arange(n, dtype=np.float64)),
            "value": pa.array(np.sin(np.arange(n) / 3)),
        }
    )
    ds = _upload(client, auth, "big.parquet", parquet_bytes(table))
    data = {"layout": "series", "target": "big", "lookback": 4}
    error = assert_error(_submit(client, auth, ds, "forecast", data), 422, "spec_does_not_fit_dataset", "target 'big'")
    assert str(2**64 - 1) in error["message"] and error["details"][0]["field"] == "data.target"
    wide = {"layout": "wide", "target": "big", "features": ["x", "value"]}
    assert_error(_submit(client, auth, ds, "classification", wide), 422, "spec_does_not_fit_dataset", "'big'", "2^53")


# -- 2. empty NPZ arrays ----------------------------------------------------------------------------


def test_npz_with_zero_examples_is_422_naming_the_array(client, auth) -> None:
    ds = _upload(client, auth, "z.npz", _npz(X=np.zeros((0, 3, 1)), y=np.zeros(0)))
    for task in ("regression", "classification"):
        error = assert_error(
            _submit(client, auth, ds, task, {"layout": "arrays", "target": "y"}),
            422,
            "spec_does_not_fit_dataset",
            "array X holds no examples",
        )
        assert "[0, 3, 1]" in error["message"]
    no_targets = _upload(client, auth, "h0.npz", _npz(X=np.zeros((20, 3, 1)), y=np.zeros((20, 0))))
    assert_error(
        _submit(client, auth, no_targets, "regression", {"layout": "arrays", "target": "y"}),
        422,
        "spec_does_not_fit_dataset",
        "array y has no target columns",
    )


# -- 4. nested columns in any role ------------------------------------------------------------------


@pytest.fixture
def nested(client, auth) -> str:
    n = 40
    table = pa.table(
        {
            "m": pa.array([[("k", i % 2)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
            "l": pa.array([[i] for i in range(n)], pa.list_(pa.int64())),
            "st": pa.array([{"a": i % 4} for i in range(n)]),
            "sid": pa.array([i // 4 for i in range(n)]),
            "step": pa.array([i % 4 for i in range(n)]),
            "label": pa.array([(i // 4) % 2 for i in range(n)]),
            "value": pa.array(np.sin(np.arange(n) / 3)),
        }
    )
    return _upload(client, auth, "nested.parquet", parquet_bytes(table))


@pytest.mark.parametrize(
    ("task", "data", "column", "field"),
    [
        ("forecast", {"layout": "series", "target": "value", "lookback": 2, "group_column": "m"}, "m", "group_column"),
        ("forecast", {"layout": "series", "target": "value", "lookback": 2, "order_column": "l"}, "l", "order_column"),
        (
            "classification",
            {
                "layout": "sequences",
                "target": "label",
                "features": ["value"],
                "sequence_column": "st",
                "order_column": "step",
            },
            "st",
            "sequence_column",
        ),
        (
            "forecast",
            {"layout": "series", "target": "value", "lookback": 2, "split": {"method": "column", "column": "m"}},
            "m",
            "split.column",
        ),
        ("classification", {"layout": "wide", "target": "l", "features": ["value"]}, "l", "target"),
        ("forecast", {"layout": "series", "target": "value", "features": ["st"], "lookback": 2}, "st", "features"),
    ],
)
def test_nested_column_in_any_role_is_422_naming_it_and_its_type(
    client, auth, nested, task, data, column, field
) -> None:
    error = assert_error(_submit(client, auth, nested, task, data), 422, "spec_does_not_fit_dataset", f"'{column}'")
    assert ("map<" in error["message"]) or ("list<" in error["message"]) or ("struct<" in error["message"])
    assert error["details"][0]["field"] == f"data.{field}"


# -- 5. integers beyond the float range -------------------------------------------------------------


def test_integer_beyond_the_float_range_is_422_naming_where(client, auth) -> None:
    ds = _upload(client, auth, "sine.csv", sine_csv(200).encode())
    job_id = client.post(JOBS, headers=auth, json=forecast_spec(ds)).json()["id"]
    huge = int("9" * 400)
    r = client.post(f"{JOBS}/{job_id}/predict", headers=auth, json={"inputs": [[[huge]]]})
    error = assert_error(r, 422, "non_finite_number", "inputs[0][0][0]", "float range")
    assert error["details"][0]["field"] == "inputs[0][0][0]"
    space = {"training.learning_rate": {"low": -huge, "high": 1e-2}}
    body = {"name": "t", "base": forecast_spec(ds), "search": "tpe", "space": space}
    error = assert_error(client.post("/api/v1/sweeps", headers=auth, json=body), 422, "non_finite_number")
    assert error["details"][0]["field"] == "space.training.learning_rate.low"
    # Large integers a float holds are still numbers (checked by their fields as before).
    assert client.post(f"{JOBS}/{job_id}/predict", headers=auth, json={"inputs": [[[10**300]]]}).status_code == 409


# -- 7. forged keyset cursors -----------------------------------------------------------------------


def _cursor(body: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


@pytest.mark.parametrize(
    ("sort", "key", "job_id"),
    [
        ("attempts", 2**31, "x"),
        ("attempts", 2**63, "x"),
        ("attempts", -(2**63) - 1, "x"),
        ("attempts", 1.5, "x"),
        ("created_at", "9999-12-31T23:59:59-23:59", "x"),
        ("-created_at", "0001-01-01T00:00:00+23:59", "x"),
        ("name", "a\u0000b", "x"),
        ("name", "\ud800", "x"),
        ("attempts", 1, "a\u0000b"),
        ("test.rmse", 10**400, "x"),
    ],
)
def test_forged_keyset_cursor_is_400_naming_the_cursor(client, auth, sort, key, job_id) -> None:
    cursor = _cursor({"s": sort, "p": "v", "k": key, "i": job_id})
    r = client.get(JOBS, params={"sort": sort, "cursor": cursor}, headers=auth)
    assert_error(r, 400, "invalid_cursor", "cursor")


def test_in_range_cursors_still_page(client, auth) -> None:
    for sort, key in (("attempts", 2**31 - 1), ("created_at", "9999-12-31T23:59:59+00:00"), ("test.rmse", 1.5)):
        cursor = _cursor({"s": sort, "p": "v", "k": key, "i": "x"})
        r = client.get(JOBS, params={"sort": sort, "cursor": cursor}, headers=auth)
        assert r.status_code == 200, r.text
    for path in ("/api/v1/datasets", "/api/v1/sweeps"):
        for far in ("9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00"):
            r = client.get(path, params={"cursor": _cursor({"c": far, "i": "x"})}, headers=auth)
            assert r.status_code == 200, r.text
        for forged in (
            {"o": 2**63},
            {"c": "0001-01-01T00:00:00+01:00", "i": "x"},
            {"c": "now", "i": "x"},
            {"c": "2024-01-01T00:00:00+00:00", "i": "\u0000"},  # PostgreSQL text holds no NUL
            {"c": "2024-01-01T00:00:00+00:00", "i": "\ud800"},  # a lone surrogate cannot be encoded
        ):
            r = client.get(path, params={"cursor": _cursor(forged)}, headers=auth)
            assert_error(r, 400, "invalid_cursor", "cursor")


# -- 8. a horizon that leaves nothing to split ------------------------------------------------------


def test_horizon_that_leaves_no_windows_after_purging_names_the_field(client, auth) -> None:
    ds = _upload(client, auth, "sine.csv", sine_csv(600).encode())
    data = {"layout": "series", "target": "value", "lookback": 1, "horizon": 590}
    error = assert_error(_submit(client, auth, ds, "forecast", data), 422, "spec_does_not_fit_dataset", "data.horizon")
    message = error["message"]
    assert "10 forecast windows" in message and "leaves 0" in message and "data.lookback" in message
    assert not re.search(r"-\d", message), message  # never a negative count
    assert error["details"][0]["field"] == "data.horizon"


# -- 9. the task filter takes every task ------------------------------------------------------------


def test_task_and_cell_filters_take_every_value_of_the_spec(client, auth) -> None:
    from worker.engine.spec import ModelSpec, Task

    for task in get_args(Task):
        assert client.get(JOBS, params={"task": task}, headers=auth).status_code == 200, task
    assert_error(client.get(JOBS, params={"task": "poetry"}, headers=auth), 422, "validation_error", "task")
    for cell in get_args(ModelSpec.model_fields["cell"].annotation):
        assert client.get(JOBS, params={"cell": cell}, headers=auth).status_code == 200, cell


# -- 10. bodies the JSON parser cannot read ---------------------------------------------------------


def test_bodies_too_deep_or_with_too_long_integers_are_400_invalid_json(client, auth) -> None:
    headers = {**auth, "content-type": "application/json"}
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    too_deep = client.post(JOBS, headers=headers, content=deep)
    assert_error(too_deep, 400, "invalid_json", "not valid JSON", "nested")
    assert [d["field"] for d in too_deep.json()["error"]["details"]] == ["body"]  # a list, as validation errors'
    long_int = '{"dataset_id": "x", "task": "forecast", "n": ' + "9" * 5000 + "}"
    assert_error(client.post(JOBS, headers=headers, content=long_int), 400, "invalid_json", "integer", "digits")
    # Malformed JSON keeps FastAPI's 422 naming the character.
    assert_error(client.post(JOBS, headers=headers, content='{"a": '), 422, "validation_error", "not valid JSON")


def test_every_code_the_app_answers_is_listed() -> None:
    from app.errors import ERROR_CODES

    for code in ("http_error", "unknown_grid_path", "reserved_grid_path", "invalid_json"):
        assert code in ERROR_CODES


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bell\u0007", "evil\u202etxt.exe", "zero\u200bwidth"])
def test_job_and_sweep_names_refuse_control_and_invisible_characters(client, auth, name: str) -> None:
    ds = _upload(client, auth, "sine.csv", sine_csv(120).encode())
    job = assert_error(client.post(JOBS, headers=auth, json={**forecast_spec(ds), "name": name}), 422, "invalid_spec")
    assert [d["field"] for d in job["details"]] == ["name"] and "invisible formatting" in job["details"][0]["message"]
    sweep = client.post(
        "/api/v1/sweeps", headers=auth, json={"name": name, "base": forecast_spec(ds), "grid": {}, "seeds": [0]}
    )
    assert sweep.status_code == 422 and "invisible formatting" in sweep.text, sweep.text
    # Letters of any script are names; only what hides or reorders text is refused.
    ok = client.post(JOBS, headers=auth, json={**forecast_spec(ds), "name": "Prüfung – 予測 ✓"})
    assert ok.status_code == 201, ok.text


def test_a_sort_takes_one_sign_at_most(client, auth) -> None:
    for sort in ("--test.rmse", "-+created_at", "++created_at"):
        assert_error(client.get(JOBS, headers=auth, params={"sort": sort}), 400, "invalid_sort", "cannot sort by")
    for sort in ("-test.rmse", "+created_at", "created_at"):
        assert client.get(JOBS, headers=auth, params={"sort": sort}).status_code == 200


def test_checks_across_fields_name_the_field_their_message_starts_with(client, auth) -> None:
    ds = _upload(client, auth, "sine.csv", sine_csv(120).encode())
    cases = [
        ({"model": {"embedding_dim": 8}}, "model.embedding_dim"),
        ({"training": {"mixup": 0.4}}, "training.mixup"),
        ({"model": {"combine": "equal", "residual": "none"}}, "model.combine"),
    ]
    for change, field in cases:
        body = {**forecast_spec(ds), **{k: {**forecast_spec(ds)[k], **v} for k, v in change.items()}}
        error = assert_error(client.post(JOBS, headers=auth, json=body), 422, "invalid_spec", field)
        assert [d["field"] for d in error["details"]] == [field], error


# -- what a model costs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "layers", "bidirectional"), [("lstm", 3, True), ("gru", 1, False), ("rnn", 2, True)])
def test_the_parameter_estimate_is_what_pytorch_builds(cell: str, layers: int, bidirectional: bool) -> None:
    import torch

    from worker.engine.footprint import recurrent_parameters

    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
        5, 16, layers, bidirectional=bidirectional
    )
    built = sum(p.numel() for p in module.parameters())
    assert recurrent_parameters(cell, 5, 16, layers, 2 if bidirectional else 1) == built


def test_a_model_too_large_to_train_is_a_422_before_anything_runs(client, auth, monkeypatch) -> None:
    """Every field in its bounds, 3 billion parameters together (a worker grew past 9 GB, uncancellable):
    refused at submit, for a job, a grid value (named) and a tpe range's upper end; the server's
    limit is a setting."""
    from app.config import get_settings

    ds = _upload(client, auth, "sine.csv", sine_csv(300).encode())
    huge = {"cell": "lstm", "hidden_size": 4096, "num_layers": 8, "bidirectional": True}
    body = {**forecast_spec(ds), "model": huge}
    error = assert_error(client.post(JOBS, headers=auth, json=body), 422, "model_too_large", "million parameters")
    assert error["details"][0]["field"] == "model" and "RNNLAB_MAX_TRAINING_MEMORY_BYTES" in error["message"]

    deep = {**forecast_spec(ds), "model": {**huge, "hidden_size": 8}}
    grid = {"base": deep, "grid": {"model.hidden_size": [8, 4096]}}
    error = assert_error(client.post("/api/v1/sweeps", headers=auth, json=grid), 422, "model_too_large")
    assert error["details"][0]["field"] == "grid.model.hidden_size[1]", error
    space = {"model.hidden_size": {"low": 8, "high": 4096}, "model.num_layers": {"choices": [1, 8]}}
    tpe = {"base": deep, "search": "tpe", "space": space, "max_jobs": 4}
    error = assert_error(client.post("/api/v1/sweeps", headers=auth, json=tpe), 422, "model_too_large")
    assert error["details"][0]["field"].startswith("space.model."), error
    assert client.get(JOBS, headers=auth).json()["items"] == []

    # A swept batch size that takes a large model over the limit (long windows): the swept value is
    # named, not the base's model section.
    monkeypatch.setenv("RNNLAB_MAX_TRAINING_MEMORY_BYTES", str(4 * 1024**3))
    get_settings.cache_clear()
    wide = {**forecast_spec(ds), "model": {"cell": "gru", "hidden_size": 2048, "num_layers": 8}}
    wide["data"] = {**wide["data"], "lookback": 250}
    grid = {"base": wide, "grid": {"training.batch_size": [1, 2048]}}
    error = assert_error(client.post("/api/v1/sweeps", headers=auth, json=grid), 422, "model_too_large")
    assert error["details"][0]["field"] == "grid.training.batch_size[1]", error
    assert "lower model.hidden_size, model.num_layers, training.batch_size or data.lookback" in error["message"]
    monkeypatch.delenv("RNNLAB_MAX_TRAINING_MEMORY_BYTES")
    get_settings.cache_clear()

    assert client.post(JOBS, headers=auth, json=forecast_spec(ds)).status_code == 201  # a small one runs
    monkeypatch.setenv("RNNLAB_MAX_TRAINING_MEMORY_BYTES", "1000")
    get_settings.cache_clear()
    assert_error(client.post(JOBS, headers=auth, json=forecast_spec(ds)), 422, "model_too_large", "0.0 GiB")


def test_a_misspelled_spec_field_gets_the_closest_one(client, auth) -> None:
    ds = _upload(client, auth, "sine.csv", sine_csv(120).encode())
    body = {**forecast_spec(ds), "model": {"hiden_size": 8}}
    error = assert_error(client.post(JOBS, headers=auth, json=body), 422, "invalid_spec", "did you mean")
    assert error["details"][0]["field"] == "model.hiden_size"
    assert "did you mean 'model.hidden_size'?" in error["details"][0]["message"]
