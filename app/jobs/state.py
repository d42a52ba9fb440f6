"""Every job state transition, in one place.

Each transition is one conditional UPDATE, so two processes can never both win it: only a queued
job can be claimed, only the holder of the current attempt can heartbeat or finish it, and a
redelivered message for a job someone else holds changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.jobs.status import FINISHED, JobStatus, allowed
from app.models import EpochMetric, Evaluation, Job, JobMetric, db_now

QUEUED, RUNNING, CANCELLED, FAILED = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED


@dataclass(frozen=True)
class Claim:
    """Proof that a worker holds one attempt of a job."""

    job_id: str
    worker_id: str
    attempt: int


def _held(claim: Claim) -> Any:
    return and_(
        Job.id == claim.job_id,
        Job.status == RUNNING,
        Job.worker_id == claim.worker_id,
        Job.attempts == claim.attempt,
    )


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> Claim | None:
    """queued → running for this worker, with a lease; None when the job is not claimable."""
    now = db_now(session)
    job = session.get(Job, job_id)
    if job is None or job.status != QUEUED or job.cancel_requested:
        return None
    attempt = job.attempts + 1
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == QUEUED,
            Job.attempts == job.attempts,
            Job.cancel_requested.is_(False),  # re-checked: the row read above may be stale
        )
        .values(
            status=RUNNING,
            worker_id=worker_id,
            attempts=attempt,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            progress_epoch=0,
            error_type=None,
            error_message=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.commit()
        return None
    # Results of an earlier, lost attempt would mix with this one's: the claim clears them.
    for table in (EpochMetric, JobMetric, Evaluation):
        session.execute(delete(table).where(table.job_id == job_id))
    session.commit()
    return Claim(job_id, worker_id, attempt)


def renew_lease(
    session: Session, claim: Claim, lease_seconds: float, *, commit: bool = True, **values: Any
) -> bool | None:
    """Extend the lease (and set progress fields). Returns cancel_requested, or None if the claim is lost."""
    row = session.execute(
        update(Job)
        .where(_held(claim))
        .values(lease_expires_at=db_now(session) + timedelta(seconds=lease_seconds), **values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    ).first()
    if commit:
        session.commit()
    return None if row is None else bool(row[0])


def finish_job(session: Session, claim: Claim, status: JobStatus, *, commit: bool = True, **values: Any) -> bool:
    """running → succeeded / failed / cancelled, only for the holder of the claim."""
    if status not in FINISHED or not allowed(RUNNING, status):
        raise ValueError(f"a running job cannot finish as {status!r}")
    result = session.execute(
        update(Job)
        .where(_held(claim))
        .values(status=status, finished_at=db_now(session), lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def release_job(session: Session, claim: Claim) -> bool:
    """running → queued for a worker that is shutting down: the attempt it used is given back."""
    return _requeue(session, claim, dispatched_at=None, attempts=claim.attempt - 1)


def retry_later(session: Session, claim: Claim, delay_seconds: float) -> bool:
    """running → queued after a transient failure (the object store unreachable): the attempt counts.

    The job waits in SQL with ``not_before`` set ``delay_seconds`` ahead: the dispatcher sends it
    again only after that pause, and meanwhile it holds no in-flight place of its queue (other jobs
    on the queue are dispatched as usual).
    """
    return _requeue(session, claim, dispatched_at=None, not_before=db_now(session) + timedelta(seconds=delay_seconds))


def _requeue(session: Session, claim: Claim, **values: object) -> bool:
    """running → queued while ``claim`` still holds the job, with ``values`` set too; commits."""
    result = session.execute(
        update(Job)
        .where(_held(claim))
        .values(status=QUEUED, worker_id=None, lease_expires_at=None, progress_epoch=0, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def _epochs_kept() -> Any:
    """The progress of a queued job that ends cancelled: the epochs an earlier, lost attempt left
    (a requeue resets ``progress_epoch`` to 0, and only the next claim clears those epochs), so that
    the progress and the stored learning curves agree."""
    kept = select(func.max(EpochMetric.epoch)).where(EpochMetric.job_id == Job.id).scalar_subquery()
    return func.coalesce(kept, 0)


def request_cancel(session: Session, job: Job) -> JobStatus:
    """Cancel a queued job now; ask a running one to stop at its next epoch. Returns the new status.

    The job can move between the two checks (claimed, or requeued by lease expiry), so try again
    until one of the guarded updates applies or the job has finished.
    """
    for _ in range(5):
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == QUEUED)
            .values(status=CANCELLED, cancel_requested=True, finished_at=db_now(session), progress_epoch=_epochs_kept())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            result = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == RUNNING)
                .values(cancel_requested=True)
                .execution_options(synchronize_session=False)
            )
        session.commit()
        session.refresh(job)
        if result.rowcount == 1 or job.status in FINISHED:  # type: ignore[attr-defined]
            break
    if job.status == RUNNING and job.lease_expires_at is not None:
        # Its worker is gone (the lease ran out: settle_expired checks that by the database's clock) and
        # no recovery loop has settled it yet, e.g. no worker runs at all: nobody would ever see the
        # request, so the job is cancelled here and now.
        row = (job.id, job.attempts, job.max_attempts, True, job.worker_id)
        settle_expired(session, row, db_now(session))
        session.commit()  # also when nothing matched: SQLite holds its write lock until the transaction ends
        session.refresh(job)
    return JobStatus(job.status)


def expired_leases(session: Session, now: Any) -> list[Any]:
    """Running jobs whose lease ran out: rows of (id, attempts, max_attempts, cancel_requested, worker_id).

    On PostgreSQL the rows are locked until the caller commits, and a row another process holds
    locked is skipped (``SKIP LOCKED``): a worker frozen inside a write to its job (a paused VM) must
    not stall every recovery loop behind it; the next pass after the server ends that session
    (RNNLAB_DB_IDLE_TRANSACTION_SECONDS) settles it. SQLite takes no row locks (the clause is left out).
    """
    return list(
        session.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.worker_id)
            .where(Job.status == RUNNING, Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        )
    )


def settle_expired(session: Session, row: Any, now: Any) -> JobStatus | None:
    """Requeue (attempts left), fail ('worker lost') or cancel one expired job; the new status or None.

    Guarded by everything that was read, cancel_requested included: a cancel or a renewal that
    lands in between makes the update miss, and the next pass decides again.
    """
    job_id, attempts, max_attempts, cancel_requested, worker_id = row
    still = and_(
        Job.id == job_id,
        Job.status == RUNNING,
        Job.attempts == attempts,
        Job.lease_expires_at < now,
        Job.cancel_requested.is_(bool(cancel_requested)),
    )
    if cancel_requested:
        values: dict[str, Any] = {"status": CANCELLED, "finished_at": now, "lease_expires_at": None}
    elif attempts >= max_attempts:
        values = {
            "status": FAILED,
            "finished_at": now,
            "lease_expires_at": None,
            "error_type": "worker_lost",
            "error_message": (
                f"worker lost: the worker running this job (last {worker_id}) stopped renewing its "
                f"lease on each of {attempts} attempts (RNNLAB_MAX_ATTEMPTS={max_attempts}): it crashed, "
                "was killed (often for using more memory than the machine has: try a smaller "
                "batch_size, hidden_size, ensemble or lookback) or lost its database connection"
            ),
        }
    else:
        # progress starts again with the next run, as a handed-back job's does (_requeue)
        values = {
            "status": QUEUED,
            "worker_id": None,
            "lease_expires_at": None,
            "dispatched_at": None,
            "progress_epoch": 0,
        }
    result = session.execute(update(Job).where(still).values(**values).execution_options(synchronize_session=False))
    return JobStatus(values["status"]) if result.rowcount == 1 else None  # type: ignore[attr-defined]


def expire_leases(session: Session, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Settle every expired lease. Returns (requeued ids, ids that ended: failed or cancelled)."""
    now = now if now is not None else db_now(session)
    requeued: list[str] = []
    ended: list[str] = []
    for row in expired_leases(session, now):
        status = settle_expired(session, row, now)
        if status:
            (requeued if status == QUEUED else ended).append(row[0])
    # A queued job whose cancel was requested (a cancel that raced a requeue) is simply cancelled.
    session.execute(
        update(Job)
        .where(Job.status == QUEUED, Job.cancel_requested.is_(True))
        .values(status=CANCELLED, finished_at=now, progress_epoch=_epochs_kept())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return requeued, ended


# --- dispatch: which queued jobs are in the broker ------------------------------------------------
#
# A queued job with ``dispatched_at`` set is *in flight*: sent to the broker and not yet claimed.
# One without it waits in SQL until the fair dispatcher (app.jobs.dispatch) reserves it, and not
# before its ``not_before`` (a retry's pause after the store was unreachable).


def _waiting(queue: str, now: Any) -> Any:
    return and_(
        Job.queue == queue,
        Job.status == QUEUED,
        Job.dispatched_at.is_(None),
        Job.cancel_requested.is_(False),
        or_(Job.not_before.is_(None), Job.not_before <= now),
    )


def _in_flight(queue: str) -> Any:
    return and_(Job.queue == queue, Job.status == QUEUED, Job.dispatched_at.is_not(None))


def waiting_heads(session: Session, queue: str) -> list[tuple[str, datetime]]:
    """Projects with jobs waiting for the broker on ``queue``: (project id, oldest waiting job's created_at)."""
    rows = session.execute(
        select(Job.project_id, func.min(Job.created_at))
        .where(_waiting(queue, db_now(session)))
        .group_by(Job.project_id)
    )
    return [(r[0], r[1]) for r in rows]


def active_by_project(session: Session, queue: str) -> dict[str, int]:
    """Jobs running or in flight on ``queue``, per project."""
    rows = session.execute(
        select(Job.project_id, func.count())
        .where(Job.queue == queue, or_(Job.status == RUNNING, _in_flight(queue)))
        .group_by(Job.project_id)
    )
    return {r[0]: int(r[1]) for r in rows}


def oldest_waiting(session: Session, queue: str, project_id: str) -> str | None:
    """The project's longest-waiting job on ``queue`` (submission order within a project)."""
    return session.scalar(
        select(Job.id)
        .where(Job.project_id == project_id, _waiting(queue, db_now(session)))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )


def count_in_flight(session: Session, queue: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(_in_flight(queue))) or 0)


