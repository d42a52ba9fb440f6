"""The shared watcher behind event streams: one query per tick for every watched job, wake-ups only
for the job that changed, and Redis notifications that wake it before its next tick."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import update

from app.config import get_settings
from app.db import new_session
from app.jobs import watch
from app.models import Job
from tests.stack import forecast_spec, sine_csv


def _jobs(client, auth, n: int) -> list[str]:
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("sine.csv", sine_csv(200).encode())})
    data = r.json()["id"]
    return [client.post("/api/v1/jobs", headers=auth, json=forecast_spec(data)).json()["id"] for _ in range(n)]


def _set_progress(job_id: str, epoch: int) -> None:
    with new_session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(progress_epoch=epoch))
        session.commit()


def test_many_streams_share_one_query_per_tick(client, auth, monkeypatch) -> None:
    ids = _jobs(client, auth, 3)
    reads: list[int] = []
    read = watch._read_keys

    def counted(job_ids: list[str]) -> dict:
        reads.append(len(job_ids))
        return read(job_ids)

    monkeypatch.setattr(watch, "_read_keys", counted)

    async def scenario() -> None:
        watcher = watch.JobWatcher(poll_seconds=0.05, redis_url=None)
        for i in range(300):  # 300 streams on 3 jobs
            watcher.watch(ids[i % 3])
        await asyncio.sleep(0.5)
        assert watcher.ticks >= 2 and len(reads) - watcher.ticks in (0, 1)  # one read may be under way
        assert set(reads) == {3}  # every tick reads the 3 jobs at once, whatever the stream count
        seen = [watcher.version(j) for j in ids]
        await asyncio.to_thread(_set_progress, ids[1], 2)
        assert await watcher.wait(ids[1], seen[1], 5.0) == seen[1] + 1
        assert [watcher.version(j) for j in (ids[0], ids[2])] == [seen[0], seen[2]]  # only the changed job
        for i in range(300):
            watcher.unwatch(ids[i % 3])
        assert watcher.jobs == {}
        assert watcher._task is not None
        await asyncio.wait_for(watcher._task, 10)  # the loop ends once nothing is watched
        count = len(reads)
        await asyncio.sleep(0.3)
        assert len(reads) == count  # nothing watched: no more queries

    asyncio.run(scenario())


def test_redis_notification_wakes_the_watcher_before_its_tick(client, auth, monkeypatch, redis_url) -> None:
    ids = _jobs(client, auth, 1)
    monkeypatch.setenv("RNNLAB_BROKER_URL", redis_url)
    get_settings.cache_clear()

    async def scenario() -> None:
        watcher = watch.JobWatcher(poll_seconds=3.0, redis_url=redis_url)  # ticks every 30 s once notified
        watcher.watch(ids[0])
        deadline = time.monotonic() + 10
        while not watcher._notified or watcher.ticks < 1:  # subscribed, first read done
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(3.5)  # past the plain tick; the next one is 30 s away
        seen = watcher.version(ids[0])
        await asyncio.to_thread(_set_progress, ids[0], 1)
        started = time.monotonic()
        await asyncio.to_thread(watch.publish_job_change, ids[0])
        assert await watcher.wait(ids[0], seen, 10.0) == seen + 1
        assert time.monotonic() - started < 2.5
        watcher.unwatch(ids[0])

    try:
        asyncio.run(scenario())
    finally:
        get_settings.cache_clear()


def test_a_worker_coming_or_going_wakes_the_streams_of_its_queue(client, auth) -> None:
    # No column of the job changes when its worker goes away; its waiting_for does, and its page hears it.
    from app.jobs import workers

    (job_id,) = _jobs(client, auth, 1)
    workers.clear_cache()

    async def scenario() -> None:
        watcher = watch.JobWatcher(poll_seconds=0.05, redis_url=None)
        watcher.watch(job_id)
        await asyncio.sleep(0.3)
        seen = watcher.version(job_id)
        await asyncio.to_thread(workers.record_heartbeat, "w1:1", ["default"])
        workers.clear_cache()
        assert await watcher.wait(job_id, seen, 5.0) == seen + 1
        watcher.unwatch(job_id)

    asyncio.run(scenario())
