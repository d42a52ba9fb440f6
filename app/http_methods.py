"""The ``Allow`` header: every method a path takes, across all the routes that share the path.

FastAPI registers one route per (path, method); Starlette's 405 then names only the first route's
methods (``OPTIONS /api/v1/jobs`` answered ``allow: POST``). Here the methods of every route whose
path matches are gathered, for the 405 answer and for ``OPTIONS``.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The methods our routes use; each is tried against the path (routes may be nested routers).
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(routes: Sequence[object], scope: Scope) -> list[str]:
    """Methods the path of ``scope`` takes (with HEAD for GET and OPTIONS); empty when no route matches."""
    methods: set[str] = set()
    for method in METHODS:
        probe = {**scope, "method": method}
        for route in routes:
            matches = getattr(route, "matches", None)
            if matches is not None and matches(probe)[0] == Match.FULL:
                methods.add(method)
                break
    if not methods:
        return []
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return sorted(methods)


class OptionsAnswer:
    """ASGI middleware: ``OPTIONS`` on a known path answers 204 with the full ``Allow`` header, and
    ``HEAD`` on a path that takes GET answers as GET would, without the body (FastAPI's GET routes
    do not take HEAD themselves, so health checkers that send HEAD got a 405)."""

    def __init__(self, app: ASGIApp, routes: Sequence[object]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            methods = allowed_methods(self.routes, scope)
            if methods:
                await Response(status_code=204, headers={"Allow": ", ".join(methods)})(scope, receive, send)
                return
        if scope["type"] == "http" and scope["method"] == "HEAD" and "GET" in allowed_methods(self.routes, scope):
            await self._head(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False

        async def headers_only(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                await send(message)  # GET's headers, Content-Length included (RFC 9110 §9.3.2)
            elif message["type"] == "http.response.body" and not answered:
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def until_answered() -> Message:
            # Once the headers are out, a stream (the event stream) is told the client left.
            return {"type": "http.disconnect"} if answered else await receive()

        await self.app({**scope, "method": "GET"}, until_answered, headers_only)
