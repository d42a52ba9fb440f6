"""Opaque cursor pagination shared by every list route."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from app.errors import BadRequest

T = TypeVar("T")
_IDENT = re.compile(r"[0-9A-Za-z_-]{1,64}")


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


def _decode(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())
        created, ident = datetime.fromisoformat(position["c"]), position["i"]
        # Ids are hex (new_id); anything else (a NUL, a lone surrogate) would fail in the database.
        if not isinstance(ident, str) or not _IDENT.fullmatch(ident):
            raise ValueError
        if created.tzinfo is not None:
            created = created.astimezone(UTC)  # OverflowError for a forged year-1 time east of UTC
        return created, ident
    except Exception as exc:  # any malformed cursor is the client's error
        raise BadRequest("invalid_cursor", "cursor is not a next_cursor returned by this API") from exc


def _encode(created: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"c": created.isoformat(), "i": ident}).encode()).decode()


def fetch_page(
    session: Session, query: Select[Any], params: PageParams, created: Any, ident: Any
) -> tuple[list[Any], str | None]:
    """One page of ``query``, newest first by (``created``, ``ident``) columns; the rows and the next
    cursor (None on the last page).

    The cursor is the last row's position (keyset paging), not an offset: rows added or deleted
    between two pages neither repeat an item nor skip one.
    """
    after = _decode(params.cursor)
    if after is not None:
        query = query.where(or_(created < after[0], and_(created == after[0], ident < after[1])))
    query = query.order_by(created.desc(), ident.desc())
    rows = list(session.scalars(query.limit(params.limit + 1)))
    page = rows[: params.limit]
    if len(rows) <= params.limit:
        return page, None
    last = page[-1]
    return page, _encode(last.created_at, last.id)
