"""Per-epoch metric histories read as plain columns, filtered and downsampled inside the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select
from sqlalchemy.orm import Session

from app.models import EpochMetric

Series = dict[str, Any]  # {"name", "split", "epochs": [...], "values": [...]}


def _named(names: list[str] | None) -> ColumnElement[bool] | None:
    """``split.metric`` names as a condition on the primary key's columns (None: every metric)."""
    if not names:
        return None
    pairs = [name.partition(".") for name in dict.fromkeys(names)]
    return or_(*(and_(EpochMetric.split == split, EpochMetric.name == metric) for split, _, metric in pairs))


def _downsampled(job_ids: list[str], names: list[str] | None, max_points: int) -> Select[Any]:
    """At most ``max_points`` evenly spaced epochs per series, the first and the last always kept.

    Row k of a series of n is kept when k * (max_points - 1) // (n - 1) moves to the next step:
    every step 0 … max_points-1 is hit exactly once when n > max_points.
    """
    series = (EpochMetric.job_id, EpochMetric.split, EpochMetric.name)
    inner = select(
        *series,
        EpochMetric.epoch,
        EpochMetric.value,
        (func.row_number().over(partition_by=series, order_by=EpochMetric.epoch) - 1).label("k"),
        func.count().over(partition_by=series).label("n"),
    ).where(EpochMetric.job_id.in_(job_ids))
    condition = _named(names)
    if condition is not None:
        inner = inner.where(condition)
    rows = inner.subquery("numbered")
    steps = literal(max_points - 1)
    keep = or_(
        rows.c.n <= max_points,
        rows.c.k == 0,
        (rows.c.k * steps) // (rows.c.n - 1) > ((rows.c.k - 1) * steps) // (rows.c.n - 1),
    )
    return select(rows.c.job_id, rows.c.split, rows.c.name, rows.c.epoch, rows.c.value).where(keep)


def metric_series(
    session: Session, job_ids: list[str], names: list[str] | None = None, max_points: int | None = None
) -> dict[str, list[Series]]:
    """Per job, one series per (metric, split) ordered by epoch; ``names`` filters ``split.metric``."""
    if max_points is None:
        statement = select(
            EpochMetric.job_id, EpochMetric.split, EpochMetric.name, EpochMetric.epoch, EpochMetric.value
        ).where(EpochMetric.job_id.in_(job_ids))
        condition = _named(names)
        if condition is not None:
            statement = statement.where(condition)
    else:
        statement = _downsampled(job_ids, names, max_points)
    out: dict[str, dict[tuple[str, str], Series]] = {job_id: {} for job_id in job_ids}
    for job_id, split, name, epoch, value in session.execute(statement):
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
