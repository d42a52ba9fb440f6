"""The API process: create_app() wires routers, error handlers and operational routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy import text

from app.config import get_settings
from app.dashboard.router import router as dashboard_router
from app.datasets.router import router as datasets_router
from app.db import get_engine
from app.errors import error_body, install_error_handlers
from app.jobs.router import metrics_router
from app.jobs.router import router as jobs_router
from app.sweeps.router import router as sweeps_router

log = logging.getLogger(__name__)
# A temp file untouched this long belongs to no upload in flight (uploads write continuously).
STALE_TEMP_SECONDS = 3600.0


def database_ready() -> str | None:
    """None when the database answers, else the reason."""
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}"


def broker_ready() -> str | None:
    """None when the broker answers, else the reason."""
    from worker.celery_app import celery_app

    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return None
    except Exception as exc:
        return f"broker unreachable: {type(exc).__name__}"


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    from app.storage import get_storage

    get_settings().storage_root.mkdir(parents=True, exist_ok=True)
    removed = get_storage().remove_stale_temp_files(STALE_TEMP_SECONDS)
    if removed:
        log.info("removed %d temp files left by an interrupted upload", removed)
    yield


def create_app() -> FastAPI:
    # FastAPIOffline serves /docs and /redoc from packaged assets: self-hosted machines often have
    # no route to the CDN that FastAPI's default pages load Swagger UI from.
    app = FastAPIOffline(
        title="rnnlab",
        version="0.1.0",
        description="Train and evaluate recurrent neural networks.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    api = APIRouter(prefix="/api/v1")
    api.include_router(datasets_router)
    api.include_router(jobs_router)
    api.include_router(metrics_router)
    api.include_router(sweeps_router)
    app.include_router(api)
    app.include_router(dashboard_router)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        checks = {"database": database_ready(), "broker": broker_ready()}
        failed = {k: v for k, v in checks.items() if v}
        if failed:
            return JSONResponse(
                error_body("not_ready", "; ".join(failed.values()), {"checks": failed}), status_code=503
            )
        return JSONResponse({"status": "ready", "checks": {k: "ok" for k in checks}})

    app.openapi = lambda: openapi_with_job_spec(app)  # type: ignore[method-assign]

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        """Prometheus text format: jobs by status and queue, datasets, readiness."""
        return PlainTextResponse(prometheus_text(), media_type="text/plain; version=0.0.4")

    return app


def openapi_with_job_spec(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the JobSpec schema documented where routes take it as raw JSON.

    Routes read specs as plain JSON so that their errors name spec fields (and, for sweeps, the
    grid value that caused them); this puts the schema back into the docs.
    """
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    from worker.engine.spec import JobSpec

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(spec_schema.pop("$defs", {}))
    components["JobSpec"] = spec_schema
    body = schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = {"$ref": "#/components/schemas/JobSpec"}
    sweep = components.get("SweepCreate", {}).get("properties", {})
    if "base" in sweep:
        sweep["base"] = {"$ref": "#/components/schemas/JobSpec", "description": sweep["base"].get("description", "")}
    add_api_key_security(schema)
    app.openapi_schema = schema
    return schema


def add_api_key_security(schema: dict[str, Any]) -> None:
    """Declare the bearer API key on every /api/v1 operation, so Swagger's Authorize button sends it."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `rnnlab keys create --project NAME`, sent as 'Authorization: Bearer <key>'.",
    }
    for path, operations in schema["paths"].items():
        if path.startswith("/api/v1/"):
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]


def prometheus_text() -> str:
    from sqlalchemy import func, select

    from app.db import new_session
    from app.models import JOB_STATUSES, Dataset, Job

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
    queues = sorted({q for _, q in counts} | {"default"})
    for status in JOB_STATUSES:
        for queue in queues:
            lines.append(f'rnnlab_jobs{{status="{status}",queue="{queue}"}} {counts.get((status, queue), 0)}')
    lines += [
        "# HELP rnnlab_job_retries_total Extra attempts jobs needed after a lost worker.",
        "# TYPE rnnlab_job_retries_total counter",
        f"rnnlab_job_retries_total {attempts}",
        "# HELP rnnlab_datasets Stored datasets.",
        "# TYPE rnnlab_datasets gauge",
        f"rnnlab_datasets {datasets}",
        "# HELP rnnlab_ready 1 when the database and the broker answer.",
        "# TYPE rnnlab_ready gauge",
        f"rnnlab_ready {int(database_ready() is None and broker_ready() is None)}",
    ]
    return "\n".join(lines) + "\n"
