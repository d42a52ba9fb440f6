"""Database engine and sessions, shared by the API and the workers.

The engine is created lazily per process: an engine must never cross a fork (Celery prefork
children and uvicorn reloaders), so the owning pid is remembered and a forked child builds its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, create_engine, event, exc, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.errors import not_found

_state: dict[str, Any] = {"pid": None, "engine": None, "factory": None, "worker": False}
T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing on a lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, session_limits: bool = True) -> Engine:
    # A request over the pool's size opens a connection and closes it after (on SQLite with its
    # pragmas): with SQLAlchemy's default of 5, polling at 8-16 concurrent requests per process
    # spent more time connecting than querying. RNNLAB_DB_POOL_SIZE connections are kept.
    pool_size = get_settings().db_pool_size
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        pool: dict[str, int] = {}
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            pool = {"pool_size": pool_size, "max_overflow": pool_size}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # psycopg (3) gets the one-round-trip ping below; any other driver SQLAlchemy's pre-ping.
    psycopg = make_url(url).get_dialect().driver == "psycopg"
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=not psycopg)
    if engine.dialect.name == "postgresql" and session_limits:  # migrations wait for their locks as before
        event.listen(engine, "connect", _postgres_session_limits)
    if psycopg:
        event.listen(engine, "connect", _mark_fresh)
        event.listen(engine, "checkout", _ping_postgres)
        event.listen(engine, "checkin", _mark_used)
    return engine


def _postgres_session_limits(dbapi_connection: Any, _: Any) -> None:
    """Bound what a stuck process can cost the others, on every new PostgreSQL connection.

    A worker frozen (a paused VM, a partitioned host) inside a write holds its job's row lock; with
    PostgreSQL's defaults everything that touches the row waits with it, and waiters pile up until
    the API's pool is gone. ``lock_timeout``: such a waiter fails after RNNLAB_DB_LOCK_TIMEOUT_SECONDS
    (an API request answers 503 database_busy). In worker processes,
    ``idle_in_transaction_session_timeout``: the server ends a session left idle inside a transaction
    for RNNLAB_DB_IDLE_TRANSACTION_SECONDS, releasing its locks (a worker's writes are short; an API
    request may hold a read transaction over a slow upload, and holds no row lock meanwhile).
    TCP keepalives: a client host that vanished is noticed in about two minutes instead of the
    kernel's two hours. ``TimeZone`` UTC: a day-long interval added to a time is 24 hours, whatever
    the server's zone (across a daylight-saving change it would be 23 or 25). Session settings
    (``SET``), so a URL's own ``options`` (a search_path) stay as they are.
    """
    settings = get_settings()
    idle = settings.db_idle_transaction_seconds if _state["worker"] else 0.0
    values = {
        "lock_timeout": _milliseconds(settings.db_lock_timeout_seconds),
        "idle_in_transaction_session_timeout": _milliseconds(idle),
        "tcp_keepalives_idle": "60",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "6",
        "TimeZone": "UTC",
    }
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # a SET inside a transaction that is rolled back would not last
    try:
        cursor = dbapi_connection.cursor()
        for name, value in values.items():
            cursor.execute(f"SET {name} = '{value}'")
        cursor.close()
    finally:
        dbapi_connection.autocommit = autocommit


def _milliseconds(seconds: float) -> str:
    """A PostgreSQL duration; 0 stays 0 (off), any other value is at least 1 ms (0 would mean off)."""
    return f"{max(1, round(seconds * 1000)) if seconds > 0 else 0}ms"


def mark_worker_process() -> None:
    """This process runs jobs: its connections get the idle-in-transaction limit (see
    ``_postgres_session_limits``). Called by the worker's start-up signals, before it connects."""
    if not _state["worker"]:
        _state["worker"] = True
        reset_engine()


# A read run by read_with_retry skips the ping of a connection used this recently (HikariCP's
# "alive bypass window"): under polling the connection was just used, and if it died meanwhile
# the read is simply run again on a new one.
PING_BYPASS_SECONDS = 0.5
_retried_read = threading.local()


def _mark_fresh(_: Any, connection_record: Any) -> None:
    connection_record.info["fresh"] = True


