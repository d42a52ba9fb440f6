"""``rnnlab.Client`` against the real embedded service over HTTP: upload → submit → follow →
evaluation → export → offline predict, sweeps, and errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnlab import Client, RnnlabError, load_model
from tests.client.conftest import Served, _free_port
from tests.stack import forecast_spec, sine_csv
from worker.engine import JobSpec

TOLERANCE = 1e-4
# One served stack (API on a port + a worker process) for the module: grouped for `--dist loadgroup` (see Makefile).
pytestmark = pytest.mark.xdist_group("client-api")


@pytest.fixture
def client(served: Served) -> Client:
    return Client(served.url, served.api_key)


def test_upload_submit_follow_evaluate_export_predict(client: Client, tmp_path: Path) -> None:
    csv_path = tmp_path / "sine.csv"
    csv_path.write_text(sine_csv(300))
    sent: list[tuple[int, int]] = []
    dataset = client.datasets.upload(csv_path, progress=lambda done, total: sent.append((done, total)))
    size = csv_path.stat().st_size
    assert dataset["filename"] == "sine.csv" and dataset["size_bytes"] == size
    assert sent and sent[-1] == (size, size)  # streamed from the file, progress to the last byte
    assert client.datasets.get(dataset["id"])["num_rows"] == 300
    assert len(client.datasets.preview(dataset["id"], rows=3)["rows"]) == 3
    assert dataset["id"] in {d["id"] for d in client.datasets.list()}

    # A typed JobSpec (the engine's own schema) and a plain dict are both accepted.
    job = client.jobs.submit(JobSpec.model_validate(forecast_spec(dataset["id"])))
    assert job.status == "queued"
    events = list(job.follow())
    epochs = [e.data["epoch"] for e in events if e.event == "epoch"]
    assert epochs == [1, 2, 3]
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"
    assert job.status == "succeeded" and job.summary is not None and "rmse" in job.summary["test"]
    series = {(s["split"], s["name"]) for s in job.metrics()["series"]}
    assert ("train", "loss") in series and ("val", "rmse") in series
    evaluation = job.evaluation()
    assert evaluation["main_metric"] in evaluation["intervals"]["test"]

    other = client.jobs.submit({**forecast_spec(dataset["id"]), "name": "second"}).wait(timeout=120)
    assert other.status == "succeeded"
    # Every page is followed (page size 1), filtered and sorted by a final metric.
    listed = list(client.jobs.list(where="test.rmse < 1000", sort="test.rmse", page_size=1))
    assert {j.id for j in listed} >= {job.id, other.id}
    values = [j.summary["test"]["rmse"] for j in listed if j.summary]
    assert values == sorted(values)
    assert len(list(client.jobs.list(limit=1))) == 1

    # Export: every format predicts what /predict predicts, offline.
    windows = np.asarray([[np.sin(2 * np.pi * (s + i) / 25) for i in range(12)] for s in range(9)], dtype=np.float32)
    served_predictions = np.asarray(job.predict(windows))
    for model_format in ("onnx", "safetensors", "pt"):
        path = tmp_path / f"model.{model_format}"
        job.download_model(path, format=model_format)  # type: ignore[arg-type]
        offline = np.asarray(load_model(path).predict(windows))
        np.testing.assert_allclose(offline, served_predictions, rtol=TOLERANCE, atol=TOLERANCE)
    buffer = io.BytesIO()
    job.download_model(buffer, format="onnx")
    assert buffer.getvalue() == (tmp_path / "model.onnx").read_bytes()

    with pytest.raises(RnnlabError) as bad_format:
        job.download_model(tmp_path / "x", format="tflite")  # type: ignore[arg-type]
    assert bad_format.value.status_code == 422 and bad_format.value.code == "validation_error"
    other.delete()
    with pytest.raises(RnnlabError) as gone:
        client.jobs.get(other.id)
    assert gone.value.status_code == 404 and gone.value.code == "job_not_found"


def test_errors_carry_the_api_error_body(client: Client, served: Served) -> None:
    with pytest.raises(RnnlabError) as bad_spec:
        client.jobs.submit({"dataset_id": "nope", "task": "forecast", "data": {"layout": "series"}})
    error = bad_spec.value
    assert error.status_code == 422 and error.code == "invalid_spec"
    assert any(d["field"] == "data.target" for d in error.details)

    with pytest.raises(RnnlabError) as unauthorized:
        Client(served.url, "rnl_wrong").datasets.get("x")
    assert unauthorized.value.status_code == 401 and unauthorized.value.code == "unauthorized"

    with pytest.raises(RnnlabError) as unreachable:
        Client(f"http://127.0.0.1:{_free_port()}", "k").jobs.get("x")
    assert unreachable.value.status_code == 0 and unreachable.value.code == "connection_error"


def test_url_and_key_come_from_the_environment(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLAB_URL", served.url)
    monkeypatch.setenv("RNNLAB_API_KEY", served.api_key)
    with Client() as client:
        assert isinstance(list(client.datasets.list()), list)


def test_sweep_submit_wait_report_leaderboard(client: Client, served: Served) -> None:
    dataset_id = served.stack.upload_csv("sweep.csv", sine_csv(200))
    base = {**forecast_spec(dataset_id), "training": {"epochs": 2, "batch_size": 32}}
    sweep = client.sweeps.submit(base, {"model.hidden_size": [4, 8]}, seeds=[0], name="sizes")
    assert sweep.info["progress"]["total"] == 2
    sweep.wait(timeout=180, poll_seconds=0.5)
    report = sweep.report()
    assert report["complete"] and len(report["settings"]) == 2 and report["main_metric"] == "rmse"
    board = sweep.leaderboard()
    assert board["metric"] == "test.rmse" and len(board["items"]) == 2
    assert {j.status for j in sweep.jobs()} == {"succeeded"}


def test_importing_the_client_stays_light_and_off_the_server() -> None:
    """The client never imports the server (app) or the worker shell; torch loads only when asked."""
    code = (
        "import sys, rnnlab, rnnlab.cli, rnnlab.progress, rnnlab.output\n"
        "bad = sorted(m for m in sys.modules if m == 'app' or m.startswith('app.')"
        " or m in ('worker.tasks', 'worker.runner', 'worker.celery_app', 'celery'))\n"
        "assert not bad, bad\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
