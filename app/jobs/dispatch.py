"""Fair dispatch of queued jobs to the broker, and recovery of the ones it lost.

SQL is the queue of record. A submitted job waits there; the broker holds at most
``RNNLAB_DISPATCH_IN_FLIGHT`` jobs per queue (sent, not yet claimed by a worker). Whenever there is
room, :func:`fill_queue` picks the next job fairly between projects:

* the project with the fewest jobs running or in flight on that queue goes first;
* ties go to the project whose oldest waiting job has waited longest;
* within a project, jobs go in submission order.

So a project's burst (a 100-job sweep) cannot starve another project: a job submitted in project B
is the next one sent, and starts as soon as the jobs already in flight have been picked up.

:func:`fill_queue` runs after every submit (the API), after every claim (the worker that took a
job from the broker refills it at once), after a cancel, and in every worker's recovery loop.
The broker is only a doorbell: an in-flight job it lost (Redis restarted, FLUSHALL, a crashed
worker) is found again in SQL by :func:`recover_jobs` and sent again.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import new_session
from app.jobs import state
from app.jobs.status import JobStatus
from app.models import Job
from app.queue import QUEUES, broker_job_ids, send_job

log = logging.getLogger(__name__)

# A just-sent message may not be visible to an inspection yet; don't resend inside this window.
DISPATCH_GRACE_SECONDS = 3.0


def _lock_queue(session: Session, queue: str) -> None:
    """Serialise dispatchers of one queue until the transaction ends (PostgreSQL). SQLite needs no
    lock: each conditional UPDATE runs under its single write lock and re-counts the bound."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"rnnlab.dispatch.{queue}".encode())
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def next_fair_job(session: Session, queue: str) -> str | None:
    """The job that should go to the broker next on ``queue`` (see the module docstring), or None."""
    heads = state.waiting_heads(session, queue)
    if not heads:
        return None
    active = state.active_by_project(session, queue)
    project_id = min(heads, key=lambda h: (active.get(h[0], 0), h[1], h[0]))[0]
    return state.oldest_waiting(session, queue, project_id)


def fairer_job(session: Session, job_id: str) -> str | None:
    """A waiting job that fairness puts before ``job_id``, whose broker message a worker just took.

    The message in the broker was chosen when the place freed, maybe before another project's job
    arrived; the worker that takes it runs the fairer job instead (and ``job_id`` waits again).
    That job's project must have fewer jobs running or in flight than ``job_id``'s (not counting
    ``job_id``), so within a project, and between projects with equal shares, nothing is swapped.
    """
    row = session.execute(
        select(Job.project_id, Job.queue, Job.status, Job.dispatched_at).where(Job.id == job_id)
    ).first()
    if row is None or row.status != JobStatus.QUEUED:
        return None
    heads = [h for h in state.waiting_heads(session, row.queue) if h[0] != row.project_id]
    if not heads:
        return None
    active = state.active_by_project(session, row.queue)
    mine = active.get(row.project_id, 0) - (1 if row.dispatched_at is not None else 0)
    project_id = min(heads, key=lambda h: (active.get(h[0], 0), h[1], h[0]))[0]
    if active.get(project_id, 0) >= mine:
        return None
    return state.oldest_waiting(session, row.queue, project_id)


def reserve(queue: str, limit: int | None = None) -> list[str]:
    """Reserve (commit as in flight) the next fair jobs on ``queue`` while the bound allows."""
    limit = limit if limit is not None else get_settings().dispatch_in_flight
    reserved: list[str] = []
    with new_session() as session:
        _lock_queue(session, queue)
        for _ in range(2 * limit + 3):  # a lost race (SQLite) costs one more pick; never loop forever
            job_id = next_fair_job(session, queue)
            if job_id is None:
                break
            if state.reserve_dispatch(session, job_id, queue, limit):
                reserved.append(job_id)
            elif state.count_in_flight(session, queue) >= limit:
                break
        session.commit()
    return reserved


def fill_queue(queue: str) -> list[str]:
    """Send the next fair jobs of ``queue`` to the broker, up to the in-flight bound; the ids sent.

    Reservations are committed before sending, so a crash in between leaves jobs in flight that
    recovery sends again. A broker outage is logged, not raised: the jobs go back to waiting.
    """
    reserved = reserve(queue)
    sent: list[str] = []
    for job_id in reserved:
        try:
            send_job(job_id, queue)
        except Exception as exc:
            log.warning("could not reach the broker to dispatch job %s: %s", job_id, exc)
            break
        sent.append(job_id)
    if len(sent) < len(reserved):
        with new_session() as session:
            state.unreserve(session, reserved[len(sent) :])
    return sent


def nudge(queues: Iterable[str]) -> list[str]:
    """Fill these queues after a submit or a cancel; never raises (the recovery loop fills them later)."""
    sent: list[str] = []
    for queue in sorted(set(queues)):
        try:
            sent += fill_queue(queue)
        except Exception:
            log.exception("could not dispatch queue %s now; the recovery loop will", queue)
    return sent


def recover_jobs() -> dict[str, list[str]]:
    """One pass of recovery: expire dead leases, resend in-flight jobs the broker does not hold, then
    fill every queue fairly."""
    settings = get_settings()
    with new_session() as session:
        requeued, ended = state.expire_leases(session)
        candidates = state.jobs_to_redispatch(session, DISPATCH_GRACE_SECONDS)
    held = broker_job_ids()
    if held is None:
        # Cannot see inside this broker: fall back to resending after a quiet period (a duplicate
        # message is harmless, the claim lets only one through).
        with new_session() as session:
            lost = state.jobs_to_redispatch(session, settings.redispatch_after_seconds)
    else:
        lost = [(job_id, queue) for job_id, queue in candidates if job_id not in held]
    resent: list[str] = []
    for job_id, queue in lost:
        try:
            send_job(job_id, queue)
        except Exception as exc:
            log.warning("could not reach the broker to dispatch job %s: %s", job_id, exc)
            break
        resent.append(job_id)
    if resent:
        with new_session() as session:
            state.mark_dispatched(session, resent)
    sent = resent + [job_id for queue in QUEUES for job_id in fill_queue(queue)]
    if requeued or ended or sent:
        log.info("recovery: requeued %s, ended %s, dispatched %s", requeued, ended, sent)
    return {"requeued": requeued, "ended": ended, "dispatched": sent}
