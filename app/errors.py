"""Errors by meaning, the one error body, and the handlers that turn every error into it.

Code raises a kind (``NotFound``, ``Conflict``, ``InvalidInput``, …) with a stable ``code`` from
:data:`ERROR_CODES`; the kind carries the HTTP status, so no HTTP numbers sit in domain code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.http_methods import allowed_methods

log = logging.getLogger(__name__)

# Every error code the API answers with: code → (status, when). Served in the OpenAPI docs (the
# ErrorBody schema) and in docs/api.md; a test checks that code raises no code missing here.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_where": (400, "the `where` filter cannot be read or names an unknown field or metric"),
    "invalid_sort": (400, "the `sort` parameter names an unknown field or metric"),
    "invalid_cursor": (400, "the `cursor` is not one this server issued"),
    "invalid_multipart": (400, "the upload is not a readable multipart/form-data body"),
    "invalid_json": (400, "the JSON body is nested too deep or holds an integer too long for the parser"),
    "upload_interrupted": (400, "the client disconnected before the upload finished"),
    "invalid_characters": (400, "a path or query parameter, JSON value or form field holds a NUL character"),
    "http_error": (400, "another HTTP-level error (e.g. a body FastAPI cannot read); the message says which"),
    "too_many_jobs": (400, "more jobs than allowed in one request (compare) or one sweep (422)"),
    "invalid_metric": (422, "a metric name that does not exist"),
    "non_finite_number": (422, "a JSON number is Infinity, NaN or beyond the float range; details name the field"),
    "unauthorized": (401, "no API key, or a key that is unknown or revoked"),
    "not_found": (404, "no such route or file"),
    "dataset_not_found": (404, "no dataset with this id in your project"),
    "job_not_found": (404, "no job with this id in your project"),
    "sweep_not_found": (404, "no sweep with this id in your project"),
    "method_not_allowed": (405, "the route exists but not for this method; `Allow` lists the methods it takes"),
    "request_timeout": (408, "the request body stopped arriving (RNNLAB_BODY_READ_TIMEOUT_SECONDS)"),
    "job_finished": (409, "the job already finished (e.g. cancel of a succeeded job)"),
    "job_active": (409, "the job is queued or running; cancel it first"),
    "job_in_sweep": (409, "the job belongs to a sweep; delete the sweep instead"),
    "sweep_active": (409, "the sweep has queued or running jobs; cancel it first"),
    "evaluation_not_ready": (409, "the job has not succeeded, so it has no evaluation yet"),
    "model_not_ready": (409, "the job has not succeeded, so it has no model yet"),
    "dataset_in_use": (409, "a queued or running job uses the dataset"),
    "dataset_referenced": (409, "finished jobs or sweeps still point at the dataset"),
    "quota_active_jobs": (
        409,
        "the project already has its quota of queued and running jobs (RNNLAB_QUOTA_ACTIVE_JOBS)",
    ),
    "file_too_large": (413, "the upload (or its decompressed content) is over the size limit"),
    "too_large": (413, "the JSON request body is over the size limit (RNNLAB_MAX_JSON_BODY_BYTES)"),
    "quota_stored_bytes": (413, "the upload would take the project past its storage quota (RNNLAB_QUOTA_STORED_BYTES)"),
    "compression_ratio": (413, "a compressed upload expands more than RNNLAB_MAX_COMPRESSION_RATIO times"),
    "unsupported_format": (415, "the file is not CSV, CSV.gz, Parquet or NPZ, or its content is not its format"),
    "unsupported_media_type": (415, "the request is not multipart/form-data"),
    "validation_error": (422, "the request body or a parameter does not match its schema"),
    "invalid_spec": (422, "the job spec is invalid; details name each field"),
    "invalid_grid": (422, "a sweep grid value is invalid; details name it"),
    "unknown_grid_path": (422, "a sweep grid path is not a JobSpec field; the message lists the fields under it"),
    "reserved_grid_path": (
        422,
        "a grid path a sweep cannot vary (dataset_id, task, training.seed, name); the message says why",
    ),
    "invalid_space": (422, "a tpe search space parameter is invalid or cannot run on the dataset; details name it"),
    "invalid_objective": (
        422,
        "a tpe objective is not a validation metric of the task (or not one a pruner can follow)",
    ),
    "spec_does_not_fit_dataset": (422, "the spec cannot run on this dataset (missing column, too short, …)"),
    "model_too_large": (
        422,
        "the model's estimated training memory is above RNNLAB_MAX_TRAINING_MEMORY_BYTES (lower model.hidden_size, "
        "model.num_layers, model.ensemble or training.batch_size)",
    ),
    "invalid_inputs": (
        422,
        "prediction inputs are not a finite array of the model's shape (or texts, for a text model)",
    ),
    "invalid_filename": (422, "the uploaded file name is empty, a path, or not allowed"),
    "invalid_encoding": (422, "the text is not UTF-8"),
    "nul_character": (422, "the CSV holds a NUL character; the message names the line and byte offset"),
    "unparseable_csv": (422, "the CSV cannot be parsed (ragged rows, bad quoting); the message names the line"),
    "no_columns": (422, "the table has no columns"),
    "invalid_gzip": (422, "the .csv.gz file is not a readable gzip stream"),
    "invalid_parquet": (422, "the file is not a readable Parquet file"),
    "invalid_npz": (422, "the file is not a readable NPZ of numeric arrays"),
    "no_arrays": (422, "the NPZ holds no arrays"),
    "object_array": (422, "an NPZ array holds Python objects (pickles are never loaded)"),
    "duplicate_columns": (422, "two columns have the same name"),
    "no_rows": (422, "the table has a header but no rows"),
    "empty_file": (422, "the uploaded file is empty"),
    "column_not_found": (422, "a column named in the request does not exist in the dataset"),
    "array_not_found": (422, "an array named in the request does not exist in the NPZ"),
    "too_many_columns": (422, "the table has more columns than RNNLAB_MAX_COLUMNS"),
    "invalid_column_name": (
        422,
        "a column name holds control characters or invisible ones that make names look alike (U+202E, U+200B, …)",
    ),
    "invalid_name": (422, "the dataset name holds control or invisible formatting characters"),
    "rate_limited": (429, "too many requests with this key; wait `Retry-After` seconds (RNNLAB_RATE_LIMIT)"),
    "too_many_streams": (429, "this key already has its open event streams (RNNLAB_MAX_EVENT_STREAMS_PER_KEY)"),
    "internal_error": (500, "a bug: nothing a client sent should cause it"),
    "not_ready": (503, "the database or the broker does not answer (readiness)"),
    "dataset_file_missing": (503, "the dataset's stored file is missing from storage"),
    "storage_unavailable": (503, "the object store (RNNLAB_STORAGE_URL) cannot be reached; nothing was stored"),
    "database_unavailable": (503, "the database cannot be reached; try again (`Retry-After`)"),
    "database_busy": (
        503,
        "a row the request needs is locked by a process that does not answer, or every database connection "
        "is in use; try again (`Retry-After`)",
    ),
}


class AppError(Exception):
    """An error a client can act on: a stable code, a message, and optional details.

    Raise one of the kinds below; each fixes the HTTP status for its meaning.
    """

    status_code: ClassVar[int] = 400

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def with_message(self, message: str, details: Any = None) -> AppError:
        """The same kind and code with another message (e.g. naming the sweep value that caused it)."""
        return type(self)(self.code, message, self.details if details is None else details)


class BadRequest(AppError):
    """Query parameters that cannot be read (filters, sorts, cursors, multipart framing)."""

    status_code = 400


class Unauthorized(AppError):
    status_code = 401


class NotFound(AppError):
    """Not there, or not in the caller's project (the two are indistinguishable on purpose)."""

    status_code = 404


