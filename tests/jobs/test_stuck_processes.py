"""A process that stops answering (a paused VM, a partitioned host) or runs on a clock that disagrees
must not stall or mislead the others (PostgreSQL, where workers on other machines share one database).

A frozen worker inside a write keeps its job's row locked: recovery skips the row instead of waiting
behind it, an API request that needs it answers 503 database_busy after RNNLAB_DB_LOCK_TIMEOUT_SECONDS,
and the server ends the frozen session after RNNLAB_DB_IDLE_TRANSACTION_SECONDS. Leases, dispatch
times and heartbeats are written and compared by the database's clock, not each process's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import exc, select, text, update
from sqlalchemy.orm import Session

import app.db
import app.models
from app.config import get_settings
from app.db import new_session, reset_engine
from app.jobs import dispatch, state, workers
from app.models import Job, utcnow
from tests.stack import forecast_spec, sine_csv

pytestmark = pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"RNNLAB_{name.upper()}", value)
    get_settings.cache_clear()
    reset_engine()  # the session settings are applied to new connections


def submit(client, auth, count: int = 1) -> list[str]:
    dataset = client.post("/api/v1/datasets", headers=auth, files={"file": ("s.csv", sine_csv(200).encode())})
    spec = forecast_spec(dataset.json()["id"])
    return [client.post("/api/v1/jobs", headers=auth, json=spec).json()["id"] for _ in range(count)]


def run_and_expire(job_ids: list[str]) -> None:
    """Claim the jobs for a worker, then let their leases run out (by the database's clock)."""
    with new_session() as session:
        for job_id in job_ids:
            assert state.claim_job(session, job_id, "w1", lease_seconds=60) is not None
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids))
            .values(lease_expires_at=text("statement_timestamp() - interval '1s'"))
        )
        session.commit()


@pytest.fixture
def frozen() -> Iterator[list[Session]]:
    """Sessions standing for a frozen worker: whatever they lock stays locked until the test ends."""
    sessions: list[Session] = []
    yield sessions
    for session in sessions:
        with contextlib.suppress(exc.DBAPIError):  # the server may have ended it already
            session.rollback()
        session.close()


def lock_row(frozen: list[Session], job_id: str) -> Session:
    session = new_session()
    frozen.append(session)
    session.execute(update(Job).where(Job.id == job_id).values(progress_epoch=7))  # a renewal, left open
    return session


def as_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's connections as a worker's (mark_worker_process, undone after the test)."""
    monkeypatch.setitem(app.db._state, "worker", True)
    reset_engine()


def test_connections_carry_the_lock_and_idle_transaction_limits(client, monkeypatch) -> None:
    with new_session() as session:
        assert session.scalar(text("SHOW lock_timeout")) == "10s"
        # An API request may hold a read transaction over a slow upload: no idle limit there.
        assert session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "0"
        assert session.scalar(text("SHOW TimeZone")) == "UTC"  # a day-long interval is 24 h
        assert session.scalar(text("SHOW search_path")).startswith("rnnlab_test_")  # the URL's options kept
    as_worker(monkeypatch)
    with new_session() as session:
        assert session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "1min"
    settings(monkeypatch, db_lock_timeout_seconds="0", db_idle_transaction_seconds="2.5")
    with new_session() as session:
        assert session.scalar(text("SHOW lock_timeout")) == "0"  # 0: wait forever, PostgreSQL's default
        assert session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "2500ms"
    settings(monkeypatch, db_lock_timeout_seconds="0.0001")
    with new_session() as session:  # not rounded down to 0, which would mean "wait forever"
        assert session.scalar(text("SHOW lock_timeout")) == "1ms"


def test_recovery_skips_a_job_a_frozen_worker_holds_locked(client, auth, frozen) -> None:
    held, free = submit(client, auth, 2)
    run_and_expire([held, free])
    lock_row(frozen, held)
    with new_session() as session:
        # Without SKIP LOCKED this pass would wait on the held row (and fail after lock_timeout).
        assert state.expire_leases(session) == ([free], [])
    frozen[0].rollback()  # the frozen session ends (the server ends it: see the next test)
    with new_session() as session:
        assert state.expire_leases(session) == ([held], [])


def test_a_request_needing_a_locked_row_answers_503_database_busy(client, auth, frozen, monkeypatch) -> None:
    settings(monkeypatch, db_lock_timeout_seconds="0.3")
    (job_id,) = submit(client, auth)
    with new_session() as session:
        assert state.claim_job(session, job_id, "w1", lease_seconds=60) is not None
    lock_row(frozen, job_id)
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_busy", r.text
    assert r.headers["retry-after"] == "5"
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth).status_code == 200  # reads never wait on it
    frozen[0].rollback()
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True


def test_the_server_ends_a_session_left_idle_in_a_transaction(client, auth, frozen, monkeypatch) -> None:
    settings(monkeypatch, db_idle_transaction_seconds="0.5", db_lock_timeout_seconds="5")
    as_worker(monkeypatch)
    (job_id,) = submit(client, auth)
    holder = lock_row(frozen, job_id)
    time.sleep(1.5)
    with new_session() as session:  # the lock is gone: this does not wait for the frozen session
        session.execute(update(Job).where(Job.id == job_id).values(progress_epoch=3))
        session.commit()
        assert session.scalar(select(Job.progress_epoch).where(Job.id == job_id)) == 3
    with pytest.raises(exc.DBAPIError, match="idle-in-transaction timeout"):
        holder.execute(select(1))


def test_leases_and_heartbeats_follow_the_database_clock_not_the_process_clock(client, auth, monkeypatch) -> None:
    (job_id,) = submit(client, auth)
    real = utcnow

    def skewed(offset: timedelta) -> None:
        # Every module's name for the process clock (raising=False: a module that no longer imports
        # it, as it should not, gets an unused one; one that reads it again fails this test).
        for module in (app.models, state, workers, dispatch):
            monkeypatch.setattr(module, "utcnow", lambda: real() + offset, raising=False)

    skewed(timedelta(hours=-2))  # a worker whose clock is two hours slow claims and beats
    with new_session() as session:
        claim = state.claim_job(session, job_id, "w1", lease_seconds=60)
        assert claim is not None and state.renew_lease(session, claim, 60) is False
    workers.record_heartbeat("slow:1", ["default"])
    skewed(timedelta(hours=2))  # another process, two hours fast, runs recovery
    with new_session() as session:
        assert state.expire_leases(session) == ([], [])  # the lease has 60 s left by the one clock that counts
        assert session.get(Job, job_id).status == "running"
        assert state.jobs_to_redispatch(session, 3) == []
    monkeypatch.setattr(workers, "_cache", None)
    assert workers.live_queues() == frozenset({"default"})  # the slow worker counts as alive


def test_a_database_that_cannot_be_reached_answers_503_not_500(client, auth, monkeypatch) -> None:
    settings(monkeypatch, database_url="postgresql+psycopg://postgres@127.0.0.1:1/test")
    r = client.get("/api/v1/jobs", headers=auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
    assert r.headers["retry-after"] == "5"
