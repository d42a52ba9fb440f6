"""PolledRead routes (app/routing.py) answer exactly as FastAPI's own handling of the same route.

The lean handler calls the route's dependencies itself instead of FastAPI's solver; each request
below is sent to an app built with it and to one built without it (the plan refused), and the
answers must be the same: the document, 401s, 404s, the NUL check, the rate limit and 405.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app import routing
from app.auth import forget_cached_keys, revoke_key
from app.db import new_session
from app.jobs.router import router as jobs_router
from app.main import create_app
from tests.conftest import make_key
from tests.datasets.conftest import set_setting
from tests.jobs.scale import seed_jobs


@contextmanager
def _client(lean: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with monkeypatch.context() as patch:
        if not lean:
            # Handlers may be built lazily (at the first request), so the refusal holds throughout.
            patch.setattr(routing, "_lean_plan", lambda route: None)
        with TestClient(create_app()) as client:
            yield client


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
    for lean in (True, False):
        with _client(lean, monkeypatch) as client:
            requests = _requests(alpha, job, beta_job)
            answers[lean] = [_answer(client.request(method, url, headers=h)) for method, url, h in requests]
    assert answers[True] == answers[False]
    codes = [(status, ((body or {}).get("error") or {}).get("code")) for status, _, body, _ in answers[True]]
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
    assert answers[True][0][2]["id"] == job


def test_polled_read_keeps_the_rate_limit_and_revocation(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job = seed_jobs("alpha", 1, seed=1)[0]
    set_setting(monkeypatch, rate_limit="2/minute", auth_cache_seconds="0")
    for lean in (True, False):
        key = make_key("alpha")  # a key of its own: the limit counts per key
        headers = {"Authorization": f"Bearer {key}"}
        with _client(lean, monkeypatch) as client:
            statuses = [client.get(f"/api/v1/jobs/{job}", headers=headers).status_code for _ in range(3)]
            assert statuses == [200, 200, 429], lean
            limited = client.get(f"/api/v1/jobs/{job}", headers=headers)
            assert limited.json()["error"]["code"] == "rate_limited" and limited.headers["retry-after"]
        set_setting(monkeypatch, rate_limit="")
        with _client(lean, monkeypatch) as client:
            assert client.get(f"/api/v1/jobs/{job}", headers=headers).status_code == 200
            with new_session() as session:
                assert revoke_key(session, key[:12]) == 1
            forget_cached_keys()
            assert client.get(f"/api/v1/jobs/{job}", headers=headers).status_code == 401
        set_setting(monkeypatch, rate_limit="2/minute")
