"""Which queues live workers serve: heartbeats the workers write, read (cached) by the API.

A worker's main process records its queues when it is ready and again every recovery interval; a
row older than ``heartbeat_ttl`` counts as gone. A queued job whose queue no live worker serves says
so in ``JobRead.waiting_for`` instead of waiting silently (e.g. a ``device: cuda`` job with no GPU
worker running).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from app.config import get_settings
from app.db import new_session
from app.models import WorkerHeartbeat, db_now

log = logging.getLogger(__name__)

# How long the API trusts one reading of the heartbeats (per process).
CACHE_SECONDS = 5.0
# Rows this old are deleted by the next heartbeat (workers that were killed without a goodbye).
FORGET_AFTER = timedelta(days=1)


def heartbeat_ttl() -> timedelta:
    """A worker not seen for this long counts as gone: three recovery intervals, at least 15 s."""
    return timedelta(seconds=max(3 * get_settings().recovery_interval_seconds, 15.0))


def record_heartbeat(worker_id: str, queues: list[str]) -> None:
    with new_session() as session:
        now = db_now(session)
        values = {"queues": ",".join(sorted(queues)), "seen_at": now}
        done = session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id).values(**values))
        if not getattr(done, "rowcount", 0):
            session.add(WorkerHeartbeat(worker_id=worker_id, **values))
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_AFTER))
        session.commit()


def forget_worker(worker_id: str) -> None:
    with new_session() as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))
        session.commit()


_lock = threading.Lock()
_cache: tuple[object, float, frozenset[str]] | None = None  # (settings, monotonic time, queues)


def live_queues() -> frozenset[str] | None:
    """Queues some live worker serves; None when the database cannot tell right now."""
    global _cache
    settings = get_settings()
    with _lock:
        if _cache is not None and _cache[0] is settings and time.monotonic() - _cache[1] < CACHE_SECONDS:
            return _cache[2]
    try:
        with new_session() as session:
            rows = session.scalars(
                select(WorkerHeartbeat.queues).where(WorkerHeartbeat.seen_at >= db_now(session) - heartbeat_ttl())
            ).all()
    except DBAPIError as exc:
        log.warning("could not read worker heartbeats: %s", exc)
        return None
    queues = frozenset(q for row in rows for q in row.split(",") if q)
    with _lock:
        _cache = (settings, time.monotonic(), queues)
    return queues


def clear_cache() -> None:
    global _cache
    with _lock:
        _cache = None


def waiting_for(queue: str, running: bool = False) -> str | None:
    """What a queued job on ``queue`` waits for when no live worker serves that queue, else None.

    ``running``: for a running job the same absence means its own worker is gone too (killed, its
    machine lost): nothing will finish it, and only a worker's recovery loop requeues it once its
    lease runs out (or a cancel then ends it).
    """
    queues = live_queues()
    if queues is None or queue in queues:
        return None
    seconds = int(heartbeat_ttl().total_seconds())
    start = "rnnlab worker --queues gpu (one per GPU)" if queue == "gpu" else f"rnnlab worker --queues {queue}"
    hint = " or docker compose --profile gpu up" if queue == "gpu" else ""
    if running:
        return (
            f"a worker serving the '{queue}' queue: none has been seen in the last {seconds} s, its own worker "
            f"included, so nothing is running it now; a worker started for the queue requeues it once its lease "
            f"runs out, and a cancel then ends it at once (start one: {start}{hint})"
        )
    return (
        f"a worker serving the '{queue}' queue: none has been seen in the last {seconds} s (start one: {start}{hint})"
    )
