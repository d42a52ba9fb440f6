"""Dispatching queued jobs to the broker, and recovering the ones it lost.

The broker is only a doorbell: a job id lost there (Redis restarted, FLUSHALL, a crashed worker)
is found again in SQL by :func:`recover_jobs` and sent again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from app.config import get_settings
from app.db import new_session
from app.jobs import state
from app.models import utcnow
from app.queue import broker_job_ids, send_job

log = logging.getLogger(__name__)

# A just-sent message may not be visible to an inspection yet; don't resend inside this window.
DISPATCH_GRACE_SECONDS = 3.0


def dispatch_jobs(jobs: list[tuple[str, str]]) -> list[str]:
    """Send each (job id, queue); returns the ids that were sent. A broker outage is logged, not raised:
    the rows stay queued and the recovery loop sends them once the broker is back."""
    sent: list[str] = []
    for job_id, queue in jobs:
        try:
            send_job(job_id, queue)
        except Exception as exc:
            log.warning("could not reach the broker to dispatch job %s: %s", job_id, exc)
            break
        sent.append(job_id)
    if sent:
        with new_session() as session:
            state.mark_dispatched(session, sent)
    return sent


def recover_jobs() -> dict[str, list[str]]:
    """One pass of recovery: expire dead leases, then (re)send queued jobs the broker does not hold."""
    settings = get_settings()
    with new_session() as session:
        requeued, ended = state.expire_leases(session)
        now = utcnow()
        candidates = state.jobs_to_dispatch(session, now - timedelta(seconds=DISPATCH_GRACE_SECONDS))
    held = broker_job_ids()
    if held is None:
        # Cannot see inside this broker: fall back to resending after a quiet period (a duplicate
        # message is harmless, the claim lets only one through).
        with new_session() as session:
            cutoff = now - timedelta(seconds=settings.redispatch_after_seconds)
            lost = state.jobs_to_dispatch(session, cutoff)
    else:
        lost = [(job_id, queue) for job_id, queue in candidates if job_id not in held]
    sent = dispatch_jobs(lost)
    if requeued or ended or sent:
        log.info("recovery: requeued %s, ended %s, dispatched %s", requeued, ended, sent)
    return {"requeued": requeued, "ended": ended, "dispatched": sent}
