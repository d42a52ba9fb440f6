"""The API and the worker shell on S3 storage, against a real S3-API server (moto's, on 127.0.0.1).

The same paths as on local files: upload, dedupe, delete, a job, its model download (streamed, or
redirected to a presigned URL), and the faults: an unreachable store is a 503 with nothing
written, a job whose store is unreachable is queued again, a failed upload leaves no object.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import torch

from app.config import get_settings
from app.db import new_session
from app.models import Dataset, Job
from app.storage import S3Storage, StorageUnavailable, get_storage
from tests.conftest import make_key
from tests.s3server import S3Server
from tests.stack import forecast_spec, sine_csv
from tests.storage.conftest import bucket_objects, bucket_of, open_multipart_uploads

PREFIX = "rnnlab/"


def _upload(client, auth, name: str, content: bytes):
    return client.post("/api/v1/datasets", headers=auth, files={"file": (name, content, "text/csv")})


def test_settings_select_s3_storage(s3_env) -> None:
    storage = get_storage()
    assert isinstance(storage, S3Storage)
    assert storage.bucket == bucket_of(s3_env) and storage.prefix == "rnnlab"


def test_upload_dedupe_preview_and_delete_on_s3(s3_server: S3Server, s3_env, s3_client, s3_auth) -> None:
    bucket = bucket_of(s3_env)
    content = sine_csv(120).encode()
    first = _upload(s3_client, s3_auth, "a.csv", content)
    assert first.status_code == 201, first.text
    sha = first.json()["sha256"]
    key = f"{PREFIX}datasets/{sha[:2]}/{sha}.parquet"
    assert list(bucket_objects(s3_server, bucket)) == [key]

    again = _upload(s3_client, s3_auth, "again.csv", content)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other_auth = {"Authorization": f"Bearer {make_key('beta')}"}
    other = _upload(s3_client, other_auth, "b.csv", content)
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert list(bucket_objects(s3_server, bucket)) == [key]  # one blob for the two projects

    preview = s3_client.get(f"/api/v1/datasets/{first.json()['id']}/preview?rows=3", headers=s3_auth)
    assert preview.status_code == 200 and len(preview.json()["rows"]) == 3

    assert s3_client.delete(f"/api/v1/datasets/{first.json()['id']}", headers=s3_auth).status_code == 204
    assert list(bucket_objects(s3_server, bucket)) == [key]  # still used by the other project
    assert s3_client.delete(f"/api/v1/datasets/{other.json()['id']}", headers=other_auth).status_code == 204
    assert bucket_objects(s3_server, bucket) == {}
    assert not list((get_settings().home / "tmp").iterdir())


def test_a_refused_upload_leaves_no_object(s3_server: S3Server, s3_env, s3_client, s3_auth) -> None:
    r = _upload(s3_client, s3_auth, "bad.csv", b"a,b\n1,2\n3\n\xff\xfe\n")
    assert r.status_code == 422, r.text
    assert bucket_objects(s3_server, bucket_of(s3_env)) == {}
    assert open_multipart_uploads(s3_server, bucket_of(s3_env)) == []
    with new_session() as session:
        assert session.query(Dataset).count() == 0


def test_store_unreachable_during_upload_is_a_503_with_nothing_written(
    s3_server: S3Server, s3_env, s3_auth, monkeypatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.s3server import free_port

    monkeypatch.setenv("RNNLAB_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("RNNLAB_S3_RETRY_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        r = _upload(client, s3_auth, "s.csv", sine_csv(50).encode())
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "storage_unavailable" and "RNNLAB_STORAGE_URL" in error["message"]
    with new_session() as session:
        assert session.query(Dataset).count() == 0
    assert not list((get_settings().home / "tmp").iterdir())
    assert bucket_objects(s3_server, bucket_of(s3_env)) == {}


def _table_csv(rows: int, last: str = "") -> bytes:
    return ("a,b,c\n" + "".join(f"{i},x{i % 7},{i * 0.5}\n" for i in range(rows)) + last).encode()


def _record_calls(monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """The keys of the StreamedPut uploads whose ``method`` (complete or abort) ran, in order."""
    from app.storage import StreamedPut

    keys: list[str] = []
    original = getattr(StreamedPut, method)

    def spy(self: StreamedPut) -> None:
        original(self)
        keys.append(self.key)

    monkeypatch.setattr(StreamedPut, method, spy)
    return keys


def test_the_early_parquet_sent_while_encoded_is_the_stored_blob(
    s3_server: S3Server, s3_env, s3_client, s3_auth, monkeypatch
) -> None:
    """A CSV's Parquet is sent to the store while it is still being encoded; the object is the
    complete Parquet of the usual conversion."""
    import pyarrow.parquet as pq

    from app.datasets.inspection import convert_csv_to_parquet

    completed = _record_calls(monkeypatch, "complete")
    content = _table_csv(1_000_000)
    r = _upload(s3_client, s3_auth, "big.csv", content)
    assert r.status_code == 201, r.text
    assert len(completed) == 1
    sha = r.json()["sha256"]
    key = f"{PREFIX}datasets/{sha[:2]}/{sha}.parquet"
    stored = s3_server.boto_client().get_object(Bucket=bucket_of(s3_env), Key=key)["Body"].read()
    assert open_multipart_uploads(s3_server, bucket_of(s3_env)) == []
    work = get_settings().home / "check"
    work.mkdir()
    (work / "t.csv").write_bytes(content)
    convert_csv_to_parquet(work / "t.csv", work / "usual.parquet", "t.csv")
    assert pq.read_table(io.BytesIO(stored)).equals(pq.read_table(work / "usual.parquet"))


def test_a_csv_the_early_conversion_gives_up_on_is_stored_from_the_usual_one(
    s3_server: S3Server, s3_env, s3_client, s3_auth, monkeypatch
) -> None:
    """A word in a column of numbers past the first block: the Parquet sent early is abandoned (no
    part stays behind) and the usual conversion's is stored."""
    import pyarrow.parquet as pq

    aborted = _record_calls(monkeypatch, "abort")
    r = _upload(s3_client, s3_auth, "wide.csv", _table_csv(300_000, "word,x,1.0\n"))
    assert r.status_code == 201, r.text
    assert [c["dtype"] for c in r.json()["columns"]] == ["string", "string", "float64"]
    sha = r.json()["sha256"]
    key = f"{PREFIX}datasets/{sha[:2]}/{sha}.parquet"
    assert list(bucket_objects(s3_server, bucket_of(s3_env))) == [key]
    assert open_multipart_uploads(s3_server, bucket_of(s3_env)) == []
    stored = s3_server.boto_client().get_object(Bucket=bucket_of(s3_env), Key=key)["Body"].read()
    assert pq.read_table(io.BytesIO(stored)).num_rows == 300_001
    assert aborted


