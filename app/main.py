"""The API process: create_app() wires routers, error handlers and operational routes."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from app.config import get_settings
from app.dashboard.router import router as dashboard_router
from app.datasets.router import router as datasets_router
from app.errors import ERROR_RESPONSES, install_error_handlers
from app.http_methods import OptionsAnswer
from app.inputs import RequestBodyGuard
from app.jobs.router import leaderboard_router, metrics_router
from app.jobs.router import router as jobs_router
from app.ops import router as ops_router
from app.routing import API_GUARDS, PolledRead, PolledReadLane
from app.storage import get_storage
from app.sweeps.router import router as sweeps_router
from worker.engine.spec import JobSpec

log = logging.getLogger(__name__)
# A temp file untouched this long belongs to no upload in flight (uploads write continuously).
STALE_TEMP_SECONDS = 3600.0


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    removed = get_storage().remove_stale_temp_files(STALE_TEMP_SECONDS)
    if removed:
        log.info("removed %d temp files left by an interrupted upload", removed)
    if get_settings().gc_freeze:
        freeze_startup_objects()
    yield


# Young-generation threshold: the default 700 allocations runs a collection every few requests.
GC_THRESHOLDS = (50_000, 20, 100)


def freeze_startup_objects() -> None:
    """Move everything alive after start-up out of the collector's reach, and collect less often.

    The imported modules, routes and pydantic schemas are hundreds of thousands of objects that
    never die; every full collection walked all of them (~70 ms, the p95 spikes of the read
    routes). Frozen, a full collection sees only what requests allocated since.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app() -> FastAPI:
    # FastAPIOffline serves /docs and /redoc from packaged assets: self-hosted machines often have
    # no route to the CDN that FastAPI's default pages load Swagger UI from.
    telemetry = opentelemetry_configured()
    app = FastAPIOffline(
        title="rnnlab",
        version="0.1.0",
        description="Train and evaluate recurrent neural networks.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry instrumentation, when the environment sets OpenTelemetry up.
        # Off, it is not asked on every request whether a provider has appeared since.
        telemetry=None if telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)

    # Each router is included into the app itself, not into an /api/v1 router first: every level
    # of nesting is matched again for each request (FastAPI's included routers are resolved per
    # request), and the polled job routes come first.
    api_routers = (jobs_router, datasets_router, metrics_router, leaderboard_router, sweeps_router)
    for router in api_routers:
        app.include_router(
            router,
            prefix=API_PREFIX,
            responses=ERROR_RESPONSES,
            dependencies=[Depends(guard) for guard in API_GUARDS],
        )
    app.include_router(dashboard_router)
    app.include_router(ops_router)
    app.openapi = lambda: openapi_with_job_spec(app)  # type: ignore[method-assign]
    # Outermost first: OPTIONS is answered before anything reads a body; the guard then bounds
    # every body's arrival and checks JSON before a route parses it.
    app.add_middleware(RequestBodyGuard)
    app.add_middleware(OptionsAnswer, routes=app.routes)
    # Outside both: a GET of a polled read (job status) goes straight to its route's lean handler.
    polled = [
        (API_PREFIX + route.path, route) for r in api_routers for route in r.routes if isinstance(route, PolledRead)
    ]
    app.add_middleware(PolledReadLane, routes=polled, exception_handlers=app.exception_handlers, enabled=not telemetry)

    return app


API_PREFIX = "/api/v1"


def opentelemetry_configured() -> bool:
    """Whether the environment sets OpenTelemetry up: an ``OTEL_*`` variable (as
    ``opentelemetry-instrument`` and the OTLP exporters read them) or FastAPI's own switch."""
    return (
        any(name.startswith("OTEL_") for name in os.environ)
        or os.environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true"
    )


def openapi_with_job_spec(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the JobSpec schema documented where routes take it as raw JSON.

    Routes read specs as plain JSON so that their errors name spec fields (and, for sweeps, the
    grid value that caused them); this puts the schema back into the docs.
    """
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

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
    _error_bodies_are_json(schema)
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


def _error_bodies_are_json(schema: dict[str, Any]) -> None:
    """Every 4xx/5xx is the JSON ErrorBody, also on routes whose success is text or a file."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for operations in schema["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[:1] in ("4", "5"):
                    response["content"] = error
