"""The one exception the client raises for an error answer of the API."""

from __future__ import annotations

from typing import Any


class RnnlabError(Exception):
    """An error body ``{"error": {code, message, details}}`` with its HTTP status.

    ``status_code`` is 0 when the server could not be reached at all (``code`` ``"connection_error"``).
    ``retry_after``: the seconds of the answer's ``Retry-After`` header (a 429 or 503), if it had one.
    """

    def __init__(
        self, status_code: int, code: str, message: str, details: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if status_code == 0 else f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    @classmethod
    def from_body(cls, status_code: int, body: Any, fallback: str, retry_after: float | None = None) -> RnnlabError:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(
                status_code,
                str(error.get("code", "http_error")),
                str(error.get("message", "")),
                error.get("details"),
                retry_after,
            )
        return cls(status_code, "http_error", fallback[:500], retry_after=retry_after)
