"""Sorted, keyset-paged job lists: every sort reads an index in order, from page 1 to page 1,000.

A page is the rows after the previous page's last (sort value, id), not an offset, so its cost
does not grow with the page number. Jobs missing the sort value (no ``test.rmse``, not finished)
come after all the others, newest first: the list runs in two phases, the values read in order
from their index, then the missing ones down ``ix_jobs_project_created_id``. The cursor says
which phase and where in it.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, Row, Select, String, and_, literal, select, true, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from app.errors import AppError, BadRequest
from app.jobs.query import metric_key
from app.models import Job, JobMetric
from app.pagination import PageParams

Kind = Literal["time", "number", "string"]
Phase = Literal["v", "n"]  # jobs with the sort value, then jobs without it
# Job columns GET /jobs sorts by: (column, kind, nullable). Each has an index (project_id, column, id).
JOB_SORTS: dict[str, tuple[InstrumentedAttribute[Any], Kind, bool]] = {
    "created_at": (Job.created_at, "time", False),
    "finished_at": (Job.finished_at, "time", True),
    "name": (Job.name, "string", True),
    "status": (Job.status, "string", False),
    "attempts": (Job.attempts, "number", False),
}
MAX_CURSOR_CHARS = 2000
# The label of the sort value each list statement adds after the caller's columns (it is the cursor's value).
SORT_VALUE = "sort_key_value"


@dataclass(frozen=True)
class SortKey:
    text: str  # as the client wrote it, e.g. "-test.rmse"
    field: str
    descending: bool
    metric: tuple[str, str] | None  # (split, name) in job_metrics, or None for a job column
    kind: Kind
    nullable: bool


@dataclass(frozen=True)
class Cursor:
    phase: Phase
    value: Any
    job_id: str


def parse_sort(sort: str) -> SortKey:
    descending = sort.startswith("-")
    field = sort[1:] if sort.startswith(("-", "+")) else sort  # one sign at most: '--x' is no sort
    if field in JOB_SORTS:
        _, kind, nullable = JOB_SORTS[field]
        return SortKey(sort, field, descending, None, kind, nullable)
    key = metric_key(field, code="invalid_sort")
    if key is None:
        raise BadRequest(
            "invalid_sort",
            f"cannot sort by {field!r}; use {', '.join(JOB_SORTS)}, a final metric like test.rmse, or an epoch "
            "value like best.val.loss (prefix - for descending)",
        )
    return SortKey(sort, field, descending, key, "number", True)


def _bad_cursor(message: str = "cursor is not a next_cursor returned by this API") -> AppError:
    return BadRequest("invalid_cursor", message)


# The largest magnitude each integer column type holds (PostgreSQL's integer is 32-bit); a cursor
# value beyond its column's range is one this API never wrote, and PostgreSQL would refuse to bind it.
INTEGER_LIMIT = {"integer": 2**31, "bigint": 2**63}


def _storable_text(raw: str) -> bool:
    """Text every database can bind: no NUL character (PostgreSQL refuses it), valid UTF-8 (no lone surrogate)."""
    if "\x00" in raw:
        return False
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _integer_limit(sort: SortKey) -> int | None:
    """For a job column of integers, the magnitude its values stay within; None for a metric (a float)."""
    if sort.metric is not None or sort.kind != "number":
        return None
    column_type = JOB_SORTS[sort.field][0].type
    return INTEGER_LIMIT["bigint" if isinstance(column_type, BigInteger) else "integer"]


def _decode_value(kind: Kind, raw: Any, integer_limit: int | None = None) -> Any:
    """The sort value a cursor holds, checked as the database will bind it; ValueError otherwise.

    ``integer_limit``: the sort column holds integers in [-limit, limit) (a job column, not a metric)."""
    if kind == "time" and isinstance(raw, str):
        moment = datetime.fromisoformat(raw)
        # Converted to UTC now, as the column stores it: 9999-12-31T23:59-23:59 is past year 9999 in UTC.
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind == "number" and isinstance(raw, int) and not isinstance(raw, bool):
        limit = INTEGER_LIMIT["bigint"] if integer_limit is None else integer_limit
        if -limit <= raw < limit:
            return raw
    if kind == "number" and isinstance(raw, float) and math.isfinite(raw) and integer_limit is None:
        return raw
    if kind == "string" and isinstance(raw, str) and _storable_text(raw):
        return raw
    raise ValueError(raw)


def decode_cursor(text: str | None, sort: SortKey) -> Cursor | None:
    """The position a next_cursor points at; 400 ``invalid_cursor`` for anything this API did not write."""
    if not text:
        return None
    if len(text) > MAX_CURSOR_CHARS:
        raise _bad_cursor()
    try:
        body = json.loads(base64.urlsafe_b64decode(text.encode()).decode())
        phase, raw, job_id, sorted_by = body["p"], body["k"], body["i"], body["s"]
    except Exception as exc:  # any malformed cursor is the client's error
        raise _bad_cursor() from exc
    if sorted_by != sort.text:
        raise _bad_cursor(f"this cursor pages a list sorted by {sorted_by!r}, not {sort.text!r}; keep the sort")
    if phase not in ("v", "n") or not isinstance(job_id, str) or len(job_id) > 64 or not _storable_text(job_id):
        raise _bad_cursor()
    try:
        value = _decode_value(
            "time" if phase == "n" else sort.kind, raw, _integer_limit(sort) if phase == "v" else None
        )
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad_cursor(
            f"cursor holds a {sort.field if phase == 'v' else 'created_at'} position this API never writes "
            "(out of range or of another type); use the next_cursor of the previous page"
        ) from exc
    return Cursor(phase, value, job_id)


def encode_cursor(sort: SortKey, phase: Phase, value: Any, job_id: str) -> str:
    raw = value.isoformat() if isinstance(value, datetime) else value
    body = {"s": sort.text, "p": phase, "k": raw, "i": job_id}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def _after(value_column: Any, id_column: Any, descending: bool, cursor: Cursor) -> ColumnElement[bool]:
    """(value, id) strictly after the cursor in the list's order: a range on the sort index."""
    position = tuple_(value_column, id_column)
    bound = tuple_(literal(cursor.value, value_column.type), literal(cursor.job_id, String))
    return position < bound if descending else position > bound


