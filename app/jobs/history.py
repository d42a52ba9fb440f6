"""Per-epoch metric histories read as plain columns, filtered and downsampled inside the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select
from sqlalchemy.orm import Session

from app.models import EpochMetric

# Core columns, not ORM attributes: the rows come back as plain tuples (no ORM row processing,
# which cost more than the query itself for a few thousand values).
_epochs = EpochMetric.__table__.c
Series = dict[str, Any]  # {"name", "split", "epochs": [...], "values": [...]}


def _named(names: list[str] | None) -> ColumnElement[bool] | None:
    """``split.metric`` names as a condition on the primary key's columns (None: every metric)."""
    if not names:
        return None
    pairs = [name.partition(".") for name in dict.fromkeys(names)]
    return or_(*(and_(_epochs.split == split, _epochs.name == metric) for split, _, metric in pairs))


def _downsampled(job_ids: list[str], names: list[str] | None, max_points: int) -> Select[Any]:
    """At most ``max_points`` evenly spaced epochs per series, the first and the last always kept.

    Epoch e of a series spanning lo … hi is kept when the step floor((e - lo) * (max_points - 1) /
    (hi - lo)) moves on at e, i.e. when ((e - lo) * (max_points - 1)) mod (hi - lo) < max_points - 1:
    each step once for consecutive epochs, never more than max_points. A GROUP BY gives lo, hi and
    the count; window functions would do the same with two sorts, ten times slower on SQLite.
    """
    spans_query = select(
        _epochs.job_id,
        _epochs.split,
        _epochs.name,
        func.min(_epochs.epoch).label("lo"),
        func.max(_epochs.epoch).label("hi"),
        func.count().label("n"),
    ).where(_epochs.job_id.in_(job_ids))
    rows_query = select(_epochs.job_id, _epochs.split, _epochs.name, _epochs.epoch, _epochs.value).where(
        _epochs.job_id.in_(job_ids)
    )
    condition = _named(names)
    if condition is not None:
        spans_query, rows_query = spans_query.where(condition), rows_query.where(condition)
    spans = spans_query.group_by(_epochs.job_id, _epochs.split, _epochs.name).subquery("spans")
    steps = literal(max_points - 1)
    keep = or_(spans.c.n <= max_points, ((_epochs.epoch - spans.c.lo) * steps) % (spans.c.hi - spans.c.lo) < steps)
    return rows_query.join(
        spans,
        and_(spans.c.job_id == _epochs.job_id, spans.c.split == _epochs.split, spans.c.name == _epochs.name),
    ).where(keep)


def metric_series(
    session: Session, job_ids: list[str], names: list[str] | None = None, max_points: int | None = None
) -> dict[str, list[Series]]:
    """Per job, one series per (metric, split) ordered by epoch; ``names`` filters ``split.metric``."""
    if max_points is None:
        statement = select(_epochs.job_id, _epochs.split, _epochs.name, _epochs.epoch, _epochs.value).where(
            _epochs.job_id.in_(job_ids)
        )
        condition = _named(names)
        if condition is not None:
            statement = statement.where(condition)
    else:
        statement = _downsampled(job_ids, names, max_points)
    out: dict[str, dict[tuple[str, str], Series]] = {job_id: {} for job_id in job_ids}
    for job_id, split, name, epoch, value in session.connection().execute(statement).all():
        series = out[job_id].get((name, split))
        if series is None:
            series = out[job_id][(name, split)] = {"name": name, "split": split, "epochs": [], "values": []}
        series["epochs"].append(epoch)
        series["values"].append(value)
    result: dict[str, list[Series]] = {}
    for job_id, by_key in out.items():
        items = [by_key[key] for key in sorted(by_key)]
        for series in items:  # rows come in the primary key's order; sort only if they did not
            epochs = series["epochs"]
            if any(a > b for a, b in zip(epochs, epochs[1:], strict=False)):
                pairs = sorted(zip(epochs, series["values"], strict=True))
                series["epochs"], series["values"] = [e for e, _ in pairs], [v for _, v in pairs]
        result[job_id] = items
    return result