def test_a_failed_multipart_write_is_aborted(s3_server: S3Server, s3_env) -> None:
    storage = get_storage()
    assert isinstance(storage, S3Storage)
    with pytest.raises(RuntimeError), storage.open_writer("models/partial.pt") as out:
        out.write(b"x" * (20 * 1024 * 1024))  # more than two parts were sent
        raise RuntimeError("the writer died")
    assert open_multipart_uploads(s3_server, bucket_of(s3_env)) == []
    assert bucket_objects(s3_server, bucket_of(s3_env)) == {}
    # A large write that completes is one object of the full size.
    with storage.open_writer("models/whole.pt") as out:
        for _ in range(3):
            out.write(b"y" * (7 * 1024 * 1024))
    assert bucket_objects(s3_server, bucket_of(s3_env)) == {f"{PREFIX}models/whole.pt": 21 * 1024 * 1024}


@pytest.fixture
def s3_job(s3_client, s3_auth) -> str:
    r = _upload(s3_client, s3_auth, "s.csv", sine_csv(200).encode())
    assert r.status_code == 201, r.text
    job = s3_client.post("/api/v1/jobs", headers=s3_auth, json=forecast_spec(r.json()["id"], epochs=2))
    assert job.status_code == 201, job.text
    return str(job.json()["id"])


def _fresh_worker_cache(monkeypatch, path: Path) -> None:
    """Another machine: the worker has its own, empty blob cache."""
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(path))
    get_settings.cache_clear()