class Conflict(AppError):
    """The request is valid but the object's state does not allow it now."""

    status_code = 409


class TooLarge(AppError):
    status_code = 413


class RequestTimeout(AppError):
    """The client stopped sending the body it announced."""

    status_code = 408


class TooManyRequests(AppError):
    """A rate or concurrency limit; ``retry_after_seconds`` becomes the ``Retry-After`` header."""

    status_code = 429

    def __init__(self, code: str, message: str, details: Any = None, retry_after_seconds: int = 1) -> None:
        super().__init__(code, message, details)
        self.retry_after_seconds = retry_after_seconds


class UnsupportedFormat(AppError):
    status_code = 415


class InvalidInput(AppError):
    """A body, spec or file that is well-formed but not valid; details name the field."""

    status_code = 422


class Unavailable(AppError):
    """Something the server depends on is missing or down; trying again later may work."""

    status_code = 503


def not_found(kind: str, item_id: str) -> NotFound:
    return NotFound(f"{kind}_not_found", f"{kind} '{item_id}' not found")


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable code; the list is in this schema's description.")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """The one error body of every 4xx and 5xx answer."""

    error: ErrorDetail


def error_codes_markdown() -> str:
    return "\n".join(f"- `{code}` ({status}): {when}" for code, (status, when) in ERROR_CODES.items())


ErrorDetail.model_config["json_schema_extra"] = {"description": "Error codes:\n\n" + error_codes_markdown()}
ErrorDetail.model_rebuild(force=True)

