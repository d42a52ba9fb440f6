"""Opaque cursor pagination shared by every list route."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

from app.errors import BadRequest

T = TypeVar("T")
# Cursors only ever hold offsets this API produced; anything beyond is forged (and would overflow SQL).
MAX_OFFSET = 2**31 - 1


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class PageParams(BaseModel):
    limit: int = 50
    cursor: str | None = None


async def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page (max 500).")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


def _decode(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())["o"]
        if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise ValueError
        return offset
    except Exception as exc:  # any malformed cursor is the client's error
        raise BadRequest("invalid_cursor", "cursor is not a next_cursor returned by this API") from exc


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def fetch_page(session: Session, query: Select[Any], params: PageParams) -> tuple[list[Any], str | None]:
    """Run an ordered query for one page; returns the rows and the next cursor (None on the last page)."""
    offset = _decode(params.cursor)
    rows = list(session.scalars(query.offset(offset).limit(params.limit + 1)))
    next_cursor = _encode(offset + params.limit) if len(rows) > params.limit else None
    return rows[: params.limit], next_cursor
