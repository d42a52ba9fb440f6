"""Database engine and sessions, shared by the API and the workers.

The engine is created lazily per process: an engine must never cross a fork (Celery prefork
children and uvicorn reloaders), so the owning pid is remembered and a forked child builds its own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings
from app.errors import not_found

_state: dict[str, Any] = {"pid": None, "engine": None, "factory": None}


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing on a lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


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