# The statuses every API route may answer besides its success status, for the OpenAPI docs.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (
            400,
            "Unreadable parameter or body (`invalid_where`, `invalid_sort`, `invalid_cursor`, `invalid_characters`, "
            "`invalid_json`, …)",
        ),
        (401, "Missing, unknown or revoked API key"),
        (404, "Not found in your project"),
        (405, "Method not allowed on this path; the `Allow` header lists the methods it takes"),
        (408, "The request body stopped arriving"),
        (409, "Not allowed in the object's current state, or a project quota is reached"),
        (413, "The body (or upload) is over a size limit or the project's storage quota"),
        (415, "Not a content type or file format this route takes"),
        (422, "Invalid body, spec or parameter; `details` names each field"),
        (429, "Rate limit or event-stream limit reached; see `Retry-After`"),
        (503, "The database, the broker or a stored file is unavailable; try again later"),
    )
}


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
    field = _loc_to_field(loc)
    if field in _SPEC_SECTIONS and kind == "value_error" and message.startswith(f"{field}."):
        # A check on a section whose message begins with one of its fields ("data.scaling: …"): that field.
        named = _SPEC_PATH.match(message)
        field = named.group(0) if named else field
    if kind == "extra_forbidden" and field.split(".")[0] in _SPEC_SECTIONS:
        # A misspelled spec field (model.hiden_size): the closest one of its section, as `where` says.
        message += _closest_spec_field(field)
    if not field and kind == "value_error":
        # A check across fields runs on the whole spec (no location); the first field its message
        # names is the one it is about ("model.embedding_dim is for token inputs …", "task 'tagging'
        # needs text.tokenizer 'word'"): that field is named.
        named = _SPEC_PATH.search(message)
        field = named.group(0) if named else field
    return {"field": field, "message": message, "type": kind}


_SPEC_SECTIONS = ("data", "model", "training", "text", "evaluation")


def _closest_spec_field(field: str) -> str:
    import difflib

    from app.jobs.query import spec_paths

    parent = field.rsplit(".", 1)[0]
    siblings = sorted(p for p in spec_paths()[0] if p.rsplit(".", 1)[0] == parent)
    close = difflib.get_close_matches(field, siblings, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


_SPEC_PATH = re.compile(r"(?:data|model|training|text|evaluation)(?:\.[a-z_]+)+")


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


# SQLSTATEs of a database that is busy past its limits (RNNLAB_DB_LOCK_TIMEOUT_SECONDS's
# lock_not_available, a deadlock, a serialization failure) or out of reach for now (class 08, a
# connection exception; the server shutting down or starting; too many connections; a session it
# ended, e.g. idle in a transaction too long). Anything else is a bug: a 500, with its traceback.
BUSY_SQLSTATES = frozenset({"55P03", "40P01", "40001"})
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "25P03"})
_SQLITE_UNAVAILABLE = ("unable to open database file", "disk i/o error")


def database_error(exc: Exception) -> tuple[str, str] | None:
    """The code and message of a 503 for a database that is busy past its limits or cannot be
    reached, or None when the error is not one of those (a bug: it stays a 500)."""
    busy = ("database_busy", "the database is busy: a row this request needs is locked by another process; try again")
    unavailable = ("database_unavailable", "the database cannot be reached; try again")
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give within its timeout
        return "database_busy", "every database connection of this server is in use; try again"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in BUSY_SQLSTATES:
        return busy
    if exc.connection_invalidated or sqlstate in UNAVAILABLE_SQLSTATES or (sqlstate or "").startswith("08"):
        return unavailable
    text = str(orig).lower()
    if "database is locked" in text:  # SQLite past its busy_timeout
        return busy
    if any(part in text for part in _SQLITE_UNAVAILABLE):
        return unavailable
    # psycopg's OperationalError with no SQLSTATE: the connection itself failed (refused, reset).
    if sqlstate is None and isinstance(exc, sa_exc.OperationalError) and type(orig).__module__.startswith("psycopg"):
        return unavailable
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        headers = None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after_seconds)}
        elif isinstance(exc, Unavailable):  # the store or a dependency is down or busy: ask again shortly
            headers = {"Retry-After": "5"}
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(list(exc.errors()))
        return JSONResponse(error_body("validation_error", validation_message(details), details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "too_large"}
        code = codes.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            methods = allowed_methods(list(request.app.routes), request.scope)
            if methods:
                headers["Allow"] = ", ".join(methods)
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def _database_error(_: Request, exc: Exception) -> JSONResponse:
        answer = database_error(exc)
        if answer is None:  # a bug (a missing column, bad SQL): the usual 500
            log.exception("unhandled error", exc_info=exc)
            return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
        log.warning("%s: %s", answer[0], exc)
        return JSONResponse(error_body(*answer), status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