def reserve_dispatch(session: Session, job_id: str, queue: str, limit: int) -> bool:
    """Waiting → in flight, only while fewer than ``limit`` jobs are in flight on ``queue``.

    One conditional UPDATE: a job is reserved once (``dispatched_at IS NULL``), and the bound is
    re-counted in the same statement. SQLite runs it under its write lock; on PostgreSQL the caller
    holds the queue's advisory lock, so concurrent dispatchers cannot both see room for one more.
    Not committed: the caller commits all its reservations before sending any of them.
    """
    in_flight = select(func.count()).select_from(Job).where(_in_flight(queue)).scalar_subquery()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, _waiting(queue, db_now(session)), in_flight < limit)
        .values(dispatched_at=db_now(session), not_before=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def unreserve(session: Session, job_ids: list[str]) -> None:
    """In flight → waiting again, for reservations the broker did not take."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == QUEUED)
            .values(dispatched_at=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()


def jobs_to_redispatch(session: Session, older_than_seconds: float) -> list[tuple[str, str]]:
    """Jobs in flight for more than ``older_than_seconds`` (the broker may have lost them): (id, queue)."""
    older_than = db_now(session) - timedelta(seconds=older_than_seconds)
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.status == QUEUED,
            Job.cancel_requested.is_(False),
            Job.dispatched_at.is_not(None),
            Job.dispatched_at < older_than,
        )
        .order_by(Job.created_at)
    )
    return [(r[0], r[1]) for r in rows]


def mark_dispatched(session: Session, job_ids: list[str]) -> None:
    """Restart the grace period of in-flight jobs that were just sent again."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == QUEUED, Job.dispatched_at.is_not(None))
            .values(dispatched_at=db_now(session))
            .execution_options(synchronize_session=False)
        )
        session.commit()
