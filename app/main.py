"""The API process: create_app() wires routers, error handlers and operational routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.config import get_settings
from app.datasets.router import router as datasets_router
from app.db import get_engine
from app.errors import error_body, install_error_handlers
from app.jobs.router import router as jobs_router
from app.sweeps.router import router as sweeps_router

log = logging.getLogger(__name__)


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
    get_settings().storage_root.mkdir(parents=True, exist_ok=True)
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="rnnlab",
        version="0.1.0",
        description="Train and evaluate recurrent neural networks.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    api = APIRouter(prefix="/api/v1")
    api.include_router(datasets_router)
    api.include_router(jobs_router)
    api.include_router(sweeps_router)
    app.include_router(api)

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

    return app
