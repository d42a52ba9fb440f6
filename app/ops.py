"""Operations: liveness, readiness and Prometheus metrics (outside /api/v1, no key needed)."""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select, text

from app.config import get_settings
from app.db import get_engine, new_session
from app.errors import ErrorBody, NotFound, Unauthorized, error_body
from app.jobs.status import JobStatus
from app.models import Dataset, Job
from app.queue import DEFAULT_QUEUE, broker_ready
from app.storage import get_storage, storage_ready

router = APIRouter(tags=["operations"])


def database_ready() -> str | None:
    """None when the database answers, else the reason."""
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# The store's answer is kept this long: a probe every few seconds costs one bucket listing, not one each.
STORAGE_CHECK_SECONDS = 10.0
_storage_checked: tuple[object, float, str | None] | None = None


def storage_ready_cached() -> str | None:
    """:func:`app.storage.storage_ready` (one LIST on S3, nothing for files), at most every
    STORAGE_CHECK_SECONDS per process and store."""
    global _storage_checked
    store, now = get_storage(), time.monotonic()
    checked = _storage_checked
    if checked is None or checked[0] is not store or now - checked[1] >= STORAGE_CHECK_SECONDS:
        checked = _storage_checked = (store, now, storage_ready())
    return checked[2]


@router.get(
    "/readyz", responses={503: {"model": ErrorBody, "description": "Database, broker or object storage unreachable"}}
)
def readyz() -> JSONResponse:
    # A misnamed bucket or an unreachable store makes every upload and job fail: not ready.
    checks = {"database": database_ready(), "broker": broker_ready(), "storage": storage_ready_cached()}
    failed = {k: v for k, v in checks.items() if v}
    if failed:
        return JSONResponse(error_body("not_ready", "; ".join(failed.values()), {"checks": failed}), status_code=503)
    return JSONResponse({"status": "ready", "checks": {k: "ok" for k in checks}})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        401: {"model": ErrorBody, "description": "RNNLAB_METRICS_ACCESS=token and no or a wrong token"},
        404: {"model": ErrorBody, "description": "RNNLAB_METRICS_ACCESS=off"},
    },
)
def prometheus_metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format: jobs by status and queue, datasets, readiness (all projects together).

    RNNLAB_METRICS_ACCESS says who may read it: ``off`` (404), ``token`` (``Authorization: Bearer
    RNNLAB_METRICS_TOKEN``) or ``open``.
    """
    check_metrics_access(request)
    return PlainTextResponse(prometheus_text(), media_type="text/plain; version=0.0.4")


def check_metrics_access(request: Request) -> None:
    settings = get_settings()
    if settings.metrics_access == "off":
        raise NotFound("not_found", "Prometheus metrics are off (RNNLAB_METRICS_ACCESS=off)")
    if settings.metrics_access == "token":
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        if not settings.metrics_token or not hmac.compare_digest(token.encode(), settings.metrics_token.encode()):
            raise Unauthorized("unauthorized", "send 'Authorization: Bearer <RNNLAB_METRICS_TOKEN>' to read metrics")


def prometheus_text() -> str:
    lines = [
        "# HELP rnnlab_jobs Jobs by status and queue.",
        "# TYPE rnnlab_jobs gauge",
    ]
    with new_session() as session:
        counts = {
            (s, q): n
            for s, q, n in session.execute(select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue))
        }
        datasets = session.scalar(select(func.count()).select_from(Dataset)) or 0
        attempts = session.scalar(select(func.coalesce(func.sum(Job.attempts - 1), 0)).where(Job.attempts > 1)) or 0
    queues = sorted({q for _, q in counts} | {DEFAULT_QUEUE})
    for status in JobStatus:
        for queue in queues:
            lines.append(f'rnnlab_jobs{{status="{status}",queue="{queue}"}} {counts.get((status, queue), 0)}')
    lines += [
        "# HELP rnnlab_job_retries_total Extra attempts jobs needed after a lost worker.",
        "# TYPE rnnlab_job_retries_total counter",
        f"rnnlab_job_retries_total {attempts}",
        "# HELP rnnlab_datasets Stored datasets.",
        "# TYPE rnnlab_datasets gauge",
        f"rnnlab_datasets {datasets}",
        "# HELP rnnlab_ready 1 when the database, the broker and the object store answer.",
        "# TYPE rnnlab_ready gauge",
        f"rnnlab_ready {int(database_ready() is None and broker_ready() is None and storage_ready_cached() is None)}",
    ]
    return "\n".join(lines) + "\n"
