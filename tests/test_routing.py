"""PolledRead routes (app/routing.py) answer exactly as FastAPI's own handling of the same route.

The lean handler calls the route's dependencies itself instead of FastAPI's solver, and the
PolledReadLane middleware hands a GET of such a route straight to it. Each request below is sent to
an app built three ways: with the lane (the default), with the lean route class but no lane (as when
OpenTelemetry is configured), and with neither (the plan refused: FastAPI's own handling). The
answers must be the same: the document, 401s, 404s, the NUL check, the rate limit, 405 and a 500.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app import main, routing
from app.auth import forget_cached_keys, revoke_key
from app.db import get_engine, new_session
from app.jobs import service
from app.jobs.router import router as jobs_router
from app.main import create_app
from tests.conftest import make_key
from tests.datasets.conftest import set_setting
from tests.jobs.scale import seed_jobs

MODES = ("lane", "route", "fastapi")


@contextmanager
def _client(mode: str, monkeypatch: pytest.MonkeyPatch, raise_server_exceptions: bool = True) -> Iterator[TestClient]:
    with monkeypatch.context() as patch:
        if mode == "fastapi":
            # Handlers may be built lazily (at the first request), so the refusal holds throughout.
            patch.setattr(routing, "_lean_plan", lambda route: None)
        elif mode == "route":  # FastAPI's telemetry on: no lane, the route class's own lean handler
            patch.setattr(main, "opentelemetry_configured", lambda: True)
        app = create_app()
        lane = _lane(app)
        assert (lane is not None and len(lane._lanes) == 1) == (mode == "lane")
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            yield client


def _lane(app: FastAPI) -> routing.PolledReadLane | None:
    """The app's PolledReadLane, when it has one with routes to serve."""
    layer: Any = app.middleware_stack or app.build_middleware_stack()  # built at the first request
    while layer is not None:
        if isinstance(layer, routing.PolledReadLane):
            return layer if layer._lanes else None
        layer = getattr(layer, "app", None)
    return None


def _answer(response: Any) -> tuple[int, str, Any, str | None]:
    body = response.json() if response.content else None
    return response.status_code, response.headers.get("content-type", ""), body, response.headers.get("retry-after")


def _requests(alpha: dict[str, str], job: str, beta_job: str) -> list[tuple[str, str, dict[str, str]]]:
    return [
        ("GET", f"/api/v1/jobs/{job}", alpha),
        ("GET", f"/api/v1/jobs/{beta_job}", alpha),  # another project's: 404
        ("GET", "/api/v1/jobs/no-such-job", alpha),
        ("GET", f"/api/v1/jobs/{job}", {}),
        ("GET", f"/api/v1/jobs/{job}", {"Authorization": "Basic abc"}),
        ("GET", f"/api/v1/jobs/{job}", {"Authorization": "Bearer rnl_not-a-key"}),
        ("GET", "/api/v1/jobs/ab%00cd", alpha),
        ("POST", f"/api/v1/jobs/{job}", alpha),
        ("GET", f"/api/v1/jobs/{job}?pretty=1", alpha),  # unknown query parameters are ignored
    ]


def test_the_status_route_is_lean() -> None:
    route = next(r for r in jobs_router.routes if isinstance(r, APIRoute) and r.name == "get_job")
    assert isinstance(route, routing.PolledRead)
    assert routing._lean_plan(route) is not None
    # Anything the lean handler does not serve exactly is left to FastAPI.
    listing = next(r for r in jobs_router.routes if isinstance(r, APIRoute) and r.name == "list_jobs")
    assert routing._lean_plan(listing) is None

    async def coroutine_endpoint(job_id: str) -> None:
        return None

    def with_query(job_id: str, n: int = 1) -> None:
        return None

    for endpoint in (coroutine_endpoint, with_query):
        assert routing._lean_plan(routing.PolledRead("/x/{job_id}", endpoint)) is None


