"""The API's guards, and a lean route class for the reads that clients poll.

Every /api/v1 route runs ``API_GUARDS`` (included as router dependencies in ``app.main``). A read
such as ``GET /jobs/{id}`` takes only string path parameters, the caller's project and a session;
for it FastAPI's per-request dependency solving (matching each parameter and sub-dependency, and
an exit stack for the session) costs more CPU than the query itself. ``PolledRead`` routes call
the same dependencies directly instead. A route whose signature is anything else is handled by
FastAPI as usual, so the class is always safe to use; OpenAPI is built from the signature either
way.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from app.auth import current_project
from app.config import get_settings
from app.db import get_db, read_with_retry
from app.inputs import reject_nul_parameters
from app.ratelimit import enforce_rate_limit

API_GUARDS: tuple[Callable[[Request], Coroutine[Any, Any, None]], ...] = (reject_nul_parameters, enforce_rate_limit)
"""Run before every /api/v1 route, in this order."""


class PolledRead(APIRoute):
    """A route class for reads made by polling: ``def endpoint(<str path params>, project, session)``
    returning a Response. The endpoint only reads: its session runs in autocommit."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        plan = _lean_plan(self)
        if plan is None:
            return super().get_route_handler()
        endpoint, path_names, project_name, session_name = plan

        async def handle(request: Request) -> Response:
            for guard in API_GUARDS:
                await guard(request)
            kwargs: dict[str, Any] = {name: request.path_params[name] for name in path_names}
            kwargs[project_name] = await current_project(request)

            def read(session: Session) -> Any:
                return endpoint(**kwargs, **{session_name: session})

            # The session's whole life in one worker thread (see read_with_retry).
            response = await asyncio.get_running_loop().run_in_executor(_read_threads(), read_with_retry, read)
            if not isinstance(response, Response):
                raise TypeError(f"{endpoint.__qualname__} must return a Response to be a PolledRead route")
            return response

        return handle


_executors: dict[int, ThreadPoolExecutor] = {}


def _read_threads() -> ThreadPoolExecutor:
    """This process's threads for PolledRead reads, as many as its database pool has connections.

    A plain executor: a hop through anyio's ``to_thread`` (capacity limiter, cancel scope, context
    copy) cost twice the CPU of ``run_in_executor``, about 70 µs of a status read's ~1 ms."""
    pid = os.getpid()
    if pid not in _executors:  # only the event loop's thread calls this
        size = get_settings().db_pool_size
        _executors[pid] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="rnnlab-read")
    return _executors[pid]


def _lean_plan(route: APIRoute) -> tuple[Callable[..., Any], list[str], str, str] | None:
    """(endpoint, path parameter names, project parameter, session parameter) when the route's
    signature is one the lean handler serves exactly as FastAPI would, else None."""
    dependant = route.dependant
    if inspect.iscoroutinefunction(route.endpoint):
        return None
    if dependant.query_params or dependant.header_params or dependant.cookie_params or dependant.body_params:
        return None
    if dependant.request_param_name or dependant.response_param_name or dependant.background_tasks_param_name:
        return None
    if route.dependencies:
        return None
    path_names = []
    for field in dependant.path_params:
        if field.field_info.annotation is not str or field.alias != field.name:
            return None
        path_names.append(field.name)
    calls = {sub.call: sub.name for sub in dependant.dependencies}
    if len(calls) != 2 or current_project not in calls or get_db not in calls:
        return None
    project_name, session_name = calls[current_project], calls[get_db]
    if project_name is None or session_name is None:
        return None
    return route.endpoint, path_names, project_name, session_name
