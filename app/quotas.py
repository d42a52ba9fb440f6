"""Per-project quotas: queued + running jobs, and stored (uploaded) bytes.

Checked when work is added, inside the request that adds it. The active-jobs quota is locked, not
just checked: the project's row is locked (PostgreSQL ``FOR UPDATE``; on SQLite a no-op write takes
the database's single write lock) before counting, and held until the caller commits its new jobs,
so racing submits cannot pass the quota together. The stored-bytes check is not locked (an upload is
converted between check and insert); racing uploads can pass it by the uploads in flight.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.errors import Conflict, TooLarge
from app.jobs.status import ACTIVE
from app.models import Dataset, Job, Project


def active_jobs(session: Session, project_id: str) -> int:
    query = select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status.in_(ACTIVE))
    return int(session.scalar(query) or 0)


def stored_bytes(session: Session, project_id: str) -> int:
    query = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.project_id == project_id)
    return int(session.scalar(query) or 0)


def lock_project(session: Session, project_id: str) -> None:
    """Serialise writers of this project until the session commits or rolls back."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    else:  # SQLite ignores FOR UPDATE; the first write of a transaction takes the write lock
        session.execute(
            update(Project)
            .where(Project.id == project_id)
            .values(id=Project.id)
            .execution_options(synchronize_session=False)
        )


def check_active_jobs_quota(session: Session, project_id: str, adding: int) -> None:
    """409 ``quota_active_jobs`` when ``adding`` more jobs would pass RNNLAB_QUOTA_ACTIVE_JOBS.

    Locks the project first; the caller must add its jobs and commit in this same transaction.
    """
    limit = get_settings().quota_active_jobs
    lock_project(session, project_id)
    active = active_jobs(session, project_id)
    if active + adding > limit:
        raise Conflict(
            "quota_active_jobs",
            f"the project has {active} queued or running jobs; {adding} more would pass its quota of {limit} "
            "(RNNLAB_QUOTA_ACTIVE_JOBS); wait for some to finish or cancel them",
            {"quota": "active_jobs", "limit": limit, "active": active, "requested": adding},
        )


def check_stored_bytes_quota(session: Session, project_id: str, adding: int) -> None:
    """413 ``quota_stored_bytes`` when ``adding`` bytes would pass RNNLAB_QUOTA_STORED_BYTES."""
    limit = get_settings().quota_stored_bytes
    stored = stored_bytes(session, project_id)
    if stored + adding > limit:
        raise TooLarge(
            "quota_stored_bytes",
            f"the project stores {stored} bytes; {adding} more would pass its quota of {limit} bytes "
            "(RNNLAB_QUOTA_STORED_BYTES); delete datasets it no longer needs",
            {"quota": "stored_bytes", "limit": limit, "stored": stored, "requested": adding},
        )
