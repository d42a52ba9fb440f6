"""Job reads as JSON documents made from the job's columns, for the routes that are polled.

``GET /jobs/{id}`` (a client polls it) and ``GET /jobs`` (the dashboard polls it) return what
``JobRead.from_row`` says, but reading a job through the ORM and ``JobRead`` decodes the stored
spec (a few kB of JSON), validates it, and encodes it again: most of the cost of these reads.
Here the columns are read as plain values and the stored JSON of the spec goes into the response
as it is (``orjson.Fragment``); a list reads these columns in its keyset walk (``app.jobs.paging``).
``JobRead`` stays the schema of these routes (OpenAPI, the other routes), and
``tests/jobs/test_job_documents.py`` checks that both give the same document.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from sqlalchemy import Text, bindparam, cast, select
from sqlalchemy.orm import Session

from app.errors import not_found
from app.jobs import workers
from app.jobs.status import JobStatus
from app.models import Job
from worker.engine.results import Summary

DOCUMENT_COLUMNS: tuple[Any, ...] = (
    Job.id,
    Job.project_id,
    Job.name,
    Job.status,
    cast(Job.spec, Text).label("spec"),
    Job.dataset_id,
    Job.sweep_id,
    cast(Job.setting, Text).label("setting"),
    Job.progress_epoch,
    Job.progress_epochs,
    Job.attempts,
    Job.max_attempts,
    Job.cancel_requested,
    Job.device,
    Job.queue,
    Job.worker_id,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
    Job.train_seconds,
    cast(Job.summary, Text).label("summary"),
    Job.error_type,
    Job.error_message,
)
# A summary the worker wrote has every field (Summary.model_dump); an older or partial one is
# completed by the schema.
_SUMMARY_FIELDS = frozenset(Summary.model_fields)


def _stored_json(text: str | None) -> Any:
    """A stored JSON column as it goes into the response: its text when that is JSON, else the value."""
    if text is None:
        return None
    raw = text.encode()
    # json.dumps writes NaN and Infinity for non-finite floats; they are not JSON, so such a text is
    # decoded and encoded again (orjson writes null for them, as pydantic does).
    if b"NaN" in raw or b"Infinity" in raw:
        return json.loads(text)
    return orjson.Fragment(raw)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or Infinity written by json.dumps
        return json.loads(text)


def document_of(row: Any) -> dict[str, Any]:
    epochs = row.progress_epochs
    if not epochs:
        epochs = int((_loads(row.spec) or {}).get("training", {}).get("epochs", 0))
    # As JobRead: an empty summary ({} or null) is none.
    summary = _loads(row.summary) or None
    if summary is not None and not summary.keys() >= _SUMMARY_FIELDS:
        summary = Summary.model_validate(summary).model_dump(mode="json")
    queued = row.status == JobStatus.QUEUED
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "spec": _stored_json(row.spec),
        "dataset_id": row.dataset_id,
        "sweep_id": row.sweep_id,
        "setting": _stored_json(row.setting),
        "progress": {"epoch": row.progress_epoch, "epochs": epochs},
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "cancel_requested": row.cancel_requested,
        "device": row.device,
        "queue": row.queue,
        "worker": row.worker_id,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "train_seconds": row.train_seconds,
        "summary": summary,
        "error": {"type": row.error_type, "message": row.error_message or ""} if row.error_type else None,
        "waiting_for": workers.waiting_for(row.queue, running=row.status == JobStatus.RUNNING)
        if queued or row.status == JobStatus.RUNNING
        else None,
    }


# Built once: making the statement and its cache key per read cost more CPU than the query. It runs
# on the session's connection, without the ORM's execution layer (a third of the read's CPU).
_BY_ID = select(*DOCUMENT_COLUMNS).where(Job.id == bindparam("job_id"))


def job_document(session: Session, project_id: str, job_id: str) -> dict[str, Any]:
    """The project's job as ``JobRead`` would give it; 404 ``job_not_found`` when missing or another project's."""
    row = session.connection().execute(_BY_ID, {"job_id": job_id}).first()
    if row is None or row.project_id != project_id:
        raise not_found("job", job_id)
    return document_of(row)