def with_values(query: Select[Any], sort: SortKey, project_id: str, cursor: Cursor | None) -> Select[Any]:
    """Jobs that have the sort value, in (value, id) order, after ``cursor``."""
    if sort.metric is None:
        column: Any = JOB_SORTS[sort.field][0]
        tiebreak: Any = Job.id
        if sort.nullable:
            query = query.where(column.is_not(None))
    else:
        split, name = sort.metric
        value = aliased(JobMetric, name="sort_value")
        # project_id, split and name fix the index prefix; the rows then come in value order.
        query = query.join(
            value,
            and_(value.job_id == Job.id, value.project_id == project_id, value.split == split, value.name == name),
        ).where(value.value.is_not(None))
        column, tiebreak = value.value, value.job_id
    if cursor is not None:
        query = query.where(_after(column, tiebreak, sort.descending, cursor))
    order = (column.desc(), tiebreak.desc()) if sort.descending else (column.asc(), tiebreak.asc())
    return query.add_columns(column.label(SORT_VALUE)).order_by(*order)


def without_values(query: Select[Any], sort: SortKey, cursor: Cursor | None) -> Select[Any]:
    """Jobs missing the sort value, newest first, after ``cursor``."""
    if sort.metric is None:
        query = query.where(JOB_SORTS[sort.field][0].is_(None))
    else:
        split, name = sort.metric
        value = aliased(JobMetric, name="sort_missing")
        # An anti-join (no row with a value), which PostgreSQL runs as key lookups down the time index.
        query = query.outerjoin(
            value,
            and_(value.job_id == Job.id, value.split == split, value.name == name, value.value.is_not(None)),
        ).where(value.job_id.is_(None))
    if cursor is not None:
        query = query.where(_after(Job.created_at, Job.id, True, cursor))
    return query.add_columns(Job.created_at.label(SORT_VALUE)).order_by(Job.created_at.desc(), Job.id.desc())


