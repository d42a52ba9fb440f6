"""One domain exception type and the handlers that turn every error into the one error body."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error a client can act on: carries its HTTP status, a stable code and a message."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


def not_found(kind: str, item_id: str) -> AppError:
    return AppError(404, f"{kind}_not_found", f"{kind} '{item_id}' not found")


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


# Pydantic names the member of a union (``int | Literal["auto"]``) that failed in the error location.
_UNION_MEMBER = re.compile(r"^(constrained-)?(int|float|str|bool|none)$|^literal\[")


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [
        str(p)
        for p in loc
        if p not in ("body", "query", "path", "header") and not (isinstance(p, str) and _UNION_MEMBER.match(p))
    ]
    return ".".join(parts)


def _detail(error: Any) -> dict[str, Any]:
    loc, kind, message = tuple(error.get("loc", ())), error.get("type", ""), str(error.get("msg", ""))
    if kind == "json_invalid":
        at = loc[1] if len(loc) > 1 else "?"
        return {"field": "body", "message": f"request body is not valid JSON (at character {at})", "type": kind}
    # Our own validators raise ValueError; pydantic prefixes their text with "Value error, ".
    message = message.removeprefix("Value error, ")
    return {"field": _loc_to_field(loc), "message": message, "type": kind}


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{field, message, type}]`` with dotted field names; the errors of one
    union field (a number or "auto") become one detail."""
    merged: dict[str, dict[str, Any]] = {}
    details = []
    for detail in map(_detail, errors):
        first = merged.get(detail["field"])
        if first is not None and detail["field"] != "body":
            first["message"] += " or " + detail["message"].removeprefix("Input should be ")
            continue
        merged[detail["field"]] = detail
        details.append(detail)
    return details


def validation_message(details: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details[:5])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(list(exc.errors()))
        return JSONResponse(error_body("validation_error", validation_message(details), details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "too_large"}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
