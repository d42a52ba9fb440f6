"""Text jobs through the service: upload → spec check → worker → evaluation → /predict → exports,
and a 422 naming the problem for each kind of bad text input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_key
from tests.engine.test_engine_text import planted_table

JOBS = "/api/v1/jobs"


@pytest.fixture
def api(sqlite_env: dict[str, str]) -> Iterator[tuple[Any, dict[str, str]]]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as client:
        yield client, {"Authorization": f"Bearer {make_key('alpha')}"}


def _upload(client: Any, auth: dict[str, str], name: str, table: pa.Table) -> str:
    buffer = io.BytesIO()
    if name.endswith(".parquet"):
        pq.write_table(table, buffer)
    else:
        pcsv.write_csv(table, buffer)
    r = client.post("/api/v1/datasets", headers=auth, files={"file": (name, buffer.getvalue())})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _spec(dataset: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": dataset,
        "task": "classification",
        "data": {"layout": "text", "target": "label"},
        "text": {"column": "review"},
        "model": {"hidden_size": 16, "bidirectional": True, "embedding_dim": 16},
        "training": {"epochs": 8, "batch_size": 16, "learning_rate": 0.02},
        "evaluation": {"bootstrap_samples": 100},
        "device": "cpu",
    }
    spec.update(overrides)
    return spec


def test_text_job_end_to_end(api: tuple[Any, dict[str, str]], tmp_path: Path) -> None:
    from worker.engine.export import OnnxPredictor
    from worker.engine.offline import predict_file
    from worker.runner import run_job

    client, auth = api
    dataset = _upload(client, auth, "reviews.parquet", planted_table())
    r = client.post(JOBS, headers=auth, json=_spec(dataset))
    assert r.status_code == 201, r.text
    job = r.json()
    # Resolved at submit time from the dataset: the longest text, embedding, unscaled token ids.
    assert job["spec"]["text"]["max_length"] == 9 and job["spec"]["data"]["scaling"] == "none"
    assert run_job(job["id"]) == "succeeded"

    evaluation = client.get(f"{JOBS}/{job['id']}/evaluation", headers=auth).json()
    assert evaluation["metrics"]["test"]["accuracy"] > 0.9
    assert set(evaluation["baselines"]) == {"majority_class", "tfidf_logistic"}
    assert evaluation["confusion_matrix"]["labels"] == ["neg", "pos"]
    shown = evaluation["text_attribution"]["examples"]
    assert shown and len(shown[0]["tokens"]) == len(shown[0]["scores"])

    texts = ["alpha good beta", "bad", "gamma bad delta epsilon", "good zzz"]
    r = client.post(f"{JOBS}/{job['id']}/predict", headers=auth, json={"inputs": texts})
    assert r.status_code == 200, r.text
    answer = r.json()["predictions"]
    assert answer["labels"][:3] == ["pos", "neg", "neg"] and answer["tokens"][3] == ["good", "[UNK]"]
    reference = np.asarray(answer["probabilities"])

    onnx = client.get(f"{JOBS}/{job['id']}/model", headers=auth, params={"format": "onnx"})
    assert onnx.status_code == 200
    np.testing.assert_allclose(
        np.asarray(OnnxPredictor(onnx.content).predict(texts)["probabilities"]), reference, atol=1e-5
    )
    (tmp_path / "model.pt").write_bytes(client.get(f"{JOBS}/{job['id']}/model", headers=auth).content)
    pcsv.write_csv(pa.table({"review": texts}), tmp_path / "texts.csv")
    table = predict_file(tmp_path / "model.pt", tmp_path / "texts.csv")
    np.testing.assert_allclose(table.column("probability_pos").to_numpy(), reference[:, 1], atol=1e-6)

    # Numbers to a text model, or nothing: a 422 naming the inputs.
    for bad in ([[1.0, 2.0]], []):
        r = client.post(f"{JOBS}/{job['id']}/predict", headers=auth, json={"inputs": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_inputs", r.text
    # A lone surrogate is valid JSON but not Unicode text (the tokenizer raised a TypeError: a 500).
    body = b'{"inputs": ["good", "x\\ud800y"]}'
    r = client.post(f"{JOBS}/{job['id']}/predict", headers={**auth, "content-type": "application/json"}, content=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_inputs", r.text
    assert "inputs[1]" in r.json()["error"]["message"] and "surrogate" in r.json()["error"]["message"]


def test_a_text_model_is_sized_by_the_vocabulary_it_learns(api: tuple[Any, dict[str, str]]) -> None:
    """text.vocab_size is a ceiling: a few dozen distinct words with vocab_size 1,000,000 and a 4096-wide
    embedding is a small model (it was refused as 4 billion parameters)."""
    client, auth = api
    dataset = _upload(client, auth, "reviews.parquet", planted_table(120))
    body = _spec(dataset, text={"column": "review", "vocab_size": 1_000_000}, model={"embedding_dim": 4096})
    r = client.post(JOBS, headers=auth, json=body)
    assert r.status_code == 201, r.text


def _bad_tables() -> dict[str, pa.Table]:
    reviews = planted_table(40)
    return {
        "reviews": reviews,
        "blank": pa.table({"review": [" "] * 40, "label": ["a", "b"] * 20}),
        "numbers": pa.table({"review": list(range(40)), "label": ["a", "b"] * 20}),
        "tags": pa.table(
            {"review": ["ann smith went"] * 39 + ["bob smith"], "tags": ["B-PER I-PER O"] * 39 + ["B-PER I-PER O"]}
        ),
    }


BAD_CASES = [
    # (table, spec changes, error code, field named)
    ("blank", {}, "spec_does_not_fit_dataset", "text.column"),
    ("numbers", {}, "spec_does_not_fit_dataset", "text.column"),
    ("reviews", {"text": {"column": "missing"}}, "spec_does_not_fit_dataset", "text.column"),
    ("reviews", {"text": {"column": "review", "max_length": 500}}, "spec_does_not_fit_dataset", "text.max_length"),
    (
        "tags",
        {"task": "tagging", "data": {"layout": "text", "target": "tags"}},
        "spec_does_not_fit_dataset",
        "data.target",
    ),
    ("reviews", {"text": None}, "invalid_spec", "data.layout"),  # "data.layout 'text' needs text.column"
    (
        "tags",
        {
            "task": "tagging",
            "data": {"layout": "text", "target": "tags"},
            "text": {"column": "review", "tokenizer": "bpe"},
        },
        "invalid_spec",
        "text.tokenizer",
    ),
    (
        "reviews",
        {"task": "tagging", "data": {"layout": "wide", "target": "label"}, "text": None},
        "invalid_spec",
        "data",
    ),
    ("reviews", {"data": {"layout": "wide", "target": "label"}}, "invalid_spec", "text.column"),
    ("reviews", {"data": {"layout": "text", "target": "label", "scaling": "standard"}}, "invalid_spec", "data.scaling"),
    ("reviews", {"text": {"column": "review", "vocab_size": 2}}, "invalid_spec", "text.vocab_size"),
]


@pytest.mark.parametrize(("table", "change", "code", "field"), BAD_CASES)
def test_bad_text_input_is_a_422_naming_it(
    api: tuple[Any, dict[str, str]], table: str, change: dict[str, Any], code: str, field: str
) -> None:
    client, auth = api
    dataset = _upload(client, auth, f"{table}.csv", _bad_tables()[table])
    r = client.post(JOBS, headers=auth, json=_spec(dataset, **change))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    assert any(d["field"] == field for d in error["details"]), error
    assert client.get(JOBS, headers=auth).json()["items"] == []
