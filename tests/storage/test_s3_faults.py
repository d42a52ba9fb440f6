"""S3 storage under faults (moto's server): a missing bucket, a deleted cache directory, damaged
cached copies, a store that hangs, models of lost attempts, an upload that cannot be aborted, and
the in-memory model caches that must hit on S3 too."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

from app.config import get_settings
from app.db import new_session
from app.models import Dataset, Job
from app.storage import KeyNotFound, S3Storage, StorageUnavailable, get_storage, storage_ready
from tests.s3server import S3Server
from tests.stack import forecast_spec, sine_csv
from tests.storage.conftest import bucket_objects, bucket_of

PREFIX = "rnnlab/"


def _upload(client, auth, name: str = "s.csv", rows: int = 200):
    r = client.post("/api/v1/datasets", headers=auth, files={"file": (name, sine_csv(rows).encode(), "text/csv")})
    assert r.status_code == 201, r.text
    return r.json()


def _dataset_key(dataset: dict) -> str:
    sha = dataset["sha256"]
    return f"datasets/{sha[:2]}/{sha}.parquet"


def _s3() -> S3Storage:
    storage = get_storage()
    assert isinstance(storage, S3Storage)
    return storage


def _fresh_worker_cache(monkeypatch, path: Path) -> None:
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(path))
    get_settings.cache_clear()


@pytest.fixture
def finished_job(s3_client, s3_auth, tmp_path, monkeypatch) -> str:
    """A job run by a worker with a cache of its own; the API's settings restored afterwards."""
    from worker.runner import run_job

    dataset = _upload(s3_client, s3_auth)
    r = s3_client.post("/api/v1/jobs", headers=s3_auth, json=forecast_spec(dataset["id"], epochs=1))
    assert r.status_code == 201, r.text
    job_id = str(r.json()["id"])
    api_cache = get_settings().cache_root
    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    assert run_job(job_id, "w1") == "succeeded"
    _fresh_worker_cache(monkeypatch, api_cache)
    return job_id


# -- 2. a missing bucket is the store's fault, not a missing file -----------------------------------
def test_a_missing_bucket_is_storage_unavailable_never_a_missing_key(s3_env, s3_client, s3_auth, monkeypatch) -> None:
    dataset = _upload(s3_client, s3_auth)
    key = _dataset_key(dataset)
    storage = _s3()
    with pytest.raises(KeyNotFound):  # the bucket is there: a missing key is a missing key
        storage.size("datasets/00/none.parquet")
    storage.delete("datasets/00/none.parquet")  # and deleting it is fine

    monkeypatch.setenv("RNNLAB_STORAGE_URL", "s3://rnnlab-no-such-bucket/rnnlab")
    get_settings.cache_clear()
    storage = _s3()
    storage.cache.discard(key)
    for call in (
        lambda: storage.local_path(key),  # GET: NoSuchBucket
        lambda: storage.size(key),  # HEAD: a bodiless 404, then the bucket is listed
        lambda: storage.exists(key),
        lambda: storage.delete(key),
    ):
        with pytest.raises(StorageUnavailable) as raised:
            call()
        assert raised.value.code == "storage_unavailable"
    with pytest.raises(StorageUnavailable), storage.open_writer("models/x.pt") as out:  # PUT
        out.write(b"x")
    assert storage_ready() is not None

    upload = {"file": ("t.csv", sine_csv(60).encode(), "text/csv")}
    r = s3_client.post("/api/v1/datasets", headers=s3_auth, files=upload)
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
    assert r.headers["retry-after"] == "5"  # a 503 says when to ask again
    preview = s3_client.get(f"/api/v1/datasets/{dataset['id']}/preview?rows=3", headers=s3_auth)
    assert preview.status_code == 503 and preview.json()["error"]["code"] == "storage_unavailable", preview.text
    ready = s3_client.get("/readyz")  # the API is not ready: every upload and job would fail
    assert ready.status_code == 503 and "storage" in ready.json()["error"]["details"]["checks"], ready.text


def test_a_job_whose_bucket_is_misnamed_is_queued_again_not_failed_as_data_error(
    s3_env, s3_client, s3_auth, tmp_path, monkeypatch
) -> None:
    from worker.runner import run_job

    dataset = _upload(s3_client, s3_auth)
    job = s3_client.post("/api/v1/jobs", headers=s3_auth, json=forecast_spec(dataset["id"], epochs=1)).json()
    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    monkeypatch.setenv("RNNLAB_STORAGE_URL", "s3://rnnlab-no-such-bucket/rnnlab")
    monkeypatch.setenv("RNNLAB_STORAGE_RETRY_SECONDS", "0")
    get_settings.cache_clear()
    assert run_job(job["id"], "w1") == "queued"
    with new_session() as session:
        assert session.get(Job, job["id"]).error_type is None