def test_polled_read_answers_as_fastapi_does(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job, beta_job = seed_jobs("alpha", 1, seed=1)[0], seed_jobs("beta", 1, seed=2)[0]
    alpha = {"Authorization": f"Bearer {make_key('alpha')}"}
    answers = {}
    for mode in MODES:
        with _client(mode, monkeypatch) as client:
            requests = _requests(alpha, job, beta_job)
            answers[mode] = [_answer(client.request(method, url, headers=h)) for method, url, h in requests]
    assert answers["lane"] == answers["route"] == answers["fastapi"]
    codes = [(status, ((body or {}).get("error") or {}).get("code")) for status, _, body, _ in answers["lane"]]
    assert codes == [
        (200, None),
        (404, "job_not_found"),
        (404, "job_not_found"),
        (401, "unauthorized"),
        (401, "unauthorized"),
        (401, "unauthorized"),
        (400, "invalid_characters"),
        (405, "method_not_allowed"),
        (200, None),
    ]
    assert answers["lane"][0][2]["id"] == job


def test_polled_read_keeps_the_rate_limit_and_revocation(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job = seed_jobs("alpha", 1, seed=1)[0]
    set_setting(monkeypatch, rate_limit="2/minute", auth_cache_seconds="0")
    for mode in MODES:
        key = make_key("alpha")  # a key of its own: the limit counts per key
        headers = {"Authorization": f"Bearer {key}"}
        with _client(mode, monkeypatch) as client:
            statuses = [client.get(f"/api/v1/jobs/{job}", headers=headers).status_code for _ in range(3)]
            assert statuses == [200, 200, 429], mode
            limited = client.get(f"/api/v1/jobs/{job}", headers=headers)
            assert limited.json()["error"]["code"] == "rate_limited" and limited.headers["retry-after"]
        set_setting(monkeypatch, rate_limit="")
        with _client(mode, monkeypatch) as client:
            assert client.get(f"/api/v1/jobs/{job}", headers=headers).status_code == 200
            with new_session() as session:
                assert revoke_key(session, key[:12]) == 1
            forget_cached_keys()
            assert client.get(f"/api/v1/jobs/{job}", headers=headers).status_code == 401
        set_setting(monkeypatch, rate_limit="2/minute")


def test_an_unexpected_error_is_the_apps_500(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job = seed_jobs("alpha", 1, seed=1)[0]
    alpha = {"Authorization": f"Bearer {make_key('alpha')}"}

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "read_job", broken)
    answers = {}
    for mode in MODES:
        with _client(mode, monkeypatch, raise_server_exceptions=False) as client:
            answers[mode] = _answer(client.get(f"/api/v1/jobs/{job}", headers=alpha))
    assert answers["lane"] == answers["route"] == answers["fastapi"]
    assert answers["lane"][0] == 500 and answers["lane"][2]["error"]["code"] == "internal_error"


def test_the_lane_leaves_other_requests_to_the_app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job = seed_jobs("alpha", 1, seed=1)[0]
    alpha = {"Authorization": f"Bearer {make_key('alpha')}"}
    served: list[str] = []
    with _client("lane", monkeypatch) as client:
        assert client.get("/healthz").status_code == 200
        lane = _lane(client.app)  # type: ignore[arg-type]
        assert lane is not None
        serve = lane._serve

        async def spy(handler: Any, scope: Any, receive: Any, send: Any) -> None:
            served.append(scope["path"])
            await serve(handler, scope, receive, send)

        monkeypatch.setattr(lane, "_serve", spy)
        assert client.get(f"/api/v1/jobs/{job}", headers=alpha).status_code == 200
        # Other paths and methods, and a deeper path under the job, are the app's.
        assert client.get(f"/api/v1/jobs/{job}/metrics", headers=alpha).status_code == 200
        assert client.get("/api/v1/jobs", headers=alpha).status_code == 200
        assert client.options(f"/api/v1/jobs/{job}", headers=alpha).status_code == 204
        # A trailing slash is the router's redirect (to the lane's path), as before.
        assert client.get(f"/api/v1/jobs/{job}/", headers=alpha, follow_redirects=False).status_code == 307
    assert served == [f"/api/v1/jobs/{job}"]


def test_opentelemetry_is_configured_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")] + ["FASTAPI_OTEL_AUTO_CONFIGURE"]:
        monkeypatch.delenv(name, raising=False)
    assert not main.opentelemetry_configured()
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "false")
    assert not main.opentelemetry_configured()
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "TRUE")
    assert main.opentelemetry_configured()
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert main.opentelemetry_configured()


def test_the_lane_shadows_no_other_route(env: dict[str, str]) -> None:
    """The lane takes its paths before the router does: no other GET route's path may match them
    (a static `/jobs/compare` beside `/jobs/{job_id}` would otherwise be served as a job id)."""
    app = create_app()
    lane = _lane(app)
    assert lane is not None
    for path, operations in app.openapi()["paths"].items():
        if "get" not in operations:
            continue
        concrete = re.sub(r"\{[^}]+\}", "x1", path)
        taken = [route.path for regex, _, route, _ in lane._lanes if regex.match(concrete)]
        assert taken in ([], [path.removeprefix("/api/v1")]), (path, taken)


def test_sqlite_reads_run_on_the_loop_and_other_databases_in_threads(env: dict[str, str]) -> None:
    executor = routing._read_executor()
    if get_engine().dialect.name == "sqlite":
        assert executor is None
    else:
        assert isinstance(executor, ThreadPoolExecutor)
    assert routing._read_executor() is executor  # one per process and engine