def test_job_on_s3_model_streams_converts_redirects_and_is_deleted(
    s3_server: S3Server, s3_env, s3_client, s3_auth, s3_job, tmp_path, monkeypatch
) -> None:
    from worker.runner import run_job

    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    assert run_job(s3_job, "w1") == "succeeded"
    cached = list((tmp_path / "worker-cache" / "blobs" / "datasets").rglob("*.parquet"))
    assert len(cached) == 1  # the worker fetched the dataset by its content hash
    key = f"{PREFIX}models/{s3_job}-1.pt"
    stored = bucket_objects(s3_server, bucket_of(s3_env))
    assert key in stored

    r = s3_client.get(f"/api/v1/jobs/{s3_job}/model", headers=s3_auth)
    assert r.status_code == 200 and len(r.content) == stored[key]
    assert r.headers["content-disposition"] == f'attachment; filename="rnnlab-{s3_job}.pt"'
    artifact = torch.load(io.BytesIO(r.content), map_location="cpu", weights_only=True)
    assert "state_dict" in artifact
    for fmt in ("onnx", "safetensors"):
        converted = s3_client.get(f"/api/v1/jobs/{s3_job}/model?format={fmt}", headers=s3_auth)
        assert converted.status_code == 200 and len(converted.content) > 100, converted.text
    predicted = s3_client.post(f"/api/v1/jobs/{s3_job}/predict", headers=s3_auth, json={"inputs": [[0.1] * 12]})
    assert predicted.status_code == 200, predicted.text

    monkeypatch.setenv("RNNLAB_MODEL_DOWNLOAD", "redirect")
    get_settings.cache_clear()
    redirect = s3_client.get(f"/api/v1/jobs/{s3_job}/model", headers=s3_auth, follow_redirects=False)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(s3_server.endpoint_url) and "X-Amz-Signature" in location
    assert httpx.get(location).content == r.content  # the presigned URL needs no credentials

    assert s3_client.delete(f"/api/v1/jobs/{s3_job}", headers=s3_auth).status_code == 204
    assert key not in bucket_objects(s3_server, bucket_of(s3_env))


def test_store_unreachable_during_a_job_queues_it_again(s3_env, s3_job, tmp_path, monkeypatch) -> None:
    from tests.s3server import free_port
    from worker.runner import run_job

    endpoint = s3_env["RNNLAB_S3_ENDPOINT_URL"]
    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    monkeypatch.setenv("RNNLAB_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RNNLAB_S3_RETRY_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("RNNLAB_STORAGE_RETRY_SECONDS", "0")
    get_settings.cache_clear()
    assert run_job(s3_job, "w1") == "queued"
    with new_session() as session:
        job = session.get(Job, s3_job)
        assert (job.status, job.attempts, job.error_type, job.worker_id) == ("queued", 1, None, None)

    monkeypatch.setenv("RNNLAB_S3_ENDPOINT_URL", endpoint)  # the store is back
    get_settings.cache_clear()
    assert run_job(s3_job, "w2") == "succeeded"
    with new_session() as session:
        assert session.get(Job, s3_job).attempts == 2


def test_store_unreachable_on_every_attempt_fails_as_storage_unavailable(s3_env, s3_job, tmp_path, monkeypatch) -> None:
    from tests.s3server import free_port
    from worker.runner import run_job

    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    monkeypatch.setenv("RNNLAB_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RNNLAB_S3_RETRY_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("RNNLAB_STORAGE_RETRY_SECONDS", "0")
    get_settings.cache_clear()
    statuses = [run_job(s3_job, f"w{i}") for i in range(3)]  # RNNLAB_MAX_ATTEMPTS defaults to 3
    assert statuses == ["queued", "queued", "failed"]
    with new_session() as session:
        job = session.get(Job, s3_job)
        assert job.error_type == "storage_unavailable" and "RNNLAB_STORAGE_URL" in job.error_message


def test_a_model_write_that_fails_on_s3_is_a_storage_error(s3_env, s3_job, tmp_path, monkeypatch) -> None:
    import worker.runner as runner

    real = S3Storage.open_writer

    def refusing(self, key):
        if key.startswith("models/"):  # what a bucket policy that forbids writes answers
            raise StorageUnavailable("write", key, PermissionError("Access Denied"))
        return real(self, key)

    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    monkeypatch.setattr(S3Storage, "open_writer", refusing)
    assert runner.run_job(s3_job, "w1") == "failed"
    with new_session() as session:
        job = session.get(Job, s3_job)
    assert job.error_type == "storage_error" and "RNNLAB_STORAGE_URL" in job.error_message