def _mark_used(_: Any, connection_record: Any) -> None:
    connection_record.info["used_at"] = time.monotonic()


def _ping_postgres(dbapi_connection: Any, connection_record: Any, _: Any) -> None:
    """Check a pooled connection before it is used (it may have died in a database restart).

    SQLAlchemy's ``pool_pre_ping`` does this with ``SELECT 1`` outside autocommit, which psycopg
    precedes by a ``BEGIN``: two round trips, and a transaction that only the rollback at check-in
    ends. Here the ping is one round trip outside any transaction. A dead connection raises
    DisconnectionError, on which the pool discards it and checks out another (SQLAlchemy's
    documented checkout-event recipe). A connection just opened is not pinged, nor one used in
    the last PING_BYPASS_SECONDS when the caller retries (``read_with_retry``).
    """
    if connection_record.info.pop("fresh", False):
        return
    idle = time.monotonic() - connection_record.info.get("used_at", 0.0)
    if getattr(_retried_read, "active", False) and idle < PING_BYPASS_SECONDS:
        return
    try:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute("SELECT 1")
        finally:
            dbapi_connection.autocommit = autocommit
    except Exception as err:  # any failure of the ping means the connection is not usable
        raise exc.DisconnectionError(f"pooled connection failed its ping: {err}") from err


def get_engine() -> Engine:
    if _state["pid"] != os.getpid() or _state["engine"] is None:
        if _state["engine"] is not None and _state["pid"] != os.getpid():
            # Inherited from the parent: drop its pooled connections without closing them.
            _state["engine"].dispose(close=False)
        engine = make_engine(get_settings().database_url)
        _state.update(pid=os.getpid(), engine=engine, factory=sessionmaker(engine, expire_on_commit=False))
    return _state["engine"]


def reset_engine() -> None:
    """Forget the engine: in a freshly forked worker process, or after the settings changed."""
    if _state["engine"] is not None and _state["pid"] == os.getpid():
        _state["engine"].dispose()
    _state.update(pid=None, engine=None, factory=None)


def session_factory() -> sessionmaker[Session]:
    get_engine()
    return _state["factory"]


def new_session() -> Session:
    return session_factory()()


def read_with_retry(read: Callable[[Session], T]) -> T:
    """``read(session)`` for a read-only caller, in autocommit (on PostgreSQL: no BEGIN before it
    and no ROLLBACK after it) and without the pool's ping of a connection used within
    PING_BYPASS_SECONDS. When its connection turns out to be dead, SQLAlchemy invalidates the
    pool and the read runs once more, on a new connection."""
    for attempt in (1, 2):
        _retried_read.active = attempt == 1
        try:
            with new_session() as session:
                if session.get_bind().dialect.name != "sqlite":  # SQLite's switch costs two PRAGMAs
                    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                return read(session)
        except exc.DBAPIError as err:
            if attempt == 2 or not err.connection_invalidated:
                raise
        finally:
            _retried_read.active = False
    raise AssertionError("unreachable")


async def get_db() -> AsyncIterator[Session]:
    """The request's session, made on the event loop (no I/O: it connects on first use, in the route's
    thread) instead of in a worker thread, as a plain generator dependency would be.

    Closing hands the connection back to the pool with a rollback: microseconds on SQLite, so on the
    loop; one round trip on PostgreSQL, so in a worker thread, where a database that stops answering
    cannot stall the event loop.
    """
    session = new_session()
    try:
        yield session
    finally:
        if session.in_transaction() and session.get_bind().dialect.name != "sqlite":
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_db)]


class ProjectScoped(Protocol):
    id: Any
    project_id: Any


Row = TypeVar("Row", bound=ProjectScoped)


def get_scoped(session: Session, model: type[Row], project_id: str, item_id: str, kind: str) -> Row:
    """The project's row of ``model`` with this id; 404 ``{kind}_not_found`` when it is missing or
    another project's (the two are indistinguishable on purpose)."""
    row = session.get(model, item_id)
    if row is None or row.project_id != project_id:
        raise not_found(kind, item_id)
    return row
