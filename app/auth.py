"""API keys and project scoping."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import new_session
from app.errors import AppError, Unauthorized
from app.models import ApiKey, Project, utcnow
from worker.engine.spec import hidden_characters

KEY_PREFIX = "rnl_"
DEFAULT_PROJECT = "default"


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough (no dictionary attack is possible).
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project


MAX_PROJECT_NAME = 200  # the column's length


def check_project_name(name: str) -> str:
    """``name``, or a ``ValueError`` saying why it cannot name a project (empty, too long, or with
    control or invisible formatting characters that make it display as something it is not)."""
    if not name.strip():
        raise ValueError("a project name cannot be empty")
    if len(name) > MAX_PROJECT_NAME:
        raise ValueError(f"a project name has at most {MAX_PROJECT_NAME} characters (got {len(name)})")
    hidden = hidden_characters(name)
    if hidden:
        raise ValueError(f"a project name cannot hold control or invisible characters ({', '.join(hidden[:5])})")
    return name


def create_key(session: Session, project_name: str) -> tuple[str, ApiKey]:
    """Create a key for the project (created if new); returns the plain key, shown once."""
    project = get_or_create_project(session, check_project_name(project_name))
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(project_id=project.id, prefix=plain[:12], key_hash=hash_key(plain))
    session.add(row)
    session.commit()
    return plain, row


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(
        select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.created_at)
    )
    return [(key, name) for key, name in rows]


def revoke_key(session: Session, key_id_or_prefix: str) -> int:
    """Revoke the active key with this id, this prefix (as ``keys list`` shows it, "…" and all) or
    this whole key; returns how many were revoked."""
    given = key_id_or_prefix.strip().removesuffix("…")
    result = session.execute(
        update(ApiKey)
        .where((ApiKey.id == given) | (ApiKey.prefix == given) | (ApiKey.key_hash == hash_key(given)))
        .where(ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _unauthorized(message: str) -> AppError:
    err = Unauthorized("unauthorized", message)
    return err


# key hash → (monotonic expiry, project): saves the key lookup on most requests. Only valid keys are
# kept, and never longer than auth_cache_seconds, so a revoked key stops working within that time
# in every API process (each has its own cache).
_known_keys: dict[str, tuple[float, Project]] = {}
_known_keys_lock = threading.Lock()
MAX_CACHED_KEYS = 10_000


def _cached_project(key_hash: str) -> Project | None:
    entry = _known_keys.get(key_hash)
    if entry is None or entry[0] < time.monotonic():
        return None
    return entry[1]


def _remember_project(key_hash: str, project: Project, seconds: float) -> None:
    # A detached copy: the request's session closes, and routes only read project.id.
    copy = Project(id=project.id, name=project.name, created_at=project.created_at)
    with _known_keys_lock:
        if len(_known_keys) >= MAX_CACHED_KEYS:
            _known_keys.clear()
        _known_keys[key_hash] = (time.monotonic() + seconds, copy)


def forget_cached_keys() -> None:
    with _known_keys_lock:
        _known_keys.clear()


def _default_project() -> Project:
    with new_session() as session:
        project = get_or_create_project(session, DEFAULT_PROJECT)
        session.commit()
        return project


def _project_of_key(key_hash: str) -> Project | None:
    with new_session() as session:
        return session.scalar(
            select(Project)
            .join(ApiKey, ApiKey.project_id == Project.id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )


async def current_project(request: Request) -> Project:
    """The project of the request's API key (or the default project when auth is off).

    A coroutine, so a key found in the cache costs no hop to a worker thread; only a lookup in the
    database runs in one (with its own session, ended before the route's begins).
    """
    settings = get_settings()
    if not settings.auth_enabled:
        return await run_in_threadpool(_default_project)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header; send 'Authorization: Bearer <api key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization header must be 'Bearer <api key>'")
    key_hash = hash_key(token.strip())
    cache_seconds = settings.auth_cache_seconds
    cached = _cached_project(key_hash) if cache_seconds > 0 else None
    if cached is not None:
        return cached
    owner = await run_in_threadpool(_project_of_key, key_hash)
    if owner is None:
        raise _unauthorized("invalid or revoked API key")
    if cache_seconds > 0:
        _remember_project(key_hash, owner, cache_seconds)
    return owner


CurrentProject = Annotated[Project, Depends(current_project)]
