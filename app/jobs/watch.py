"""One watcher of job changes per API process, shared by every open event stream.

Event streams no longer poll the database each on its own. The watcher reads the few columns that
change (status, attempts, started_at, progress, error) of *every* watched job in one query per tick
and wakes only the streams whose job changed; a stream then reads its new epochs once. 1,000 open
streams on idle jobs cost one small query per tick, not 1,000.

In the distributed deployment (Redis broker) the workers also publish each job change on a Redis
channel (:func:`publish_job_change`); the watcher listens and ticks at once, so events arrive without
waiting for the next tick, and the tick itself runs less often (pub/sub may drop a message, the
slower tick still catches it). On the embedded default the tick is every RNNLAB_SSE_POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from app.config import get_settings
from app.db import new_session
from app.jobs import workers
from app.models import Job

log = logging.getLogger(__name__)

CHANNEL = "rnnlab:job-changes"
# With notifications, the tick is only the safety net for a dropped message.
NOTIFIED_TICK_FACTOR = 10
_CHUNK = 500


@dataclass
class _Watched:
    streams: int = 0
    key: Any = None  # the columns last read; None before the first read, "deleted" once gone
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _read_keys(job_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    keys: dict[str, tuple[Any, ...]] = {}
    with new_session() as session:
        for i in range(0, len(job_ids), _CHUNK):
            rows = session.execute(
                select(
                    Job.id,
                    Job.status,
                    Job.attempts,
                    Job.started_at,
                    Job.progress_epoch,
                    Job.progress_epochs,
                    Job.error_type,
                    Job.queue,
                ).where(Job.id.in_(job_ids[i : i + _CHUNK]))
            )
            for row in rows:
                keys[row[0]] = tuple(row[1:])
    # Whether a live worker serves the job's queue (what ``waiting_for`` says): a worker that goes away
    # changes no column of the job, and its page should still hear of it. The heartbeats are read at
    # most every few seconds per process (workers.live_queues), not per job.
    live = workers.live_queues() if keys else None
    return {job_id: (*key, None if live is None else key[-1] in live) for job_id, key in keys.items()}


class JobWatcher:
    """Lives on one event loop; started by the first stream, stopped when the last one closes."""

    def __init__(self, poll_seconds: float, redis_url: str | None) -> None:
        self.poll_seconds = poll_seconds
        self.redis_url = redis_url
        self.jobs: dict[str, _Watched] = {}
        self.ticks = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._notified = False

    def watch(self, job_id: str) -> None:
        watched = self.jobs.setdefault(job_id, _Watched())
        watched.streams += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    def unwatch(self, job_id: str) -> None:
        watched = self.jobs.get(job_id)
        if watched is not None:
            watched.streams -= 1
            if watched.streams <= 0:
                del self.jobs[job_id]

    def version(self, job_id: str) -> int:
        return self.jobs[job_id].version

    async def wait(self, job_id: str, seen: int, timeout: float) -> int:
        """The job's change counter once it is past ``seen``, or after ``timeout`` seconds."""
        watched = self.jobs[job_id]
        if watched.version == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watched.changed.wait(), timeout)
        return watched.version

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        if self.redis_url:
            threading.Thread(target=self._listen, args=(loop, stop), name="rnnlab-job-changes", daemon=True).start()
        try:
            while self.jobs:
                self._wake.clear()
                try:
                    await self._tick()
                except Exception as exc:  # a database hiccup: streams keep waiting, next tick retries
                    log.warning("event watcher could not read job changes: %s", exc)
                interval = self.poll_seconds * (NOTIFIED_TICK_FACTOR if self._notified else 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
        finally:
            stop.set()
            self._notified = False

    async def _tick(self) -> None:
        ids = list(self.jobs)
        keys = await asyncio.to_thread(_read_keys, ids)
        self.ticks += 1
        for job_id in ids:
            watched = self.jobs.get(job_id)
            if watched is None:
                continue
            key = keys.get(job_id, "deleted")
            if key != watched.key:
                watched.key = key
                watched.version += 1
                watched.changed.set()
                watched.changed = asyncio.Event()

    def _listen(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        """Redis subscriber thread: any published change wakes the watcher for a tick now."""
        import redis

        while not stop.is_set():
            try:
                client = redis.Redis.from_url(self.redis_url or "", socket_timeout=5)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                self._notified = True
                while not stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        loop.call_soon_threadsafe(self._wake.set)
                pubsub.close()
                client.close()
            except Exception as exc:
                self._notified = False  # back to the plain tick until Redis answers again
                log.warning("job change notifications unavailable: %s", exc)
                stop.wait(2.0)


_watchers: dict[int, JobWatcher] = {}


def get_watcher() -> JobWatcher:
    """This event loop's watcher (one per API process: uvicorn runs one loop)."""
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(id(loop))
    if watcher is None:
        settings = get_settings()
        redis_url = settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else None
        watcher = _watchers[id(loop)] = JobWatcher(settings.sse_poll_seconds, redis_url)
    return watcher


_publisher: dict[str, Any] = {"key": None, "client": None}
_publisher_lock = threading.Lock()


def publish_job_change(job_id: str) -> None:
    """Tell the API processes' watchers that a job changed (Redis only; never raises)."""
    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return
    try:
        with _publisher_lock:
            if _publisher["key"] != (url, os.getpid()):  # never a connection inherited across fork
                import redis

                _publisher.update(key=(url, os.getpid()), client=redis.Redis.from_url(url, socket_timeout=2))
            client = _publisher["client"]
        client.publish(CHANNEL, job_id)
    except Exception as exc:  # the watcher's tick still sees the change
        log.debug("could not publish a change of job %s: %s", job_id, exc)
