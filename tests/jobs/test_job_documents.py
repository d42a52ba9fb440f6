"""GET /jobs/{id} and GET /jobs read jobs as documents from their columns (app/jobs/documents.py).

They must say exactly what ``JobRead.from_row`` says of the same row, in every state a job can be
in: queued (with and without a live worker for its queue), running, failed with an error, succeeded
with a summary, part of a sweep with a setting, and with a non-finite number stored in its JSON.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.db import new_session
from app.jobs import workers
from app.jobs.schemas import JobRead
from app.models import Job, utcnow
from tests.jobs.scale import seed_jobs


def _expected(job_id: str) -> dict[str, Any]:
    with new_session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return json.loads(JobRead.from_row(job).model_dump_json())


def _vary_states(ids: list[str]) -> None:
    """Give the seeded jobs the columns each state has (seed_jobs only varies status and values)."""
    now = utcnow()
    with new_session() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        running, failed, swept, queued_fresh, odd = (jobs[i] for i in ids[:5])
        running.status, running.started_at, running.worker_id = "running", now, "w1:123"
        running.progress_epoch, running.progress_epochs, running.device = 3, 40, "cpu"
        failed.status, failed.error_type, failed.error_message = "failed", "data_error", "column 'x' not found"
        failed.finished_at, failed.train_seconds = now + timedelta(seconds=2), 1.25
        swept.setting = {"model.hidden_size": 16, "training.learning_rate": 0.01}
        swept.status, swept.summary = "succeeded", {"best_epoch": 2, "train": {"rmse": 0.5}, "val": {}, "test": {}}
        queued_fresh.status, queued_fresh.progress_epochs = "queued", 0  # epochs come from the spec
        queued_fresh.summary = {}  # an empty summary reads as none
        odd.status = "succeeded"
        session.commit()
        if session.get_bind().dialect.name == "sqlite":
            # json.dumps writes NaN for a non-finite float, which JSON has no spelling for (PostgreSQL
            # refuses it, SQLite keeps it).
            nan = {"best_epoch": 1, "train": {"rmse": float("nan")}}
            session.execute(update(Job).where(Job.id == odd.id).values(summary=nan))
            session.commit()


def test_status_and_list_documents_match_job_read(client: Any, auth: dict[str, str], backend: str) -> None:
    ids = seed_jobs("alpha", 40, seed=3)
    _vary_states(ids)
    workers.clear_cache()
    for job_id in ids:
        r = client.get(f"/api/v1/jobs/{job_id}", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json() == _expected(job_id), job_id
    listed: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get("/api/v1/jobs", params={"limit": 7, **({"cursor": cursor} if cursor else {})}, headers=auth)
        assert page.status_code == 200, page.text
        listed += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(item["id"] for item in listed) == sorted(ids)
    assert all(item == _expected(item["id"]) for item in listed)
    # Queued jobs say what they wait for when no worker serves their queue, as JobRead does.
    queued = [item for item in listed if item["status"] == "queued"]
    assert queued and all(item["waiting_for"] and "default" in item["waiting_for"] for item in queued)
    # A running job with no live worker for its queue: its own worker is gone too, and it says so.
    running = next(item for item in listed if item["id"] == ids[0])
    assert running["status"] == "running" and "its own worker included" in running["waiting_for"]
    # With a live worker for the queue, neither waits for anything.
    workers.record_heartbeat("w1:123", ["default"])
    workers.clear_cache()
    assert client.get(f"/api/v1/jobs/{ids[0]}", headers=auth).json()["waiting_for"] is None
    assert client.get(f"/api/v1/jobs/{queued[0]['id']}", headers=auth).json()["waiting_for"] is None
    if backend == "sqlite":
        nan_job = next(item for item in listed if item["id"] == ids[4])
        assert nan_job["summary"]["train"]["rmse"] is None


def test_other_projects_jobs_are_not_found(client: Any, auth: dict[str, str], other_auth: dict[str, str]) -> None:
    ids = seed_jobs("alpha", 3)
    r = client.get(f"/api/v1/jobs/{ids[0]}", headers=other_auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert client.get("/api/v1/jobs", headers=other_auth).json()["items"] == []
