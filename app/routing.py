"""The API's guards, and a lean route class for the reads that clients poll.

Every /api/v1 route runs ``API_GUARDS`` (included as router dependencies in ``app.main``). A read
such as ``GET /jobs/{id}`` takes only string path parameters, the caller's project and a session;
for it FastAPI's per-request dependency solving (matching each parameter and sub-dependency, and
an exit stack for the session) costs more CPU than the query itself. ``PolledRead`` routes call
the same dependencies directly instead. A route whose signature is anything else is handled by
FastAPI as usual, so the class is always safe to use; OpenAPI is built from the signature either
way.

``PolledReadLane`` (an ASGI middleware, the outermost of the app's own) goes one step further for
the same routes: a ``GET`` whose path is one of theirs is matched with the route's own compiled
pattern and handed to that lean handler directly, past FastAPI's router (which, for included
routers, matches every request twice), the exception middleware and the app's other middlewares,
none of which acts on a GET without a body. An ``AppError`` is rendered by the app's own handler;
anything unexpected propagates to Starlette's ServerErrorMiddleware, as from any route.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.convertors import Convertor
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import current_project
from app.config import get_settings
from app.db import get_db, get_engine, read_with_retry
from app.inputs import reject_nul_parameters
from app.ratelimit import enforce_rate_limit

API_GUARDS: tuple[Callable[[Request], Coroutine[Any, Any, None]], ...] = (reject_nul_parameters, enforce_rate_limit)
"""Run before every /api/v1 route, in this order."""


class PolledRead(APIRoute):
    """A route class for reads made by polling: ``def endpoint(<str path params>, project, session)``
    returning a Response. The endpoint only reads: its session runs in autocommit."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return lean_handler(self) or super().get_route_handler()


LeanHandler = Callable[[Request], Coroutine[Any, Any, Response]]


def lean_handler(route: APIRoute) -> LeanHandler | None:
    """The handler that calls the route's guards and dependencies directly, or None when the route's
    signature is not one it serves exactly as FastAPI would (see ``_lean_plan``)."""
    plan = _lean_plan(route)
    if plan is None:
        return None
    endpoint, path_names, project_name, session_name = plan

    async def handle(request: Request) -> Response:
        for guard in API_GUARDS:
            await guard(request)
        kwargs: dict[str, Any] = {name: request.path_params[name] for name in path_names}
        kwargs[project_name] = await current_project(request)

        def read(session: Session) -> Any:
            return endpoint(**kwargs, **{session_name: session})

        executor = _read_executor()
        if executor is None:
            response = read_with_retry(read)
        else:  # the session's whole life in one worker thread (see read_with_retry)
            response = await asyncio.get_running_loop().run_in_executor(executor, read_with_retry, read)
        if not isinstance(response, Response):
            raise TypeError(f"{endpoint.__qualname__} must return a Response to be a PolledRead route")
        return response

    return handle


# pid → (the engine it was made for, the executor; None on SQLite)
_executors: dict[int, tuple[Engine, ThreadPoolExecutor | None]] = {}


def _read_executor() -> ThreadPoolExecutor | None:
    """This process's threads for PolledRead reads, as many as its database pool has connections;
    None on SQLite, where the read runs on the event loop.

    SQLite is a file in this process: a read by primary key takes tens of microseconds and, in WAL
    mode, never waits for a writer, while the hop to a thread and back (two thread switches and the
    GIL changing hands) cost more CPU than the read: 870-1,005 against 572-688 µs per status read
    served, measured with ``wrk`` at 16 connections. A database across the network is read in a
    thread, so that a slow answer never stalls the loop. A plain executor: a hop through anyio's
    ``to_thread`` (capacity limiter, cancel scope, context copy) cost twice the CPU of
    ``run_in_executor``."""
    engine = get_engine()  # this process's, for the current settings
    entry = _executors.get(os.getpid())
    if entry is None or entry[0] is not engine:  # only the event loop's thread gets here
        executor = None
        if engine.dialect.name != "sqlite":
            executor = ThreadPoolExecutor(max_workers=get_settings().db_pool_size, thread_name_prefix="rnnlab-read")
        if entry is not None and entry[1] is not None:
            entry[1].shutdown(wait=False)
        entry = _executors[os.getpid()] = (engine, executor)
    return entry[1]


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


class PolledReadLane:
    """ASGI middleware: ``GET`` on a PolledRead route's path runs its lean handler directly.

    ``routes`` are (full path, route) pairs: the path with the prefix the route is included under.
    Routes that have no lean handler are left to the app. With ``enabled`` false (FastAPI's own
    OpenTelemetry instrumentation is on, and names each request's route in the router) every request
    goes through the app. The lane matches before the router, so no other GET route may match a
    lane path (a static ``/jobs/compare`` beside ``/jobs/{job_id}``); ``tests/test_routing.py``
    checks every route of the app for that.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[tuple[str, APIRoute]],
        exception_handlers: Mapping[Any, Callable[..., Any]],
        enabled: bool = True,
    ) -> None:
        self.app = app
        self._handlers = exception_handlers
        self._lanes: list[tuple[re.Pattern[str], dict[str, Convertor[Any]], APIRoute, LeanHandler]] = []
        for path, route in routes if enabled else ():
            handler = lean_handler(route)
            if handler is not None:
                regex, _, convertors = compile_path(path)
                self._lanes.append((regex, convertors, route, handler))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            path = scope["path"]
            for regex, convertors, route, handler in self._lanes:
                match = regex.match(path)
                if match is not None:
                    # What Starlette's Route.matches puts in the scope.
                    params = {name: convertors[name].convert(value) for name, value in match.groupdict().items()}
                    scope["endpoint"], scope["route"], scope["path_params"] = route.endpoint, route, params
                    await self._serve(handler, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, handler: LeanHandler, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            render = self._handler_for(exc)
            if render is None:
                raise  # to ServerErrorMiddleware: the app's 500, logged, as from any route
            response = await render(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        """The app's handler for this exception's class or a base below Exception (what Starlette's
        ExceptionMiddleware would call); handlers for Exception itself belong to ServerErrorMiddleware."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self._handlers:
                return self._handlers[cls]
        return None
