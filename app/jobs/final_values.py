"""The per-job final values GET /jobs filters and sorts on (the ``job_metrics`` table).

One row per (project, job, split, metric): the final evaluation's ``train``/``val``/``test``
metrics, and the epoch metrics at the best epoch (``best.train``, ``best.val``) and at the last
epoch (``last.train``, ``last.val``). The worker writes them when a job succeeds; migration 0005
backfilled the jobs that existed before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, delete, func, insert, literal, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Job, JobMetric

FINAL_SPLITS = ("train", "val", "test")
EPOCH_SPLITS = ("train", "val")
EPOCH_SCOPES = ("best", "last")


def _epoch_values(scope: str, project_id: str, job_id: str, epoch: Any) -> Any:
    """INSERT … SELECT of one epoch's metrics as ``<scope>.<split>`` rows (copied inside the database)."""
    rows = select(
        EpochMetric.job_id,
        literal(project_id, String),
        literal(f"{scope}.", String) + EpochMetric.split,
        EpochMetric.name,
        EpochMetric.value,
    ).where(EpochMetric.job_id == job_id, EpochMetric.epoch == epoch, EpochMetric.value.is_not(None))
    return insert(JobMetric).from_select(["job_id", "project_id", "split", "name", "value"], rows)


def record_final_values(session: Session, job_id: str, final_metrics: dict[str, Any], best_epoch: int | None) -> None:
    """Write a succeeded job's final values (in the caller's transaction, replacing any earlier ones)."""
    project_id = session.scalar(select(Job.project_id).where(Job.id == job_id))
    if project_id is None:
        return
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id))
    rows = [
        {"job_id": job_id, "project_id": project_id, "split": split, "name": name, "value": float(value)}
        for split, metrics in final_metrics.items()
        if split in FINAL_SPLITS and isinstance(metrics, dict)
        for name, value in metrics.items()
        # Only numbers: a missing value has no row, so the sort index holds nothing but sortable values.
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value
    ]
    if rows:
        session.execute(insert(JobMetric), rows)
    last_epoch = select(func.max(EpochMetric.epoch)).where(EpochMetric.job_id == job_id).scalar_subquery()
    session.execute(_epoch_values("last", project_id, job_id, last_epoch))
    if best_epoch:
        session.execute(_epoch_values("best", project_id, job_id, best_epoch))
