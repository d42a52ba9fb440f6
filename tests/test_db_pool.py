"""Pooled PostgreSQL connections that die (a database restart, a killed backend) are never handed to
a request: the pool's checkout ping replaces them, and a polled read that skipped the ping (its
connection was used within PING_BYPASS_SECONDS) runs once more on a new connection."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from app.db import get_engine, new_session, reset_engine
from tests.conftest import POSTGRES_URL
from tests.datasets.conftest import set_setting
from tests.jobs.scale import seed_jobs

# PostgreSQL only: SQLite has no server whose connections could die.
pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("backend", ["postgres"])]


def _pooled_backend_pid() -> int:
    with get_engine().connect() as conn:
        return int(conn.connection.dbapi_connection.info.backend_pid)  # type: ignore[union-attr]


def _terminate(pid: int) -> None:
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        admin.dispose()


@pytest.fixture
def one_connection(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    set_setting(monkeypatch, db_pool_size="1")
    reset_engine()


def test_a_dead_pooled_connection_is_replaced_at_checkout(one_connection: None) -> None:
    dead = _pooled_backend_pid()
    _terminate(dead)
    with new_session() as session:
        assert session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != dead
    # The ping left no transaction open on the connection it checked.
    with get_engine().connect() as conn:
        assert conn.connection.dbapi_connection.info.transaction_status == TransactionStatus.IDLE  # type: ignore[union-attr]


def test_a_polled_read_on_a_dead_connection_is_run_again(
    one_connection: None, client: Any, auth: dict[str, str]
) -> None:
    job = seed_jobs("alpha", 1, seed=4)[0]
    assert client.get(f"/api/v1/jobs/{job}", headers=auth).status_code == 200
    disconnects: list[bool] = []
    sa.event.listen(get_engine(), "handle_error", lambda ctx: disconnects.append(ctx.is_disconnect))
    _terminate(_pooled_backend_pid())
    # Used a moment ago, so the read skips the ping, meets the dead connection and runs again.
    r = client.get(f"/api/v1/jobs/{job}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == job
    assert disconnects == [True]
    # A route without the retry pings instead: the list works at once after another kill.
    _terminate(_pooled_backend_pid())
    assert client.get("/api/v1/jobs", headers=auth).status_code == 200