def walked_in_order(query: Select[Any], sort: SortKey, project_id: str, cursor: Cursor | None, phase: Phase) -> Any:
    """The same rows as with_values / without_values, with the index walk made the only plan (PostgreSQL).

    The outer query reads the sort index in order (with the LIMIT on it, so the planner costs the
    walk for one page), and each id's job is looked up and filtered in a LATERAL subquery that
    OFFSET 0 keeps from being merged: the planner cannot turn it into a scan of the table and a
    sort. For filters whose selectivity PostgreSQL cannot estimate (spec paths in JSON have no
    statistics; it assumes an equality matches 0.5 % of the rows).
    """
    descending = sort.descending if phase == "v" else True
    key_job = aliased(Job, name="sort_key")
    conditions: list[ColumnElement[bool]] = []
    if phase == "n":
        value_column: Any = key_job.created_at
        tiebreak: Any = key_job.id
        conditions.append(key_job.project_id == project_id)
        if sort.metric is None:
            query = query.where(JOB_SORTS[sort.field][0].is_(None))
        else:
            split, name = sort.metric
            value = aliased(JobMetric, name="sort_missing")
            query = query.outerjoin(
                value,
                and_(value.job_id == Job.id, value.split == split, value.name == name, value.value.is_not(None)),
            ).where(value.job_id.is_(None))
        keys: Any = key_job
    elif sort.metric is None:
        value_column = getattr(key_job, sort.field)
        tiebreak = key_job.id
        conditions.append(key_job.project_id == project_id)
        if sort.nullable:
            conditions.append(value_column.is_not(None))
        keys = key_job
    else:
        split, name = sort.metric
        key_value = aliased(JobMetric, name="sort_key")
        value_column, tiebreak = key_value.value, key_value.job_id
        conditions += [
            key_value.project_id == project_id,
            key_value.split == split,
            key_value.name == name,
            key_value.value.is_not(None),
        ]
        keys = key_value
    if cursor is not None:
        conditions.append(_after(value_column, tiebreak, descending, cursor))
    row = query.where(Job.id == tiebreak).offset(0).lateral("job_row")
    order = (value_column.desc(), tiebreak.desc()) if descending else (value_column.asc(), tiebreak.asc())
    return (
        select(*row.c, value_column.label(SORT_VALUE))
        .select_from(keys)
        .join(row, true())
        .where(*conditions)
        .order_by(*order)
    )


def fetch_jobs_page(
    session: Session,
    query: Select[Any],
    project_id: str,
    sort_text: str,
    page: PageParams,
    *,
    walk_index: bool = False,
) -> tuple[list[Row[Any]], str | None]:
    """One page of an already filtered ``select(<columns of Job, id among them>)``, sorted by ``sort_text``:
    its rows (each with the sort value added last) and the next cursor.

    ``walk_index`` forces the sort index's order on PostgreSQL (see :func:`walked_in_order`).
    """
    sort = parse_sort(sort_text)
    cursor = decode_cursor(page.cursor, sort)
    wanted = page.limit + 1  # one more than the page says whether another page follows
    rows: list[tuple[Row[Any], Phase]] = []
    if cursor is None or cursor.phase == "v":
        if walk_index:
            statement = walked_in_order(query, sort, project_id, cursor, "v").limit(wanted)
        else:
            statement = with_values(query, sort, project_id, cursor).limit(wanted)
        rows += [(row, "v") for row in session.execute(statement)]
    if len(rows) < wanted and sort.nullable:
        after = cursor if cursor is not None and cursor.phase == "n" else None
        if walk_index:
            statement = walked_in_order(query, sort, project_id, after, "n").limit(wanted - len(rows))
        else:
            statement = without_values(query, sort, after).limit(wanted - len(rows))
        rows += [(row, "n") for row in session.execute(statement)]
    next_cursor = None
    if len(rows) > page.limit:
        row, phase = rows[page.limit - 1]
        next_cursor = encode_cursor(sort, phase, getattr(row, SORT_VALUE), row.id)
    return [row for row, _ in rows[: page.limit]], next_cursor
