"""Per-project quotas: queued + running jobs, and stored (uploaded) bytes.

Checked when work is added, inside the request that adds it. Two requests racing for the last
unit can both pass (the check is not a lock); the overshoot is bounded by the requests in flight.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.errors import Conflict, TooLarge
from app.jobs.status import ACTIVE
from app.models import Dataset, Job


def active_jobs(session: Session, project_id: str) -> int:
    query = select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status.in_(ACTIVE))
    return int(session.scalar(query) or 0)


def stored_bytes(session: Session, project_id: str) -> int:
    query = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.project_id == project_id)
    return int(session.scalar(query) or 0)


def check_active_jobs_quota(session: Session, project_id: str, adding: int) -> None:
    """409 ``quota_active_jobs`` when ``adding`` more jobs would pass RNNLAB_QUOTA_ACTIVE_JOBS."""
    limit = get_settings().quota_active_jobs
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
