"""Sending job ids to the broker, and finding which job ids the broker still holds.

The broker is only a doorbell: a job id lost there (Redis restarted, FLUSHALL, a crashed worker)
is found again in SQL by :func:`recover_jobs` and sent again.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.config import get_settings
from app.db import new_session
from app.jobs import state
from app.models import utcnow

log = logging.getLogger(__name__)

RUN_JOB_TASK = "rnnlab.run_job"
# A just-sent message may not be visible to an inspection yet; don't resend inside this window.
DISPATCH_GRACE_SECONDS = 3.0


def send_job(job_id: str, queue: str) -> None:
    """Publish one job id. The task id is the job id, so the broker can be asked whether it holds it."""
    from worker.celery_app import celery_app

    celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, task_id=job_id)


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


def _task_id(payload: Any) -> str | None:
    try:
        return str(payload["headers"]["id"])
    except (KeyError, TypeError):
        return None


def broker_job_ids() -> set[str] | None:
    """Job ids waiting in the broker's queues; None when it cannot tell.

    Delivered-but-unacked messages do not count: the one a killed worker held would only come back
    after the visibility timeout. A queued job whose message a live worker has just received may be
    sent twice; the exclusive claim makes the second delivery a no-op.
    """
    from worker.celery_app import DEFAULT_QUEUE, GPU_QUEUE

    settings = get_settings()
    try:
        if settings.embedded_broker:
            ids: set[str] = set()
            for path in Path(settings.broker_dir / "queue").glob("*.msg"):
                try:
                    task_id = _task_id(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # being consumed right now
                if task_id:
                    ids.add(task_id)
            return ids
        if settings.broker_url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
            ids = set()
            for queue in (DEFAULT_QUEUE, GPU_QUEUE):
                for key in client.scan_iter(match=f"{queue}*", count=100):
                    if client.type(key) != b"list":
                        continue
                    for raw in client.lrange(key, 0, -1):
                        task_id = _task_id(json.loads(raw))
                        if task_id:
                            ids.add(task_id)
            client.close()
            return ids
    except Exception as exc:
        log.warning("could not inspect the broker: %s", exc)
    return None


def recover_jobs() -> dict[str, list[str]]:
    """One pass of recovery: expire dead leases, then (re)send queued jobs the broker does not hold."""
    settings = get_settings()
    with new_session() as session:
        requeued, failed = state.expire_leases(session)
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
    if requeued or failed or sent:
        log.info("recovery: requeued %s, failed %s, dispatched %s", requeued, failed, sent)
    return {"requeued": requeued, "failed": failed, "dispatched": sent}