def test_a_key_missing_from_the_store_is_still_dataset_file_missing(
    s3_server: S3Server, s3_env, s3_client, s3_auth
) -> None:
    dataset = _upload(s3_client, s3_auth)
    key = _dataset_key(dataset)
    s3_server.boto_client().delete_object(Bucket=bucket_of(s3_env), Key=PREFIX + key)
    _s3().cache.discard(key)
    r = s3_client.get(f"/api/v1/datasets/{dataset['id']}/preview?rows=3", headers=s3_auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "dataset_file_missing", r.text


# -- 3. a cache directory deleted under the running process ------------------------------------------
def test_a_deleted_cache_directory_does_not_make_blobs_missing(s3_env, s3_client, s3_auth, finished_job) -> None:
    dataset_id = s3_client.get(f"/api/v1/jobs/{finished_job}", headers=s3_auth).json()["dataset_id"]
    assert s3_client.post(f"/api/v1/jobs/{finished_job}/predict", headers=s3_auth, json={"inputs": [[0.1] * 12]})
    shutil.rmtree(get_settings().cache_root)
    from app.jobs import model_export, service

    service._predictor.cache_clear()
    model_export._converted.cache_clear()
    preview = s3_client.get(f"/api/v1/datasets/{dataset_id}/preview?rows=3", headers=s3_auth)
    assert preview.status_code == 200, preview.text
    predicted = s3_client.post(f"/api/v1/jobs/{finished_job}/predict", headers=s3_auth, json={"inputs": [[0.1] * 12]})
    assert predicted.status_code == 200, predicted.text
    shutil.rmtree(get_settings().cache_root)
    exported = s3_client.get(f"/api/v1/jobs/{finished_job}/model?format=safetensors", headers=s3_auth)
    assert exported.status_code == 200, exported.text


# -- 4. damaged cached copies ----------------------------------------------------------------------------
def _cached(key: str) -> Path:
    path = _s3().cache.path_for(key)
    assert path.exists()
    return path


def test_damaged_cached_copies_are_fetched_again(s3_env, s3_client, s3_auth, finished_job, monkeypatch) -> None:
    from app.datasets.loading import load_dataset_data
    from app.jobs import model_export, service

    with new_session() as session:
        job = session.get(Job, finished_job)
        dataset = session.get(Dataset, job.dataset_id)
        model = job.artifact_key
        session.expunge_all()
    expected = load_dataset_data(dataset)

    parquet = _cached(dataset.storage_key)  # truncated: "Parquet magic bytes not found" before
    with parquet.open("r+b") as f:
        f.truncate(parquet.stat().st_size // 2)
    assert load_dataset_data(dataset).equals(expected)

    inputs = {"inputs": [[0.1] * 12]}
    first = s3_client.post(f"/api/v1/jobs/{finished_job}/predict", headers=s3_auth, json=inputs)
    assert first.status_code == 200, first.text
    pt = _cached(model)
    with pt.open("r+b") as f:
        f.truncate(100)
    service._predictor.cache_clear()
    again = s3_client.post(f"/api/v1/jobs/{finished_job}/predict", headers=s3_auth, json=inputs)
    assert again.status_code == 200 and again.json() == first.json(), again.text

    # Flipped bytes, same size: the next process to use the copy reads it whole and fetches it again.
    content = bytearray(pt.read_bytes())
    content[len(content) // 2] ^= 0xFF
    pt.write_bytes(bytes(content))
    get_settings.cache_clear()  # a new storage client and cache: as in another process
    service._predictor.cache_clear()
    model_export._converted.cache_clear()
    flipped = s3_client.post(f"/api/v1/jobs/{finished_job}/predict", headers=s3_auth, json=inputs)
    assert flipped.status_code == 200 and flipped.json() == first.json(), flipped.text
    assert _cached(model).read_bytes() != bytes(content)


# -- 5. a store that hangs -----------------------------------------------------------------------------
def test_a_hanging_store_holds_a_few_threads_and_other_requests_answer(s3_env, s3_client, s3_auth, monkeypatch) -> None:
    first, second = _upload(s3_client, s3_auth, "a.csv", 100), _upload(s3_client, s3_auth, "b.csv", 120)
    storage = _s3()
    storage.cache.discard(_dataset_key(first))
    storage.cache.discard(_dataset_key(second))
    storage.cache._slots = threading.BoundedSemaphore(1)
    storage.cache.slot_wait_seconds = 0.2
    storage.cache.stall_seconds = 0.5
    started, release = threading.Event(), threading.Event()
    real = S3Storage.download

    def hanging(self, key, target):
        started.set()
        release.wait(30)
        return real(self, key, target)

    monkeypatch.setattr(S3Storage, "download", hanging)
    answers: list[int] = []
    stuck = threading.Thread(
        target=lambda: answers.append(
            s3_client.get(f"/api/v1/datasets/{first['id']}/preview?rows=3", headers=s3_auth).status_code
        )
    )
    stuck.start()
    try:
        assert started.wait(20)
        began = time.monotonic()
        # Another blob: no store slot left (a 503 after the slot wait). The same blob: its fetch in
        # flight makes no progress (a 503 after stall_seconds, holding no slot meanwhile).
        for dataset in (second, first):
            r = s3_client.get(f"/api/v1/datasets/{dataset['id']}/preview?rows=3", headers=s3_auth)
            assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        assert time.monotonic() - began < 10
        assert s3_client.get("/readyz").status_code == 200
        assert s3_client.get(f"/api/v1/datasets/{first['id']}", headers=s3_auth).status_code == 200
    finally:
        release.set()
        stuck.join(30)
    assert answers == [200]


# -- 6. the in-memory model caches hit on S3 -----------------------------------------------------------
def test_predict_and_export_reuse_the_loaded_model(s3_env, s3_client, s3_auth, finished_job, monkeypatch) -> None:
    from app.jobs import model_export, service

    service._predictor.cache_clear()
    model_export._converted.cache_clear()
    for _ in range(3):
        r = s3_client.post(f"/api/v1/jobs/{finished_job}/predict", headers=s3_auth, json={"inputs": [[0.1] * 12]})
        assert r.status_code == 200, r.text
        e = s3_client.get(f"/api/v1/jobs/{finished_job}/model?format=safetensors", headers=s3_auth)
        assert e.status_code == 200, e.text
    assert (service._predictor.cache_info().hits, service._predictor.cache_info().currsize) == (2, 1)
    assert (model_export._converted.cache_info().hits, model_export._converted.cache_info().currsize) == (2, 1)


# -- 7. models of attempts that never committed ---------------------------------------------------------
def test_deleting_a_job_removes_the_model_of_every_attempt(
    s3_server: S3Server, s3_env, s3_client, s3_auth, finished_job
) -> None:
    bucket = bucket_of(s3_env)
    client = s3_server.boto_client()
    with new_session() as session:  # two later attempts were killed between their upload and commit
        session.get(Job, finished_job).attempts = 3
        session.commit()
    for n in (2, 3):
        client.put_object(Bucket=bucket, Key=f"{PREFIX}models/{finished_job}-{n}.pt", Body=b"orphan")
    assert s3_client.delete(f"/api/v1/jobs/{finished_job}", headers=s3_auth).status_code == 204
    assert not [k for k in bucket_objects(s3_server, bucket) if k.startswith(f"{PREFIX}models/")]


def test_a_successful_attempt_removes_the_models_of_earlier_attempts(
    s3_server: S3Server, s3_env, s3_client, s3_auth, tmp_path, monkeypatch
) -> None:
    from worker.runner import run_job

    bucket = bucket_of(s3_env)
    dataset = _upload(s3_client, s3_auth)
    job_id = s3_client.post("/api/v1/jobs", headers=s3_auth, json=forecast_spec(dataset["id"], epochs=1)).json()["id"]
    with new_session() as session:  # attempt 1 uploaded its model and was killed before its commit
        session.get(Job, job_id).attempts = 1
        session.commit()
    s3_server.boto_client().put_object(Bucket=bucket, Key=f"{PREFIX}models/{job_id}-1.pt", Body=b"orphan")
    _fresh_worker_cache(monkeypatch, tmp_path / "worker-cache")
    assert run_job(job_id, "w1") == "succeeded"
    models = [k for k in bucket_objects(s3_server, bucket) if k.startswith(f"{PREFIX}models/")]
    assert models == [f"{PREFIX}models/{job_id}-2.pt"]


# -- 8. an upload the store goes away during -----------------------------------------------------------
def test_an_upload_that_cannot_be_aborted_is_logged_with_its_key(s3_env, monkeypatch, caplog) -> None:
    import obstore

    real = obstore.open_writer

    class Unreachable:
        def __init__(self, writer) -> None:
            self._writer = writer

        def write(self, data):
            return self._writer.write(data)

        def __exit__(self, *exc_info):
            raise OSError("connection refused")

    monkeypatch.setattr(obstore, "open_writer", lambda *a, **k: Unreachable(real(*a, **k)))
    storage = _s3()
    with (
        caplog.at_level(logging.WARNING, logger="app.storage"),
        pytest.raises(RuntimeError),
        storage.open_writer("models/partial.pt") as out,
    ):
        out.write(b"x" * 10)
        raise RuntimeError("the client went away")
    messages = [r.getMessage() for r in caplog.records if r.name == "app.storage"]
    assert any("models/partial.pt" in m and "AbortIncompleteMultipartUpload" in m for m in messages), messages
