"""Every request value is checked before a parser or the database sees it.

PostgreSQL refuses a NUL character in text and the literal ``Infinity`` in JSON columns; both used to
surface as 500s. Here they are refused up front, naming the field:

- path and query parameters: a router dependency (:func:`reject_nul_parameters`);
- JSON bodies: :class:`RequestBodyGuard`, an ASGI middleware that also enforces the JSON body size
  limit (413, from ``Content-Length`` before a byte is read, else while reading), parses the body
  in a worker thread (so a large body never blocks the event loop) and refuses NUL characters and
  non-finite numbers (``Infinity``, ``NaN``, ``1e999``, an integer beyond the float range) anywhere
  in it, and bodies nested too deep or with too long an integer for the parser (400 ``invalid_json``);
- every request body: the time allowed between two chunks is bounded (408), so a client that
  announces more bytes than it sends cannot hold a connection open forever.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import get_settings
from app.errors import AppError, BadRequest, InvalidInput, RequestTimeout, TooLarge, error_body

NUL = "\x00"
# The largest finite float; a JSON integer beyond it cannot become a number any field takes.
FLOAT_MAX = sys.float_info.max
# Methods whose body FastAPI reads as JSON on our routes.
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def nul_in_parameter(where: str, name: str) -> AppError:
    return BadRequest(
        "invalid_characters",
        f"{where} parameter '{name}' contains a NUL character, which no id, name or value may hold",
        {"field": name, "in": where},
    )


async def reject_nul_parameters(request: Request) -> None:
    """400 ``invalid_characters`` naming the path or query parameter that holds a NUL character."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and NUL in value:
            raise nul_in_parameter("path", name)
    if not request.scope["query_string"]:
        return
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise nul_in_parameter("query", name.replace(NUL, "\\x00"))


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field, problem) for each NUL character or non-finite number in a parsed JSON value."""
    if isinstance(value, str):
        if NUL in value:
            yield path or "body", "nul"
    elif isinstance(value, float):
        if not math.isfinite(value):  # 1e999 parses to inf
            yield path or "body", "non_finite"
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > FLOAT_MAX:  # an integer literal no float can hold (10**400)
            yield path or "body", "non_finite"
    elif isinstance(value, dict):
        for key, item in value.items():
            field = f"{path}.{key}" if path else str(key)
            if NUL in key:
                yield field.replace(NUL, "\\x00"), "nul"
            yield from _walk(item, field)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]" if path else f"[{index}]")


TOO_DEEP = "it is nested deeper than the parser allows (about 1000 levels)"


def _invalid_json(problem: str) -> AppError:
    details = [{"field": "body", "message": problem, "type": "invalid_json"}]  # as validation errors list theirs
    return BadRequest("invalid_json", f"the body is not valid JSON: {problem}", details)


def check_json_body(body: bytes) -> AppError | None:
    """The error for a JSON body holding a NUL character or a number beyond the float range (also an
    integer literal), or one the parser cannot read (too deep, too long an integer); None when clean.

    A body that is not JSON at all is left to FastAPI, which answers its usual 422.
    """
    try:
        # json.loads reads the non-standard literals NaN, Infinity and -Infinity as floats: the walk
        # below then names the field each one is in, as it does for 1e999.
        parsed = json.loads(body)
    except RecursionError:
        return _invalid_json(TOO_DEEP)
    except json.JSONDecodeError:
        return None  # FastAPI's 422 names the character where parsing failed
    except UnicodeDecodeError as exc:  # json.loads reads UTF-8/16/32 only; Latin-1 bytes land here
        return _invalid_json(f"it is not UTF-8 text (byte 0x{body[exc.start]:02x} at offset {exc.start}); send UTF-8")
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            return None
        return _invalid_json(f"an integer has more than {sys.get_int_max_str_digits()} digits")
    try:
        problems = list(_walk(parsed, ""))
    except RecursionError:  # parsed, but deeper than the walk can follow from here
        return _invalid_json(TOO_DEEP)
    if not problems:
        return None
    field, kind = problems[0]
    if kind == "nul":
        return BadRequest(
            "invalid_characters",
            f"{field}: contains a NUL character, which no name or value may hold",
            [{"field": f, "message": "contains a NUL character", "type": "nul"} for f, k in problems if k == "nul"],
        )
    return InvalidInput(
        "non_finite_number",
        f"{field}: not a finite number (Infinity, NaN or out of the float range)",
        [{"field": f, "message": "not a finite number", "type": "non_finite_number"} for f, k in problems],
    )


def _is_json(content_type: str) -> bool:
    # FastAPI parses a body without a Content-Type as JSON too.
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


def _error_response(error: AppError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message, error.details), status_code=error.status_code)


def body_too_large(limit_bytes: int) -> AppError:
    return TooLarge(
        "too_large",
        f"the JSON body exceeds {limit_bytes} bytes (RNNLAB_MAX_JSON_BODY_BYTES)",
        {"limit_bytes": limit_bytes},
    )


class RequestBodyGuard:
    """ASGI middleware: body read timeout for every request; size limit and value checks for JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        timed = _TimedReceive(receive, settings.body_read_timeout_seconds)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] not in _BODY_METHODS or not _is_json(headers.get("content-type", "")):
            await self.app(scope, timed, send)
            return
        limit = settings.max_json_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _error_response(body_too_large(limit))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                message = await timed()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _error_response(body_too_large(limit))(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except RequestTimeout as exc:
            await _error_response(exc)(scope, receive, send)
            return
        body = b"".join(chunks)
        if body:
            error = await anyio.to_thread.run_sync(check_json_body, body)
            if error is not None:
                await _error_response(error)(scope, receive, send)
                return
        await self.app(scope, _Replay(body, receive), send)


class _TimedReceive:
    """``receive`` with a limit on the wait for each body chunk, until the body is complete.

    After the last chunk the wrapped ``receive`` is called as it is: streaming responses wait on it
    for the client's disconnect, for as long as the stream lasts.
    """

    def __init__(self, receive: Receive, timeout_seconds: float) -> None:
        self._receive = receive
        self._timeout = timeout_seconds
        self._body_done = False

    async def __call__(self) -> Message:
        if self._body_done:
            return await self._receive()
        try:
            with anyio.fail_after(self._timeout):
                message = await self._receive()
        except TimeoutError as exc:
            self._body_done = True
            raise RequestTimeout(
                "request_timeout",
                f"no part of the request body arrived for {self._timeout:g} s "
                "(RNNLAB_BODY_READ_TIMEOUT_SECONDS); send the whole body promptly",
                {"timeout_seconds": self._timeout},
            ) from exc
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_done = True
        return message


class _Replay:
    """Hands the already-read body to the app once, then passes through (disconnect detection)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()
